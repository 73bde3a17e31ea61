"""Gold GRPO: an oracle, not a test-time method. GRPO on k sampled answers rewarded 1 when the answer is right by the
gold answer, the ceiling the label-free rewards are read against.

TTRL's paper reports this run as "RL (leakage)" and the URLVR study as the ground-truth reward beside the intrinsic
ones: the same GRPO as the label-free methods, the reward read from the labels. Here it is the sampling methods' GRPO
(`methods/grpo.py`) at TTRL's settings, rewarded by the flexible check, the one the tables report. It is never a
default; a comparison takes it only with `--oracle true` and marks its rows.
"""

from dataclasses import dataclass

import torch

from .grpo import SamplingMethod, SamplingOptions


@dataclass
class GoldGRPOOptions(SamplingOptions):
    beta: float = SamplingOptions.redefault("beta", 0.001)


class GoldGRPO(SamplingMethod):
    name = "gold_grpo"
    help = "ORACLE: GRPO on k sampled answers, reward 1 for an answer the gold calls right (reads the labels)"
    online_only = True  # the reward is the online protocol's score of each answer
    reads_gold = True
    options_class = GoldGRPOOptions

    def from_answers(self, trainer, records):
        return torch.tensor([float(record["correct_flexible"]) for record in records])

    def reward(self, stats, from_answers):
        return from_answers
