"""RENT (satrams/rent-rl): GRPO whose reward is minus the mean token entropy of the response.

Matched to `RayPPOTrainer.fit` in verl/trainer/ppo/ray_trainer.py (the `minimize_entropy` branch, ~L1005-1050) and
`entropy_from_logits` in verl/utils/torch_functional.py: the entropy of softmax(logits / rollout temperature) per
response token, averaged over the response's tokens; with `base_format` on (the README's command) a response whose
answer cannot be extracted gets the constant entropy `entropy_base` = 7.0 instead, so reward -7. Here "extracted" is
the benchmark's strict form (the last \\boxed{} for math, `#### N` for GSM8K), the form the prompt asks for.
"""

from dataclasses import dataclass

import torch

from .grpo import SamplingMethod, SamplingOptions


NO_ANSWER_ENTROPY = 7.0  # RENT's entropy_base


@dataclass
class RentOptions(SamplingOptions):
    beta: float = SamplingOptions.redefault("beta", 0.001)


class Rent(SamplingMethod):
    name = "rent"
    help = "GRPO on k sampled answers, reward minus the answer's mean token entropy (-7 without an answer)"
    online_only = True  # the no-answer penalty reads the answers as the online protocol extracts them
    options_class = RentOptions

    def from_answers(self, trainer, records):
        # whether each sample has an answer in the asked-for form; gold-based fields are never read
        return torch.tensor([record["pred_strict"] is not None for record in records])

    def reward(self, stats, from_answers):
        has_answer = from_answers.to(stats["entropy"].device)
        return torch.where(has_answer, -stats["entropy"], torch.full_like(stats["entropy"], -NO_ANSWER_ENTROPY))
