"""Parity of the fast AP Loss and aLRP Loss with the per-positive references of the
published algorithms (tests/ap_loss_reference.py), hand-computed values, and edge cases."""
import importlib
import math

import numpy as np
import pytest
import torch

from rs_detectron2.losses import (
    ALRPLoss,
    ALRPLossOutput,
    APLoss,
    alrp_loss,
    alrp_regression_loss,
    ap_loss,
)

from .ap_loss_reference import (
    reference_alrp_loss,
    reference_alrp_regression,
    reference_ap_loss,
)

rs_module = importlib.import_module("rs_detectron2.losses.rank_sort_loss")

DELTAS = (0.0, 0.5, 1.0, 2.0)
KINDS = (
    "continuous",
    "ties",
    "duplicates",
    "ignored",
    "one_positive",
    "no_positive",
    "no_relevant_negative",
    "negatives_above",
    "narrow",
    "wide",
)
NUM_RANDOM_CASES = 200


def make_case(seed):
    """A seeded random (scores, targets, regression losses, delta, kind)."""
    rng = np.random.default_rng(1000 + seed)
    delta = DELTAS[seed % len(DELTAS)]
    kind = KINDS[(seed // len(DELTAS)) % len(KINDS)]
    if seed < 8:
        n = (1, 2, 3, 3000, 2999, 2048, 5, 17)[seed]
    else:
        n = int(round(math.exp(rng.uniform(0, math.log(3000)))))
    spread = {"narrow": 0.05, "wide": 20.0}.get(kind, rng.uniform(0.2, 3.0))
    scores = rng.normal(0.0, spread, n)
    if kind == "ties" or rng.random() < 0.3:
        scores = np.round(scores * 4) / 4  # many exact ties on a 0.25 grid
    if kind == "duplicates":
        scores = rng.choice(rng.normal(0, 1, max(1, n // 10)), n)
    is_pos = rng.random(n) < rng.choice([0.01, 0.05, 0.2, 0.5, 0.9])
    if kind == "one_positive" or not is_pos.any():
        is_pos[:] = False
        is_pos[rng.integers(n)] = True
    if kind == "no_positive":
        is_pos[:] = False
    targets = np.zeros(n)
    # Any positive value is a positive: binary labels, IoU-like values, or larger ones.
    values = rng.choice([np.ones(n), rng.uniform(0.05, 1.0, n), rng.uniform(0.05, 3.0, n)])
    targets[is_pos] = values[is_pos]
    if kind == "ignored" or rng.random() < 0.3:
        targets[(~is_pos) & (rng.random(n) < 0.3)] = -1.0
    neg = ~is_pos
    if kind == "no_relevant_negative" and is_pos.any():
        low = scores[is_pos].min() - delta - rng.uniform(0.0, 2.0)
        scores[neg] = np.minimum(scores[neg], low)
    if kind == "negatives_above" and is_pos.any():
        high = scores[is_pos].max() + rng.choice([0.0, delta, delta + 1.0])
        scores[neg] = high + np.abs(scores[neg])
    num_pos = int(is_pos.sum())
    reg = rng.uniform(0.0, 1.0, num_pos)
    if rng.random() < 0.3:
        reg = np.round(reg * 3) / 3  # equal and zero regression losses
    return scores, targets, reg, delta, kind


def fast_ap(scores, targets, delta, dtype=torch.float64, weight=1.0):
    logits = torch.tensor(scores, dtype=dtype, requires_grad=True)
    loss = ap_loss(logits, torch.tensor(targets), delta)
    (weight * loss).backward()
    return loss, logits.grad


def fast_alrp(scores, targets, reg, delta, dtype=torch.float64, weights=(1.0, 1.0)):
    logits = torch.tensor(scores, dtype=dtype, requires_grad=True)
    reg_t = torch.tensor(reg, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                         requires_grad=True)
    out = alrp_loss(logits, torch.tensor(targets), reg_t, delta)
    (weights[0] * out.loss_cls + weights[1] * out.loss_reg).backward()
    return out, logits.grad, reg_t.grad


def max_abs(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)),
                        initial=0.0))


# --------------------------------------------------------------------------------------
# Parity with the references
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(NUM_RANDOM_CASES))
def test_ap_float64_parity_with_reference(seed):
    scores, targets, _, delta, kind = make_case(seed)
    ref_loss, ref_grad, _ = reference_ap_loss(scores, targets, delta)
    loss, grad = fast_ap(scores, targets, delta)
    assert loss.dtype == torch.float64 and grad.dtype == torch.float64
    assert abs(float(loss.detach()) - ref_loss) <= 1e-6, (kind, float(loss), ref_loss)
    assert max_abs(grad.numpy(), ref_grad) <= 1e-6, kind


@pytest.mark.parametrize("seed", range(NUM_RANDOM_CASES))
def test_alrp_float64_parity_with_reference(seed):
    scores, targets, reg, delta, kind = make_case(seed)
    ref_loss, ref_grad, ref_rank, ref_order = reference_alrp_loss(scores, targets, reg, delta)
    ref_reg, ref_reg_grad = reference_alrp_regression(reg, ref_rank, ref_order)
    out, grad, reg_grad = fast_alrp(scores, targets, reg, delta)
    assert abs(float(out.loss_cls.detach()) - ref_loss) <= 1e-6, kind
    assert max_abs(grad.numpy(), ref_grad) <= 1e-6, kind
    assert np.array_equal(out.order.numpy(), ref_order)
    np.testing.assert_allclose(out.rank.numpy(), ref_rank, rtol=1e-12, atol=1e-9)
    assert abs(float(out.loss_reg.detach()) - ref_reg) <= 1e-6, kind
    assert max_abs(reg_grad.numpy(), ref_reg_grad) <= 1e-6, kind


def test_random_cases_cover_the_interesting_branches():
    """The random cases exercise interpolation, the aLRP eps and every kind."""
    interpolated = 0
    kinds = set()
    with_gradient = 0
    for seed in range(NUM_RANDOM_CASES):
        scores, targets, reg, delta, kind = make_case(seed)
        kinds.add(kind)
        interpolated += reference_ap_loss(scores, targets, delta)[2]
        with_gradient += np.abs(reference_alrp_loss(scores, targets, reg, delta)[1]).max(
            initial=0.0) > 0
    assert kinds == set(KINDS)
    assert interpolated > 1000
    assert with_gradient > NUM_RANDOM_CASES // 2


def test_regression_reference_is_the_published_formula():
    """The loop of the reference equals the published head's vectorised expression."""
    scores, targets, reg, delta, _ = make_case(41)
    _, _, rank, order = reference_alrp_loss(scores, targets, reg, delta)
    descending = order[::-1]
    published = np.mean(np.cumsum(reg[descending]) / rank[descending])
    assert len(reg) > 10
    assert abs(reference_alrp_regression(reg, rank, order)[0] - published) <= 1e-12


@pytest.mark.parametrize("seed", range(0, NUM_RANDOM_CASES, 5))
def test_float32_parity_with_reference(seed):
    scores, targets, reg, delta, _ = make_case(seed)
    s32 = scores.astype(np.float32).astype(np.float64)
    r32 = reg.astype(np.float32).astype(np.float64)
    ref_loss, ref_grad, _ = reference_ap_loss(s32, targets, delta)
    loss, grad = fast_ap(s32, targets, delta, torch.float32)
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32
    scale = max(np.abs(ref_grad).max(initial=0.0), 1e-12)
    np.testing.assert_allclose(float(loss.detach()), ref_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad.numpy(), ref_grad, rtol=1e-4, atol=1e-5 * scale)

    ref = reference_alrp_loss(s32, targets, r32, delta)
    out, grad, reg_grad = fast_alrp(s32, targets, r32, delta, torch.float32)
    assert out.loss_cls.dtype == torch.float32 and out.rank.dtype == torch.float32
    assert out.loss_reg.dtype == torch.float32 and grad.dtype == torch.float32
    scale = max(np.abs(ref[1]).max(initial=0.0), 1e-12)
    np.testing.assert_allclose(float(out.loss_cls.detach()), ref[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad.numpy(), ref[1], rtol=1e-4, atol=1e-5 * scale)
    if len(reg):
        ref_reg = reference_alrp_regression(r32, ref[2], ref[3])
        np.testing.assert_allclose(float(out.loss_reg.detach()), ref_reg[0], rtol=1e-5)
        np.testing.assert_allclose(reg_grad.numpy(), ref_reg[1], rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", [8, 9, 10, 44])
def test_half_precision_logits(dtype, seed):
    scores, targets, reg, delta, _ = make_case(seed)
    rounded = torch.tensor(scores, dtype=dtype).double().numpy()
    ref_loss, ref_grad, _ = reference_ap_loss(rounded, targets, delta)
    loss, grad = fast_ap(scores, targets, delta, dtype)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    np.testing.assert_allclose(float(loss.detach()), ref_loss, rtol=1e-5, atol=1e-6)
    scale = max(np.abs(ref_grad).max(initial=0.0), 1e-12)
    np.testing.assert_allclose(grad.double().numpy(), ref_grad, rtol=1e-2, atol=1e-2 * scale)

    ref = reference_alrp_loss(rounded, targets, reg, delta)
    out, grad, _ = fast_alrp(scores, targets, reg, delta, dtype)
    assert out.loss_cls.dtype == torch.float32 and grad.dtype == dtype
    np.testing.assert_allclose(float(out.loss_cls.detach()), ref[0], rtol=1e-5, atol=1e-6)
    scale = max(np.abs(ref[1]).max(initial=0.0), 1e-12)
    np.testing.assert_allclose(grad.double().numpy(), ref[1], rtol=1e-2, atol=1e-2 * scale)


def test_small_chunks_give_the_same_result(monkeypatch):
    """Scanning the negatives (and the positives among themselves) in tiny chunks changes
    nothing."""
    scores, targets, reg, delta, _ = make_case(13)
    full_ap = fast_ap(scores, targets, delta)[1]
    full_alrp = fast_alrp(scores, targets, reg, delta)
    monkeypatch.setattr(rs_module, "_NEGATIVE_CHUNK_CPU", 7)
    monkeypatch.setattr(rs_module, "_NEGATIVE_CHUNK_ACCELERATOR", 7)
    assert max_abs(fast_ap(scores, targets, delta)[1], full_ap) <= 1e-12
    chunked = fast_alrp(scores, targets, reg, delta)
    assert max_abs(chunked[1], full_alrp[1]) <= 1e-12
    assert max_abs(chunked[0].rank, full_alrp[0].rank) <= 1e-9


# --------------------------------------------------------------------------------------
# Hand-computed values
# --------------------------------------------------------------------------------------


def test_ap_hand_example_with_interpolation():
    """Positives at 0 and 1, two negatives at 1.5, δ = 1.

    Lower positive: rank⁺' = 1 + H(1) = 2, FP = 2 H(1.5) = 2, prec = 1/2.
    Upper positive: rank⁺' = 1, FP = 2 H(0.5) = 1.5, prec = 0.4 < 1/2: interpolated to
    1/2, its negatives' share scaled by (1 - 1/2) / (1 - 0.4) = 5/6.
    """
    scores = [0.0, 1.0, 1.5, 1.5]
    targets = [1.0, 1.0, 0.0, 0.0]
    loss, grad = fast_ap(scores, targets, 1.0)
    # negatives: (H(1.5)/4 + H(0.5)/2.5 * 5/6) / 2 = (1/4 + 1/4) / 2
    expected = [-0.25, -0.25, 0.25, 0.25]
    assert abs(float(loss.detach()) - 0.5) <= 1e-12
    np.testing.assert_allclose(grad.numpy(), expected, atol=1e-12)
    ref_loss, ref_grad, interpolated = reference_ap_loss(scores, targets, 1.0)
    assert interpolated == 1 and abs(ref_loss - 0.5) <= 1e-12
    np.testing.assert_allclose(ref_grad, expected, atol=1e-12)


def test_ap_hand_example_without_interpolation():
    """Positives at 0 and 1, one negative at 0.5, δ = 1: precisions 2/2.75 and 0.8."""
    scores = [0.0, 0.5, 1.0]
    targets = [1.0, 0.0, 1.0]
    loss, grad = fast_ap(scores, targets, 1.0)
    p0, p1 = 2 / 2.75, 0.8
    expected = [-(1 - p0) / 2, (0.75 / 2.75 + 0.25 / 1.25) / 2, -(1 - p1) / 2]
    assert abs(float(loss.detach()) - (1 - (p0 + p1) / 2)) <= 1e-12
    np.testing.assert_allclose(grad.numpy(), expected, atol=1e-12)
    assert reference_ap_loss(scores, targets, 1.0)[2] == 0


def test_alrp_hand_example():
    """Positives at 0 and 1 with regression losses 0.2 and 0.6, negatives at 1.5, δ = 1.

    Lower positive: rank⁺' = 2, FP = 2, rank = 4, update (1 · 0.6 + 2) / 4 = 0.65.
    Upper positive: rank⁺' = 1, FP = 1.5, rank = 2.5, update 1.5 / 2.5 = 0.6.
    Regression, descending: (0.6 / 2.5 + 0.8 / 4) / 2 = 0.22.
    """
    scores = [0.0, 1.0, 1.5, 1.5]
    targets = [1.0, 1.0, 0.0, 0.0]
    out, grad, reg_grad = fast_alrp(scores, targets, [0.2, 0.6], 1.0)
    assert isinstance(out, ALRPLossOutput)
    assert abs(float(out.loss_cls.detach()) - 0.55) <= 1e-12
    np.testing.assert_allclose(grad.numpy(), [-0.325, -0.3, 0.3125, 0.3125], atol=1e-12)
    np.testing.assert_allclose(out.rank.numpy(), [4.0, 2.5], atol=1e-12)
    assert out.order.tolist() == [0, 1]
    assert abs(float(out.loss_reg.detach()) - 0.22) <= 1e-12
    np.testing.assert_allclose(reg_grad.numpy(), [0.125, 0.325], atol=1e-12)
    ref = reference_alrp_loss(scores, targets, [0.2, 0.6], 1.0)
    assert abs(ref[0] - 0.55) <= 1e-12
    np.testing.assert_allclose(ref[1], [-0.325, -0.3, 0.3125, 0.3125], atol=1e-12)


@pytest.mark.parametrize("delta", [0.0, 0.1])
def test_all_negatives_above_all_positives(delta):
    """P distinct positives 1 apart, N negatives all more than δ above them.

    The positive p-th from the top has precision p / (p + N); the lowest has the largest,
    P / (P + N), and interpolation carries it to all: the loss is N / (P + N), each positive
    gets -(N / (P + N)) / P and each negative 1 / (P + N).
    """
    num_pos, num_neg = 7, 5
    scores = np.concatenate([np.arange(num_pos, dtype=float), 10.0 + np.arange(num_neg)])
    targets = np.concatenate([np.ones(num_pos), np.zeros(num_neg)])
    loss, grad = fast_ap(scores, targets, delta)
    tot = num_pos + num_neg
    assert abs(float(loss.detach()) - num_neg / tot) <= 1e-12
    np.testing.assert_allclose(grad.numpy()[:num_pos], -num_neg / tot / num_pos, atol=1e-12)
    np.testing.assert_allclose(grad.numpy()[num_pos:], 1 / tot, atol=1e-12)
    # aLRP (no interpolation): mean of N / (p + N), and a regression part.
    reg = np.linspace(0.1, 0.7, num_pos)
    out, _, _ = fast_alrp(scores, targets, reg, delta)
    p = np.arange(1, num_pos + 1)
    assert abs(float(out.loss_cls.detach()) - np.mean(num_neg / (p + num_neg))) <= 1e-12
    np.testing.assert_allclose(out.rank.numpy(), (p + num_neg)[::-1], atol=1e-12)


@pytest.mark.parametrize("delta", [0.0, 0.5])
def test_all_scores_tied(delta):
    """Every score equal: H = H(0) (1/2, or 1 for δ = 0) everywhere."""
    num_pos, num_neg = 4, 6
    scores = np.zeros(num_pos + num_neg)
    targets = np.r_[np.ones(num_pos), np.zeros(num_neg)]
    h0 = 0.5 if delta > 0 else 1.0
    rank_pos = 1 + h0 * (num_pos - 1)
    prec = rank_pos / (rank_pos + h0 * num_neg)
    loss, grad = fast_ap(scores, targets, delta)
    assert abs(float(loss.detach()) - (1 - prec)) <= 1e-12
    np.testing.assert_allclose(grad.numpy()[:num_pos], -(1 - prec) / num_pos, atol=1e-12)
    reg = np.full(num_pos, 0.5)
    out, grad, _ = fast_alrp(scores, targets, reg, delta)
    assert abs(float(out.loss_cls.detach()) - (1 - prec)) <= 1e-12
    update = (h0 * (num_pos - 1) * 0.5 + h0 * num_neg) / (rank_pos + h0 * num_neg)
    np.testing.assert_allclose(grad.numpy()[:num_pos], -update / num_pos, atol=1e-12)
    # Ties keep the flattened order (a stable sort).
    assert out.order.tolist() == list(range(num_pos))


def test_single_positive():
    scores = np.array([0.3, 0.0, 0.5, -2.0, 1.4])
    targets = np.array([1.0, 0.0, 0.0, 0.0, 0.0])
    delta = 1.0
    fp = 0.5 * 0.7 + 0.5 * 1.2 + 0.0 + 1.0  # H(-0.3), H(0.2), H(-2.3), H(1.1)
    loss, grad = fast_ap(scores, targets, delta)
    assert abs(float(loss.detach()) - fp / (1 + fp)) <= 1e-12
    assert abs(float(grad[0]) + fp / (1 + fp)) <= 1e-12
    assert abs(float(grad.sum())) <= 1e-12
    out, grad, reg_grad = fast_alrp(scores, targets, [0.4], delta)
    assert abs(float(out.loss_cls.detach()) - fp / (1 + fp)) <= 1e-12
    assert abs(float(grad[0]) + fp / (1 + fp)) <= 1e-12
    assert abs(float(out.loss_reg.detach()) - 0.4 / (1 + fp)) <= 1e-12
    assert abs(float(reg_grad[0]) - 1 / (1 + fp)) <= 1e-12


# --------------------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------------------


def test_no_positive_gives_attached_zeros():
    logits = torch.randn(40, 3, requires_grad=True)
    targets = torch.zeros(40, 3)
    targets[:5] = -1
    loss = ap_loss(logits, targets)
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert logits.grad.shape == logits.shape and torch.count_nonzero(logits.grad) == 0

    logits.grad = None
    reg = torch.zeros(0, requires_grad=True)
    out = alrp_loss(logits, targets, reg)
    assert float(out.loss_cls.detach()) == 0.0 and float(out.loss_reg.detach()) == 0.0
    assert out.loss_cls.requires_grad and out.loss_reg.requires_grad
    assert out.rank.numel() == 0 and out.order.numel() == 0
    (out.loss_cls + out.loss_reg).backward()
    assert torch.count_nonzero(logits.grad) == 0 and reg.grad.shape == (0,)


def test_empty_input():
    logits = torch.zeros(0, 80, requires_grad=True)
    loss = ap_loss(logits, torch.zeros(0, 80))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad.shape == (0, 80)


@pytest.mark.parametrize("delta", [0.0, 1.0])
def test_no_relevant_negative(delta):
    """Every precision is 1: AP and the aLRP classification part are 0 with no gradient;
    the aLRP regression part is still there (rank = rank⁺')."""
    logits = torch.tensor([2.0, 3.0, 4.0, -5.0, -6.0, 9.0], dtype=torch.float64,
                          requires_grad=True)
    targets = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, -1.0], dtype=torch.float64)
    loss = ap_loss(logits, targets, delta)
    loss.backward()
    assert float(loss) == 0.0 and torch.count_nonzero(logits.grad) == 0
    logits.grad = None
    reg = torch.tensor([0.5, 0.2, 0.1], dtype=torch.float64, requires_grad=True)
    out = alrp_loss(logits, targets, reg, delta)
    (out.loss_cls + out.loss_reg).backward()
    assert float(out.loss_cls) == 0.0 and torch.count_nonzero(logits.grad) == 0
    np.testing.assert_allclose(out.rank.numpy(), [3.0, 2.0, 1.0])
    assert abs(float(out.loss_reg) - (0.1 / 1 + 0.3 / 2 + 0.8 / 3) / 3) <= 1e-12


def test_alrp_eps_threshold_and_ap_has_none():
    """A false-positive mass of 1e-6 is below aLRP's eps (no update) but AP updates."""
    delta = 1.0
    logits = torch.tensor([0.0, -1.0 + 2e-6], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1.0, 0.0], dtype=torch.float64)  # H = 1e-6
    out = alrp_loss(logits, targets, torch.tensor([0.3], dtype=torch.float64), delta)
    out.loss_cls.backward()
    assert 0 < float(out.loss_cls) < 2e-6
    assert torch.count_nonzero(logits.grad) == 0
    logits.grad = None
    loss = ap_loss(logits, targets, delta)
    loss.backward()
    assert float(logits.grad[0]) < 0 < float(logits.grad[1])
    # Just above eps, aLRP updates.
    logits2 = torch.tensor([0.0, -1.0 + 4e-5], dtype=torch.float64, requires_grad=True)
    alrp_loss(logits2, targets, torch.tensor([0.3], dtype=torch.float64), delta)[0].backward()
    assert float(logits2.grad[0]) < 0 < float(logits2.grad[1])


def test_gradients_sum_to_zero_at_scale():
    """300,000 entries and 1,500 positives (a P x N float64 matrix would be 3.6 GB): what
    the positives lose the negatives gain, for both losses."""
    gen = torch.Generator().manual_seed(0)
    n = 300_000
    logits = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)
    targets = torch.zeros(n, dtype=torch.float64)
    pos = torch.randperm(n, generator=gen)[:1500]
    targets[pos] = 1.0
    with torch.no_grad():
        logits[pos] += 2.0
    loss = ap_loss(logits, targets)
    loss.backward()
    assert 0 < float(loss) < 1
    assert abs(float(logits.grad.sum())) <= 1e-9 and float(logits.grad.abs().sum()) > 0.1
    logits.grad = None
    reg = torch.rand(1500, generator=gen, dtype=torch.float64)
    alrp_loss(logits, targets, reg).loss_cls.backward()
    assert abs(float(logits.grad.sum())) <= 1e-9 and float(logits.grad.abs().sum()) > 0.1


def test_positive_values_do_not_matter():
    """Any target > 0 is a positive: labels of 1 or arbitrary positive values agree."""
    scores, binary, reg, delta, _ = make_case(45)
    binary = np.where(binary > 0, 1.0, binary)
    targets = binary.copy()
    is_pos = targets > 0
    targets[is_pos] = np.random.default_rng(3).uniform(0.01, 5.0, int(is_pos.sum()))
    assert is_pos.sum() > 3
    loss_a, grad_a = fast_ap(scores, targets, delta)
    loss_b, grad_b = fast_ap(scores, binary, delta)
    assert float(loss_a.detach()) == float(loss_b.detach())
    assert torch.equal(grad_a, grad_b)
    out_a, grad_a, _ = fast_alrp(scores, targets, reg, delta)
    out_b, grad_b, _ = fast_alrp(scores, binary, reg, delta)
    assert torch.equal(grad_a, grad_b) and torch.equal(out_a.rank, out_b.rank)


def test_ignored_entries_have_no_effect():
    scores, targets, reg, delta, _ = make_case(53)
    rng = np.random.default_rng(0)
    where = rng.integers(0, len(scores) + 1, 300)
    scores2 = np.insert(scores, where, rng.normal(0, 5, 300))
    targets2 = np.insert(targets, where, rng.choice([-1.0, -0.5, -2.0], 300))
    ignored = np.insert(np.zeros(len(scores), bool), where, True)
    loss_a, grad_a = fast_ap(scores, targets, delta)
    loss_b, grad_b = fast_ap(scores2, targets2, delta)
    assert abs(float(loss_a.detach()) - float(loss_b.detach())) <= 1e-12
    assert np.all(grad_b.numpy()[ignored] == 0)
    np.testing.assert_allclose(grad_b.numpy()[~ignored], grad_a.numpy(), atol=1e-12)
    out_a, grad_a, _ = fast_alrp(scores, targets, reg, delta)
    out_b, grad_b, _ = fast_alrp(scores2, targets2, reg, delta)
    assert np.all(grad_b.numpy()[ignored] == 0)
    np.testing.assert_allclose(grad_b.numpy()[~ignored], grad_a.numpy(), atol=1e-12)
    assert abs(float(out_a.loss_reg.detach()) - float(out_b.loss_reg.detach())) <= 1e-12


# --------------------------------------------------------------------------------------
# Autograd wiring
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("a", [1.0, 2.5, -0.5, 0.0])
def test_ap_gradient_scales_with_the_incoming_gradient(a):
    scores, targets, _, delta, _ = make_case(41)
    _, ref_grad, _ = reference_ap_loss(scores, targets, delta)
    assert np.abs(ref_grad).max() > 0
    _, grad = fast_ap(scores, targets, delta, weight=a)
    np.testing.assert_allclose(grad.numpy(), a * ref_grad, atol=1e-9)
    # torch.autograd.grad with an explicit incoming gradient, the same.
    logits = torch.tensor(scores, requires_grad=True)
    loss = ap_loss(logits, torch.tensor(targets), delta)
    (g,) = torch.autograd.grad(loss, logits, grad_outputs=torch.tensor(a, dtype=loss.dtype))
    np.testing.assert_allclose(g.numpy(), a * ref_grad, atol=1e-9)


@pytest.mark.parametrize("a,b", [(1.0, 1.0), (2.0, 0.5), (0.0, 3.0), (-1.5, 0.0)])
def test_alrp_outputs_route_their_own_gradient(a, b):
    """loss_cls sends a · (aLRP update) to the logits and nothing to the regression
    losses; loss_reg sends b · its derivative to the regression losses only."""
    scores, targets, reg, delta, _ = make_case(85)
    ref = reference_alrp_loss(scores, targets, reg, delta)
    _, ref_reg_grad = reference_alrp_regression(reg, ref[2], ref[3])
    assert np.abs(ref[1]).max() > 0 and len(reg) > 1
    _, grad, reg_grad = fast_alrp(scores, targets, reg, delta, weights=(a, b))
    np.testing.assert_allclose(grad.numpy(), a * ref[1], atol=1e-9)
    np.testing.assert_allclose(reg_grad.numpy(), b * ref_reg_grad, atol=1e-12)


def test_regression_loss_gradcheck():
    """The regression part is an ordinary differentiable function of the losses."""
    scores, targets, reg, delta, _ = make_case(90)
    reg_t = torch.tensor(reg, requires_grad=True)
    out = alrp_loss(torch.tensor(scores), torch.tensor(targets), reg_t, delta)
    assert torch.autograd.gradcheck(
        lambda r: alrp_regression_loss(r, out.rank, out.order), (reg_t,)
    )


def test_no_gradient_requested_still_gives_losses():
    scores, targets, reg, delta, _ = make_case(29)
    with torch.no_grad():
        loss = ap_loss(torch.tensor(scores), torch.tensor(targets), delta)
        out = alrp_loss(torch.tensor(scores), torch.tensor(targets), torch.tensor(reg), delta)
    ref = reference_alrp_loss(scores, targets, reg, delta)
    assert abs(float(loss) - reference_ap_loss(scores, targets, delta)[0]) <= 1e-6
    assert abs(float(out.loss_cls) - ref[0]) <= 1e-6
    assert abs(float(out.loss_reg) - reference_alrp_regression(reg, ref[2], ref[3])[0]) <= 1e-6


# --------------------------------------------------------------------------------------
# Inputs, shapes, modules, devices
# --------------------------------------------------------------------------------------


def test_modules_and_multidimensional_input():
    torch.manual_seed(0)
    logits = torch.randn(300, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.zeros(300, 4, dtype=torch.float64)
    targets[torch.arange(0, 300, 10), torch.arange(30) % 4] = 1.0
    targets[-5:] = -1.0
    flat = logits.detach().numpy().ravel(), targets.numpy().ravel()

    criterion = APLoss(delta=0.5)
    assert "delta=0.5" in repr(criterion)
    loss = criterion(logits, targets)
    loss.backward()
    ref_loss, ref_grad, _ = reference_ap_loss(*flat, 0.5)
    assert abs(float(loss) - ref_loss) <= 1e-9
    assert logits.grad.shape == (300, 4)
    np.testing.assert_allclose(logits.grad.numpy().ravel(), ref_grad, atol=1e-9)

    logits.grad = None
    # Regression losses in the order of the positives in the flattened targets.
    reg = torch.rand(30, dtype=torch.float64)
    criterion = ALRPLoss()
    assert "delta=1.0" in repr(criterion)
    out = criterion(logits, targets, reg)
    out.loss_cls.backward()
    ref = reference_alrp_loss(*flat, reg.numpy(), 1.0)
    assert abs(float(out.loss_cls) - ref[0]) <= 1e-9
    np.testing.assert_allclose(logits.grad.numpy().ravel(), ref[1], atol=1e-9)
    # The head-style call: unpack and use.
    loss_cls, loss_reg, rank, order = out
    assert loss_reg.ndim == 0 and rank.shape == (30,) and order.dtype == torch.int64


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_inputs_raise(bad):
    logits = torch.randn(20)
    logits[3] = bad
    targets = torch.zeros(20)
    targets[0] = 1.0
    with pytest.raises(FloatingPointError, match="ap_loss"):
        ap_loss(logits, targets)
    with pytest.raises(FloatingPointError, match="alrp_loss"):
        alrp_loss(logits, targets, torch.ones(1))
    with pytest.raises(FloatingPointError, match="regression_losses"):
        alrp_loss(torch.randn(20), targets, torch.tensor([bad]))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same number of elements"):
        ap_loss(torch.randn(5), torch.zeros(6))
    with pytest.raises(ValueError, match="delta"):
        ap_loss(torch.randn(5), torch.zeros(5), delta=-0.1)
    with pytest.raises(ValueError, match="delta"):
        alrp_loss(torch.randn(5), torch.zeros(5), torch.zeros(0), delta=float("nan"))
    with pytest.raises(ValueError, match="delta"):
        APLoss(delta=-1.0)
    with pytest.raises(TypeError, match="floating point"):
        ap_loss(torch.arange(5), torch.zeros(5))
    with pytest.raises(ValueError, match="NaN"):
        ap_loss(torch.randn(3), torch.tensor([1.0, float("nan"), 0.0]))
    targets = torch.tensor([1.0, 0.0, 1.0, -1.0])
    with pytest.raises(ValueError, match="2 positives"):
        alrp_loss(torch.randn(4), targets, torch.ones(3))
    with pytest.raises(TypeError, match="regression_losses"):
        alrp_loss(torch.randn(4), targets, torch.ones(2, dtype=torch.long))


def test_integer_targets():
    scores, targets, _, delta, _ = make_case(33)
    labels = np.where(targets > 0, 1, np.where(targets < 0, -1, 0)).astype(np.int64)
    logits = torch.tensor(scores, requires_grad=True)
    ap_loss(logits, torch.tensor(labels), delta).backward()
    np.testing.assert_allclose(logits.grad.numpy(), reference_ap_loss(scores, labels, delta)[1],
                               atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_reference():
    scores, targets, reg, delta, _ = make_case(45)
    logits = torch.tensor(scores, device="cuda", requires_grad=True)
    y = torch.tensor(targets, device="cuda")
    loss = ap_loss(logits, y, delta)
    loss.backward()
    ref_loss, ref_grad, _ = reference_ap_loss(scores, targets, delta)
    assert abs(float(loss) - ref_loss) <= 1e-6
    np.testing.assert_allclose(logits.grad.cpu().numpy(), ref_grad, atol=1e-6)
    logits.grad = None
    reg_t = torch.tensor(reg, device="cuda", requires_grad=True)
    out = alrp_loss(logits, y, reg_t, delta)
    (out.loss_cls + out.loss_reg).backward()
    ref = reference_alrp_loss(scores, targets, reg, delta)
    assert abs(float(out.loss_cls) - ref[0]) <= 1e-6
    np.testing.assert_allclose(logits.grad.cpu().numpy(), ref[1], atol=1e-6)
    assert out.order.cpu().tolist() == ref[3].tolist()
