"""Collapse diagnostics: pure functions of token ids and texts, computed beside the loss."""

from collections import Counter

import torch

from .scoring import extract_flexible


def top_token_dominance(top1: torch.Tensor) -> torch.Tensor:
    """Share of positions whose argmax token is the most common argmax token of the batch ([N] long -> scalar)."""
    if top1.numel() == 0:
        return torch.zeros((), device=top1.device)
    counts = torch.bincount(top1.flatten())
    return counts.max().float() / top1.numel()


def ends_in_loop(token_ids: list[int], min_repeats: int = 4, max_period: int = 32) -> bool:
    """Whether a sequence ends with one block of at most `max_period` tokens repeated `min_repeats` times or more."""
    for period in range(1, max_period + 1):
        span = period * min_repeats
        if len(token_ids) < span:
            break
        tail = token_ids[-span:]
        if all(tail[i] == tail[i % period] for i in range(span)):
            return True
    return False


def answer_diagnostics(texts: list[str], completions: list[list[int]]) -> dict:
    """Share of degenerate answers (no number, or a token loop), share of distinct final answers, mean length."""
    if not texts:
        return {}
    finals = [extract_flexible(text) for text in texts]
    degenerate = [final is None or ends_in_loop(ids) for final, ids in zip(finals, completions)]
    return {
        "answers/degenerate": sum(degenerate) / len(texts),
        "answers/distinct": len(Counter(finals)) / len(texts),
        "answers/length": sum(len(ids) for ids in completions) / len(texts),
    }
