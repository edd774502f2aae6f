"""Parity of the fast RS Loss with the slow reference written from docs/rs_loss.md, and its
edge cases."""
import importlib
import math

import numpy as np
import pytest
import torch

from rs_detectron2.losses import RankSortLoss, rank_sort_loss

# The module itself (the package re-exports a function of the same name).
rs_module = importlib.import_module("rs_detectron2.losses.rank_sort_loss")

from .rank_sort_reference import reference_rank_sort

DELTAS = (0.0, 0.5, 1.0)
NUM_RANDOM_CASES = 240


def make_case(seed):
    """A seeded random (logits, targets, delta, kind) covering the edge cases of docs/rs_loss.md."""
    rng = np.random.default_rng(seed)
    delta = DELTAS[seed % 3]
    kind = (
        "one_positive",
        "no_relevant_negative",
        "equal_iou",
        "no_positive",
        "ties",
        "duplicates",
        "ignored",
        "continuous",
    )[(seed // 3) % 8]
    # Sizes from 1 to 5,000, log-uniform, with both ends always present.
    if seed < 6:
        n = (1, 2, 3, 5000, 4999, 4096)[seed]
    else:
        n = int(round(math.exp(rng.uniform(0, math.log(5000)))))
    scores = rng.normal(0.0, rng.uniform(0.2, 3.0), n)
    if kind == "ties" or rng.random() < 0.3:
        scores = np.round(scores * 4) / 4  # many exact ties on a 0.25 grid
    if kind == "duplicates":
        scores = rng.choice(rng.normal(0, 1, max(1, n // 10)), n)  # each value repeated
    targets = np.zeros(n)
    pos_fraction = rng.choice([0.01, 0.05, 0.2, 0.5, 0.9])
    is_pos = rng.random(n) < pos_fraction
    if kind == "one_positive" or not is_pos.any():
        is_pos[:] = False
        is_pos[rng.integers(n)] = True
    if kind == "no_positive":
        is_pos[:] = False
    ious = rng.uniform(0.05, 1.0, n)
    if rng.random() < 0.4:
        ious = np.ceil(ious * 5) / 5  # tied IoUs
    if kind == "equal_iou":
        ious[:] = rng.choice([0.5, 1.0, 0.73])
    targets[is_pos] = ious[is_pos]
    if kind == "ignored" or rng.random() < 0.3:
        ignore = (~is_pos) & (rng.random(n) < 0.3)
        targets[ignore] = -1.0
    if kind == "no_relevant_negative" and is_pos.any():
        low = scores[is_pos].min() - delta - rng.uniform(0.0, 2.0)
        neg = ~is_pos
        scores[neg] = np.minimum(scores[neg], low)
    return scores, targets, delta, kind


def fast_rank_sort(scores, targets, delta, dtype=torch.float64, weights=(1.0, 1.0)):
    logits = torch.tensor(scores, dtype=dtype, requires_grad=True)
    y = torch.tensor(targets, dtype=torch.float32 if dtype != torch.float64 else torch.float64)
    loss_rank, loss_sort = rank_sort_loss(logits, y, delta)
    (weights[0] * loss_rank + weights[1] * loss_sort).backward()
    return loss_rank, loss_sort, logits.grad


def split_gradients(scores, targets, delta, dtype=torch.float64):
    """Losses, then the gradient routed to loss_rank alone and to loss_sort alone."""
    lr, ls, g_rank = fast_rank_sort(scores, targets, delta, dtype, (1.0, 0.0))
    _, _, g_sort = fast_rank_sort(scores, targets, delta, dtype, (0.0, 1.0))
    return float(lr.detach()), float(ls.detach()), g_rank.double().numpy(), g_sort.double().numpy()


@pytest.mark.parametrize("seed", range(NUM_RANDOM_CASES))
def test_float64_parity_with_reference(seed):
    scores, targets, delta, kind = make_case(seed)
    ref = reference_rank_sort(scores, targets, delta)
    got = split_gradients(scores, targets, delta)
    assert abs(got[0] - ref[0]) <= 1e-6, (kind, got[0], ref[0])
    assert abs(got[1] - ref[1]) <= 1e-6, (kind, got[1], ref[1])
    assert np.max(np.abs(got[2] - ref[2]), initial=0) <= 1e-6, kind
    assert np.max(np.abs(got[3] - ref[3]), initial=0) <= 1e-6, kind
    # The combined gradient of L_rank + L_sort is the g of docs/rs_loss.md.
    _, _, g = fast_rank_sort(scores, targets, delta)
    assert np.max(np.abs(g.numpy() - (ref[2] + ref[3])), initial=0) <= 1e-6


@pytest.mark.parametrize("seed", range(0, NUM_RANDOM_CASES, 4))
def test_float32_parity_with_reference(seed):
    scores, targets, delta, _ = make_case(seed)
    scores32 = scores.astype(np.float32)
    ref = reference_rank_sort(scores32.astype(np.float64), targets.astype(np.float32), delta)
    lr, ls, g = fast_rank_sort(scores32, targets, delta, torch.float32)
    assert lr.dtype == torch.float32 and ls.dtype == torch.float32
    assert g.dtype == torch.float32
    ref_g = ref[2] + ref[3]
    scale = max(np.max(np.abs(ref_g), initial=0.0), 1e-12)
    np.testing.assert_allclose(float(lr), ref[0], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(float(ls), ref[1], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(g.numpy(), ref_g, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("seed", [6, 7, 8, 40])
def test_half_precision_logits(dtype, seed):
    scores, targets, delta, _ = make_case(seed)
    rounded = torch.tensor(scores, dtype=dtype).double().numpy()
    ref = reference_rank_sort(rounded, targets.astype(np.float32), delta)
    lr, ls, g = fast_rank_sort(scores, targets, delta, dtype)
    assert lr.dtype == torch.float32 and ls.dtype == torch.float32
    assert g.dtype == dtype
    np.testing.assert_allclose(float(lr), ref[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(ls), ref[1], rtol=1e-4, atol=1e-6)
    ref_g = ref[2] + ref[3]
    scale = max(np.max(np.abs(ref_g), initial=0.0), 1e-12)
    np.testing.assert_allclose(g.double().numpy(), ref_g, rtol=1e-2, atol=1e-2 * scale)


def test_small_chunks_give_the_same_result(monkeypatch):
    """Chunking the negatives and blocking the positive pairs does not change a value."""
    scores, targets, delta, _ = make_case(11)
    full = split_gradients(scores, targets, delta)
    monkeypatch.setattr(rs_module, "_NEGATIVE_CHUNK_CPU", 7)
    monkeypatch.setattr(rs_module, "_NEGATIVE_CHUNK_ACCELERATOR", 7)
    monkeypatch.setattr(rs_module, "_PAIR_BLOCK", 16)
    chunked = split_gradients(scores, targets, delta)
    ref = reference_rank_sort(scores, targets, delta)
    for a, b, r in zip(full, chunked, ref):
        assert np.max(np.abs(np.asarray(a) - np.asarray(b))) <= 1e-9
        assert np.max(np.abs(np.asarray(b) - np.asarray(r))) <= 1e-6


@pytest.mark.parametrize("a,b", [(1.0, 1.0), (2.0, 0.5), (0.0, 3.0), (-1.5, 0.25)])
def test_output_weights_scale_their_own_gradient(a, b):
    scores, targets, delta, _ = make_case(23)
    _, _, g_rank, g_sort = reference_rank_sort(scores, targets, delta)
    _, _, g = fast_rank_sort(scores, targets, delta, weights=(a, b))
    assert np.abs(g_rank).max() > 0 and np.abs(g_sort).max() > 0
    np.testing.assert_allclose(g.numpy(), a * g_rank + b * g_sort, atol=1e-9)


def test_no_positive_gives_attached_zeros():
    logits = torch.randn(50, 3, requires_grad=True)
    targets = torch.zeros(50, 3)
    targets[:5] = -1
    loss_rank, loss_sort = rank_sort_loss(logits, targets)
    assert float(loss_rank) == 0.0 and float(loss_sort) == 0.0
    assert loss_rank.requires_grad and loss_sort.requires_grad
    (loss_rank + loss_sort).backward()
    assert logits.grad.shape == logits.shape
    assert torch.count_nonzero(logits.grad) == 0


def test_empty_input():
    logits = torch.zeros(0, 80, requires_grad=True)
    loss_rank, loss_sort = rank_sort_loss(logits, torch.zeros(0, 80))
    (loss_rank + loss_sort).backward()
    assert float(loss_rank) == 0.0 and logits.grad.shape == (0, 80)


def test_no_relevant_negative_means_no_ranking_loss():
    logits = torch.tensor([2.0, 3.0, 4.0, -5.0, -6.0], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0.9, 0.5, 0.7, 0.0, 0.0], dtype=torch.float64)
    loss_rank, loss_sort = rank_sort_loss(logits, targets, 0.5)
    assert float(loss_rank) == 0.0
    assert float(loss_sort) > 0.0  # sorting still computed
    (loss_rank + loss_sort).backward()
    assert torch.all(logits.grad[3:] == 0)


def test_equal_ious_give_no_sorting_loss():
    logits = torch.randn(200, dtype=torch.float64, requires_grad=True)
    targets = torch.where(torch.rand(200) < 0.3, 0.6, 0.0).double()
    loss_rank, loss_sort = rank_sort_loss(logits, targets)
    assert float(loss_sort) == 0.0 and float(loss_rank) > 0.0
    loss_sort.backward()
    assert torch.count_nonzero(logits.grad) == 0


def test_ignored_entries_have_no_effect():
    scores, targets, delta, _ = make_case(23)
    base = split_gradients(scores, targets, delta)
    rng = np.random.default_rng(0)
    extra = rng.normal(0, 5, 300)
    where = rng.integers(0, len(scores) + 1, 300)
    scores2 = np.insert(scores, where, extra)
    targets2 = np.insert(targets, where, -1.0)
    ignored = np.insert(np.zeros(len(scores), bool), where, True)
    other = split_gradients(scores2, targets2, delta)
    assert abs(base[0] - other[0]) <= 1e-12 and abs(base[1] - other[1]) <= 1e-12
    for g_base, g_other in zip(base[2:], other[2:]):
        assert np.all(g_other[ignored] == 0)
        np.testing.assert_allclose(g_other[~ignored], g_base, atol=1e-12)


def test_exact_duplicates_hard_step():
    """δ = 0 with every score equal: every H is 1, each positive sees all negatives."""
    logits = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0, -1.0], dtype=torch.float64)
    loss_rank, loss_sort = rank_sort_loss(logits, targets, 0.0)
    # rank+ = 2, FP = 3 for both positives: l_R = 3/5.
    assert abs(float(loss_rank) - 0.6) < 1e-12
    # current sorting error = (0 + 0.5) / 2 = 0.25 for both; target: 0 for y=1, 0.25 for y=0.5.
    assert abs(float(loss_sort) - 0.125) < 1e-12
    ref = reference_rank_sort(logits.detach().numpy(), targets.numpy(), 0.0)
    (loss_rank + loss_sort).backward()
    np.testing.assert_allclose(logits.grad.numpy(), ref[2] + ref[3], atol=1e-12)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_logits_raise(bad):
    logits = torch.randn(20)
    logits[3] = bad
    targets = torch.zeros(20)
    targets[0] = 0.8
    with pytest.raises(FloatingPointError, match="rank_sort_loss"):
        rank_sort_loss(logits, targets)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="same number of elements"):
        rank_sort_loss(torch.randn(5), torch.zeros(6))
    with pytest.raises(ValueError, match="delta"):
        rank_sort_loss(torch.randn(5), torch.zeros(5), delta=-0.1)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        rank_sort_loss(torch.randn(5), torch.tensor([1.5, 0, 0, 0, 0]))
    with pytest.raises(TypeError, match="floating point"):
        rank_sort_loss(torch.arange(5), torch.zeros(5))


def test_module_and_multidimensional_input():
    torch.manual_seed(0)
    logits = torch.randn(300, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.zeros(300, 4, dtype=torch.float64)
    targets[torch.arange(0, 300, 10), torch.arange(30) % 4] = torch.rand(30, dtype=torch.float64)
    loss = RankSortLoss(delta=0.5)
    assert "delta=0.5" in repr(loss)
    loss_rank, loss_sort = loss(logits, targets)
    (loss_rank + loss_sort).backward()
    ref = reference_rank_sort(logits.detach().numpy(), targets.numpy(), 0.5)
    assert abs(float(loss_rank) - ref[0]) <= 1e-9
    np.testing.assert_allclose(logits.grad.numpy().ravel(), ref[2] + ref[3], atol=1e-9)


def test_no_gradient_requested_still_gives_losses():
    scores, targets, delta, _ = make_case(30)
    ref = reference_rank_sort(scores, targets, delta)
    with torch.no_grad():
        lr, ls = rank_sort_loss(torch.tensor(scores), torch.tensor(targets), delta)
    assert abs(float(lr) - ref[0]) <= 1e-6 and abs(float(ls) - ref[1]) <= 1e-6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    scores, targets, delta, _ = make_case(17)
    ref = reference_rank_sort(scores, targets, delta)
    logits = torch.tensor(scores, device="cuda", requires_grad=True)
    lr, ls = rank_sort_loss(logits, torch.tensor(targets, device="cuda"), delta)
    (lr + ls).backward()
    assert abs(float(lr) - ref[0]) <= 1e-6 and abs(float(ls) - ref[1]) <= 1e-6
    np.testing.assert_allclose(logits.grad.cpu().numpy(), ref[2] + ref[3], atol=1e-6)


# --- The code paths of the fast loss, each forced on the same seeded cases --------------

PATH_SEEDS = range(0, NUM_RANDOM_CASES, 5)


def _assert_matches_reference(scores, targets, delta, kind, tol=1e-6):
    ref = reference_rank_sort(scores, targets, delta)
    got = split_gradients(scores, targets, delta)
    assert abs(got[0] - ref[0]) <= tol and abs(got[1] - ref[1]) <= tol, kind
    assert np.max(np.abs(got[2] - ref[2]), initial=0) <= tol, kind
    assert np.max(np.abs(got[3] - ref[3]), initial=0) <= tol, kind


@pytest.mark.parametrize("path", ["tree", "dense"])
@pytest.mark.parametrize("seed", PATH_SEEDS)
def test_sorting_part_paths(monkeypatch, path, seed):
    """The merge-sort tree (many positives) and the dense blocks (few) give the same values."""
    monkeypatch.setattr(rs_module, "_DENSE_SORTING_MAX", 0 if path == "tree" else 10**9)
    _assert_matches_reference(*make_case(seed))


@pytest.mark.parametrize("seed", PATH_SEEDS)
def test_binary_search_bins(monkeypatch, seed):
    """Without the CPU grid (as on accelerators, or for clustered edges) the bins come from
    a plain binary search: the same values."""
    monkeypatch.setattr(rs_module, "_GRID_MAX_STEPS", 0)
    _assert_matches_reference(*make_case(seed))


@pytest.mark.parametrize("seed", PATH_SEEDS)
def test_coarse_grid_many_comparisons(monkeypatch, seed):
    """A grid far too coarse (every cell holds many edges: a long branchless search)."""
    monkeypatch.setattr(rs_module, "_GRID_CELLS_PER_EDGE", 0)
    monkeypatch.setattr(rs_module, "_GRID_MAX_STEPS", 20)
    _assert_matches_reference(*make_case(seed))


@pytest.mark.parametrize("delta", DELTAS)
def test_clustered_and_extreme_scores(delta):
    """Positives closer than any grid resolves (then binary search), next to far ones, and
    scores tied exactly with the ramp ends."""
    rng = np.random.default_rng(5)
    pos = np.concatenate([1e-9 * np.arange(40), [-30.0, 50.0], rng.normal(0, 1, 20)])
    neg = np.concatenate([rng.normal(0, 3, 3000), pos + delta, pos - delta, pos[:10]])
    scores = np.concatenate([pos, neg])
    targets = np.concatenate([rng.uniform(0.1, 1.0, pos.size), np.zeros(neg.size)])
    _assert_matches_reference(scores, targets, delta, "clustered")


@pytest.mark.parametrize("seed", [3, 11, 23, 47, 101])
def test_two_threads(seed):
    """With several threads the small bookkeeping runs on one; the values are the same and
    the thread count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _assert_matches_reference(*make_case(seed))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("shift", [-60.0, 25.0])
@pytest.mark.parametrize("delta", DELTAS)
def test_float32_large_logits(shift, delta):
    """float32 logits far from 0 (the loss depends on differences only): the gradient stays
    within 1e-5 of its largest entry of the float64 reference."""
    rng = np.random.default_rng(9)
    n = 20000
    scores = (rng.normal(0, 1.5, n) + shift).astype(np.float32)
    targets = np.zeros(n)
    pos = rng.choice(n, 300, replace=False)
    targets[pos] = rng.uniform(0.3, 1.0, 300)
    scores[pos] += 0.5
    ref = reference_rank_sort(scores.astype(np.float64), targets.astype(np.float32), delta)
    lr, ls, g = fast_rank_sort(scores, targets, delta, torch.float32)
    ref_g = ref[2] + ref[3]
    scale = np.max(np.abs(ref_g))
    assert abs(float(lr.detach()) - ref[0]) <= 1e-6 and abs(float(ls.detach()) - ref[1]) <= 1e-6
    assert np.max(np.abs(g.double().numpy() - ref_g)) <= 1e-5 * scale


def _negatives_case(seed):
    scores, targets, delta, _ = make_case(seed)
    logits = torch.tensor(scores)
    y = torch.tensor(targets)
    sorted_pos = logits[y > 0].sort().values
    return logits, y, sorted_pos, delta


@pytest.mark.parametrize("seed", [13, 20, 21, 41])
def test_false_positive_mass_is_the_sum_over_relevant_negatives(seed):
    logits, y, sorted_pos, delta = _negatives_case(seed)
    negatives = rs_module._RelevantNegatives(logits, y, sorted_pos, delta)
    fp = rs_module._false_positive_mass(negatives, sorted_pos)
    neg = logits[(y == 0) & (logits >= sorted_pos[0] - delta)]
    direct = rs_module._step(neg[:, None] - sorted_pos[None, :], delta).sum(0)
    assert negatives.count == neg.numel()
    np.testing.assert_allclose(fp.numpy(), direct.numpy(), atol=1e-9)


@pytest.mark.parametrize("seed", [13, 20, 21, 41])
def test_scatter_negative_gradient_writes_only_the_relevant_negatives(seed):
    logits, y, sorted_pos, delta = _negatives_case(seed)
    negatives = rs_module._RelevantNegatives(logits, y, sorted_pos, delta)
    weight = torch.rand(sorted_pos.numel(), dtype=torch.float64)
    grad = torch.full_like(logits, 7.0)
    rs_module._scatter_negative_gradient(grad, negatives, sorted_pos, weight)
    relevant = (y == 0) & (logits >= sorted_pos[0] - delta)
    direct = rs_module._step(logits[relevant][:, None] - sorted_pos[None, :], delta) @ weight
    np.testing.assert_allclose(grad[relevant].numpy(), direct.numpy(), atol=1e-9)
    assert torch.all(grad[~relevant] == 7.0)
