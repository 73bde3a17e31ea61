"""TLM (test-time learning, Fhujinwu/TLM): perplexity minimisation on the prompt, weighted towards hard prompts.

Matched to `CustomSeq2SeqTrainer.compute_loss` (online and offline settings), `cal_ce` and `cal_kl` in
src/llamafactory/train/ttl/trainer.py. A sample counts when its mean NLL is above `threshold` (per sample, strict
`>`), and then with the detached weight `weight * exp(nll - threshold)`; the loss is the sum of the weighted NLLs
divided by the number of selected samples. TLM's `cal_kl` (a batch-mean KL to the one-hot label) equals the mean NLL,
so the NLL is used directly. In the online setting the selection NLL comes from the model being trained (as here);
in the offline setting it comes from the frozen base model: pass that model's logits to select there if needed.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..losses import entropy_from_logits, head_logits
from .base import Method, Options, option


def tlm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    threshold: float = 3.0,
    weight: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TLM's weighted prompt NLL: (loss [], per-sample mean NLL [B] detached, selected [B] bool).

    Args:
        logits: [B, T, V]; `logits[:, t]` predicts `labels[:, t]`.
        labels: [B, T] next-token ids (any value where `mask` is false, e.g. -100).
        mask: [B, T] bool, the positions that count (TLM: every prompt token after the first).
        threshold: P0, the log-perplexity above which a sample is learned from.
        weight: lambda, the scale of the sample weight lambda * exp(nll - P0).
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2] or mask.shape != labels.shape:
        raise ValueError(
            f"tlm_loss needs logits [B, T, V] with labels and mask [B, T]; got logits {tuple(logits.shape)}, "
            f"labels {tuple(labels.shape)}, mask {tuple(mask.shape)}"
        )
    counts = mask.sum(-1)
    if bool((counts == 0).any()):
        row = int((counts == 0).nonzero()[0])
        raise ValueError(f"tlm_loss: mask selects no position in row {row}; every sample needs a prompt token")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    safe_labels = torch.where(mask, labels, torch.zeros_like(labels))
    token_nll = F.cross_entropy(logits.to(dtype).transpose(1, 2), safe_labels, reduction="none")
    nll = torch.where(mask, token_nll, torch.zeros_like(token_nll)).sum(-1) / counts
    nll_detached = nll.detach()
    selected = nll_detached > threshold
    coeff = weight * torch.exp(nll_detached - threshold)
    weighted = torch.where(selected, coeff * nll, torch.zeros_like(nll))
    # TLM: sum over the selected samples / their count; with none selected, the mean of zeros (0 with a graph)
    loss = weighted.sum() / selected.sum().clamp(min=1)
    return loss, nll_detached, selected


@dataclass
class TLMOptions(Options):
    tlm_threshold: float = option(
        3.0, "prompts whose mean NLL (log-perplexity) is above this threshold are trained on"
    )
    tlm_weight: float = option(0.1, "lambda of the sample weight lambda * exp(NLL - threshold)")


class TLM(Method):
    name = "tlm"
    help = "TLM: the prompt's NLL, on prompts above a log-perplexity threshold, weighted towards the harder ones"
    signals = ("prompt",)
    options_class = TLMOptions

    def loss(self, trainer, model, inputs: dict) -> torch.Tensor:
        hidden = trainer.head_input(model, inputs)
        mask = inputs["loss_mask"]
        # position t predicts token t + 1: every prompt token after the first is a label, as TLM's labels = input_ids
        counted = mask[:, :-1] & mask[:, 1:]
        logits = head_logits(hidden[:, :-1], trainer.lm_head.weight, trainer.lm_head.bias, **trainer.head_transform)
        loss, nll, selected = tlm_loss(
            logits, inputs["input_ids"][:, 1:], counted, trainer.args.tlm_threshold, trainer.args.tlm_weight
        )
        with torch.no_grad():
            clean_entropy = entropy_from_logits(logits[counted])
        trainer.log_metrics_step(
            {
                "loss/nll": nll.mean(),
                "tlm/selected_share": selected.float().mean(),
                "collapse/entropy": clean_entropy.mean(),
            }
        )
        return loss
