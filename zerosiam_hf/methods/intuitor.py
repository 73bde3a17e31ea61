"""Intuitor (sunblaze-ucb/Intuitor): GRPO whose reward is the model's self-certainty on its own response.

Matched to `_get_per_token_self_certainty` and `_get_advantage_from_sce` in
open-r1-intuitor/src/open_r1/intuitor_trainer.py: per token logsumexp(z) - mean(z) over the vocabulary, which is
KL(U || p) + log V (Intuitor keeps the constant log V: it cancels in the group normalisation), averaged over the
completion tokens; a row with no completion token gets 0. Intuitor uses raw logits (no temperature) in the model's
dtype; here at least fp32. Intuitor reads the logits at the completion positions themselves (the last L of the full
sequence), one position later than the logits that predict the completion tokens; the caller picks the positions.
"""

import torch


def self_certainty(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Intuitor's self-certainty [N]: mean over masked positions of logsumexp(z) - mean(z), in at least fp32.

    Args:
        logits: [N, T, V] raw logits.
        mask: [N, T] bool, the response positions.
    """
    if logits.dim() != 3 or mask.shape != logits.shape[:2]:
        raise ValueError(
            f"self_certainty needs logits [N, T, V] and mask [N, T]; got {tuple(logits.shape)}, {tuple(mask.shape)}"
        )
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    z = logits.to(dtype)
    per_token = torch.logsumexp(z, dim=-1) - z.mean(dim=-1)
    total = torch.where(mask, per_token, torch.zeros_like(per_token)).sum(-1)
    return total / mask.sum(-1).clamp(min=1)
