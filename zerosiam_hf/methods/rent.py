"""RENT: GRPO with the negative entropy of the model's own answer as the reward."""

from .grpo import SamplingMethod


class Rent(SamplingMethod):
    name = "rent"
    help = "GRPO on k sampled answers, reward minus the answer's mean token entropy"

    def reward(self, stats, precomputed):
        return -stats["entropy"]
