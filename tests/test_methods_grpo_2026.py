"""EMPO and URLVR's intrinsic rewards (GRPO): each reward and the loss it drives against formulas written out here,
what they read in the answers, which parameters move, their diagnostics and costs, and resume."""

import math
from types import SimpleNamespace

import pytest
import torch
from helpers import PROBLEMS, assert_all_equal, assert_only_lora_moved, make_config, make_model, step_logs, trainable

from zerosiam_hf import ZeroSiamTrainer
from zerosiam_hf.checkers import NumericChecker
from zerosiam_hf.methods import METHODS
from zerosiam_hf.methods.empo import empo_rewards
from zerosiam_hf.scoring import semantic_clusters


class EverySame(NumericChecker):
    """Scores as GSM8K's checker does, but calls any two answers the same: the tiny model's few numbers, all
    different, then form one semantic cluster, so that EMPO has a signal to train on."""

    def same_answer(self, a: str, b: str) -> bool:
        return True


def formula_entropy(shares: list[float]) -> float:
    return -sum(p * math.log(p) for p in shares)


# ----------------------------------------------------------------------------------------------------- EMPO's reward
def test_empo_clusters_by_the_checker_and_a_missing_answer_is_alone():
    same = NumericChecker().same_answer
    assert semantic_clusters(["7", "7.0", "8", None, "8", None], same) == [0, 0, 1, 2, 1, 3]
    assert semantic_clusters([None, None], same) == [0, 1]


def test_empo_reward_is_the_share_of_its_cluster_by_hand():
    same = NumericChecker().same_answer
    rewards, entropy = empo_rewards(["7", "7.0", "8", None, "7"], same)  # clusters {7, 7.0, 7}, {8}, {None}
    assert rewards == [3 / 5, 3 / 5, 1 / 5, 0.0, 3 / 5]
    assert entropy == pytest.approx(formula_entropy([3 / 5, 1 / 5, 1 / 5]))
    assert entropy < math.log(5)


@pytest.mark.parametrize("answers", [["1", "2", "3", "4"], ["1", None, None, "2"], [None, None, None, None]])
def test_empo_withholds_every_reward_when_all_answers_differ(answers):
    rewards, entropy = empo_rewards(answers, NumericChecker().same_answer)
    assert rewards == [0.0] * 4
    assert entropy == pytest.approx(math.log(4))  # every cluster one answer: H = log k, not below it


def test_empo_reads_the_extracted_answers_only_and_logs_the_semantic_entropy():
    logged = {}
    trainer = SimpleNamespace(
        checker=NumericChecker(), args=SimpleNamespace(num_generations=3), log_metrics_step=logged.update
    )
    # the label-free fields only (`methods.base.LABEL_FREE_FIELDS`): reading a gold-based field would fail here
    records = [{"index": 0, "pred_flexible": a, "pred_strict": None} for a in ["4", "4", None, "1", "2", "3"]]
    assert METHODS["empo"].from_answers(trainer, records).tolist() == pytest.approx([2 / 3, 2 / 3, 0, 0, 0, 0])
    entropies = [formula_entropy([2 / 3, 1 / 3]), math.log(3)]
    assert logged["reward/semantic_entropy"].item() == pytest.approx(sum(entropies) / 2)
    assert logged["reward/withheld_share"].item() == 0.5


# ---------------------------------------------------------------------------------- the loss each reward drives
def softmax_rows(z: torch.Tensor) -> torch.Tensor:
    e = torch.exp(z - z.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def hand_case(seed=0, rows=4, length=5, d=3, vocab=6):
    """fp64 hidden states [rows, length, d], an LM head, token ids and the mask of the positions predicting answer
    tokens (answers of 3, 2, 1 and 3 tokens after a one-token prompt)."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, length, d, generator=gen, dtype=torch.float64)
    weight = 2.0 * torch.randn(vocab, d, generator=gen, dtype=torch.float64)
    bias = torch.randn(vocab, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, vocab, (rows, length), generator=gen)
    mask = torch.zeros(rows, length, dtype=torch.bool)
    for row, answer in enumerate([3, 2, 1, 3]):
        mask[row, : answer + 1][:-1] = True  # positions 0 .. answer - 1 predict tokens 1 .. answer
    return hidden, weight, bias, ids, mask


def formula_statistics(hidden, weight, bias, ids, mask, temperature):
    """Per answer: mean token entropy, mean self-certainty KL(U || p) of the raw logits, mean and sum of the sampled
    tokens' log-probabilities at the temperature; written out token by token."""
    stats = {"entropy": [], "certainty": [], "logp": [], "logp_sum": []}
    vocab = weight.shape[0]
    for row in range(hidden.shape[0]):
        entropy, certainty, logp = [], [], []
        for t in range(hidden.shape[1]):
            if not mask[row, t]:
                continue
            z = hidden[row, t] @ weight.T + bias
            p, raw = softmax_rows(z / temperature), softmax_rows(z)
            entropy.append(float(-(p * p.log()).sum()))
            certainty.append(float(sum((1 / vocab) * (math.log(1 / vocab) - math.log(q)) for q in raw.tolist())))
            logp.append(math.log(float(p[ids[row, t + 1]])))
        for key, values in zip(("entropy", "certainty", "logp"), (entropy, certainty, logp)):
            stats[key].append(sum(values) / len(values))
        stats["logp_sum"].append(sum(logp))
    return stats


def formula_grpo_loss(rewards: list[float], mask, k: int) -> float:
    """-mean over answer tokens of the answer's advantage (r - group mean) / (unbiased group std + 1e-4)."""
    advantages = []
    for start in range(0, len(rewards), k):
        group = rewards[start : start + k]
        mean = sum(group) / k
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (k - 1))
        advantages += [(r - mean) / (std + 1e-4) for r in group]
    per_token = [-advantages[row] for row in range(mask.shape[0]) for _ in range(int(mask[row].sum()))]
    return sum(per_token) / len(per_token)


def run_loss(method: str, case, rewards=None, **options):
    hidden, weight, bias, ids, mask = case
    logged = {}
    args = SimpleNamespace(sampling_temperature=0.7, loss_chunk_size=0, num_generations=2, beta=0.0, **options)
    trainer = SimpleNamespace(
        args=args,
        head_input=lambda model, inputs: hidden,
        lm_head=SimpleNamespace(weight=weight, bias=bias),
        head_transform={},
        log_metrics_step=logged.update,
    )
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": mask}
    if rewards is not None:
        inputs["rewards"] = rewards
    return METHODS[method].loss(trainer, None, inputs), logged


FORMULA_REWARDS = {
    "token_entropy": lambda s: [-h for h in s["entropy"]],
    "trajectory_entropy": lambda s: s["logp"],
    "probability": lambda s: [math.exp(total) for total in s["logp_sum"]],
    "self_certainty": lambda s: s["certainty"],
}


@pytest.mark.parametrize("intrinsic_reward", list(FORMULA_REWARDS))
def test_urlvr_loss_follows_each_intrinsic_reward_by_hand(intrinsic_reward):
    case = hand_case()
    stats = formula_statistics(*case, temperature=0.7)
    rewards = FORMULA_REWARDS[intrinsic_reward](stats)
    assert rewards[0] != rewards[1] and rewards[2] != rewards[3]  # a signal in both groups
    loss, logged = run_loss("urlvr", case, intrinsic_reward=intrinsic_reward)
    assert logged["reward/mean"].item() == pytest.approx(sum(rewards) / 4)
    assert loss.item() == pytest.approx(formula_grpo_loss(rewards, case[4], k=2), rel=1e-5)  # advantages in fp32


@pytest.mark.parametrize("method, options", [("urlvr", {"intrinsic_reward": "majority"}), ("empo", {})])
def test_the_answer_based_rewards_drive_the_loss_by_hand(method, options):
    case = hand_case(seed=1)
    rewards = [1.0, 0.0, 0.5, 0.25]  # what `from_answers` read: TTRL's votes or EMPO's shares
    loss, logged = run_loss(method, case, torch.tensor(rewards), **options)
    assert logged["reward/mean"].item() == pytest.approx(sum(rewards) / 4)
    assert loss.item() == pytest.approx(formula_grpo_loss(rewards, case[4], k=2), rel=1e-5)  # advantages in fp32


def test_urlvr_votes_as_ttrl_and_reads_no_answer_for_the_other_rewards():
    records = [{"index": 0, "pred_flexible": a, "majority_answer": "7"} for a in ["7", "7.0", "8", None]]
    trainer = SimpleNamespace(checker=NumericChecker(), args=SimpleNamespace(num_generations=4))
    trainer.args.intrinsic_reward = "majority"
    votes = METHODS["urlvr"].from_answers(trainer, records)
    assert votes.tolist() == METHODS["ttrl"].from_answers(trainer, records).tolist() == [1.0, 1.0, 0.0, 0.0]
    trainer.args.intrinsic_reward = "probability"
    assert METHODS["urlvr"].from_answers(trainer, records) is None


def test_an_unknown_intrinsic_reward_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="--intrinsic_reward must be one of token_entropy, trajectory_entropy"):
        make_config(tmp_path, method="urlvr", intrinsic_reward="self_verify")


# ----------------------------------------------------------------------------------------------------- in the trainer
TRAINER_CASES = [
    ("empo", {}),
    ("urlvr", {"intrinsic_reward": "token_entropy"}),
    ("urlvr", {"intrinsic_reward": "trajectory_entropy"}),
    ("urlvr", {"intrinsic_reward": "majority"}),
]


@pytest.mark.parametrize("method, options", TRAINER_CASES)
def test_they_train_lora_only_and_log_collapse_diagnostics(tmp_path, tokenizer, prompts, gold, method, options):
    model = make_model(tokenizer)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = make_config(tmp_path, method=method, num_generations=3, **options)
    trainer = ZeroSiamTrainer(model, args, prompts, tokenizer, gold=gold, checker=EverySame())
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    assert_only_lora_moved(trainer.model, base, lora_before)
    summary, records = trainer.online_results()
    assert summary["n"] == len(PROBLEMS) and all(r["samples"] == 3 for r in records)
    cost = trainer.total_cost()  # no forward beyond GRPO's own: the rewards are read from the loss's statistics
    assert cost["prefill_tokens"] == sum(len(row["prompt_ids"]) + 2 for row in prompts)
    assert cost["generated_tokens"] >= sum(r["tokens"] for r in records) and cost["forward_tokens"] == 0
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"reward/mean", "reward/zero_std_share", "collapse/entropy"} <= logged
    if method == "empo":
        assert {"reward/semantic_entropy", "reward/withheld_share"} <= logged


def test_the_collapse_guard_watches_them(tmp_path, tokenizer, prompts, gold):
    # a floor above any entropy the tiny model has: every step reads as collapse, and the guard restores the start
    args = make_config(tmp_path, method="empo", num_generations=3, collapse_guard=True, collapse_min_entropy=100.0)
    trainer = ZeroSiamTrainer(make_model(tokenizer), args, prompts, tokenizer, gold=gold, checker=EverySame())
    before = trainable(trainer.model)
    trainer.train()
    assert [entry["guard/resets"] for entry in step_logs(trainer)] == [1, 2, 3]
    assert_all_equal(before, trainable(trainer.model))


@pytest.mark.parametrize(
    "method, options", [("empo", {}), ("urlvr", {"intrinsic_reward": "probability"}), TRAINER_CASES[3]]
)
def test_resume_from_a_checkpoint_ends_like_the_uninterrupted_run(tmp_path, tokenizer, prompts, gold, method, options):
    settings = {"method": method, "save_steps": 1, "save_total_limit": None, **options}

    def run(resume=None):
        args = make_config(tmp_path, **settings)
        trainer = ZeroSiamTrainer(make_model(tokenizer), args, prompts, tokenizer, gold=gold, checker=EverySame())
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    whole = run()
    resumed = run(str(tmp_path / "run" / "checkpoint-1"))
    assert resumed.online_results() == whole.online_results()  # sampled answers too: the RNG state is restored
    assert all(torch.equal(p, dict(whole.model.named_parameters())[n]) for n, p in resumed.model.named_parameters())
    assert resumed.total_cost() == whole.total_cost()
