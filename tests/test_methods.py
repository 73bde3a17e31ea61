"""The method registry and the sampling methods (GRPO): each objective against a formula written here, what moves and
what must not, k answers scored as first-sample, avg@k and maj@k, and options a method does not take refused."""

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import PROBLEMS, adapt_argv, assert_only_lora_moved, make_config, make_model, read_jsonl, subprocess_env
from safetensors.torch import load_file

from zerosiam_hf import ZeroSiamConfig, ZeroSiamTrainer
from zerosiam_hf.checkers import NumericChecker
from zerosiam_hf.config import SharedRunConfig
from zerosiam_hf.generation import generate_batches
from zerosiam_hf.losses import head_transform
from zerosiam_hf.methods import METHOD_FILE, METHODS, markdown_tables
from zerosiam_hf.methods.base import final_hidden_states
from zerosiam_hf.methods.em_inf import EntropyMinimizationLogitsProcessor
from zerosiam_hf.methods.grpo import group_advantages, grpo_loss, per_answer_mean, token_statistics
from zerosiam_hf.methods.slot import add_delta, optimize_delta
from zerosiam_hf.scoring import majority_vote


# ----------------------------------------------------------------------------------------------------- registry
def test_every_method_declares_itself():
    for name, method in METHODS.items():
        assert method.name == name and method.help
        assert method.trains in ("lora", "lora+predictor", "delta", "nothing")
        assert set(method.signals) <= {"response", "prompt"}
        assert method.resets in ("never", "prompt")
        assert set(method.options) <= {f for f in ZeroSiamConfig.__dataclass_fields__}


def test_the_docs_tables_are_the_registry():
    docs = (Path(__file__).parents[1] / "docs" / "METHODS.md").read_text()
    assert markdown_tables() in docs, "docs/METHODS.md: paste zerosiam_hf.methods.markdown_tables() over its tables"


# A method from one module: its options, its loss; registering it is the one other line.
TOY_METHOD = """
from dataclasses import dataclass

from zerosiam_hf.losses import entropy_from_logits, head_logits
from zerosiam_hf.methods.base import Method, Options, option


@dataclass
class ToyOptions(Options):
    toy_weight: float = option(2.0, "scale of the answer's entropy", positive=True)


class Toy(Method):
    name = "toy"
    help = "the answer's mean entropy times toy_weight"
    signals = ("response",)
    options_class = ToyOptions

    def loss(self, trainer, model, inputs):
        mask = inputs["loss_mask"]
        hidden = trainer.head_input(model, inputs)[mask]
        logits = head_logits(hidden, trainer.lm_head.weight, trainer.lm_head.bias, **trainer.head_transform)
        entropy = entropy_from_logits(logits).mean()
        trainer.log_metrics_step({"toy/entropy": entropy.detach()})
        return trainer.args.toy_weight * entropy
"""

REGISTER_AND_RUN = """
import contextlib, io, json, sys
from zerosiam_hf.methods import METHODS
from toy_method import Toy

METHODS[Toy.name] = Toy()  # the registry line

from zerosiam_hf.commands import adapt
from zerosiam_hf.methods import markdown_tables

argv = json.loads(sys.argv[1])
seen = {"table": markdown_tables()}
with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):
    adapt.main(["--help"])
seen["help"] = out.getvalue()
with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.suppress(SystemExit):
    adapt.main([*argv, "--method", "tent", "--toy_weight", "1"])
seen["refused"] = err.getvalue()
with contextlib.redirect_stdout(io.StringIO()):
    adapt.main([*argv, "--method", "toy", "--toy_weight", "3", "--max_steps", "2"])
print(json.dumps(seen))
"""


def test_a_method_from_one_module_and_one_registry_line_runs_online(tmp_path, tiny_model_dir, problems_file):
    (tmp_path / "toy_method.py").write_text(TOY_METHOD)
    argv = adapt_argv(tiny_model_dir, problems_file, tmp_path / "run")
    env = {**subprocess_env(), "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", REGISTER_AND_RUN, json.dumps(argv)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert "--toy_weight" in seen["help"] and "toy: scale of the answer's entropy (2.0)." in " ".join(
        seen["help"].split()
    )
    assert "--toy_weight is not an option of --method tent" in seen["refused"]
    assert "| toy | LoRA | response | 1, greedy | never | toy_weight 2.0 |" in seen["table"]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["config"]["ZeroSiamConfig"]["toy_weight"] == 3.0
    assert [row["toy/entropy"] > 0 for row in record["log_history"] if "toy/entropy" in row] == [True, True]
    assert len(read_jsonl(tmp_path / "run" / "predictions.jsonl")) == 4  # answered online, two per step
    lora_b = [t for name, t in load_file(tmp_path / "run" / "adapter_model.safetensors").items() if "lora_B" in name]
    assert lora_b and all(torch.count_nonzero(t) for t in lora_b)  # LoRA B starts at zero: the updates moved it


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "zerosiam", "num_generations": 4}, "--num_generations is not an option of --method zerosiam"),
        ({"method": "tent", "alpha": 0.5}, "--alpha is not an option of --method tent (its own options: none)"),
        ({"method": "rent", "predictor_lr_scale": 2.0}, "--predictor_lr_scale is not an option of --method rent"),
        ({"method": "ttrl", "num_generations": 1}, "--num_generations must be >= 2"),
        ({"method": "ttrl", "protocol": "offline"}, "--method ttrl runs under --protocol online only"),
        ({"method": "rent", "signal": "prompt"}, "--method rent takes --signal response; got --signal prompt"),
    ],
)
def test_an_option_the_method_does_not_take_is_one_line(tmp_path, overrides, message):
    with pytest.raises(ValueError) as error:
        make_config(tmp_path, **overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_each_method_gets_its_defaults_and_a_comparison_hands_each_its_own(tmp_path):
    assert make_config(tmp_path, method="rent").num_generations == 4
    assert make_config(tmp_path, method="zerosiam").alpha == 1.0 and make_config(tmp_path, method="tent").alpha is None
    shared = SharedRunConfig(output_dir=str(tmp_path), report_to="none", alpha=0.5, num_generations=3)
    assert shared.for_method("zerosiam").alpha == 0.5 and shared.for_method("zerosiam").num_generations is None
    assert shared.for_method("ttrl").num_generations == 3 and shared.for_method("ttrl").alpha is None
    with pytest.raises(ValueError, match="--num_generations is an option of none of --methods tent zerosiam"):
        shared.check_methods(["tent", "zerosiam"])


# ----------------------------------------------------------------------------------------------------- GRPO pieces
def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    std = math.sqrt(4 * 0.25 / 3)  # unbiased std of (1, 0, 0, 1)
    expected = [0.5 / (std + 1e-4), -0.5 / (std + 1e-4), -0.5 / (std + 1e-4), 0.5 / (std + 1e-4), 0, 0, 0, 0]
    assert torch.allclose(group_advantages(rewards, 4), torch.tensor(expected))
    assert torch.equal(group_advantages(torch.full((6,), 3.0), 3), torch.zeros(6))  # equal rewards: no signal


def test_grpo_loss_and_its_gradient_by_hand():
    logps = torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-1.5, -2.0, -0.1], dtype=torch.float64)
    advantages = torch.tensor([0.7, -1.2], dtype=torch.float64)
    rows = torch.tensor([0, 0, 1])
    beta = 0.1
    loss, kl = grpo_loss(logps, advantages, rows, ref, beta)
    a = [0.7, 0.7, -1.2]
    k3 = [math.exp(r - lp) - (r - lp) - 1 for r, lp in zip(ref.tolist(), logps.tolist())]
    assert loss.item() == pytest.approx(sum(-ai + beta * ki for ai, ki in zip(a, k3)) / 3)
    assert kl.item() == pytest.approx(sum(k3) / 3)
    loss.backward()
    # d/dl of -A * exp(l - sg(l)) is -A; of exp(r - l) - (r - l) - 1 it is 1 - exp(r - l)
    expected = [(-ai + beta * (1 - math.exp(r - lp))) / 3 for ai, r, lp in zip(a, ref.tolist(), [-1.0, -2.0, -0.5])]
    assert torch.allclose(logps.grad, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("chunk_size", [0, 2])
def test_token_statistics_match_the_full_logits(chunk_size):
    torch.manual_seed(0)
    hidden = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight, bias = torch.randn(7, 4, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    targets = torch.tensor([0, 3, 6, 2, 2])
    logp, entropy, certainty = token_statistics(hidden, weight, bias, targets, temperature=0.7, chunk_size=chunk_size)
    log_p = torch.log_softmax((hidden @ weight.T + bias) / 0.7, dim=-1)
    assert torch.allclose(logp, log_p[torch.arange(5), targets])
    assert torch.allclose(entropy, -(log_p.exp() * log_p).sum(-1))
    uniform, raw = torch.full_like(log_p, 1 / 7), torch.log_softmax(hidden @ weight.T + bias, dim=-1)
    assert torch.allclose(certainty, (uniform * (uniform.log() - raw)).sum(-1))  # KL(U || p) of the raw logits
    logp.sum().backward()
    grad = hidden.grad.clone()
    hidden.grad = None
    log_p_again = torch.log_softmax((hidden @ weight.T + bias) / 0.7, dim=-1)
    log_p_again[torch.arange(5), targets].sum().backward()
    assert torch.allclose(grad, hidden.grad)
    assert torch.allclose(
        per_answer_mean(entropy, torch.tensor([0, 0, 1, 1, 1]), 3)[2], torch.zeros((), dtype=entropy.dtype)
    )


def test_majority_vote_groups_equal_answers_and_never_elects_none():
    same = NumericChecker().same_answer
    assert majority_vote(["0.5", "1/2", "3", None, None, None], same) == "0.5"  # 1/2 == 0.5: two votes
    assert majority_vote(["4", "5"], same) == "4"  # a tie goes to the answer seen first
    assert majority_vote([None, None], same) is None


def test_ttrl_rewards_read_the_answers_never_the_gold():
    ttrl = METHODS["ttrl"]
    trainer = SimpleNamespace(checker=NumericChecker(), args=SimpleNamespace(num_generations=4))
    answers = ["7", "7.0", "8", None]
    records = [
        {"pred_flexible": answer, "correct_flexible": correct, "majority_answer": "7"}
        for answer, correct in zip(answers, [False, False, True, True])
    ]
    assert ttrl.from_answers(trainer, records).tolist() == [1.0, 1.0, 0.0, 0.0]
    flipped = [{**r, "correct_flexible": not r["correct_flexible"]} for r in records]
    assert ttrl.from_answers(trainer, flipped).tolist() == [1.0, 1.0, 0.0, 0.0]


def test_ttrl_rewards_use_the_recorded_vote_instead_of_voting_again():
    # `_record` votes once per prompt and stores the result on every sample; a label that is not the
    # majority proves the reward reads it rather than counting the answers a second time.
    trainer = SimpleNamespace(checker=NumericChecker(), args=SimpleNamespace(num_generations=4))
    records = [{"pred_flexible": a, "majority_answer": "8"} for a in ["7", "7.0", "8", None]]
    assert METHODS["ttrl"].from_answers(trainer, records).tolist() == [0.0, 0.0, 1.0, 0.0]


# ----------------------------------------------------------------------------------------------------- in the trainer
@pytest.mark.parametrize("method", ["ttrl", "rent", "intuitor"])
def test_sampling_methods_train_lora_only_and_score_k_answers(tmp_path, tokenizer, prompts, gold, method, monkeypatch):
    if method == "rent":  # the tiny model never writes `#### N`: let every answer count as answered
        monkeypatch.setattr(
            type(METHODS["rent"]), "from_answers", lambda self, t, records: torch.ones(len(records)) > 0
        )
    model = make_model(tokenizer)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = make_config(tmp_path, method=method, num_generations=3)
    trainer = ZeroSiamTrainer(model, args, prompts, tokenizer, gold=gold)
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert_only_lora_moved(trainer.model, base, lora_before)
    summary, records = trainer.online_results()
    assert summary["n"] == len(PROBLEMS) and {"avg_at_k", "maj_at_k"} <= set(summary)
    assert all(len(r["sample_answers"]) == 3 and r["samples"] == 3 for r in records)
    cost = trainer.total_cost()
    assert cost["generated_tokens"] >= sum(r["tokens"] for r in records)  # k answers each, the first one recorded
    assert cost["trained_tokens"] > 0
    # each prompt read once by the prefill, then its last token once more per further sample
    assert cost["prefill_tokens"] == sum(len(row["prompt_ids"]) + 2 for row in prompts)
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"reward/mean", "reward/zero_std_share", "collapse/entropy"} <= logged


@pytest.mark.parametrize("method", [m.name for m in METHODS.values() if m.samples and m.online_only])
def test_a_method_rewarding_the_scored_answers_refuses_episodic_in_one_line(tmp_path, method):
    # --episodic answers a batch after its update, so nothing would be scored for the reward to read
    with pytest.raises(ValueError, match=f"--method {method} rewards a batch's answers .* drop --episodic"):
        make_config(tmp_path, method=method, episodic=True)


def test_equal_rewards_leave_lora_unchanged(tmp_path, tokenizer, prompts, gold, monkeypatch):
    rent = METHODS["rent"]
    monkeypatch.setattr(type(rent), "reward", lambda self, stats, pre: torch.ones_like(stats["entropy"]))
    trainer = ZeroSiamTrainer(
        make_model(tokenizer), make_config(tmp_path, method="rent"), prompts, tokenizer, gold=gold
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if p.requires_grad)


def test_the_kl_to_the_base_model_is_zero_at_first_then_grows(tmp_path, tokenizer, prompts, gold):
    args = make_config(tmp_path, method="intuitor", beta=0.5, num_generations=2)
    trainer = ZeroSiamTrainer(make_model(tokenizer), args, prompts, tokenizer, gold=gold)
    trainer.train()
    kl = [entry["loss/kl"] for entry in trainer.state.log_history if "loss/kl" in entry]
    assert kl[0] == pytest.approx(0.0, abs=1e-6)  # LoRA starts at zero: the policy is the base model
    assert max(kl[1:]) > 0


def test_rent_without_any_answer_has_no_signal(tmp_path, tokenizer, prompts, gold):
    trainer = ZeroSiamTrainer(
        make_model(tokenizer), make_config(tmp_path, method="rent"), prompts, tokenizer, gold=gold
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "reward/mean" in entry]
    assert all(entry["reward/mean"] == -7.0 and entry["reward/zero_std_share"] == 1.0 for entry in steps)
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if p.requires_grad)


# ----------------------------------------------------------------------------------------------- TLM, SLOT, EM-INF
def test_tlm_trains_lora_on_prompt_tokens_only(tmp_path, tokenizer, prompts, gold, monkeypatch):
    model = make_model(tokenizer)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = ZeroSiamTrainer(model, make_config(tmp_path, method="tlm"), prompts, tokenizer, gold=gold)
    assert trainer.args.signal == "prompt"
    seen = []
    loss = type(trainer.method).loss
    monkeypatch.setattr(
        type(trainer.method), "loss", lambda self, t, m, inputs: seen.append(inputs) or loss(self, t, m, inputs)
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    prompt_rows = {tuple(row["prompt_ids"]) for row in prompts}
    for inputs in seen:  # the loss saw the prompts alone, left-padded, never an answer
        for ids, mask in zip(inputs["input_ids"], inputs["attention_mask"]):
            assert tuple(ids[mask.bool()].tolist()) in prompt_rows
    assert any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters() if p.requires_grad)
    for name, param in trainer.model.base_model.model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, base[name.replace(".base_layer", "")])
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"loss/nll", "tlm/selected_share", "collapse/entropy"} <= logged


def test_slot_changes_no_parameter_and_answers_each_prompt_with_its_own_delta(tmp_path, tokenizer, prompts, gold):
    trainer = ZeroSiamTrainer(
        make_model(tokenizer), make_config(tmp_path, method="slot"), prompts, tokenizer, gold=gold
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())  # byte-identical
    _, records = trainer.online_results()
    plain = ZeroSiamTrainer(
        make_model(tokenizer), make_config(tmp_path / "none", method="none"), prompts, tokenizer, gold
    )
    plain.train()
    assert [r["completion"] for r in records] != [r["completion"] for r in plain.online_results()[1]]
    # The first prompt answered alone, its delta fitted by hand: the same answer as in its batch of two.
    ids = torch.tensor([prompts[0]["prompt_ids"]])
    with torch.no_grad():
        _, hidden = final_hidden_states(trainer.model, ids, torch.ones_like(ids))
    head = trainer.model.get_output_embeddings()
    delta = optimize_delta(hidden[:, :-1], head.weight, None, ids[:, 1:], torch.ones_like(ids[:, 1:]).bool())
    with add_delta(head, delta):
        alone = generate_batches(trainer.model, [(ids, torch.ones_like(ids))], trainer._generation_config)[0]
    assert tokenizer.decode(alone, skip_special_tokens=True) == records[0]["completion"]
    assert trainer.total_cost()["forward_tokens"] == sum(len(row["prompt_ids"]) for row in prompts)


def test_em_inf_changes_no_parameter_and_optimises_every_decoding_step(
    tmp_path, tokenizer, prompts, gold, monkeypatch
):
    calls = []
    original = EntropyMinimizationLogitsProcessor.__call__
    monkeypatch.setattr(
        EntropyMinimizationLogitsProcessor,
        "__call__",
        lambda self, i, s: calls.append(s.shape) or original(self, i, s),
    )
    trainer = ZeroSiamTrainer(
        make_model(tokenizer), make_config(tmp_path, method="em_inf"), prompts, tokenizer, gold=gold
    )
    assert trainer._generation_config.do_sample and trainer._generation_config.temperature == 0.1  # EM_PT's
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    assert all(torch.equal(before[n], p) for n, p in trainer.model.named_parameters())  # byte-identical
    _, records = trainer.online_results()
    # one call per decoding step of each batch of two: as many as the longest answer of the batch
    longest = [max(r["tokens"] for r in records[i : i + 2]) for i in range(0, len(records), 2)]
    assert len(calls) == sum(longest) and all(shape[0] == 2 for shape in calls)


@pytest.mark.parametrize("method", ["em_ft", "tlm", "slot", "em_inf", "ttrl", "rent", "intuitor"])
def test_resume_from_a_checkpoint_ends_like_the_uninterrupted_run(tmp_path, tokenizer, prompts, gold, method):
    settings = {"method": method, "save_steps": 1, "save_total_limit": None}
    whole = ZeroSiamTrainer(make_model(tokenizer), make_config(tmp_path, **settings), prompts, tokenizer, gold=gold)
    whole.train()
    resumed = ZeroSiamTrainer(make_model(tokenizer), make_config(tmp_path, **settings), prompts, tokenizer, gold=gold)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-1"))
    assert resumed.online_results() == whole.online_results()  # sampled answers too: the RNG state is restored
    assert all(torch.equal(p, dict(whole.model.named_parameters())[n]) for n, p in resumed.model.named_parameters())
    assert resumed.total_cost() == whole.total_cost()


def test_a_decoding_method_reloads_from_its_saved_settings(tmp_path, tokenizer, prompts, gold):
    args = make_config(tmp_path, method="slot", slot_steps=2)
    trainer = ZeroSiamTrainer(make_model(tokenizer), args, prompts, tokenizer, gold=gold)
    trainer.train()
    trainer.save_model(str(tmp_path / "saved"))
    settings = json.loads((tmp_path / "saved" / METHOD_FILE).read_text())
    method, options = METHODS[settings["method"]], settings["options"]
    assert method.name == "slot" and options == {"slot_steps": 2, "slot_lr": 0.1}
    ids = torch.tensor([prompts[0]["prompt_ids"]])
    model = make_model(tokenizer)  # the base: SLOT changed no weight
    run = SimpleNamespace(args=SimpleNamespace(**options), head_transform=head_transform(model.config))
    context, processors = method.decoding(run, model, ids, torch.ones_like(ids))
    with context:
        answer = generate_batches(model, [(ids, torch.ones_like(ids))], trainer._generation_config)[0]
    assert tokenizer.decode(answer, skip_special_tokens=True) == trainer.online_results()[1][0]["completion"]
