"""Intuitor: GRPO with self-certainty, the mean over the answer's tokens of KL(uniform || p), as the reward."""

from .grpo import SamplingMethod


class Intuitor(SamplingMethod):
    name = "intuitor"
    help = "GRPO on k sampled answers, reward the answer's self-certainty (mean KL(uniform || p))"

    def reward(self, stats, precomputed):
        return stats["certainty"]
