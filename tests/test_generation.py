"""The one padding helper (prompts on the left, answers on the right, never a zero-width batch), and the generation
backends: continuous batching answers as static batches do, token for token, or is refused."""

import functools
from collections import Counter
from contextlib import nullcontext

import pytest
import torch
from helpers import (
    adapt_argv,
    assert_all_equal,
    assert_usage_error,
    flags,
    make_config,
    make_model,
    read_jsonl,
    trainable,
)

from zerosiam_hf import generation
from zerosiam_hf.commands import adapt, compare, evaluate
from zerosiam_hf.config import SharedRunConfig
from zerosiam_hf.generation import (
    GenerationArguments,
    generate_batches,
    generate_completions,
    greedy_config,
    merged_lora,
    pad,
    sampling_config,
)
from zerosiam_hf.generation import (
    generate_continuous as continuous,
)
from zerosiam_hf.modeling import ModelArguments, build_adapted_model, load_model_and_tokenizer
from zerosiam_hf.trainer import ZeroSiamTrainer


def test_pad_left_and_right():
    ids, mask = pad([[5, 6], [7], []], 0, side="left")
    assert ids.tolist() == [[5, 6], [0, 7], [0, 0]] and mask.tolist() == [[1, 1], [0, 1], [0, 0]]
    ids, mask = pad([[5, 6], [7], []], 0, side="right")
    assert ids.tolist() == [[5, 6], [7, 0], [0, 0]] and mask.tolist() == [[1, 1], [1, 0], [0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_pad_keeps_one_column_for_empty_answers():
    ids, mask = pad([[], []], 3, side="right")
    assert ids.tolist() == [[3], [3]] and mask.tolist() == [[0], [0]]


# ---------------------------------------------------------------------------------------------- continuous backend
def answers_of_varied_length(model, tokenizer) -> list[list[int]]:
    """Prompts of 3 to 19 tokens whose greedy answers end early at different steps: the model's end tokens become
    its own EOS plus the token found in most of its answers after their first (a random tiny model rarely says EOS)."""
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 256, (int(n),), generator=generator).tolist() for n in range(3, 20, 2)]
    answers = generate_completions(model, tokenizer, prompts, max_new_tokens=24, batch_size=4)
    common = Counter(token for answer in answers for token in set(answer[1:])).most_common(1)[0][0]
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, common]
    return prompts


def lora_model_that_answers_otherwise(tokenizer, tmp_path):
    """The tiny model with LoRA adapters whose delta changes its answers (LoRA B starts at zero)."""
    model = build_adapted_model(make_model(tokenizer), make_config(tmp_path, method="tent", lora_r=4))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    return model


@pytest.mark.parametrize("merge_lora", [True, False])
def test_continuous_answers_equal_static_token_for_token_on_a_lora_model(tmp_path, tokenizer, merge_lora):
    model = lora_model_that_answers_otherwise(tokenizer, tmp_path)
    prompts = answers_of_varied_length(model, tokenizer)
    options = {"max_new_tokens": 24, "batch_size": 4, "merge_lora": merge_lora}
    static = generate_completions(model, tokenizer, prompts, **options)
    continuous = generate_completions(model, tokenizer, prompts, backend="continuous", **options)
    assert continuous == static
    assert len({len(answer) for answer in static}) > 2  # some answers stop early, at different steps
    with model.disable_adapter():  # the adapters count: the base model answers otherwise
        assert generate_completions(model, tokenizer, prompts, **{**options, "merge_lora": False}) != static
    assert model.base_model.model.config._attn_implementation == "sdpa"  # continuous batching put it back


def test_continuous_backend_in_the_trainer_gives_the_same_run(tmp_path, monkeypatch, tokenizer, prompts, gold):
    calls = []
    monkeypatch.setattr(generation, "generate_continuous", lambda *a: calls.append(a) or continuous(*a))
    runs = {}
    for backend in ("static", "continuous"):
        args = make_config(tmp_path / backend, method="zerosiam", generation_backend=backend)
        trainer = ZeroSiamTrainer(make_model(tokenizer), args, prompts, tokenizer, gold=gold)
        trainer.train()
        runs[backend] = (
            [(r["completion"], r["tokens"]) for r in trainer.online_results()[1]],
            trainable(trainer.model),
        )
    assert len(calls) == 3  # one continuous batch per step of 2 prompts, in the continuous run only
    assert runs["continuous"][0] == runs["static"][0]
    assert_all_equal(runs["static"][1], runs["continuous"][1])


@pytest.mark.parametrize("method", ["em_inf", "slot", "ttrl", "rent", "intuitor"])
def test_methods_that_decode_their_own_way_refuse_the_continuous_backend(tmp_path, method):
    with pytest.raises(ValueError, match=f"--method {method} .* use --generation_backend static"):
        make_config(tmp_path, method=method, generation_backend="continuous")
    with pytest.raises(ValueError, match=f"--method {method} .* use --generation_backend static"):
        SharedRunConfig(output_dir=str(tmp_path), generation_backend="continuous").check_methods(["tent", method])
    make_config(tmp_path, method=method)  # static takes it


def test_an_unknown_backend_is_refused(tmp_path):
    for make in (
        lambda: GenerationArguments(generation_backend="paged"),
        lambda: make_config(tmp_path, generation_backend="paged"),
    ):
        with pytest.raises(ValueError, match="--generation_backend must be one of static, continuous; got 'paged'"):
            make()


def test_continuous_backend_refuses_sampling_and_logits_processors(tokenizer):
    model = make_model(tokenizer)
    config = greedy_config(model, tokenizer, 4)
    batch = [pad([[1, 2, 3]], tokenizer.pad_token_id, side="left")]
    with pytest.raises(ValueError, match="use --generation_backend static"):
        generate_batches(model, batch, sampling_config(config, 1.0), backend="continuous")
    with pytest.raises(ValueError, match="use --generation_backend static"):
        generate_batches(model, batch, config, backend="continuous", logits_processor=[lambda ids, scores: scores])


def test_a_failed_continuous_request_is_an_error_not_an_empty_answer(tokenizer, monkeypatch):
    model = make_model(tokenizer)
    monkeypatch.setattr(type(model), "generate_batch", lambda self, prompts, **kwargs: {})
    with pytest.raises(RuntimeError, match="continuous batching answered 0 of 1 prompts"):
        generate_completions(model, tokenizer, [[1, 2, 3]], max_new_tokens=4, batch_size=1, backend="continuous")


def test_evaluate_with_the_continuous_backend_records_it_and_answers_alike(adapted_run, tmp_path):
    argv = flags(model=adapted_run["model_dir"], dataset=adapted_run["dataset"], adapter=adapted_run["output_dir"])
    static = evaluate.main([*argv, *flags(max_new_tokens=8, output_dir=tmp_path / "static")])
    continuous = evaluate.main(
        [*argv, *flags(max_new_tokens=8, output_dir=tmp_path / "cont", generation_backend="continuous")]
    )
    assert continuous["config"]["GenerationArguments"]["generation_backend"] == "continuous"
    assert static["config"]["GenerationArguments"]["generation_backend"] == "static"
    for variant in ("base", "adapted"):
        answers = [read_jsonl(tmp_path / run / f"predictions-{variant}.jsonl") for run in ("static", "cont")]
        assert [a["completion"] for a in answers[0]] == [a["completion"] for a in answers[1]]


def test_the_backend_flag_is_in_every_commands_help_and_refused_in_one_line(
    capsys, tiny_model_dir, problems_file, tmp_path
):
    for command in (adapt, evaluate, compare):
        with pytest.raises(SystemExit):
            command.main(["--help"])
        assert "--generation_backend {static,continuous}" in capsys.readouterr().out
    output_dir = tmp_path / "run"
    slot = adapt_argv(
        tiny_model_dir, problems_file, output_dir, "--method", "slot", "--generation_backend", "continuous"
    )
    assert_usage_error(capsys, lambda: adapt.main(slot), "--method slot adds a per-prompt delta")
    argv = [
        *flags(model=tiny_model_dir, dataset=problems_file, output_dir=output_dir, generation_backend="continuous")
    ]
    assert_usage_error(capsys, lambda: compare.main([*argv, "--methods", "tent", "ttrl"]), "--method ttrl samples")
    assert not output_dir.exists()


def test_no_prompts_get_no_answers_with_either_backend(tokenizer):
    model = make_model(tokenizer)
    for backend in ("static", "continuous"):
        assert generate_completions(model, tokenizer, [], max_new_tokens=4, batch_size=2, backend=backend) == []


# ---------------------------------------------------------------------------------------------- one prefill per group
class RecordScores:
    """A logits processor that keeps the scores of every decoding step and changes nothing."""

    def __init__(self):
        self.steps = []

    def __call__(self, input_ids, scores):
        self.steps.append(scores.clone())
        return scores


@pytest.mark.parametrize("merge_lora", [True, False])
def test_k_samples_from_one_prefill_have_the_log_probabilities_of_a_full_forward(tokenizer, merge_lora, tmp_path):
    model = lora_model_that_answers_otherwise(tokenizer, tmp_path)
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 256, (n,), generator=generator).tolist() for n in (5, 11, 2)]
    ids, mask = pad(prompts, tokenizer.pad_token_id, side="left")
    config = sampling_config(greedy_config(model, tokenizer, 12), 1.0)
    k, prefills, scores = 4, [], RecordScores()
    forward = type(model.get_base_model()).forward

    @functools.wraps(forward)  # generate() reads the forward's signature to choose its inputs
    def counting(self, *args, **kwargs):
        prefills.append(tuple(kwargs["input_ids"].shape))
        return forward(self, *args, **kwargs)

    torch.manual_seed(0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(model.get_base_model()), "forward", counting)
        answers = generate_batches(
            model, [(ids, mask)], config, merge_lora=merge_lora, logits_processor=[scores], samples=k
        )
    # the prompts went through the model once each, all but their last token; then each copy's last token
    assert prefills[:2] == [(len(prompts), ids.shape[1] - 1), (k * len(prompts), 1)]
    assert len({tuple(answer) for answer in answers}) > k  # the samples of a prompt differ
    step_log_probs = torch.stack(scores.steps, 1).log_softmax(-1)  # [k * prompts, steps, V]
    model.eval()  # no LoRA dropout, as while generating
    for row, answer in enumerate(answers):
        # today's path: the whole prompt and answer through one forward, as the update reads them
        tokens = torch.tensor([prompts[row // k] + answer])
        with merged_lora(model) if merge_lora else nullcontext(), torch.no_grad():
            logits = model(input_ids=tokens).logits[0, len(prompts[row // k]) - 1 : -1]
        expected = logits.log_softmax(-1).gather(-1, tokens[0, -len(answer) :, None])
        got = step_log_probs[row, : len(answer)].gather(-1, tokens[0, -len(answer) :, None])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_one_token_prompts_sample_without_a_cache(tokenizer):
    model = make_model(tokenizer)
    config = sampling_config(greedy_config(model, tokenizer, 5), 1.0)
    torch.manual_seed(0)
    answers = generate_batches(model, [pad([[7], [9]], tokenizer.pad_token_id, side="left")], config, samples=3)
    torch.manual_seed(0)
    repeated = generate_batches(model, [pad([[7]] * 3 + [[9]] * 3, tokenizer.pad_token_id, side="left")], config)
    assert answers == repeated and len(answers) == 6


def test_a_half_precision_head_reads_a_contiguous_input_and_answers_the_same_bits(tiny_model_dir, tokenizer):
    model, _, _ = load_model_and_tokenizer(ModelArguments(model=tiny_model_dir, dtype="bfloat16"))
    head = model.get_output_embeddings()
    seen = []
    head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    prompts = [[5, 6, 7, 8], [9, 10]]
    answers = generate_completions(model, tokenizer, prompts, max_new_tokens=6, batch_size=2)
    assert seen and all(seen)  # generate()'s prefill slice reaches the head contiguous
    ids, mask = pad(prompts, tokenizer.pad_token_id, side="left")
    with torch.no_grad():
        hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
        hooked = model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits
    assert torch.equal(hooked, torch.nn.functional.linear(hidden[:, -1:], head.weight))  # the slice's own bits
    head._forward_pre_hooks.clear()
    assert generate_completions(model, tokenizer, prompts, max_new_tokens=6, batch_size=2) == answers
    float32, _, _ = load_model_and_tokenizer(ModelArguments(model=tiny_model_dir, dtype="float32"))
    assert not float32.get_output_embeddings()._forward_pre_hooks  # float32 keeps the slice's rounding


def test_greedy_answers_ignore_the_penalties_a_model_ships(tiny_model_dir, prompts):
    model, tokenizer, _ = load_model_and_tokenizer(ModelArguments(model=tiny_model_dir))
    ids, mask = pad(prompts["prompt_ids"], tokenizer.pad_token_id, side="left")
    plain = generate_batches(model, [(ids, mask)], greedy_config(model, tokenizer, 8))
    # as some Instruct models ship them (Qwen2.5's repetition_penalty 1.05), strong enough to change tiny answers
    model.generation_config.repetition_penalty = 10.0
    model.generation_config.no_repeat_ngram_size = 1
    assert generate_batches(model, [(ids, mask)], greedy_config(model, tokenizer, 8)) == plain
