"""RENT (satrams/rent-rl): GRPO whose reward is minus the mean token entropy of the response.

Matched to `RayPPOTrainer.fit` in verl/trainer/ppo/ray_trainer.py (the `minimize_entropy` branch, ~L1005-1050) and
`entropy_from_logits` in verl/utils/torch_functional.py: the entropy of softmax(logits / rollout temperature) per
response token (temperature 1.0 in the published runs, so the caller divides if it differs), averaged over the
response's valid tokens; with `base_format` on (the README's command) a response whose last \\boxed{} cannot be
extracted gets the constant entropy `entropy_base` = 7.0 instead, so reward -7.
"""

import torch


def entropy_reward(
    logits: torch.Tensor, mask: torch.Tensor, has_answer: torch.Tensor | None = None, no_answer_entropy: float = 7.0
) -> torch.Tensor:
    """RENT's reward [N]: minus the mean token entropy of each response; -no_answer_entropy where has_answer is False.

    Args:
        logits: [N, T, V] logits of the response positions (divided by the sampling temperature if not 1).
        mask: [N, T] bool, the response tokens.
        has_answer: [N] bool, whether an answer could be extracted; None treats every response as answered.
        no_answer_entropy: RENT's `entropy_base`.
    """
    if logits.dim() != 3 or mask.shape != logits.shape[:2]:
        raise ValueError(
            f"entropy_reward needs logits [N, T, V] and mask [N, T]; got {tuple(logits.shape)}, {tuple(mask.shape)}"
        )
    if has_answer is None:
        has_answer = torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device)
    if has_answer.shape != mask.shape[:1]:
        raise ValueError(f"entropy_reward: has_answer must be [N] = [{mask.shape[0]}]; got {tuple(has_answer.shape)}")
    counts = mask.sum(-1)
    empty = (counts == 0) & has_answer
    if bool(empty.any()):
        row = int(empty.nonzero()[0])
        raise ValueError(f"entropy_reward: row {row} has no response token but has_answer is True for it")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(dtype)
    token_entropy = torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1)
    mean_entropy = torch.where(mask, token_entropy, torch.zeros_like(token_entropy)).sum(-1) / counts.clamp(min=1)
    fallback = torch.full_like(mean_entropy, no_answer_entropy)
    return -torch.where(has_answer, mean_entropy, fallback)
