"""Intuitor (sunblaze-ucb/Intuitor): GRPO whose reward is the model's self-certainty on its own response.

Matched to `_get_per_token_self_certainty` and `_get_advantage_from_sce` in
open-r1-intuitor/src/open_r1/intuitor_trainer.py: per token KL(U || p) of the raw logits (no temperature; Intuitor
computes logsumexp(z) - mean(z), the same up to the constant log V, which the group normalisation removes), averaged
over the response tokens. Intuitor reads the logits at the response tokens' own positions, one later than those that
predict them; here the predicting positions, the ones the log-probabilities use (see docs/METHODS.md).
"""

from dataclasses import dataclass

from .grpo import SamplingMethod, SamplingOptions


@dataclass
class IntuitorOptions(SamplingOptions):
    sampling_temperature: float = SamplingOptions.redefault("sampling_temperature", 0.9)
    beta: float = SamplingOptions.redefault("beta", 0.005)


class Intuitor(SamplingMethod):
    name = "intuitor"
    help = "GRPO on k sampled answers, reward the answer's self-certainty (mean KL(uniform || p))"
    options_class = IntuitorOptions

    def reward(self, stats, from_answers):
        return stats["certainty"]
