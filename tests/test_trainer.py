"""Tests for ZeroSiamTrainer on a tiny random Llama: what moves and what does not, what is logged, the protocols,
that gold answers never reach the model, and that a saved adapter reloads to the same model."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset
from helpers import (
    PROBLEMS,
    assert_all_equal,
    assert_all_moved,
    greedy,
    make_config,
    make_model,
    reload_in_fresh_process,
    step_logs,
    trainable,
    write_problems,
)
from transformers import TrainerCallback, TrainingArguments

from zerosiam_hf import PREDICTOR_NAME, ZeroSiamConfig, ZeroSiamTrainer, build_adapted_model, load_adapted_model
from zerosiam_hf import trainer as trainer_module
from zerosiam_hf.data import DataArguments, build_prompts, gold_answers, load_problems
from zerosiam_hf.errors import RunStopped
from zerosiam_hf.generation import generate_completions, merged_lora, pad
from zerosiam_hf.methods import METHODS
from zerosiam_hf.modeling import ModelArguments, load_model_and_tokenizer
from zerosiam_hf.predictor import find_predictor


LOSS_KEYS = ("loss/entropy", "loss/align", "collapse/entropy", "collapse/logit_norm")
STEPS = 3  # six problems, two a step


def make_trainer(tmp_path, tokenizer, prompts, gold, model=None, **overrides) -> ZeroSiamTrainer:
    return ZeroSiamTrainer(
        model=make_model(tokenizer) if model is None else model,
        args=make_config(tmp_path, **overrides),
        train_dataset=prompts,
        processing_class=tokenizer,
        gold=gold,
    )


def base_weights(model) -> dict:
    """Every weight of the base model, under the plain model's names, whether or not peft wraps it."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {
        name.replace(".base_layer", ""): p.detach().clone()
        for name, p in model.named_parameters()
        if "lora_" not in name and PREDICTOR_NAME not in name
    }


# ---------------------------------------------------------------------------------------------------------- what moves
def test_zerosiam_updates_lora_and_predictor_only(tmp_path, tokenizer, prompts, gold):
    model = make_model(tokenizer)
    base_before = base_weights(model)
    assert {"lm_head.weight", "model.embed_tokens.weight", "model.norm.weight"} <= base_before.keys()
    trainer = make_trainer(tmp_path, tokenizer, prompts, gold, model=model)
    before = trainable(trainer.model)
    lora = {name for name in before if "lora_A" in name or "lora_B" in name}
    predictor = {name for name in before if PREDICTOR_NAME in name}
    assert len(lora) == 2 * 4 * 2  # two layers, q/k/v/o, A and B
    assert len(predictor) == 1
    assert before.keys() == lora | predictor  # nothing else is trainable

    trainer.train()

    assert_all_moved(before, trainable(trainer.model))
    assert_all_equal(base_before, base_weights(trainer.model))  # lm_head and embeddings included, bit for bit
    logs = step_logs(trainer)
    assert len(logs) == STEPS
    for entry in logs:
        assert all(key in entry for key in LOSS_KEYS + ("collapse/dominance", "collapse/predictor_drift"))
        assert "online/accuracy_strict" in entry and "online/accuracy_flexible" in entry
        # the loss is H(online) + alpha * symmetric KL, as logged
        assert entry["loss"] == pytest.approx(entry["loss/entropy"] + entry["loss/align"], abs=1e-3)
    assert logs[-1]["collapse/predictor_drift"] > 0


@pytest.mark.parametrize("method", ["tent", "come"])
def test_methods_without_predictor_update_lora_only(tmp_path, tokenizer, prompts, gold, method):
    model = make_model(tokenizer)
    base_before = base_weights(model)
    trainer = make_trainer(tmp_path, tokenizer, prompts, gold, model=model, method=method)
    assert find_predictor(trainer.model) is None
    before = trainable(trainer.model)
    assert len(before) == 16 and all("lora_" in name for name in before)

    trainer.train()

    assert_all_moved(before, trainable(trainer.model))
    assert_all_equal(base_before, base_weights(trainer.model))
    logs = step_logs(trainer)
    assert len(logs) == STEPS
    assert all(entry["loss/align"] == 0 and "collapse/predictor_drift" not in entry for entry in logs)
    assert all(key in logs[0] for key in LOSS_KEYS)


def test_method_none_answers_without_updating(tmp_path, tokenizer, prompts, gold):
    model = make_model(tokenizer)
    base_before = base_weights(model)
    trainer = make_trainer(tmp_path, tokenizer, prompts, gold, model=model, method="none")
    before = trainable(trainer.model)

    trainer.train()

    assert_all_equal(before, trainable(trainer.model))
    assert_all_equal(base_before, base_weights(trainer.model))
    summary, records = trainer.online_results()
    assert summary["n"] == len(PROBLEMS)
    assert [record["index"] for record in records] == list(range(len(PROBLEMS)))
    for record in records:
        assert 0 < record["tokens"] <= 8
        assert isinstance(record["completion"], str)
        assert isinstance(record["correct_strict"], bool) and isinstance(record["correct_flexible"], bool)
    assert all("loss/entropy" not in entry for entry in step_logs(trainer))  # no loss was computed


def test_predictor_learns_at_its_own_rate(tmp_path, tokenizer, prompts):
    lr, scale = 1e-3, 10.0
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        prompts,
        None,
        learning_rate=lr,
        predictor_lr_scale=scale,
        protocol="offline",
        signal="prompt",
        max_steps=1,
    )
    predictor = find_predictor(trainer.model).weight
    before = trainable(trainer.model)

    trainer.train()

    groups = trainer.optimizer.param_groups
    assert sorted(group["lr"] for group in groups) == pytest.approx([lr, lr * scale])
    (predictor_group,) = [group for group in groups if any(p is predictor for p in group["params"])]
    assert predictor_group["lr"] == pytest.approx(lr * scale)
    assert len(predictor_group["params"]) == 1 and predictor_group["weight_decay"] == 0.0
    # Adam's first step moves each weight by at most (and here close to) its learning rate.
    after = trainable(trainer.model)
    steps = {name: (after[name] - before[name]).abs().max().item() for name in before}
    predictor_name = next(name for name in before if PREDICTOR_NAME in name)
    assert steps[predictor_name] == pytest.approx(lr * scale, rel=0.05)
    lora_b = [step for name, step in steps.items() if "lora_B" in name]
    assert max(lora_b) == pytest.approx(lr, rel=0.05)


def test_half_precision_base_keeps_a_float32_predictor(tmp_path, tokenizer, prompts):
    model = make_model(tokenizer).to(torch.bfloat16)
    base_before = base_weights(model)
    trainer = make_trainer(
        tmp_path, tokenizer, prompts, None, model=model, learning_rate=1e-4, protocol="offline", signal="prompt"
    )
    predictor = find_predictor(trainer.model).weight
    assert predictor.dtype == torch.float32  # bf16 would round steps of lr * scale = 1e-3 near 1.0 away

    trainer.train()

    assert (predictor.diagonal() != 1).all()  # every diagonal entry moved off the identity
    assert_all_equal(base_before, base_weights(trainer.model))
    assert all(p.dtype == torch.bfloat16 for p in base_weights(trainer.model).values())


def test_branches_agree_at_step_zero(tmp_path, tokenizer, prompts):
    trainer = make_trainer(tmp_path, tokenizer, prompts, None, protocol="offline", max_steps=1)
    predictor = find_predictor(trainer.model)
    assert torch.equal(predictor.weight, torch.eye(16))
    batch = trainer.data_collator([prompts[i] for i in range(3)])
    with torch.no_grad():
        outputs = trainer.model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
        hidden = outputs.hidden_states[-1]
        head = trainer.model.get_output_embeddings()
        target, online = head(hidden), head(predictor(hidden))
    assert torch.equal(online, target)
    torch.testing.assert_close(target, outputs.logits)  # the last hidden state is the LM head's input

    trainer.train()

    (first,) = step_logs(trainer)
    assert first["loss/align"] == 0.0
    assert first["collapse/predictor_drift"] == 0.0
    assert first["loss/entropy"] == pytest.approx(first["collapse/entropy"], abs=1e-6)


# ----------------------------------------------------------------------------------------------- signals and protocols
@pytest.mark.parametrize("signal", ["response", "prompt"])
def test_both_signals_train_offline_without_gold(tmp_path, tokenizer, prompts, signal):
    trainer = make_trainer(tmp_path, tokenizer, prompts, None, signal=signal, protocol="offline")
    answers, loss_inputs = [], []
    generate, compute_loss = trainer._generate, trainer.compute_loss

    def recording_generate(*args, **kwargs):
        answers.append(generate(*args, **kwargs))
        return answers[-1]

    def recording_loss(model, inputs, *args, **kwargs):
        loss_inputs.append({key: value.detach().clone() for key, value in inputs.items()})
        return compute_loss(model, inputs, *args, **kwargs)

    trainer._generate, trainer.compute_loss = recording_generate, recording_loss
    before = trainable(trainer.model)

    trainer.train()

    assert_all_moved(before, trainable(trainer.model))
    assert trainer.online_records == {}
    assert len(loss_inputs) == STEPS
    if signal == "prompt":
        assert answers == []  # no generation needed
        assert all(torch.equal(x["loss_mask"], x["attention_mask"].bool()) for x in loss_inputs)
        return
    # response: the loss covers exactly the positions that predict the model's own (teacher-forced) answer
    assert len(answers) == STEPS
    for completions, inputs in zip(answers, loss_inputs):
        for row, completion in enumerate(completions):
            mask = inputs["loss_mask"][row]
            assert not mask[-1]
            assert inputs["input_ids"][row][1:][mask[:-1]].tolist() == completion


def test_online_protocol_needs_gold(tmp_path, tokenizer, prompts):
    with pytest.raises(ValueError, match="the online protocol scores each answer: pass gold="):
        make_trainer(tmp_path, tokenizer, prompts, None)


def test_episodic_resets_after_every_batch(tmp_path, tokenizer, prompts, gold):
    trainer = make_trainer(tmp_path, tokenizer, prompts, gold, episodic=True, signal="prompt")
    initial = trainable(trainer.model)
    lora_b = [p for name, p in trainer.model.named_parameters() if "lora_B" in name]
    predictor = find_predictor(trainer.model).weight
    at_loss, at_answer = [], []
    generate, compute_loss = trainer._generate, trainer.compute_loss

    def recording_loss(*args, **kwargs):
        at_loss.append(all(not b.any() for b in lora_b) and torch.equal(predictor, torch.eye(16)))
        return compute_loss(*args, **kwargs)

    def recording_generate(*args, **kwargs):
        at_answer.append(all(b.any() for b in lora_b))
        return generate(*args, **kwargs)

    trainer._generate, trainer.compute_loss = recording_generate, recording_loss

    trainer.train()

    assert at_loss == [True] * STEPS  # every batch is adapted on from the initial state
    assert at_answer == [True] * STEPS  # and answered after its own update
    assert_all_equal(initial, trainable(trainer.model))  # LoRA and predictor back to their initial values
    assert torch.equal(predictor, torch.eye(16))
    assert len(trainer.optimizer.state) == 0
    summary, records = trainer.online_results()
    assert summary["n"] == len(PROBLEMS)
    assert sorted(record["index"] for record in records) == list(range(len(PROBLEMS)))


# ------------------------------------------------------------------------------------------------------------- leakage
CANARY_WORD = "Zyzzogeton"
CANARY_GOLD = "987654321"


def contains(sequence: list[int], pattern: list[int]) -> bool:
    return any(sequence[i : i + len(pattern)] == pattern for i in range(len(sequence) - len(pattern) + 1))


def canary_rows(layout: str) -> list[dict]:
    """The conftest problems in a benchmark's own layout, every gold and solution carrying the canaries."""
    solution = f"{CANARY_WORD} checked it, so the answer is $\\boxed{{{CANARY_GOLD}}}$."
    if layout == "gsm8k":
        return [
            {"question": q, "answer": f"{a.split('####')[0]}{CANARY_WORD} checked it.\n#### {CANARY_GOLD}"}
            for q, a in PROBLEMS
        ]
    if layout == "math500":
        return [{"problem": q, "solution": solution, "answer": CANARY_GOLD, "level": 1} for q, _ in PROBLEMS]
    return [{"problem": q, "solution": solution, "type": "canary"} for q, _ in PROBLEMS]  # minerva_math


@pytest.mark.parametrize(
    "layout, signal, method",
    [
        ("gsm8k", "response", "zerosiam"),
        ("gsm8k", "prompt", "zerosiam"),
        ("math500", "response", "zerosiam"),
        ("minerva_math", "response", "zerosiam"),
        # every other method, with its own signal; the sampling ones vote (TTRL) and reward on the answers alone
        *[("gsm8k", None, method) for method in METHODS if method != "zerosiam"],
        ("math500", None, "ttrl"),
    ],
)
def test_gold_answers_never_reach_the_model(tmp_path, monkeypatch, tokenizer, layout, signal, method):
    rows = canary_rows(layout)
    (tmp_path / layout).mkdir()
    write_problems(tmp_path / layout / "test.jsonl", rows)
    monkeypatch.setenv("ZEROSIAM_DATA_DIR", str(tmp_path))
    data_args = DataArguments(dataset=layout)
    problems, _ = load_problems(data_args)
    prompts = build_prompts(problems, tokenizer, data_args.instruction, max_prompt_length=512)
    checker = data_args.make_checker()
    gold = gold_answers(problems, checker)
    assert {str(value) for value in gold.values()} == {CANARY_GOLD}
    canaries = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in (CANARY_WORD, CANARY_GOLD)]
    row_ids = tokenizer(json.dumps(rows[0]), add_special_tokens=False)["input_ids"]
    assert all(contains(row_ids, canary) for canary in canaries)  # the search would find a leak

    model = make_model(tokenizer)
    seen, generate_calls = [], []

    def record_embedding_input(module, args, kwargs):
        seen.extend((args[0] if args else kwargs["input"]).tolist())

    hook = model.get_input_embeddings().register_forward_pre_hook(record_embedding_input, with_kwargs=True)
    config = make_config(tmp_path, signal=signal, method=method)
    trainer = ZeroSiamTrainer(model, config, prompts, tokenizer, gold=gold, checker=checker)
    generate = trainer.model.generate

    def recording_generate(*args, **kwargs):
        generate_calls.append(kwargs["input_ids"].tolist())
        seen.extend(generate_calls[-1])
        return generate(*args, **kwargs)

    trainer.model.generate = recording_generate
    try:
        trainer.train()
    finally:
        hook.remove()
        checker.close()

    assert generate_calls and seen
    for question, _ in PROBLEMS:  # the hooks saw every prompt, so they would have seen an answer too
        question_ids = tokenizer(question, add_special_tokens=False)["input_ids"]
        assert any(contains(row, question_ids) for row in seen)
    leaks = [row for row in seen for canary in canaries if contains(row, canary)]
    assert not leaks, f"{len(leaks)} of {len(seen)} model inputs hold a gold-answer canary"
    assert trainer.online_results()[0]["n"] == len(PROBLEMS)  # gold served the scoring only


def test_refuses_datasets_that_are_not_prompts(tmp_path, tokenizer, problems, prompts, gold):
    with_answers = problems.map(lambda row: {"prompt_ids": tokenizer(row["question"])["input_ids"]})
    with pytest.raises(ValueError, match="train_dataset holds gold answers; drop them"):
        make_trainer(tmp_path, tokenizer, with_answers, gold)
    with pytest.raises(ValueError, match="train_dataset needs `prompt_ids` and `index` columns"):
        make_trainer(tmp_path, tokenizer, problems.remove_columns("answer"), gold)
    with pytest.raises(TypeError, match="args must be a ZeroSiamConfig, got TrainingArguments"):
        ZeroSiamTrainer(
            make_model(tokenizer), TrainingArguments(output_dir=str(tmp_path), report_to="none"), prompts, tokenizer
        )


# ----------------------------------------------------------------------------------------------------- save and reload
@pytest.fixture(scope="module")
def adapted(tmp_path_factory, tiny_model_dir, one_thread):
    """ZeroSiam adapted with a large learning rate for a few steps, saved with `trainer.save_model`; in float32,
    which plain transformers loads and which these tests compare at float32's precision."""
    out = tmp_path_factory.mktemp("adapted")
    model, tokenizer, _ = load_model_and_tokenizer(ModelArguments(model=tiny_model_dir, dtype="float32"))
    problems = Dataset.from_list([{"question": q, "answer": a, "index": i} for i, (q, a) in enumerate(PROBLEMS)])
    prompts = build_prompts(problems, tokenizer, "Solve.", max_prompt_length=512)
    config = make_config(out, learning_rate=5e-2, protocol="offline", signal="prompt", max_steps=STEPS)
    trainer = ZeroSiamTrainer(model, config, prompts, tokenizer)
    trainer.train()
    trainer.save_model(str(out / "adapter"))
    prompt_ids = [list(ids) for ids in prompts["prompt_ids"]]
    input_ids, attention_mask = pad(prompt_ids, tokenizer.pad_token_id, side="left")
    return SimpleNamespace(
        dir=out / "adapter",
        model=trainer.model.eval(),
        tokenizer=tokenizer,
        model_dir=tiny_model_dir,
        prompt_ids=prompt_ids,
        batch={"input_ids": input_ids, "attention_mask": attention_mask},
    )


def test_saved_adapter_reloads_with_plain_peft_in_a_fresh_process(adapted, tmp_path):
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapted.dir.iterdir()}
    reloaded = reload_in_fresh_process(adapted.model_dir, adapted.dir, adapted.prompt_ids, tmp_path, max_new_tokens=8)
    assert not any(PREDICTOR_NAME in name for name in reloaded["modules"])  # a plain base knows no predictor

    with torch.no_grad():
        logits = adapted.model(input_ids=torch.tensor([adapted.prompt_ids[0]])).logits
        with adapted.model.disable_adapter():
            base_logits = adapted.model(input_ids=torch.tensor([adapted.prompt_ids[0]])).logits
    assert (logits - base_logits).abs().max() > 1e-3  # the adapter does change the model
    torch.testing.assert_close(reloaded["logits"], logits, rtol=0, atol=1e-6)
    assert reloaded["completions"] == greedy(adapted.model, adapted.tokenizer, adapted.prompt_ids, max_new_tokens=8)


def test_load_adapted_model_restores_lora_and_predictor(adapted):
    base, _, _ = load_model_and_tokenizer(ModelArguments(model=adapted.model_dir, dtype="float32"))
    reloaded = load_adapted_model(base, str(adapted.dir))
    expected, actual = adapted.model.state_dict(), reloaded.state_dict()
    assert expected.keys() == actual.keys()
    assert_all_equal(expected, actual)
    predictor = find_predictor(reloaded)
    assert torch.equal(predictor.weight, find_predictor(adapted.model).weight)
    assert not torch.equal(predictor.weight, torch.eye(16))  # it was trained, and restored
    with torch.no_grad():
        assert torch.equal(reloaded(**adapted.batch).logits, adapted.model(**adapted.batch).logits)
    assert not any(p.requires_grad for p in reloaded.parameters())

    trainable_again = load_adapted_model(
        load_model_and_tokenizer(ModelArguments(model=adapted.model_dir, dtype="float32"))[0],
        str(adapted.dir),
        is_trainable=True,
    )
    names = {name for name, p in trainable_again.named_parameters() if p.requires_grad}
    assert names == {
        name
        for name, p in adapted.model.named_parameters()
        if "lora_" in name or (PREDICTOR_NAME in name and "modules_to_save" in name)
    }


def test_load_adapted_model_needs_an_adapter_folder(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="no adapter_config.json there; give the output_dir of adapt.py"):
        load_adapted_model(make_model(tokenizer), str(tmp_path))


def test_merged_lora_generation_equals_unmerged_at_step_zero(tmp_path, tokenizer, prompts):
    model = build_adapted_model(make_model(tokenizer), make_config(tmp_path))
    ids = prompts["prompt_ids"]
    merged = generate_completions(model, tokenizer, ids, max_new_tokens=8, batch_size=3, merge_lora=True)
    unmerged = generate_completions(model, tokenizer, ids, max_new_tokens=8, batch_size=3, merge_lora=False)
    assert len(merged) == len(PROBLEMS) and all(merged)
    assert merged == unmerged


def test_merged_lora_after_updates_matches_and_restores_the_base(adapted):
    model = adapted.model
    layers = [m.get_base_layer() for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "get_base_layer")]
    assert len(layers) == 8
    before = [(layer.weight.data_ptr(), layer.weight.detach().clone()) for layer in layers]
    base_before = base_weights(model)
    with torch.no_grad():
        unmerged = model(**adapted.batch).logits
        with merged_lora(model):
            merged = model(**adapted.batch).logits
            assert any(not torch.equal(layer.weight, weight) for layer, (_, weight) in zip(layers, before))
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)
    for layer, (pointer, weight) in zip(layers, before):
        assert layer.weight.data_ptr() == pointer and torch.equal(layer.weight, weight)
    assert_all_equal(base_before, base_weights(model))


def test_merged_lora_inside_disable_adapter_keeps_the_base(adapted):
    model = adapted.model
    with torch.no_grad():
        adapted_logits = model(**adapted.batch).logits
        with model.disable_adapter():
            base = model(**adapted.batch).logits
            with merged_lora(model):
                merged = model(**adapted.batch).logits
            after = model(**adapted.batch).logits
    assert not torch.allclose(base, adapted_logits, atol=1e-4)
    assert torch.equal(merged, base) and torch.equal(after, base)


@pytest.mark.parametrize(
    "overrides",
    [
        {"method": "tent"},
        {"method": "come"},
        {"method": "zerosiam", "ablation": "no_stop_gradient"},
        {"method": "zerosiam", "ablation": "frozen_identity_predictor"},
        {"method": "zerosiam", "ablation": "frozen_random_predictor"},
        {"method": "zerosiam", "alpha": 0.0},
    ],
    ids=lambda o: "-".join(str(v) for v in o.values()),
)
def test_baselines_and_ablations_differ_in_the_loss_only(tmp_path, tokenizer, prompts, gold, overrides):
    """Same model, data order and answers before the first update; only what the update does may differ."""
    reference = make_trainer(tmp_path / "zerosiam", tokenizer, prompts, gold, method="zerosiam", max_steps=1)
    reference.train()
    variant = make_trainer(tmp_path / "variant", tokenizer, prompts, gold, max_steps=1, **overrides)
    variant.train()
    first = {i: r["completion"] for i, r in reference.online_records.items()}
    assert first and first == {i: r["completion"] for i, r in variant.online_records.items()}
    assert all(r["updates_before"] == 0 for r in variant.online_records.values())


# -------------------------------------------------------------------------------------------------------------- guards
def optimizer_state(trainer) -> dict:
    state = getattr(trainer.optimizer, "optimizer", trainer.optimizer).state
    return {f"{id(p)}.{key}": value.clone() for p, values in state.items() for key, value in values.items()}


def test_nonfinite_updates_are_skipped_and_the_run_stops(tmp_path, tokenizer, prompts):
    # At learning rate 10 the tiny model's gradients turn NaN from step 4 on, while its weights are still finite.
    trainer = make_trainer(
        tmp_path, tokenizer, prompts, None, learning_rate=10.0, protocol="offline", signal="prompt", max_steps=12
    )
    after_step = []

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            after_step.append((trainable(trainer.model), optimizer_state(trainer)))

    trainer.add_callback(Snapshot())
    with pytest.raises(RunStopped, match=r"stopped at step 8: the last 5 updates had a NaN or Inf loss or gradient"):
        trainer.train()

    logs = step_logs(trainer)
    skipped = [entry["guard/skipped_updates"] for entry in logs]
    assert skipped == [0, 0, 0, 1, 2, 3, 4]
    assert all(math.isnan(entry["grad_norm"]) == (entry["guard/skipped_updates"] > 0) for entry in logs)
    for (weights, moments), (weights_before, moments_before) in zip(after_step[3:], after_step[2:]):
        assert_all_equal(weights_before, weights)  # a skipped update moves no weight
        assert_all_equal(moments_before, moments)  # nor any optimizer state
    assert all(torch.isfinite(p).all() for p in trainable(trainer.model).values())


@pytest.mark.parametrize(
    ("thresholds", "resets"),
    [
        ({"collapse_min_entropy": 100.0}, STEPS),  # every batch is "collapsed": reset after each update
        ({"collapse_min_entropy": 0.0, "collapse_max_degenerate": 1.0}, 0),  # no batch can pass these
    ],
)
def test_collapse_guard_resets_lora_predictor_and_optimizer(tmp_path, tokenizer, prompts, gold, thresholds, resets):
    trainer = make_trainer(tmp_path, tokenizer, prompts, gold, method="zerosiam", collapse_guard=True, **thresholds)
    initial = trainable(trainer.model)

    trainer.train()

    expected = list(range(1, STEPS + 1)) if resets else [0] * STEPS
    assert [entry["guard/resets"] for entry in step_logs(trainer)] == expected
    if resets:
        assert_all_equal(initial, trainable(trainer.model))
        assert len(trainer.optimizer.state) == 0
    else:
        assert_all_moved(initial, trainable(trainer.model))
    assert trainer.online_results()[0]["n"] == len(PROBLEMS)


@pytest.mark.parametrize(
    ("min_answers", "shares", "resets"),
    [
        (2, [0.0, 1.0, 0.5], [0, 1, 1]),  # each batch of 2 read alone: the second is all degenerate
        # over the last 4 answers: the first batch alone is too few to judge, the first two hold 2 of 4 degenerate
        (4, [1.0, 0.0, 0.0], [0, 0, 0]),
        # the first two hold 4 of 4; after the reset the third batch alone is again too few
        (4, [1.0, 1.0, 1.0], [0, 1, 1]),
    ],
)
def test_collapse_guard_reads_the_degenerate_share_of_the_recent_answers(
    tmp_path, tokenizer, prompts, gold, monkeypatch, min_answers, shares, resets
):
    shares = iter(shares)
    monkeypatch.setattr(trainer_module, "answer_diagnostics", lambda texts, ids: {"answers/degenerate": next(shares)})
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        prompts,
        gold,
        collapse_guard=True,
        collapse_min_entropy=0.0,
        collapse_max_degenerate=0.5,
        collapse_min_answers=min_answers,
    )
    trainer.train()
    assert [entry["guard/resets"] for entry in step_logs(trainer)] == resets


def test_collapse_guard_thresholds_are_checked():
    with pytest.raises(ValueError, match=r"--collapse_max_degenerate must be in \[0, 1\], got 1.5"):
        ZeroSiamConfig(output_dir="x", collapse_max_degenerate=1.5, report_to="none")
    with pytest.raises(ValueError, match="--collapse_min_entropy must be a finite number >= 0, got nan"):
        ZeroSiamConfig(output_dir="x", collapse_min_entropy=float("nan"), report_to="none")
    with pytest.raises(ValueError, match="--collapse_min_answers must be a positive integer, got 0"):
        ZeroSiamConfig(output_dir="x", collapse_min_answers=0, report_to="none")


@pytest.mark.parametrize(
    "overrides",
    [{}, {"episodic": True}, {"collapse_guard": True, "collapse_min_entropy": 100.0}],
    ids=["online", "episodic", "collapse_guard"],
)
def test_resume_from_a_checkpoint_ends_like_the_uninterrupted_run(tmp_path, tokenizer, prompts, gold, overrides):
    settings = {"save_steps": 1, "save_total_limit": None, **overrides}
    whole = make_trainer(tmp_path, tokenizer, prompts, gold, **settings)
    whole.train()
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert json.loads((checkpoint / "zerosiam_state.json").read_text())["online_records"]

    resumed = make_trainer(tmp_path, tokenizer, prompts, gold, **settings)
    generated = []
    generate = resumed._generate
    resumed._generate = lambda *args: generated.append(1) or generate(*args)
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert len(generated) == (STEPS - 1) * (2 if overrides.get("episodic") else 1)  # only the batches after step 1
    assert_all_equal(trainable(whole.model), trainable(resumed.model))
    assert resumed.online_results() == whole.online_results()
    last = step_logs(resumed)[-1]
    assert {k: v for k, v in last.items() if k.startswith("guard/")} == {
        k: v for k, v in step_logs(whole)[-1].items() if k.startswith("guard/")
    }
    streamed = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(streamed, key=lambda r: r["index"]) == whole.online_results()[1]  # each answer streamed once


def test_a_counter_a_resumed_checkpoint_did_not_keep_is_left_out_of_the_cost(tmp_path, tokenizer, prompts, gold):
    whole = make_trainer(tmp_path, tokenizer, prompts, gold, save_steps=1, save_total_limit=None)
    whole.train()
    assert whole.total_cost()["prefill_tokens"] > 0
    state_file = tmp_path / "run" / "checkpoint-1" / "zerosiam_state.json"
    state = json.loads(state_file.read_text())
    del state["cost"]["prefill_tokens"]  # as a checkpoint written before prefill tokens were counted
    state_file.write_text(json.dumps(state))

    resumed = make_trainer(tmp_path, tokenizer, prompts, gold, save_steps=1, save_total_limit=None)
    resumed.train(resume_from_checkpoint=str(state_file.parent))
    cost = resumed.total_cost()
    assert "prefill_tokens" not in cost  # unknown for step 1: n/a, not a count of the later steps alone
    assert cost["generated_tokens"] == whole.total_cost()["generated_tokens"]
    later = json.loads((tmp_path / "run" / "checkpoint-2" / "zerosiam_state.json").read_text())
    assert "prefill_tokens" not in later["cost"]  # and stays unknown through a second resume


def test_prompt_rows_finds_rows_by_their_index_not_their_position(tmp_path, tokenizer, prompts, gold):
    moved = prompts.select(list(reversed(range(len(prompts)))))  # a stream order moves rows
    trainer = make_trainer(tmp_path, tokenizer, moved, gold)
    rows = trainer.prompt_rows([0, 2])
    assert rows["index"] == [0, 2]
    assert rows["prompt_ids"] == [prompts[0]["prompt_ids"], prompts[2]["prompt_ids"]]
