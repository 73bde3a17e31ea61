"""Loss heads for test-time entropy optimization of causal LMs: ZeroSiam, Tent and COME.

Every function here is a pure function of tensors, but `head_transform`, which reads from a model's config what
its head does to the logits. `head_loss` reads the final hidden states of the backbone, applies
the frozen LM head (and, for ZeroSiam, the predictor) and returns the loss with its diagnostics. Its default,
chunked implementation never holds the full [N, V] logits: it walks the selected positions in chunks, computes the
gradient with respect to the logits in closed form while the chunk's logits are at hand, and keeps only the [N, d]
gradient for the backward pass. `chunk_size=0` selects the naive reference (full logits, plain autograd) that the
tests hold the chunked path to. Both paths apply the model's own transform of its logits (scaling, soft-capping:
`head_logits`), so the loss sees the distribution the model generates from.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


# Positions per chunk of the memory-bounded loss heads (`--loss_chunk_size`): a few [CHUNK_SIZE, V] buffers at a time.
CHUNK_SIZE = 1024


@dataclass
class HeadLoss:
    """Loss of one head call and its detached diagnostics, each a masked mean over the selected positions."""

    loss: torch.Tensor
    entropy: torch.Tensor
    align: torch.Tensor
    clean_entropy: torch.Tensor
    clean_logit_norm: torch.Tensor
    clean_top1: torch.Tensor


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats of softmax(logits): [..., V] -> [...], computed in at least fp32."""
    log_probs = torch.log_softmax(logits.to(_stats_dtype(logits.dtype)), dim=-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def symmetric_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p||q) + KL(q||p) of p = softmax(logits_p), q = softmax(logits_q): [..., V] -> [...], in at least fp32."""
    dtype = _stats_dtype(logits_p.dtype)
    log_p = torch.log_softmax(logits_p.to(dtype), dim=-1)
    log_q = torch.log_softmax(logits_q.to(dtype), dim=-1)
    # sum_v p (log p - log q) + q (log q - log p) = sum_v (p - q)(log p - log q)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


def head_logits(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    lm_head_bias: torch.Tensor | None = None,
    *,
    logit_scale: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """The model's logits from the LM head's input: [..., d] -> [..., V], in at least fp32.

    z = lm_head(h) * logit_scale, then, with `softcap`, z = softcap * tanh(z / softcap), the order and operations of
    transformers' Granite (logit_scale = 1 / logits_scaling), Cohere (logit_scale) and Gemma 2/3
    (final_logit_softcapping). The matmul runs in hidden's dtype, as in `head_loss`.
    """
    _check_transform(logit_scale, softcap)
    return _transform(_linear(hidden, lm_head_weight, lm_head_bias), logit_scale, softcap)


def head_transform(config) -> dict:
    """What the model does to its LM head's output, as `head_loss` takes it: {'logit_scale', 'softcap'}.

    Read from the config attributes that transformers' causal LMs apply after the head: Gemma 2/3's
    `final_logit_softcapping`, Granite's `logits_scaling` (a divisor) and Cohere's `logit_scale`. An attribute whose
    meaning differs by architecture, or that is not covered, is refused with one line; `modeling.check_head_input` then
    confirms on the loaded model that nothing else happens to the logits.
    """
    config = config.get_text_config()
    name = _architecture(config)
    logit_scale, softcap = 1.0, getattr(config, "final_logit_softcapping", None)
    if getattr(config, "logits_scaling", 1.0) != 1.0:
        # Granite divides by it; HyperCLOVA X, with the same attribute, multiplies
        if not config.model_type.startswith("granite"):
            raise ValueError(
                f"{name}: its logits_scaling={config.logits_scaling} is applied in a way the loss head does not know "
                "(Granite divides by it); this architecture is not supported."
            )
        logit_scale = 1.0 / config.logits_scaling
    if config.model_type.startswith("cohere") and getattr(config, "logit_scale", None) is not None:
        logit_scale = float(config.logit_scale)
    for attribute in ("lm_head_multiplier", "output_multiplier_scale"):
        if getattr(config, attribute, 1.0) not in (1.0, None):
            raise ValueError(
                f"{name}: its logits are multiplied by {attribute}={getattr(config, attribute)}, which the loss "
                "head does not reproduce; this architecture is not supported."
            )
    return {"logit_scale": logit_scale, "softcap": None if softcap is None else float(softcap)}


def _architecture(config) -> str:
    return (getattr(config, "architectures", None) or [config.model_type])[0]


def head_loss(
    head: str,
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    mask: torch.Tensor,
    *,
    predictor_weight: torch.Tensor | None = None,
    alpha: float = 1.0,
    stop_gradient: bool = True,
    chunk_size: int = CHUNK_SIZE,
    lm_head_bias: torch.Tensor | None = None,
    logit_scale: float = 1.0,
    softcap: float | None = None,
    **head_kwargs,
) -> HeadLoss:
    """Test-time loss of the head named `head` on the positions selected by `mask`, with diagnostics of the clean
    branch.

    Args:
        head: a key of `HEADS`: "zerosiam", "tent" or "come" (a head, which several methods may share).
        hidden: [B, T, d] final hidden states of the backbone (after its final norm).
        lm_head_weight: [V, d] LM head weight. The head is frozen: no gradient reaches it (nor `lm_head_bias`).
        mask: [B, T] bool, the positions that carry the loss.
        predictor_weight: [d, d] weight of the bias-free predictor P(h) = h @ predictor_weight.T; ZeroSiam only.
        alpha: weight of the alignment term of ZeroSiam.
        stop_gradient: ZeroSiam's target branch under stop-gradient; False lets the gradient through it (ablation).
        chunk_size: positions per chunk of the memory-bounded implementation; 0 selects the naive reference. The
            chunked path computes the gradients (for `hidden` and `predictor_weight`, those that require grad while
            grad mode is on) during the forward pass and supports one backward, not double backward.
        lm_head_bias: optional [V] bias of the LM head.
        logit_scale, softcap: the model's transform of its logits, applied to every branch before the softmax (see
            `head_logits`; `head_transform` reads them from a model's config). The defaults leave the
            logits untouched, with no extra operation.
        **head_kwargs: COME only: `num_classes` (int, K of the opinion, default V) and `norm_constraint` (bool,
            default True); see below.

    The matmuls run in hidden's dtype (autocast's when it is on); softmax, entropy and KL in at least fp32.

    Per selected position, with the clean logits z = lm_head(h) (transformed as above):
        - zerosiam: target z_t = z (detached unless stop_gradient=False), online z_o = lm_head(P(h)),
          loss = H(softmax(z_o)) + alpha * (KL(p_t||p_o) + KL(p_o||p_t)).
        - tent: loss = H(softmax(z)).
        - come: COME, "Test-time Adaption by Conservatively Minimizing Entropy" (Zhang et al., ICLR 2025), as in the
          authors' code (github.com/BlueWhaleLab/COME, `dirichlet_entropy`). Evidence e = exp(z), Dirichlet strength
          S = sum(e) + K, opinion = (belief b = e / S, uncertainty u = K / S), which sums to one over V + 1 masses;
          loss = H(opinion) = -sum_v b_v log b_v - u log u. K is the number of classes, here the vocabulary size V
          (the authors use K = 1000 on ImageNet). The conservative constraint is the authors': the logits enter as
          z / ||z|| * sg(||z||), equal to z in value, so the gradient has no component along z and the update
          cannot change the logit L2 norm to first order (`norm_constraint=False` drops it). Choice made here: the
          authors add 1e-7 to every mass before the log as a guard; this function computes the opinion entropy in
          log space, which needs no guard, and drops that term, which over a vocabulary of ~1e5 tokens would add
          about V * 1e-7 * 16 = 0.2 nats of constant offset.

    Returns:
        HeadLoss: `loss` (differentiable), `entropy` (of the branch the loss minimizes: online for zerosiam, clean
        for tent and come), `align` (ZeroSiam's symmetric KL, 0 otherwise), `clean_entropy`, `clean_logit_norm`,
        each a detached masked mean, and `clean_top1` ([N] argmax of the clean logits at the selected positions).
    """
    come = _check_args(head, hidden, lm_head_weight, mask, predictor_weight, chunk_size, lm_head_bias, head_kwargs)
    _check_transform(logit_scale, softcap)
    rows = hidden[mask]
    weight = lm_head_weight.detach()
    bias = None if lm_head_bias is None else lm_head_bias.detach()
    grad_enabled = torch.is_grad_enabled()
    device_type = rows.device.type
    spec = _ChunkSpec(
        head=head,
        # the matmuls run in autocast's dtype when it is on, as they would in the naive path
        compute_dtype=torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else rows.dtype,
        alpha=alpha,
        stop_gradient=stop_gradient,
        chunk_size=chunk_size,
        num_classes=come["num_classes"],
        norm_constraint=come["norm_constraint"],
        grad_rows=grad_enabled and rows.requires_grad,
        grad_predictor=grad_enabled and predictor_weight is not None and predictor_weight.requires_grad,
        logit_scale=logit_scale,
        softcap=softcap,
    )
    if chunk_size == 0:
        loss_sum, stats, top1 = _naive_head(rows, predictor_weight, weight, bias, spec)
    else:
        loss_sum, stats, top1 = _ChunkedHeadLoss.apply(rows, predictor_weight, weight, bias, spec)
    count = max(rows.shape[0], 1)
    entropy, align, clean_entropy, clean_logit_norm = (stats / count).unbind()
    return HeadLoss(
        loss=loss_sum / count,
        entropy=entropy,
        align=align,
        clean_entropy=clean_entropy,
        clean_logit_norm=clean_logit_norm,
        clean_top1=top1,
    )


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    # softmax, entropy and KL run in fp32 even for bf16 inputs; fp64 inputs stay fp64 (exact gradient checks)
    return torch.promote_types(dtype, torch.float32)


def _check_args(head, hidden, lm_head_weight, mask, predictor_weight, chunk_size, lm_head_bias, head_kwargs):
    """Raise ValueError for bad arguments; return COME's options with their defaults filled in."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(map(repr, HEADS))}; got {head!r}.")
    unknown = sorted(set(head_kwargs) - set(HEADS[head].options))
    if unknown:
        allowed = ", ".join(HEADS[head].options) or "none"
        raise ValueError(f"head_loss got unknown keyword arguments {unknown} for head={head!r} (allowed: {allowed}).")
    if hidden.dim() != 3:
        raise ValueError(f"hidden must be [B, T, d]; got shape {tuple(hidden.shape)}.")
    d = hidden.shape[-1]
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != d:
        raise ValueError(
            f"lm_head_weight must be [V, d] with d={d} (hidden's last dim); got {tuple(lm_head_weight.shape)}."
        )
    if mask.shape != hidden.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of shape {tuple(hidden.shape[:2])} (hidden's [B, T]); "
            f"got {mask.dtype} {tuple(mask.shape)}."
        )
    if lm_head_bias is not None and lm_head_bias.shape != lm_head_weight.shape[:1]:
        raise ValueError(
            f"lm_head_bias must be [V] with V={lm_head_weight.shape[0]}; got {tuple(lm_head_bias.shape)}."
        )
    if HEADS[head].predictor and predictor_weight is None:
        raise ValueError(f"head={head!r} needs predictor_weight ([d, d], the predictor's nn.Linear weight).")
    if not HEADS[head].predictor and predictor_weight is not None:
        raise ValueError(f"head={head!r} has no predictor: pass predictor_weight=None.")
    if predictor_weight is not None and predictor_weight.shape != (d, d):
        raise ValueError(f"predictor_weight must be [d, d] with d={d}; got {tuple(predictor_weight.shape)}.")
    if chunk_size < 0:
        raise ValueError(f"chunk_size must be >= 0 (0 selects the naive reference); got {chunk_size}.")
    come = {"num_classes": None, "norm_constraint": True, **head_kwargs}
    if come["num_classes"] is None:
        come["num_classes"] = lm_head_weight.shape[0]
    elif come["num_classes"] < 1:
        raise ValueError(
            f"num_classes must be a positive int (or None for the vocabulary size); got {come['num_classes']}."
        )
    return come


def _check_transform(logit_scale, softcap) -> None:
    if not (math.isfinite(logit_scale) and logit_scale > 0):
        raise ValueError(f"logit_scale must be a finite number > 0; got {logit_scale}.")
    if softcap is not None and not (math.isfinite(softcap) and softcap > 0):
        raise ValueError(f"softcap must be None or a finite number > 0; got {softcap}.")


def _transform(logits: torch.Tensor, logit_scale: float, softcap: float | None) -> torch.Tensor:
    """The model's logit transform (see `head_logits`); the identity costs no operation."""
    if logit_scale != 1.0:
        logits = logits * logit_scale
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Logits of x ([N, d]) in the input dtype, returned in the statistics dtype: [N, V]."""
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype)).to(_stats_dtype(x.dtype))


def _opinion_entropy(logits: torch.Tensor, num_classes: int, norm_constraint: bool) -> torch.Tensor:
    """COME's entropy of the subjective-logic opinion of logits: [N, V] -> [N] (see `head_loss`)."""
    if norm_constraint:
        norm = torch.linalg.vector_norm(logits, dim=-1, keepdim=True)
        logits = logits / norm.clamp(min=torch.finfo(logits.dtype).tiny) * norm.detach()
    log_k = math.log(num_classes)
    log_strength = torch.logaddexp(logits.logsumexp(-1), logits.new_tensor(log_k))
    log_belief = logits - log_strength.unsqueeze(-1)
    log_uncertainty = log_k - log_strength
    return -(log_belief.exp() * log_belief).sum(-1) - log_uncertainty.exp() * log_uncertainty


def _naive_head(rows, predictor_weight, weight, bias, spec: "_ChunkSpec"):
    """Reference: full [N, V] logits and plain autograd. Returns (loss sum, [4] stat sums, [N] top-1)."""
    head = HEADS[spec.head]
    transform = {"logit_scale": spec.logit_scale, "softcap": spec.softcap}
    clean_rows = rows.detach() if head.predictor and spec.stop_gradient else rows
    clean = _transform(_linear(clean_rows, weight, bias), **transform)
    online = None
    if head.predictor:
        online = _transform(_linear(rows @ predictor_weight.to(rows.dtype).T, weight, bias), **transform)
    loss, entropy, align, clean_entropy = head.naive(spec, clean, online)
    with torch.no_grad():
        norm = torch.linalg.vector_norm(clean, dim=-1)
        stats = torch.stack([entropy.sum(), align.sum(), clean_entropy.sum(), norm.sum()])
        top1 = clean.argmax(-1)
    return loss.sum(), stats, top1


def _zerosiam_naive(spec, clean, online):
    """ZeroSiam's per-row loss, online entropy, symmetric KL and clean entropy from [N, V] logits of both branches."""
    entropy = entropy_from_logits(online)
    align = symmetric_kl(clean, online)
    with torch.no_grad():
        clean_entropy = entropy_from_logits(clean)
    return entropy + spec.alpha * align, entropy, align, clean_entropy


def _tent_naive(spec, clean, online):
    """Tent's per-row loss (the entropy), entropy, align (0) and clean entropy from the clean [N, V] logits."""
    entropy = entropy_from_logits(clean)
    return entropy, entropy, torch.zeros_like(entropy), entropy


def _come_naive(spec, clean, online):
    """COME's per-row opinion entropy, softmax entropy, align (0) and clean entropy from the clean [N, V] logits."""
    entropy = entropy_from_logits(clean)
    loss = _opinion_entropy(clean, spec.num_classes, spec.norm_constraint)
    return loss, entropy, torch.zeros_like(entropy), entropy


@dataclass(frozen=True)
class _ChunkSpec:
    head: str
    compute_dtype: torch.dtype
    alpha: float
    stop_gradient: bool
    chunk_size: int
    num_classes: int
    norm_constraint: bool
    grad_rows: bool
    grad_predictor: bool
    logit_scale: float = 1.0
    softcap: float | None = None


class _ChunkedHeadLoss(torch.autograd.Function):
    """Chunked head: the gradient is computed during the forward pass, chunk by chunk, and only scaled in backward.

    Peak extra memory is a few [chunk_size, V] buffers (two branches for ZeroSiam) plus the [N, d] gradient; one more
    with `softcap`, for the derivative of the cap.
    """

    @staticmethod
    def forward(ctx, rows, predictor_weight, weight, bias, spec: _ChunkSpec):
        # autocast stays off: the matmuls take spec.compute_dtype explicitly and the statistics must stay in fp32
        with torch.autocast(rows.device.type, enabled=False):
            loss_sum, stats, top1, grad_rows, grad_predictor = _chunked_head(
                rows, predictor_weight, weight, bias, spec
            )
        ctx.save_for_backward(grad_rows, grad_predictor)
        ctx.mark_non_differentiable(stats, top1)
        return loss_sum, stats, top1

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_stats, _grad_top1):
        grads = [None if g is None else g * grad_loss.to(g.dtype) for g in ctx.saved_tensors]
        return grads[0], grads[1], None, None, None


def _chunked_head(rows, predictor_weight, weight, bias, spec: _ChunkSpec):
    """Forward of _ChunkedHeadLoss: (loss sum, [4] stat sums, [N] top-1, grad w.r.t. rows, grad w.r.t. predictor)."""
    n, d = rows.shape
    stats_dtype = _stats_dtype(rows.dtype)
    device = rows.device
    loss_sum = torch.zeros((), dtype=stats_dtype, device=device)
    stats = torch.zeros(4, dtype=stats_dtype, device=device)
    top1 = torch.empty(n, dtype=torch.long, device=device)
    grad_rows = torch.empty_like(rows) if spec.grad_rows else None
    grad_predictor = None
    if spec.grad_predictor:
        grad_predictor = torch.zeros(d, d, dtype=_stats_dtype(predictor_weight.dtype), device=device)
    if n:
        branched = HEADS[spec.head].predictor  # ZeroSiam: each chunk holds [target; online] rows
        dtype = spec.compute_dtype
        predictor = predictor_weight.to(dtype) if branched else None
        weight = weight.to(dtype)
        bias = None if bias is None else bias.to(dtype)
        target_grad = branched and not spec.stop_gradient and spec.grad_rows
        chunk = min(spec.chunk_size, n)
        branch_rows = (2 if branched else 1) * chunk
        # workspaces reused by every chunk: a fresh [chunk, V] allocation per chunk costs page faults on CPU
        logits_buf = torch.empty(branch_rows, weight.shape[0], dtype=stats_dtype, device=device)
        probs_buf = torch.empty_like(logits_buf)
        cast_buf = None if dtype == stats_dtype else torch.empty_like(logits_buf, dtype=dtype)
        # the softmax overwrites the capped logits, so the cap's derivative is kept aside for the gradient
        slope_buf = None if spec.softcap is None else torch.empty_like(logits_buf)
        for start in range(0, n, chunk):
            h = rows[start : start + chunk].to(dtype)
            k = h.shape[0]
            inputs = torch.cat([h, h @ predictor.T]) if branched else h
            logits, probs = logits_buf[: inputs.shape[0]], probs_buf[: inputs.shape[0]]
            _logits_into(logits, inputs, weight, bias, cast_buf)
            slope = None if slope_buf is None else slope_buf[: inputs.shape[0]]
            _transform_(logits, spec.logit_scale, spec.softcap, slope)
            top1[start : start + k] = logits[:k].argmax(-1)
            norm = torch.linalg.vector_norm(logits[:k], dim=-1)
            loss, entropy, align, clean_entropy, grad = _chunk_loss(spec, logits, probs, norm, target_grad)
            loss_sum += loss.sum()
            stats += torch.stack([entropy.sum(), align.sum(), clean_entropy.sum(), norm.sum()])
            if not (spec.grad_rows or spec.grad_predictor):
                continue
            _chain_transform_(grad, spec.logit_scale, slope)
            grad_inputs = _logit_grad_to_inputs(grad, weight, cast_buf)
            if not branched:
                grad_rows[start : start + k] = grad_inputs
                continue
            # the online branch read P(h) = h @ P.T; with target_grad, grad_inputs is [target; online]
            grad_online = grad_inputs[-k:]
            if grad_predictor is not None:
                grad_predictor += (grad_online.T @ h).to(grad_predictor.dtype)
            if grad_rows is not None:
                grad_h = grad_online @ predictor
                grad_rows[start : start + k] = grad_h + grad_inputs[:k] if target_grad else grad_h
    if grad_predictor is not None:
        grad_predictor = grad_predictor.to(predictor_weight.dtype)
    return loss_sum, stats, top1, grad_rows, grad_predictor


def _logits_into(out, inputs, weight, bias, cast_buf):
    """out = inputs @ weight.T (+ bias): the product in the inputs' dtype, stored into `out` (statistics dtype)."""
    target = out if cast_buf is None else cast_buf[: out.shape[0]]
    if bias is None:
        torch.mm(inputs, weight.T, out=target)
    else:
        torch.addmm(bias, inputs, weight.T, out=target)
    if cast_buf is not None:
        out.copy_(target)


def _transform_(logits, logit_scale, softcap, slope):
    """In place, `_transform` of the raw logits [M, V]; with `softcap`, slope [M, V] becomes 1 - tanh(z / cap)^2."""
    if logit_scale != 1.0:
        logits.mul_(logit_scale)
    if softcap is not None:
        logits.div_(softcap).tanh_()
        torch.mul(logits, logits, out=slope).neg_().add_(1)
        logits.mul_(softcap)


def _chain_transform_(grad, logit_scale, slope):
    """In place, the gradient w.r.t. the transformed logits [M', V] becomes the one w.r.t. the raw logits.

    `grad` holds the last M' rows of the chunk (ZeroSiam's online branch alone under stop-gradient), and so does the
    end of `slope`.
    """
    if slope is not None:
        grad.mul_(slope[slope.shape[0] - grad.shape[0] :])
    if logit_scale != 1.0:
        grad.mul_(logit_scale)


def _logit_grad_to_inputs(grad_logits, weight, cast_buf):
    """Gradient w.r.t. the head's inputs, grad_logits @ weight, with the product in the weight's dtype: [M, d]."""
    if cast_buf is not None:
        grad_logits = cast_buf[: grad_logits.shape[0]].copy_(grad_logits)
    return grad_logits @ weight


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise dot product [M, V], [M, V] -> [M], without an [M, V] temporary."""
    return torch.einsum("mv,mv->m", a, b)


def _chunk_loss(spec, logits, probs, norm, target_grad):
    """Per-row loss, entropy, align and clean entropy of one chunk, and the loss's gradient w.r.t. its logits.

    Works in place on the chunk's logits [M, V] (ZeroSiam: [target; online]) and the probs buffer of the same shape.
    """
    log_sum_exp = _softmax_(logits, probs)
    return HEADS[spec.head].chunk(spec, logits, probs, log_sum_exp, norm, target_grad)


def _softmax_(logits: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """In place: logits [M, V] become log-softmax, probs [M, V] softmax; returns logsumexp(logits) [M]."""
    shift = logits.amax(-1, keepdim=True)
    logits.sub_(shift)
    torch.exp(logits, out=probs)
    total = probs.sum(-1, keepdim=True)
    log_total = total.log()
    logits.sub_(log_total)
    probs.div_(total)
    return (shift + log_total).squeeze(-1)


def _tent_chunk(spec, log_probs, probs, log_sum_exp, norm, target_grad):
    """Tent on one chunk, in place. Returns the loss, entropy, align (0) and clean entropy [M] (the entropy thrice)
    and the loss's gradient w.r.t. the logits [M, V]."""
    entropy = -_rowdot(probs, log_probs)
    # dH/dz = -p * (log p + H)
    probs.mul_(log_probs.add_(entropy.unsqueeze(-1))).neg_()
    return entropy, entropy, torch.zeros_like(entropy), entropy, probs


def _zerosiam_chunk(spec, log_probs, probs, log_sum_exp, norm, target_grad):
    """ZeroSiam on one chunk, in place; rows are [target; online] (k each).

    Returns the loss, online entropy, symmetric KL and target entropy ([k] each) and the gradient w.r.t. the logits:
    [2k, V] for [target; online] when `target_grad`, else [k, V] for the online branch alone.
    """
    alpha = spec.alpha
    k = log_probs.shape[0] // 2
    log_t, log_o, p_t, p_o = log_probs[:k], log_probs[k:], probs[:k], probs[k:]
    entropies = -_rowdot(probs, log_probs)
    ent_t, ent_o = entropies[:k], entropies[k:]
    kl_ot = -ent_o - _rowdot(p_o, log_t)  # KL(p_o || p_t)
    kl_to = -ent_t - _rowdot(p_t, log_o)  # KL(p_t || p_o)
    align = kl_ot + kl_to
    loss = ent_o + alpha * align
    # With diff = log p_t - log p_o, differentiating the softmaxes gives
    #   dL/dz_o = p_o * (-log p_o - alpha * diff + alpha - H_o - alpha * KL(p_o||p_t)) - alpha * p_t
    #   dL/dz_t = alpha * (p_t * (diff + 1 - KL(p_t||p_o)) - p_o)
    diff = log_t.sub_(log_o)
    log_o.neg_().add_(diff, alpha=-alpha).add_((alpha - ent_o - alpha * kl_ot).unsqueeze(-1))
    if target_grad:
        diff.add_((1 - kl_to).unsqueeze(-1)).mul_(p_t).sub_(p_o).mul_(alpha)
    log_o.mul_(p_o).sub_(p_t, alpha=alpha)
    return loss, ent_o, align, ent_t, log_probs if target_grad else log_o


def _come_chunk(spec, log_probs, probs, log_sum_exp, norm, target_grad):
    """COME on one chunk, in place (see `head_loss`).

    Returns the opinion entropy, the softmax entropy, align (0) and clean entropy [M] (the softmax entropy again) and
    the gradient w.r.t. the logits [M, V].
    """
    num_classes, norm_constraint = spec.num_classes, spec.norm_constraint
    entropy = -_rowdot(probs, log_probs)
    log_k = math.log(num_classes)
    log_strength = torch.logaddexp(log_sum_exp, log_sum_exp.new_tensor(log_k))
    log_u = log_k - log_strength
    log_not_u = log_sum_exp - log_strength  # log(1 - u) = log(sum(e) / S)
    # belief b = (1 - u) * softmax, hence sum b log b = (1 - u) * (log(1 - u) - H)
    loss = log_not_u.exp() * (entropy - log_not_u) - log_u.exp() * log_u
    # d loss / dz = -b * (log b + loss) with log b = log p + log(1 - u); `shifted` holds log b + loss
    offset = (log_not_u + loss).unsqueeze(-1)
    shifted = log_probs.add_(offset)
    grad = probs.mul_(shifted).mul_(-log_not_u.exp().unsqueeze(-1))
    if norm_constraint:
        # drop the gradient's component along z = shifted + (logsumexp - offset): the logit norm stays put
        rest = log_sum_exp.unsqueeze(-1) - offset
        along = _rowdot(shifted, grad) + rest.squeeze(-1) * grad.sum(-1)
        coef = torch.where(norm > 0, along / norm.square(), 0).unsqueeze(-1)
        grad.addcmul_(shifted, coef, value=-1).sub_(coef * rest)
    return loss, entropy, torch.zeros_like(entropy), entropy, grad


@dataclass(frozen=True)
class _Head:
    """One loss head of `head_loss`: its naive reference (`(spec, clean, online) -> (loss, entropy, align, clean
    entropy)`, per row), its in-place chunk step (the same and the loss's gradient w.r.t. the chunk's logits), the
    keyword options it takes, and whether it reads a predictor branch (`online`; [target; online] rows in a chunk)."""

    naive: Callable
    chunk: Callable
    options: tuple[str, ...] = ()
    predictor: bool = False


# The loss heads `head_loss` computes, by name (the run methods that use them are in `methods/head.py`).
HEADS = {
    "zerosiam": _Head(_zerosiam_naive, _zerosiam_chunk, predictor=True),
    "tent": _Head(_tent_naive, _tent_chunk),
    "come": _Head(_come_naive, _come_chunk, options=("num_classes", "norm_constraint")),
}
