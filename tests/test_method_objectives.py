"""Tests for zerosiam_hf.methods: each method's objective against its formula written out here, on tiny tensors."""

import math
from fractions import Fraction

import pytest
import torch
from helpers import make_model, make_tokenizer
from transformers import LogitsProcessorList

from zerosiam_hf.methods import METHODS
from zerosiam_hf.methods.em_inf import EntropyMinimizationLogitsProcessor
from zerosiam_hf.methods.grpo import per_answer_mean, token_statistics
from zerosiam_hf.methods.slot import add_delta, optimize_delta
from zerosiam_hf.methods.tlm import tlm_loss
from zerosiam_hf.methods.ttrl import vote_rewards
from zerosiam_hf.scoring import majority_vote


def softmax_rows(z: torch.Tensor) -> torch.Tensor:
    """exp(z) / sum exp(z) over the last axis, written out."""
    e = torch.exp(z - z.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def random_case(b=3, t=4, v=5, seed=0):
    """fp64 logits [b, t, v], labels [b, t] and a mask [b, t] with 1 to t positions per row."""
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(b, t, v, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, v, (b, t), generator=gen)
    lengths = torch.tensor([t, 2, 1, t, 3][:b])
    mask = torch.arange(t)[None, :] < lengths[:, None]
    return logits, labels, mask


def formula_nll(logits, labels, mask):
    """Per-row mean over masked t of log(sum_v exp z_tv) - z_t,y_t."""
    rows = []
    for i in range(logits.shape[0]):
        terms = [
            math.log(sum(math.exp(x) for x in logits[i, t].tolist())) - logits[i, t, labels[i, t]].item()
            for t in range(logits.shape[1])
            if mask[i, t]
        ]
        rows.append(sum(terms) / len(terms))
    return torch.tensor(rows, dtype=torch.float64)


# ---------------------------------------------------------------- TLM


def test_tlm_loss_value_selection_and_detached_weight():
    logits, labels, mask = random_case()
    nll = formula_nll(logits, labels, mask)
    order = nll.argsort()
    threshold = float((nll[order[0]] + nll[order[1]]) / 2)  # the lowest sample is left out, the other two count
    weight = 0.1
    z = logits.clone().requires_grad_()
    loss, out_nll, selected = tlm_loss(z, labels.masked_fill(~mask, -100), mask, threshold=threshold, weight=weight)
    expected_selected = nll > threshold
    assert selected.tolist() == expected_selected.tolist() and selected.sum() == 2
    coeff = weight * torch.exp(nll - threshold)
    expected = (coeff * nll)[expected_selected].sum() / 2
    assert torch.allclose(out_nll, nll, atol=1e-12) and not out_nll.requires_grad
    assert torch.allclose(loss, expected, atol=1e-12)
    # the weight is a constant: d loss / d z_t = coeff_b / n_selected * (softmax(z_t) - onehot(y_t)) / count_b
    loss.backward()
    expected_grad = torch.zeros_like(logits)
    for i in range(logits.shape[0]):
        if not expected_selected[i]:
            continue
        count = int(mask[i].sum())
        for t in range(logits.shape[1]):
            if mask[i, t]:
                onehot = torch.nn.functional.one_hot(labels[i, t], logits.shape[-1]).double()
                expected_grad[i, t] = coeff[i] / 2 * (softmax_rows(logits[i, t]) - onehot) / count
    assert torch.allclose(z.grad, expected_grad, atol=1e-12)


def test_tlm_loss_no_sample_selected_is_zero_with_a_graph():
    logits, labels, mask = random_case()
    z = logits.clone().requires_grad_()
    loss, _, selected = tlm_loss(z, labels, mask, threshold=1e3)
    assert not selected.any() and loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(z.grad) == 0


def test_tlm_loss_rejects_a_row_without_positions():
    logits, labels, mask = random_case()
    mask[1] = False
    with pytest.raises(ValueError, match="row 1"):
        tlm_loss(logits, labels, mask)


# ---------------------------------------------------------------- SLOT


def slot_case(seed=1, b=2, t=5, d=4, v=7):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, d, generator=gen, dtype=torch.float64)
    weight = torch.randn(v, d, generator=gen, dtype=torch.float64)
    bias = torch.randn(v, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, v, (b, t), generator=gen)
    mask = torch.arange(t)[None, :] < torch.tensor([t, 3][:b])[:, None]
    return hidden, weight, bias, labels, mask


def test_optimize_delta_first_step_is_adamw_on_the_mean_cross_entropy():
    hidden, weight, bias, labels, mask = slot_case()
    lr, eps = 0.1, 1e-5
    delta = optimize_delta(hidden, weight, bias, labels, mask, steps=1, lr=lr, weight_decay=1e-8, eps=eps)
    assert delta.shape == (2, 1, 4)
    for i in range(2):
        # g = mean over masked t of W^T (softmax(W h_t + b) - onehot(y_t)); AdamW's 1st step from 0: -lr g/(|g|+eps)
        grads = [
            weight.T @ (softmax_rows(weight @ hidden[i, t] + bias) - torch.nn.functional.one_hot(labels[i, t], 7))
            for t in range(5)
            if mask[i, t]
        ]
        g = torch.stack(grads).mean(0)
        assert torch.allclose(delta[i, 0], -lr * g / (g.abs() + eps), atol=1e-12)


def test_optimize_delta_rows_are_independent_and_lower_the_prompt_loss():
    hidden, weight, bias, labels, mask = slot_case()
    together = optimize_delta(hidden, weight, bias, labels, mask, steps=5)
    for i in range(2):
        alone = optimize_delta(hidden[i : i + 1], weight, bias, labels[i : i + 1], mask[i : i + 1], steps=5)
        assert torch.allclose(together[i : i + 1], alone, atol=1e-12, rtol=0)

    def prompt_ce(delta):
        logits = (hidden + delta) @ weight.T + bias
        return formula_nll(logits, labels, mask)

    assert (prompt_ce(together) < prompt_ce(torch.zeros_like(together))).all()
    assert torch.count_nonzero(optimize_delta(hidden, weight, bias, labels, mask, steps=0)) == 0


def test_add_delta_generate_matches_logits_by_hand_and_removes_the_hook():
    tokenizer = make_tokenizer()
    model = make_model(tokenizer).eval()
    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 256, (2, 6), generator=gen)
    delta = torch.randn(2, 1, model.config.hidden_size, generator=gen)
    settings = dict(max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_logits=True)
    with add_delta(model.lm_head, delta):
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)
    assert not model.lm_head._forward_pre_hooks
    with torch.no_grad():
        for step, step_logits in enumerate(out.logits):
            seq = out.sequences[:, : prompt.shape[1] + step]
            hidden = model.model(seq).last_hidden_state[:, -1]
            by_hand = (hidden + delta[:, 0]) @ model.lm_head.weight.T
            plain = hidden @ model.lm_head.weight.T
            assert torch.allclose(step_logits, by_hand, atol=1e-5)
            assert not torch.allclose(step_logits, plain, atol=1e-3)
            assert torch.equal(out.sequences[:, prompt.shape[1] + step], by_hand.argmax(-1))
    with pytest.raises(RuntimeError, match="boom"), add_delta(model.lm_head, delta):
        raise RuntimeError("boom")
    assert not model.lm_head._forward_pre_hooks
    with pytest.raises(ValueError, match="one delta row per sequence"), add_delta(model.lm_head, delta[:1]):
        model(prompt)


# ---------------------------------------------------------------- EM-INF


def entropy(z):
    p = softmax_rows(z)
    return -(p * torch.log(p)).sum(-1)


def em_inf_by_hand(z, steps, lr, kl_weight, threshold, betas=(0.9, 0.999), eps=1e-8):
    """EM-INF's loop with Adam and the gradient of H(p) + w KL(q || p) in logits: -p (log p + H) + w (p - q)."""
    q = softmax_rows(z)
    m = torch.zeros_like(z)
    v = torch.zeros_like(z)
    for step in range(1, steps + 1):
        p = softmax_rows(z)
        h = -(p * torch.log(p)).sum()
        if h < threshold:
            break
        g = -p * (torch.log(p) + h) + kl_weight * (p - q)
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat, v_hat = m / (1 - betas[0] ** step), v / (1 - betas[1] ** step)
        z = z - lr * m_hat / (v_hat.sqrt() + eps)
    return z


def test_em_inf_follows_adam_on_entropy_plus_kl_and_lowers_entropy():
    z = torch.tensor([[1.0, 0.5, 0.2, -0.3, 0.0, 0.8]], dtype=torch.float64)
    processor = EntropyMinimizationLogitsProcessor(n_grad_steps=3, learning_rate=0.1, kl_weight=0.05, threshold=0.0)
    out = processor(torch.zeros(1, 2, dtype=torch.long), z)
    assert torch.allclose(out[0], em_inf_by_hand(z[0], 3, 0.1, 0.05, 0.0), atol=1e-9)
    assert entropy(out[0]) < entropy(z[0])


def test_em_inf_stops_per_row_below_the_threshold():
    z = torch.tensor([[1.0, 0.5, 0.2, -0.3, 0.0, 0.8]], dtype=torch.float64)
    one_step = EntropyMinimizationLogitsProcessor(n_grad_steps=1, threshold=0.0)(None, z)
    # the threshold lies between the entropy after one step and before it: the loop must stop after one step
    threshold = float(entropy(one_step[0])) + 1e-6
    assert threshold < float(entropy(z[0]))
    stopped = EntropyMinimizationLogitsProcessor(n_grad_steps=3, threshold=threshold)(None, z)
    assert torch.equal(stopped, one_step)


def test_em_inf_rows_are_independent_and_a_confident_row_is_unchanged():
    scores = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0], [12.0, 0.0, 0.0, 0.0, 0.0]])
    assert entropy(scores[1].double()) < 0.3 < entropy(scores[0].double())
    processor = EntropyMinimizationLogitsProcessor()
    ids = torch.zeros(2, 3, dtype=torch.long)
    with torch.inference_mode():
        together = processor(ids, scores)
    alone = torch.cat([processor(ids[i : i + 1], scores[i : i + 1]) for i in range(2)])
    assert torch.equal(together, alone)
    assert torch.equal(together[1], scores[1])
    assert not torch.equal(together[0], scores[0]) and entropy(together[0]) < entropy(scores[0])


def test_em_inf_keeps_masked_logits_masked():
    scores = torch.tensor([[1.0, float("-inf"), 0.5, 0.2, float("-inf")]])
    out = EntropyMinimizationLogitsProcessor(n_grad_steps=3, threshold=0.0)(None, scores)
    assert torch.isinf(out[0, [1, 4]]).all() and torch.isfinite(out[0, [0, 2, 3]]).all()


def test_em_inf_inside_generate():
    tokenizer = make_tokenizer()
    model = make_model(tokenizer).eval()
    prompt = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(3))
    processor = EntropyMinimizationLogitsProcessor()
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        logits_processor=LogitsProcessorList([processor]),
        max_new_tokens=2,
        do_sample=False,
        return_dict_in_generate=True,
        output_logits=True,
        output_scores=True,
    )
    for raw, processed in zip(out.logits, out.scores):
        assert torch.allclose(processed, processor(None, raw), atol=1e-6)
        assert (entropy(processed.double()) <= entropy(raw.double()) + 1e-9).all()


# ---------------------------------------------------------------- TTRL


def numeric_same(a: str, b: str) -> bool:
    return Fraction(a) == Fraction(b)


def test_majority_vote_by_string_and_rewards():
    answers = ["5", "3", "5", None, "3", "5"]
    assert majority_vote(answers, str.__eq__) == "5"
    assert vote_rewards(answers, "5", str.__eq__) == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]


def test_majority_vote_groups_equal_answers_and_breaks_ties_by_first_seen():
    assert majority_vote(["1/2", "0.5", "3", "3"], numeric_same) == "1/2"
    assert vote_rewards(["1/2", "0.5", "3", "3"], "1/2", numeric_same) == [1.0, 1.0, 0.0, 0.0]
    assert majority_vote(["3", "1/2", "0.5", "3"], numeric_same) == "3"
    assert majority_vote(["1/2", "0.5", "3", "3"], str.__eq__) == "3"


def test_missing_answers_never_win():
    assert majority_vote([None, None, None, "4"], str.__eq__) == "4"
    assert vote_rewards([None, None, None, "4"], "4", str.__eq__) == [0.0, 0.0, 0.0, 1.0]
    assert majority_vote([None, None], str.__eq__) is None
    assert vote_rewards([None, None], None, str.__eq__) == [0.0, 0.0]


# ---------------------------------------------------------------- RENT and Intuitor: rewards from the statistics


def answer_statistics(temperature: float, seed: int):
    """Three answers' tokens (2, 3 and 1 of them): logits z = h W^T + c, and the per-answer statistics GRPO uses."""
    torch.manual_seed(seed)
    hidden, weight, bias = torch.randn(6, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64), None
    rows = torch.tensor([0, 0, 1, 1, 1, 2])
    _, entropy_t, certainty = token_statistics(hidden, weight, bias, torch.zeros(6, dtype=torch.long), temperature)
    stats = {"entropy": per_answer_mean(entropy_t, rows, 3), "certainty": per_answer_mean(certainty, rows, 3)}
    return hidden @ weight.T, rows, stats


def test_rent_reward_is_minus_the_mean_token_entropy_and_minus_seven_without_an_answer():
    logits, rows, stats = answer_statistics(temperature=0.8, seed=4)
    per_token = torch.stack([entropy(z / 0.8) for z in logits])  # verl: entropy of softmax(logits / T)
    expected = torch.stack([per_token[rows == i].mean() for i in range(3)])
    reward = METHODS["rent"].reward(stats, torch.tensor([True, False, True]))
    assert torch.allclose(reward, torch.stack([-expected[0], torch.tensor(-7.0, dtype=torch.float64), -expected[2]]))


def test_intuitor_reward_is_kl_from_uniform_of_the_raw_logits():
    logits, rows, stats = answer_statistics(temperature=0.9, seed=5)  # Intuitor's sampling temperature: not used here
    per_token = torch.logsumexp(logits, -1) - logits.mean(-1) - math.log(5)  # Intuitor's form, less the constant
    expected = torch.stack([per_token[rows == i].mean() for i in range(3)])
    assert torch.allclose(METHODS["intuitor"].reward(stats, None), expected)
