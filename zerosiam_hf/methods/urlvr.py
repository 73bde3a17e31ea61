"""URLVR's intrinsic rewards (PRIME-RL/TTRL, branch urlvr-dev, "How Far Can Unsupervised RLVR Scale LLM Training?"):
GRPO rewarded by one of the model's own signals, chosen by `--intrinsic_reward`, every choice under the same settings
so that a comparison differs in the reward alone.

Matched to `compute_certainty_reward` in verl/verl/trainer/ppo/ttrl_utils.py (the certainty family: statistics of
the response tokens under the rollout temperature, a masked mean or sum per response) and the ensemble family of
verl/verl/trainer/ppo/ray_trainer.py (`apply_ttrl_gt`, the majority vote):

- token_entropy: minus the mean token entropy, RENT's reward without RENT's -7 for an answer that cannot be extracted
  (URLVR has none);
- trajectory_entropy: the mean log-probability of the sampled tokens, (1/|y|) log p(y|x), minus the per-token
  estimate of the trajectory's entropy;
- probability: p(y|x) = exp(sum_t log p(y_t)), the answer's likelihood;
- self_certainty: Intuitor's reward, the mean KL(U || p) of the answer's tokens;
- majority: TTRL's reward, 1 for agreeing with the majority-voted answer (its vote, reused).

URLVR's external self-verification (the policy grades its own answer from a judging prompt, `apply_self_verify`) is
not built: a 135M model's verdicts on its own answers would be close to chance (a judgement, not measured), so that
reward would be noise.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from .base import option
from .grpo import SamplingMethod, SamplingOptions
from .ttrl import TTRL


# Each reward from the per-answer statistics of `SamplingMethod.loss` and, for the vote, what `from_answers` read.
INTRINSIC_REWARDS: dict[str, Callable[[dict, torch.Tensor | None], torch.Tensor]] = {
    "token_entropy": lambda stats, votes: -stats["entropy"],
    "trajectory_entropy": lambda stats, votes: stats["logp"],
    "probability": lambda stats, votes: stats["logp_sum"].exp(),
    "self_certainty": lambda stats, votes: stats["certainty"],
    "majority": lambda stats, votes: votes,
}


@dataclass
class URLVROptions(SamplingOptions):
    intrinsic_reward: Literal[tuple(INTRINSIC_REWARDS)] = option(
        "token_entropy",
        "URLVR's reward: token_entropy (minus the mean token entropy), trajectory_entropy (the mean token "
        "log-probability), probability (the answer's likelihood), self_certainty (Intuitor's), majority (TTRL's vote)",
    )


class URLVR(SamplingMethod):
    name = "urlvr"
    help = "GRPO on k sampled answers, reward one of URLVR's intrinsic signals (--intrinsic_reward)"
    online_only = True  # the majority vote reads the answers as the online protocol extracts them
    options_class = URLVROptions

    def from_answers(self, trainer, records):
        return TTRL().from_answers(trainer, records) if trainer.args.intrinsic_reward == "majority" else None

    def batch_rewards(self, args, stats, from_answers):
        return INTRINSIC_REWARDS[args.intrinsic_reward](stats, from_answers)
