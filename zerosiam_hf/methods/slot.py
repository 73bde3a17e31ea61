"""SLOT (maple-research-lab/SLOT): one vector delta added to the last hidden states, fitted to the prompt.

Matched to the "SLOT begin here" block of `Qwen2ForCausalLM.forward` in modeling_qwen2_slot.py: delta starts at zero
(shape [1, 1, d], in the hidden states' dtype), AdamW(lr, weight_decay=1e-8, eps=1e-5, default betas) takes `times`
steps (run.sh and the README: 5 steps, lr 0.1) on the mean next-token cross-entropy of the prompt with logits
lm_head(H + delta), no scheduler; the backbone runs once (H is fixed) and delta is then added to every hidden state
the LM head reads while that prompt's answer is generated. SLOT runs one prompt at a time; here each prompt of a batch
gets its own row of delta, and the loss is the sum over prompts of each prompt's mean cross-entropy, so (AdamW being
elementwise) each row moves exactly as it would if optimised alone.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..losses import head_logits
from .base import Method, Options, final_hidden_states, option


# The largest --slot_lr taken, refused above rather than warned of, since no answer past it is worth scoring: each
# AdamW step moves every entry of delta by up to lr (5 steps at lr 1 reach about 5), and the final-norm hidden states
# it is added to have entries of order 1, so past 1 the delta, not the prompt, picks the answer; at 1e30 Adam's
# moments overflow and every logit is NaN (answers of token 0, `!!!!`). SLOT uses 0.1.
MAX_LR = 1.0


def optimize_delta(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    lm_head_bias: torch.Tensor | None,
    labels: torch.Tensor,
    mask: torch.Tensor,
    steps: int = 5,
    lr: float = 0.1,
    weight_decay: float = 1e-8,
    eps: float = 1e-5,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """SLOT's per-prompt delta [B, 1, d] after `steps` AdamW steps on each prompt's mean cross-entropy.

    Args:
        hidden: [B, T, d] last hidden states (the LM head's input); treated as constants.
        lm_head_weight: [V, d] LM head weight (frozen; no gradient reaches it).
        lm_head_bias: [V] LM head bias, or None.
        labels: [B, T] next-token ids; `lm_head(hidden[:, t])` predicts `labels[:, t]`.
        mask: [B, T] bool, the positions whose cross-entropy counts (SLOT: every prompt token after the first).
        steps, lr, weight_decay, eps: AdamW's settings as SLOT sets them.
        logit_scale, softcap: the model's own transform of its head's output (`losses.head_transform`).
    """
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2] or mask.shape != labels.shape:
        raise ValueError(
            f"optimize_delta needs hidden [B, T, d] with labels and mask [B, T]; got hidden {tuple(hidden.shape)}, "
            f"labels {tuple(labels.shape)}, mask {tuple(mask.shape)}"
        )
    if steps < 0 or lr <= 0:
        raise ValueError(f"optimize_delta needs steps >= 0 and lr > 0; got steps={steps}, lr={lr}")
    counts = mask.sum(-1)
    if bool((counts == 0).any()):
        row = int((counts == 0).nonzero()[0])
        raise ValueError(f"optimize_delta: mask selects no position in row {row}; each prompt needs 2+ tokens")
    # generate() may run under inference_mode: build a fresh graph outside it
    with torch.inference_mode(False), torch.enable_grad():
        hidden = hidden.detach().clone()
        weight = lm_head_weight.detach().clone()
        bias = None if lm_head_bias is None else lm_head_bias.detach().clone()
        labels = torch.where(mask, labels, torch.zeros_like(labels)).clone()
        mask = mask.clone()
        counts = counts.clone()
        delta = torch.zeros(hidden.shape[0], 1, hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        delta.requires_grad_(True)
        optimizer = torch.optim.AdamW([delta], lr=lr, weight_decay=weight_decay, eps=eps)
        for _ in range(steps):
            optimizer.zero_grad()
            logits = head_logits(hidden + delta, weight, bias, logit_scale=logit_scale, softcap=softcap)
            # cross-entropy in at least fp32 (SLOT takes it in the model's dtype, bf16 in its runs)
            stats_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
            token_ce = F.cross_entropy(logits.to(stats_dtype).transpose(1, 2), labels, reduction="none")
            per_prompt = torch.where(mask, token_ce, torch.zeros_like(token_ce)).sum(-1) / counts
            per_prompt.sum().backward()
            optimizer.step()
    return delta.detach()


@contextmanager
def add_delta(lm_head: nn.Module, delta: torch.Tensor) -> Iterator[None]:
    """Add `delta` [B, 1, d] to the input of `lm_head` (prefill [B, T, d] and decoding [B, 1, d]) inside the block."""
    if delta.dim() != 3 or delta.shape[1] != 1:
        raise ValueError(f"add_delta needs delta of shape [B, 1, d]; got {tuple(delta.shape)}")

    def hook(module: nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        if hidden.dim() != 3 or hidden.shape[0] != delta.shape[0] or hidden.shape[-1] != delta.shape[-1]:
            raise ValueError(
                f"add_delta: the LM head got input {tuple(hidden.shape)} but delta is {tuple(delta.shape)}; "
                "use one delta row per sequence (expand it for num_return_sequences)"
            )
        return (hidden + delta.to(device=hidden.device, dtype=hidden.dtype), *args[1:])

    handle = lm_head.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class SLOTOptions(Options):
    slot_steps: int = option(5, "optimizer steps on each prompt's delta before it is answered", positive=True)
    slot_lr: float = option(0.1, "learning rate of the delta", positive=True)

    def __post_init__(self):
        super().__post_init__()
        if self.slot_lr > MAX_LR:
            raise ValueError(
                f"--slot_lr must be at most {MAX_LR}, got {self.slot_lr}: each step moves every entry of the delta by "
                "up to slot_lr, and past 1 it outweighs the hidden states it is added to (SLOT uses 0.1)."
            )


class SLOT(Method):
    name = "slot"
    help = "SLOT: a per-prompt vector added before the LM head, fitted to the prompt, used for its answer"
    trains = "delta"
    signals = ()
    resets = "prompt"
    online_only = True
    forwards_prompt = True
    # continuous batching packs every answer's tokens into one row, where a per-row delta has no row to go to
    needs_static_generation = "adds a per-prompt delta to the hidden states of each batch row"
    options_class = SLOTOptions

    def decoding(self, trainer, model, prompt_ids, prompt_mask):
        with torch.no_grad():
            _, hidden = final_hidden_states(model, prompt_ids, prompt_mask)
        head = model.get_output_embeddings()
        real = prompt_mask.bool()
        delta = optimize_delta(
            hidden[:, :-1],
            head.weight,
            head.bias,
            prompt_ids[:, 1:],
            real[:, :-1] & real[:, 1:],
            steps=trainer.args.slot_steps,
            lr=trainer.args.slot_lr,
            **trainer.head_transform,
        )
        return add_delta(head, delta), []
