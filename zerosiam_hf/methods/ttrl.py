"""TTRL (PRIME-RL/TTRL): GRPO whose reward is agreement with the majority-voted answer of the k samples.

Matched to `test_time_train_metrics` in verl/verl/utils/reward_score/ttrl/ttt_metrics.py and the reward it calls
(`qwen_reward_fn` in ttrl/qwen/qwen_eval.py): the label is `Counter(extracted answers).most_common(1)`, so ties go to
the answer seen first, and each sample gets 1.0 if `grade_answer(its answer, label)` holds, else 0.0. TTRL counts
votes by exact (normalised) string and only the reward uses math equivalence; here the benchmark's checker does both,
so 1/2 and 0.5 are one vote. TTRL's extractor returns "" for a response without an answer, and "" can win its vote;
here a missing answer is None, never wins and is never rewarded.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .grpo import SamplingMethod, SamplingOptions


@dataclass
class TTRLOptions(SamplingOptions):
    beta: float = SamplingOptions.redefault("beta", 0.001)


def vote_rewards(answers: Sequence[str | None], label: str | None, same: Callable[[str, str], bool]) -> list[float]:
    """TTRL's reward per sample: 1.0 if its answer agrees with `label`, the group's majority answer, under `same`,
    else 0.0."""
    if label is None:
        return [0.0] * len(answers)
    return [1.0 if answer is not None and (answer == label or same(label, answer)) else 0.0 for answer in answers]


class TTRL(SamplingMethod):
    name = "ttrl"
    help = "GRPO on k sampled answers, reward 1 for agreeing with their majority answer"
    online_only = True  # the vote reads the answers as the online protocol extracts them
    options_class = TTRLOptions

    def from_answers(self, trainer, records):
        num_generations = trainer.args.num_generations
        # The trainer's record of the batch already holds each group's vote (`majority_answer`, the extracted answers
        # voting through the benchmark's checker), so the vote runs once; the gold-based fields are never read.
        rewards = []
        for start in range(0, len(records), num_generations):
            group = records[start : start + num_generations]
            answers = [record["pred_flexible"] for record in group]
            rewards += vote_rewards(answers, group[0]["majority_answer"], trainer.checker.same_answer)
        return torch.tensor(rewards)

    def reward(self, stats, from_answers):
        return from_answers
