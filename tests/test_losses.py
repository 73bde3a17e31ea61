"""Tests for zerosiam_hf.losses: hand-computable cases, the chunked path against the naive reference, and errors."""

import math

import pytest
import torch

from zerosiam_hf.losses import HEADS, entropy_from_logits, head_logits, head_loss, symmetric_kl


B, T, D, V = 3, 5, 16, 37


def make_inputs(dtype=torch.float64, seed=0, bias=False, predictor_grad=True):
    """Random hidden [B, T, D], head [V, D], mask [B, T] (10 of 15 positions) and a near-identity predictor."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    weight = torch.randn(V, D, generator=gen, dtype=torch.float64)
    predictor = torch.eye(D, dtype=torch.float64) + 0.2 * torch.randn(D, D, generator=gen, dtype=torch.float64)
    mask = torch.zeros(B * T, dtype=torch.bool)
    mask[torch.randperm(B * T, generator=gen)[:10]] = True
    return {
        "hidden": hidden.to(dtype).requires_grad_(),
        "lm_head_weight": weight.to(dtype),
        "mask": mask.view(B, T),
        "predictor_weight": predictor.to(dtype).requires_grad_(predictor_grad),
        "lm_head_bias": torch.randn(V, generator=gen, dtype=torch.float64).to(dtype) if bias else None,
    }


def run(method, inputs, **kwargs):
    """head_loss on fresh leaf copies of `inputs`; returns (HeadLoss, hidden grad, predictor grad)."""
    inputs = {k: v.detach().clone().requires_grad_(v.requires_grad) if v is not None else v for k, v in inputs.items()}
    if method != "zerosiam":
        inputs["predictor_weight"] = None
    out = head_loss(method, **inputs, **kwargs)
    if out.loss.requires_grad:
        out.loss.backward()
    predictor = inputs["predictor_weight"]
    return out, inputs["hidden"].grad, None if predictor is None else predictor.grad


DIAGNOSTICS = ("loss", "entropy", "align", "clean_entropy", "clean_logit_norm")


def assert_same(reference, candidate, atol, rtol):
    """Loss, diagnostics and gradients of two `run` results agree."""
    (out_a, grad_h_a, grad_p_a), (out_b, grad_h_b, grad_p_b) = reference, candidate
    for name in DIAGNOSTICS:
        torch.testing.assert_close(getattr(out_b, name), getattr(out_a, name), atol=atol, rtol=rtol, msg=name)
    assert torch.equal(out_a.clean_top1, out_b.clean_top1)
    torch.testing.assert_close(grad_h_b, grad_h_a, atol=atol, rtol=rtol)
    if grad_p_a is None:
        assert grad_p_b is None
    else:
        torch.testing.assert_close(grad_p_b, grad_p_a, atol=atol, rtol=rtol)


# --- hand-computable cases ---------------------------------------------------------------------------------------


def test_uniform_logits_have_entropy_log_v():
    for dtype in (torch.float32, torch.bfloat16):
        entropy = entropy_from_logits(torch.full((2, 3, V), 4.0, dtype=dtype))
        assert entropy.dtype == torch.float32
        torch.testing.assert_close(entropy, torch.full((2, 3), math.log(V)))


def test_symmetric_kl_by_hand():
    p, q = torch.tensor([0.5, 0.25, 0.25]), torch.tensor([0.25, 0.25, 0.5])
    # KL(p||q) = 0.5 log 2 + 0.25 log 0.5 = 0.25 log 2, and KL(q||p) is the same by symmetry of this pair
    torch.testing.assert_close(symmetric_kl(p.log(), q.log() + 3.0), torch.tensor(0.5 * math.log(2)))
    # two tokens: p = (1/2, 1/2), q = softmax(log 3, 0) = (3/4, 1/4)
    kl_pq = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    kl_qp = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    two_tokens = symmetric_kl(torch.tensor([0.0, 0.0]), torch.tensor([math.log(3.0), 0.0]))
    torch.testing.assert_close(two_tokens, torch.tensor(kl_pq + kl_qp))


def test_equal_branches_have_zero_alignment():
    logits = torch.randn(4, V)
    torch.testing.assert_close(symmetric_kl(logits, logits + 1.5), torch.zeros(4), atol=1e-6, rtol=0)


@pytest.mark.parametrize("chunk_size", [0, 4])
def test_identity_predictor_makes_zerosiam_equal_tent(chunk_size):
    inputs = make_inputs()
    inputs["predictor_weight"] = torch.eye(D, dtype=torch.float64)
    zerosiam, grad_zerosiam, _ = run("zerosiam", inputs, chunk_size=chunk_size)
    tent, grad_tent, _ = run("tent", inputs, chunk_size=chunk_size)
    assert zerosiam.align.abs().item() < 1e-12
    torch.testing.assert_close(zerosiam.loss, tent.loss)
    torch.testing.assert_close(zerosiam.entropy, zerosiam.clean_entropy)
    # at equal branches the alignment term has zero gradient, so the online entropy's gradient is Tent's
    torch.testing.assert_close(grad_zerosiam, grad_tent)


@pytest.mark.parametrize("chunk_size", [0, 3])
def test_tent_diagnostics_by_hand(chunk_size):
    inputs = make_inputs(bias=True)
    out, _, _ = run("tent", inputs, chunk_size=chunk_size)
    logits = inputs["hidden"][inputs["mask"]].detach() @ inputs["lm_head_weight"].T + inputs["lm_head_bias"]
    torch.testing.assert_close(out.loss, entropy_from_logits(logits).mean())
    torch.testing.assert_close(out.clean_logit_norm, logits.norm(dim=-1).mean())
    assert torch.equal(out.clean_top1, logits.argmax(-1))
    assert out.align.item() == 0.0


@pytest.mark.parametrize("chunk_size", [0, 2])
def test_come_uniform_logits_by_hand(chunk_size):
    # hidden (1, 1) against rows (0.5, 0.5): every logit is 1, evidence e, strength S = V e + K with K = V
    hidden = torch.ones(1, 2, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.full((V, 2), 0.5, dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    out = head_loss("come", hidden, weight, mask, chunk_size=chunk_size)
    strength = V * math.e + V
    belief, uncertainty = math.e / strength, V / strength
    expected = -V * belief * math.log(belief) - uncertainty * math.log(uncertainty)
    torch.testing.assert_close(out.loss, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(out.entropy, torch.tensor(math.log(V), dtype=torch.float64))
    with_k = head_loss("come", hidden, weight, mask, chunk_size=chunk_size, num_classes=3)
    strength = V * math.e + 3
    belief, uncertainty = math.e / strength, 3 / strength
    expected = -V * belief * math.log(belief) - uncertainty * math.log(uncertainty)
    torch.testing.assert_close(with_k.loss, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("chunk_size", [0, 4])
def test_come_norm_constraint_removes_the_radial_gradient(chunk_size):
    # with an identity head the logits are the hidden states, so hidden.grad is the gradient w.r.t. the logits
    hidden = torch.randn(2, 3, D, dtype=torch.float64)
    mask = torch.ones(2, 3, dtype=torch.bool)
    radial = {}
    for constrained in (True, False):
        leaf = hidden.clone().requires_grad_()
        head_loss(
            "come", leaf, torch.eye(D, dtype=torch.float64), mask, chunk_size=chunk_size, norm_constraint=constrained
        ).loss.backward()
        radial[constrained] = (leaf.grad * hidden).sum(-1)
    torch.testing.assert_close(radial[True], torch.zeros(2, 3, dtype=torch.float64), atol=1e-12, rtol=0)
    assert radial[False].abs().min() > 1e-6


# --- stop-gradient ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [0, 4])
def test_target_branch_gradient_follows_stop_gradient(chunk_size):
    # a zero predictor makes the online logits constant, so any gradient on hidden comes through the target branch
    inputs = make_inputs(bias=True)
    inputs["predictor_weight"] = torch.zeros(D, D, dtype=torch.float64)
    _, grad_stopped, _ = run("zerosiam", inputs, chunk_size=chunk_size, stop_gradient=True)
    _, grad_through, _ = run("zerosiam", inputs, chunk_size=chunk_size, stop_gradient=False)
    assert torch.count_nonzero(grad_stopped) == 0
    assert grad_through[inputs["mask"]].abs().min() > 0
    assert torch.count_nonzero(grad_through[~inputs["mask"]]) == 0


# --- chunked against naive ------------------------------------------------------------------------------------------

CASES = [
    ("tent", {}),
    ("come", {}),
    ("come", {"norm_constraint": False, "num_classes": 5}),
    ("zerosiam", {}),
    ("zerosiam", {"stop_gradient": False, "alpha": 0.7}),
]


@pytest.mark.parametrize("method,kwargs", CASES)
@pytest.mark.parametrize("chunk_size", [1, 3, 10, 64])  # 10 positions: 3 leaves a remainder, 64 exceeds N
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_matches_naive(method, kwargs, chunk_size, dtype):
    inputs = make_inputs(dtype=dtype, bias=chunk_size == 3)
    tol = {"atol": 1e-10, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 2e-5}
    assert_same(
        run(method, inputs, chunk_size=0, **kwargs), run(method, inputs, chunk_size=chunk_size, **kwargs), **tol
    )


# Granite-like scaling, Gemma-like soft-capping (a cap of 2 bends logits of this size well away from linear), both
TRANSFORMS = [{"logit_scale": 0.25}, {"softcap": 2.0}, {"logit_scale": 3.0, "softcap": 2.0}]


@pytest.mark.parametrize("method,kwargs", CASES)
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("chunk_size", [3, 64])
def test_chunked_matches_naive_with_a_logit_transform(method, kwargs, transform, chunk_size):
    # the naive path differentiates the transform with autograd; the chunked path applies its derivative by hand
    inputs = make_inputs(bias=chunk_size == 3)
    naive = run(method, inputs, chunk_size=0, **kwargs, **transform)
    assert_same(naive, run(method, inputs, chunk_size=chunk_size, **kwargs, **transform), atol=1e-10, rtol=1e-10)
    untransformed = run(method, inputs, chunk_size=0, **kwargs)
    assert not torch.allclose(naive[1], untransformed[1])  # the transform does change the gradient


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_chunked_matches_naive_with_a_logit_transform_in_fp32(transform):
    inputs = make_inputs(dtype=torch.float32, bias=True)
    naive = run("zerosiam", inputs, chunk_size=0, **transform)
    assert_same(naive, run("zerosiam", inputs, chunk_size=4, **transform), atol=2e-5, rtol=2e-5)


def test_head_logits_by_hand():
    hidden = torch.tensor([[[1.0, -2.0]]], dtype=torch.float64)
    weight = torch.tensor([[3.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    raw = torch.tensor([[[3.0, -2.0, -1.0]]], dtype=torch.float64)
    torch.testing.assert_close(head_logits(hidden, weight), raw)
    torch.testing.assert_close(head_logits(hidden, weight, logit_scale=0.5), raw / 2)
    torch.testing.assert_close(head_logits(hidden, weight, softcap=2.0), 2 * torch.tanh(raw / 2))
    torch.testing.assert_close(head_logits(hidden, weight, logit_scale=0.5, softcap=2.0), 2 * torch.tanh(raw / 4))


@pytest.mark.parametrize("chunk_size", [0, 4])
def test_logit_scale_equals_a_scaled_head(chunk_size):
    # z * s = h @ (s W).T: a scale is the same loss as a head scaled by it, gradients included
    inputs = make_inputs()
    scaled = {**inputs, "lm_head_weight": inputs["lm_head_weight"] * 0.25}
    assert_same(
        run("zerosiam", scaled, chunk_size=chunk_size),
        run("zerosiam", inputs, chunk_size=chunk_size, logit_scale=0.25),
        atol=1e-12,
        rtol=1e-10,
    )


@pytest.mark.parametrize("chunk_size", [0, 4])
def test_softcap_bounds_the_logits(chunk_size):
    # logits of +-1e4 capped at 1: the clean logit norm is at most sqrt(V), and entropy stays finite
    inputs = make_inputs()
    inputs["lm_head_weight"] = inputs["lm_head_weight"] * 1e4
    out, grad, _ = run("tent", inputs, chunk_size=chunk_size, softcap=1.0)
    assert out.clean_logit_norm.item() <= math.sqrt(V)
    assert out.entropy.item() > math.log(V) - 2.0  # all tokens within e^2 of each other in probability
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("chunk_size", [0, 4])
def test_default_transform_is_bit_identical(chunk_size):
    # the committed records were made without the transform; its defaults must not touch a bit
    inputs = make_inputs(dtype=torch.float32, bias=True)
    plain = run("zerosiam", inputs, chunk_size=chunk_size)
    explicit = run("zerosiam", inputs, chunk_size=chunk_size, logit_scale=1.0, softcap=None)
    for name in DIAGNOSTICS:
        assert torch.equal(getattr(plain[0], name), getattr(explicit[0], name))
    assert torch.equal(plain[1], explicit[1]) and torch.equal(plain[2], explicit[2])


@pytest.mark.parametrize("stop_gradient", [True, False])
def test_chunked_matches_naive_with_frozen_predictor(stop_gradient):
    inputs = make_inputs(predictor_grad=False)
    naive = run("zerosiam", inputs, chunk_size=0, stop_gradient=stop_gradient)
    chunked = run("zerosiam", inputs, chunk_size=3, stop_gradient=stop_gradient)
    assert chunked[2] is None
    assert_same(naive, chunked, atol=1e-10, rtol=1e-10)


def test_chunked_matches_naive_with_frozen_hidden():
    inputs = make_inputs()
    inputs["hidden"].requires_grad_(False)
    naive, chunked = run("zerosiam", inputs, chunk_size=0), run("zerosiam", inputs, chunk_size=4)
    assert chunked[1] is None
    torch.testing.assert_close(chunked[2], naive[2], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("method,kwargs", CASES)
def test_chunked_matches_naive_in_bf16(method, kwargs):
    inputs = make_inputs(dtype=torch.bfloat16, bias=True)
    naive, chunked = run(method, inputs, chunk_size=0, **kwargs), run(method, inputs, chunk_size=3, **kwargs)
    assert chunked[0].loss.dtype == torch.float32
    assert chunked[1].dtype == torch.bfloat16
    for name in DIAGNOSTICS:
        torch.testing.assert_close(getattr(chunked[0], name), getattr(naive[0], name), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(chunked[1], naive[1], atol=2e-2, rtol=2e-2)
    if naive[2] is not None:
        torch.testing.assert_close(chunked[2], naive[2], atol=2e-2, rtol=2e-2)
    # and close to the fp64 value: the statistics run in fp32, only the matmuls in bf16
    exact, _, _ = run(method, make_inputs(dtype=torch.float64, bias=True), chunk_size=0, **kwargs)
    torch.testing.assert_close(chunked[0].loss.double(), exact.loss, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("method,kwargs", CASES)
def test_chunked_matches_naive_under_autocast(method, kwargs):
    # autocast runs the matmuls in bf16 on both paths; the statistics stay fp32 (a bf16 row sum would be off ~4e-3)
    inputs = make_inputs(dtype=torch.float32, bias=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        naive, chunked = run(method, inputs, chunk_size=0, **kwargs), run(method, inputs, chunk_size=3, **kwargs)
    assert chunked[1].dtype == torch.float32
    for name in DIAGNOSTICS:
        torch.testing.assert_close(getattr(chunked[0], name), getattr(naive[0], name), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(chunked[1], naive[1], atol=2e-2, rtol=2e-2)
    if naive[2] is not None:
        torch.testing.assert_close(chunked[2], naive[2], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("method", HEADS)
def test_no_grad_gives_the_same_loss(method):
    inputs = make_inputs()
    with torch.no_grad():
        out, _, _ = run(method, inputs, chunk_size=4)
    assert not out.loss.requires_grad
    torch.testing.assert_close(out.loss, run(method, inputs, chunk_size=0)[0].loss.detach())


@pytest.mark.parametrize("method", HEADS)
@pytest.mark.parametrize("chunk_size", [0, 4])
def test_empty_mask_gives_zero_loss_and_zero_grads(method, chunk_size):
    inputs = make_inputs()
    inputs["mask"] = torch.zeros(B, T, dtype=torch.bool)
    out, grad_hidden, grad_predictor = run(method, inputs, chunk_size=chunk_size)
    for name in DIAGNOSTICS:
        assert getattr(out, name).item() == 0.0
    assert out.clean_top1.shape == (0,)
    assert torch.count_nonzero(grad_hidden) == 0
    if method == "zerosiam":
        assert torch.count_nonzero(grad_predictor) == 0


# --- errors ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,changes,kwargs,match",
    [
        ("sft", {}, {}, "head must be one of 'zerosiam', 'tent', 'come'"),
        ("zerosiam", {"predictor_weight": None}, {}, "needs predictor_weight"),
        ("tent", {"predictor_weight": torch.eye(D)}, {}, "has no predictor"),
        ("tent", {"hidden": torch.randn(B * T, D)}, {}, r"hidden must be \[B, T, d\]"),
        ("tent", {"lm_head_weight": torch.randn(V, D + 1)}, {}, "lm_head_weight must be"),
        ("tent", {"mask": torch.ones(B, T + 1, dtype=torch.bool)}, {}, "mask must be a bool tensor"),
        ("tent", {"mask": torch.ones(B, T)}, {}, "mask must be a bool tensor"),
        ("tent", {"lm_head_bias": torch.randn(V + 1)}, {}, "lm_head_bias must be"),
        ("zerosiam", {"predictor_weight": torch.randn(D, D + 1)}, {}, "predictor_weight must be"),
        ("tent", {}, {"chunk_size": -1}, "chunk_size must be >= 0"),
        ("tent", {}, {"num_classes": 3}, "unknown keyword arguments"),
        ("come", {}, {"num_clases": 3}, r"allowed: num_classes, norm_constraint"),
        ("come", {}, {"num_classes": 0}, "num_classes must be a positive int"),
        ("tent", {}, {"logit_scale": 0.0}, "logit_scale must be a finite number > 0"),
        ("tent", {}, {"logit_scale": float("nan")}, "logit_scale must be a finite number > 0"),
        ("tent", {}, {"softcap": -30.0}, "softcap must be None or a finite number > 0"),
    ],
)
def test_bad_arguments_raise(method, changes, kwargs, match):
    inputs = {
        "hidden": torch.randn(B, T, D),
        "lm_head_weight": torch.randn(V, D),
        "mask": torch.ones(B, T, dtype=torch.bool),
        "predictor_weight": torch.eye(D) if method == "zerosiam" else None,
        **changes,
    }
    with pytest.raises(ValueError, match=match):
        head_loss(method, **inputs, **kwargs)


def test_one_hot_batch_gives_zero_entropy_and_full_dominance():
    """A collapsed batch: every position puts all its mass on token 3."""
    from zerosiam_hf.diagnostics import top_token_dominance

    logits = torch.full((6, 8), -1e4, dtype=torch.float64)
    logits[:, 3] = 0.0
    assert torch.allclose(entropy_from_logits(logits), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert top_token_dominance(logits.argmax(dim=-1)).item() == 1.0
    assert top_token_dominance(torch.tensor([0, 1, 2, 3])).item() == 0.25
