"""GRPO for the sampling methods (TTRL, RENT, Intuitor, EMPO, URLVR, ...): k sampled answers per prompt, a reward the
method makes itself, advantages normalised within each prompt's group, and a policy-gradient loss over the answers'
tokens.

The update is on-policy and taken once per generation (TRL's `num_iterations=1`): the importance ratio
exp(logp - sg(logp)) is 1 in value, so PPO's clipping never acts and the gradient is -A * grad(logp). The loss is
the token mean over the batch (verl's `token-mean`, which TTRL and RENT run; TRL's default `dapo` aggregation), and
the KL to the base model (LoRA off) is TRL's and verl's k3 estimator exp(r - l) - (r - l) - 1.
"""

import math
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from ..losses import CHUNK_SIZE, head_logits
from .base import Method, Options, option


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """[N] rewards, N = prompts * group_size, prompt-major -> [N] advantages (r - group mean) / (group std + eps).

    The std is the unbiased one, as TRL's; a group whose rewards are all equal gets zero advantages (no signal).
    """
    grouped = rewards.float().view(-1, group_size)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(centred)
    return (centred / (std + eps)).view(-1)


def grpo_loss(
    logps: torch.Tensor,
    advantages: torch.Tensor,
    rows: torch.Tensor,
    ref_logps: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """On-policy GRPO loss over the answer tokens of a batch, and the mean k3 KL to the reference (0 without one).

    Args:
        logps: [M] log-probabilities of the sampled tokens under the policy (with gradient), all answers' tokens.
        advantages: [N] one per answer.
        rows: [M] the answer each token belongs to (indices into advantages).
        ref_logps: [M] the same tokens' log-probabilities under the reference, without gradient; needed if beta > 0.
        beta: weight of the KL.
    """
    ratio = torch.exp(logps - logps.detach())
    per_token = -ratio * advantages[rows].to(logps.dtype)
    kl = torch.zeros((), dtype=logps.dtype, device=logps.device)
    if ref_logps is not None:
        delta = ref_logps - logps
        per_token_kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * per_token_kl
        kl = per_token_kl.detach().mean() if per_token_kl.numel() else kl
    return per_token.sum() / max(per_token.numel(), 1), kl


def token_statistics(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    temperature: float = 1.0,
    chunk_size: int = CHUNK_SIZE,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probability of `targets` and entropy under softmax(z / T), and self-certainty, where z are the
    model's logits from its head's input (`losses.head_logits`, with the model's `logit_scale` and `softcap`).

    hidden [M, d], weight [V, d], bias [V] or None, targets [M] -> logp [M] (differentiable in hidden), entropy [M]
    and self-certainty [M] (detached). Self-certainty is Intuitor's, of the raw logits (no temperature):
    KL(U || p) = -log V - mean_v log p_v. Chunks of `chunk_size` rows are recomputed in the backward pass, so no
    [M, V] tensor outlives its chunk.
    """

    transform = {"logit_scale": logit_scale, "softcap": softcap}

    def chunk(rows: torch.Tensor, chunk_targets: torch.Tensor):
        # in at least fp32, as the loss head computes softmax (fp64 stays fp64 for exact checks)
        logits = head_logits(rows, weight.detach(), None if bias is None else bias.detach(), **transform)
        log_probs = torch.log_softmax(logits / temperature, dim=-1)
        logp = log_probs.gather(1, chunk_targets[:, None]).squeeze(1)
        with torch.no_grad():
            entropy = -(log_probs.exp() * log_probs).sum(-1)
            raw = log_probs if temperature == 1 else torch.log_softmax(logits, dim=-1)
            certainty = -raw.mean(-1) - math.log(raw.shape[-1])
        return logp, entropy, certainty

    outputs = []
    size = chunk_size or max(hidden.shape[0], 1)
    for start in range(0, hidden.shape[0], size):
        rows, chunk_targets = hidden[start : start + size], targets[start : start + size]
        if torch.is_grad_enabled() and rows.requires_grad:
            outputs.append(checkpoint(chunk, rows, chunk_targets, use_reentrant=False))
        else:
            outputs.append(chunk(rows, chunk_targets))
    if not outputs:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty, empty
    logp, entropy, certainty = (torch.cat(parts) for parts in zip(*outputs))
    return logp, entropy.detach(), certainty.detach()


def per_answer_sum(values: torch.Tensor, rows: torch.Tensor, count: int) -> torch.Tensor:
    """Sum of per-token `values` [M] for each of `count` answers, given each token's answer `rows` [M]; 0 if empty."""
    return torch.zeros(count, dtype=values.dtype, device=values.device).index_add_(0, rows, values)


def per_answer_mean(values: torch.Tensor, rows: torch.Tensor, count: int) -> torch.Tensor:
    """Mean of per-token `values` [M] for each of `count` answers, given each token's answer `rows` [M]; 0 if empty."""
    return per_answer_sum(values, rows, count) / per_answer_sum(torch.ones_like(values), rows, count).clamp(min=1)


@dataclass
class SamplingOptions(Options):
    num_generations: int = option(4, "answers sampled per prompt (k); the first one is the prediction", positive=True)
    sampling_temperature: float = option(1.0, "temperature of the sampled answers", positive=True)
    beta: float = option(0.0, "weight of the KL to the base model (LoRA off) in the GRPO loss")


class SamplingMethod(Method):
    """A GRPO method: `num_generations` sampled answers per prompt, rewarded by `reward`."""

    signals = ("response",)
    samples = True
    needs_static_generation = "samples --num_generations answers per prompt"
    options_class = SamplingOptions

    def reward(self, stats: dict, from_answers: torch.Tensor | None) -> torch.Tensor:
        """[N] rewards from per-answer statistics and what `Method.from_answers` read in the scored answers. The
        statistics, detached, are means over the answer's tokens of their `entropy`, `certainty` and `logp` (the
        sampled tokens' log-probabilities), and `logp_sum`, the answer's log-likelihood."""
        raise NotImplementedError

    def batch_rewards(self, args, stats: dict, from_answers: torch.Tensor | None) -> torch.Tensor:
        """[N] rewards under the run's options `args`: `reward`'s, unless the method's options choose the reward."""
        return self.reward(stats, from_answers)

    def loss(self, trainer, model, inputs: dict) -> torch.Tensor:
        args = trainer.args
        hidden = trainer.head_input(model, inputs)
        mask = inputs["loss_mask"]
        targets = inputs["input_ids"][:, 1:][mask[:, :-1]]
        rows = mask.nonzero()[:, 0]
        head = trainer.lm_head
        logp, entropy, certainty = token_statistics(
            hidden[mask],
            head.weight,
            head.bias,
            targets,
            args.sampling_temperature,
            args.loss_chunk_size,
            **trainer.head_transform,
        )
        count = mask.shape[0]
        stats = {
            "entropy": per_answer_mean(entropy, rows, count),
            "certainty": per_answer_mean(certainty, rows, count),
            "logp": per_answer_mean(logp.detach(), rows, count),
            "logp_sum": per_answer_sum(logp.detach(), rows, count),
        }
        rewards = self.batch_rewards(args, stats, inputs.get("rewards"))
        advantages = group_advantages(rewards, args.num_generations)
        ref_logps = None
        if args.beta > 0:
            trainer.cost["forward_tokens"] += int(inputs["attention_mask"].sum())
            with torch.no_grad(), trainer.accelerator.unwrap_model(model).disable_adapter():
                ref_hidden = trainer.head_input(model, inputs)
                ref_logps = token_statistics(
                    ref_hidden[mask],
                    head.weight,
                    head.bias,
                    targets,
                    args.sampling_temperature,
                    args.loss_chunk_size,
                    **trainer.head_transform,
                )[0]
        loss, kl = grpo_loss(logp, advantages, rows, ref_logps, args.beta)
        trainer.log_metrics_step(
            {
                "reward/mean": rewards.float().mean(),
                "reward/std_within_prompt": rewards.float().view(-1, args.num_generations).std(dim=1).mean(),
                "reward/zero_std_share": (rewards.float().view(-1, args.num_generations).std(dim=1) == 0)
                .float()
                .mean(),
                "loss/kl": kl,
                "collapse/entropy": entropy.mean() if entropy.numel() else torch.zeros(()),
            }
        )
        return loss
