"""Rank & Sort (RS) Loss, exact and sub-quadratic in the number of negatives and positives.

RS Loss (Oksuz et al., ICCV 2021) trains a classifier to rank every positive above
every negative (ranking error) and to sort the positives by their localisation
quality (sorting error). Its gradient is the "Identity Update" of the paper, which is
defined rather than derived: the paper's Algorithm 1, restated in :func:`rank_sort_loss`
and checked against a float64 loop in ``tests/rank_sort_reference.py``.

The published implementation loops over positives in Python, touching every relevant
negative each time (O(|P|·|N|) work). Here everything is computed at once, exactly. The
step function H is piecewise linear, so among the sorted positives each negative counts
fully for a prefix and on a linear ramp for the next range; what matters of a negative
is only which of the 2|P| + 1 intervals between the ramp ends s_i ± δ its score falls in
(its *bin*). One pass over the logits finds every negative's bin (a table look-up on a
uniform grid on the CPU, a binary search on accelerators) and histograms the bins (count
and sum of scores, in float64); every FP(i) then comes from prefix sums over the bins,
and every negative's gradient is a linear function of its score within its bin, read
from a table. The positive-vs-positive sorting part, which compares both scores and
IoUs, is a two-dimensional dominance sum; it is computed on a merge-sort tree over the
IoU order (O(|P| log² |P|)), or densely for few positives.

This module does not import detectron2, so the loss can be used on its own.
"""
import contextlib
from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["rank_sort_loss", "RankSortLoss"]

_EPS = 1e-10
# Entries of the logits scanned at once (see _negative_chunk): on the CPU with one thread
# (temporaries that stay in cache), times the factor with more threads (few parallel
# regions), and on accelerators. A scan keeps 4 bytes an entry (its bins) and holds
# 16 bytes an entry of its chunk in scratch.
_NEGATIVE_CHUNK_CPU = 1 << 20
_PARALLEL_CHUNK_FACTOR = 1 << 2
_NEGATIVE_CHUNK_ACCELERATOR = 1 << 26
# Scores converted to float64 at once for the bins' sums (CPU).
_HISTOGRAM_PIECE = 1 << 20
# Entries of one positive x positive block of the dense sorting part.
_PAIR_BLOCK = 1 << 22
# Positives up to which the sorting part is computed densely (O(|P|²), few kernel
# launches); above, on the merge-sort tree (O(|P| log² |P|)).
_DENSE_SORTING_MAX = 384
# The CPU bin look-up: grid cells per bin edge, the most cells, and the most comparisons
# per score (a cell may then hold up to 2^steps - 1 edges).
_GRID_CELLS_PER_EDGE = 16
_GRID_MAX_CELLS = 1 << 20
_GRID_MAX_STEPS = 6


def _step(diff: Tensor, delta: float) -> Tensor:
    """The smoothed step H(x) = clamp(x / 2δ + 1/2, 0, 1); a hard step [x >= 0] for δ = 0."""
    if delta > 0:
        return (diff / (2.0 * delta) + 0.5).clamp_(0.0, 1.0)
    return (diff >= 0).to(diff.dtype)


def _negative_windows(x: Tensor, sorted_pos: Tensor, delta: float) -> Tuple[Tensor, Tensor]:
    """Where negatives with scores ``x`` fall among the ascending positive scores.

    A negative counts fully (H = 1) for the positives ``[0, a)`` and on the linear ramp
    for the positives ``[a, b)``; it does not count for the rest. For δ = 0, ``a == b``.
    (The loss itself works with bins, see :class:`_RelevantNegatives`; this helper is
    kept for callers that want the windows of a few scores.)
    """
    if delta > 0:
        a = torch.searchsorted(sorted_pos, x - delta, right=True, out_int32=True)
        b = torch.searchsorted(sorted_pos, x + delta, right=False, out_int32=True)
        return a, b
    a = torch.searchsorted(sorted_pos, x, right=True, out_int32=True)
    return a, a


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores are compared in float64 for float64 logits and in float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def _one_thread(device: torch.device) -> Iterator[None]:
    """Run the O(|P|) bookkeeping on one CPU thread. Its ops are small, yet many of them
    (binary search, sort, cumsum, indexing) are split over the threads all the same; when
    other processes share the cores each such parallel region waits for a descheduled
    thread, which costs far more than the op. Only the passes over all the logits use
    every thread. The thread count is restored on exit."""
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _BinGrid:
    """Finds bins by table look-up: #{edges <= x} for many scores x at once.

    A uniform grid of cells covers the edges. The cell of a score is computed by the same
    floating-point operations for the edges and for the scores, and these are monotonic,
    so an edge in an earlier (later) cell is <= x (> x). Hence #{edges <= x} =
    #{edges in the cells before x's} + #{edges in x's cell that are <= x}. A cell holds at
    most 2^steps - 1 edges, and a branchless binary search of ``steps`` comparisons
    against the small sorted edge array counts them. The result is offset by
    ``offset`` = 2^steps - 1 (the edges sit after that many +inf, which the search of a
    score below the grid starts in), so bin 0 stays free for the entries that take no
    part.
    """

    def __init__(self, edges: Tensor, cells: int):
        self.cells = cells
        lo, hi = float(edges[0]), float(edges[-1])
        self.scale = cells / (hi - lo) if hi > lo else 1.0
        # The grid starts 1.5 cells below the lowest edge, so no edge is in cell 0.
        self.shift = -(lo - 1.5 / self.scale) * self.scale
        load = torch.bincount(self.cell_of(edges), minlength=cells + 2)
        self.steps = int(load.max()).bit_length()
        self.usable = int(load[0]) == 0
        self.offset = (1 << self.steps) - 1
        inf = edges.new_full((self.offset,), float("inf"))
        self.padded = torch.cat([inf, edges, inf])
        first = load.cumsum(0) - load + self.offset
        first[0] = 0
        self.first = first.to(torch.int32)

    def cell_of(self, x: Tensor) -> Tensor:
        # Two separately rounded operations (no fused multiply-add, whose use may differ
        # between vectorised and scalar code): a score equal to an edge gets its cell.
        t = torch.mul(x, self.scale).add_(self.shift)
        return t.clamp_(0.0, self.cells + 1.0).to(torch.int32)

    def bins(self, x: Tensor, out: Tensor, work: Tensor, flags: Tensor) -> None:
        """Write offset + #{edges <= x} into ``out`` (int32); ``work`` (x's dtype) and
        ``flags`` (int32) are scratch of x's size."""
        torch.mul(x, self.scale, out=work)
        work.add_(self.shift).clamp_(0.0, self.cells + 1.0)
        flags.copy_(work)  # the cell (truncation)
        torch.index_select(self.first, 0, flags, out=out)
        for j in reversed(range(self.steps)):
            step = 1 << j
            # padded[e + step - 1] <= x: the next ``step`` edges are all <= x.
            torch.index_select(self.padded[step - 1:], 0, out, out=work)
            torch.ge(x, work, out=flags)
            out.add_(flags, alpha=step)


def _make_bin_grid(edges: Tensor, entries: int) -> Optional[_BinGrid]:
    """A grid of about ``_GRID_CELLS_PER_EDGE`` cells per edge (fewer for few entries: the
    table need not outgrow the scan), or None if rounding puts an edge into cell 0 or a
    cell holds more than 2^_GRID_MAX_STEPS - 1 edges (the edges are too clustered; then
    bins come from a plain binary search)."""
    cells = min(_GRID_CELLS_PER_EDGE * edges.numel(), _GRID_MAX_CELLS, entries // 8)
    cells = max(64, cells)
    grid = _BinGrid(edges, cells)
    return grid if grid.usable and grid.steps <= _GRID_MAX_STEPS else None


def _negative_chunk(device: torch.device) -> int:
    """Entries scanned at once. On the CPU with one thread no op is a parallel region, and
    chunks whose temporaries stay in cache are fastest; with more threads every op over
    a chunk is one, whose cost grows when other processes share the cores, so the scan
    takes fewer, larger chunks."""
    if device.type != "cpu":
        return _NEGATIVE_CHUNK_ACCELERATOR
    if torch.get_num_threads() > 1:
        return _NEGATIVE_CHUNK_CPU * _PARALLEL_CHUNK_FACTOR
    return _NEGATIVE_CHUNK_CPU


class _RelevantNegatives:
    """The negatives, placed in bins among the ramp ends of the positives, in one scan.

    The bin edges are the distinct values of s_i - δ and s_i + δ over the positives (of
    s_i for δ = 0), sorted. A negative with score x is in the bin ``offset + k`` with
    k = #{edges <= x}; every other entry (positives, ignored entries) is in bin 0. Bin 0
    and the bins up to ``offset`` (the irrelevant negatives, s_j < min_P s - δ, have
    k = 0) take no part in anything; the relevant negatives, in bins > ``offset``, are
    counted in ``count``. Per bin the scan keeps the number of negatives and the sum of
    their scores (float64); per entry it keeps the bin (int32), which the gradient pass
    reuses. Scores are compared in the logits' precision (float32 unless float64): a
    score that ties an edge up to rounding may land in the neighbouring bin, where H
    takes the same value up to that rounding (H is continuous).

    ``excluded``, if given, lists (ascending) the flat indices of the entries that are not
    negatives (``targets.nonzero()``); the loss has it already.
    """

    def __init__(
        self,
        logits: Tensor,
        targets: Tensor,
        sorted_pos: Tensor,
        delta: float,
        excluded: Optional[Tensor] = None,
    ):
        logits, targets = logits.reshape(-1), targets.reshape(-1)
        self.logits = logits
        self.delta = delta
        self.dtype = _compute_dtype(logits.dtype)
        if excluded is None:
            excluded = targets.nonzero().squeeze(1)
        self.excluded = excluded
        device = logits.device
        self.chunk = _negative_chunk(device)
        with _one_thread(device):
            self._prepare(sorted_pos, delta)
        self._scan(logits, delta)

    def _prepare(self, sorted_pos: Tensor, delta: float) -> None:
        """The edges, the bin look-up and the bins of the positives' ramp ends."""
        s = sorted_pos.to(torch.float64)
        if delta > 0:
            lower = (s - delta).to(self.dtype)
            upper = (s + delta).to(self.dtype)
            self.edges = torch.unique(torch.cat([lower, upper]))  # sorted
        else:
            lower = upper = s.to(self.dtype)
            self.edges = torch.unique(lower)
        device = self.logits.device
        total = self.logits.numel()
        self.grid = grid = _make_bin_grid(self.edges, total) if device.type == "cpu" else None
        if grid is None:  # binary search; a leading -inf makes the count start at 1
            below = self.edges.new_full((1,), float("-inf"))
            self.search_edges = torch.cat([below, self.edges])
        self.offset = grid.offset if grid is not None else 1
        self.num_bins = self.offset + self.edges.numel() + 1
        # Positive i sees fully the bins > upper_bin[i], on its ramp the bins
        # (lower_bin[i], upper_bin[i]], and not at all the bins <= lower_bin[i].
        self.lower_bin = torch.searchsorted(self.edges, lower) + self.offset
        self.upper_bin = torch.searchsorted(self.edges, upper) + self.offset
        bounds = list(range(0, total, self.chunk)) + [total]
        bounds_t = torch.tensor(bounds, dtype=torch.int64, device=device)
        self.cuts = torch.searchsorted(self.excluded, bounds_t).tolist()

    def _scan(self, logits: Tensor, delta: float) -> None:
        """One pass over the logits: the bin of every entry and the bins' histograms."""
        device, grid, excluded, num_bins = logits.device, self.grid, self.excluded, self.num_bins
        counts = torch.zeros(num_bins, dtype=torch.int64, device=device)
        sums = torch.zeros(num_bins, dtype=torch.float64, device=device)
        total = logits.numel()
        self.bins = torch.empty(total, dtype=torch.int32, device=device)
        size = min(self.chunk, total)
        work = torch.empty(size, dtype=self.dtype, device=device)
        flags = torch.empty(size, dtype=torch.int32, device=device)
        piece = min(size, _HISTOGRAM_PIECE) if device.type == "cpu" else size
        wide = torch.empty(piece if delta > 0 else 0, dtype=torch.float64, device=device)
        cuts = self.cuts
        for k, start in enumerate(range(0, total, self.chunk)):
            part = slice(start, min(start + self.chunk, total))
            x = logits[part].to(self.dtype)
            n = x.numel()
            e = self.bins[part]
            if grid is not None:
                grid.bins(x, e, work[:n], flags[:n])
            else:
                torch.searchsorted(self.search_edges, x, right=True, out_int32=True, out=e)
            e.index_fill_(0, excluded[cuts[k]:cuts[k + 1]] - start, 0)
            # bincount runs on one thread anyway; so does the float64 copy of the scores,
            # piece by piece through one small buffer.
            with _one_thread(device):
                counts += torch.bincount(e, minlength=num_bins)
                if delta > 0:
                    for p0 in range(0, n, piece):
                        p1 = min(p0 + piece, n)
                        scores = wide[: p1 - p0].copy_(x[p0:p1])
                        sums += torch.bincount(e[p0:p1], weights=scores, minlength=num_bins)
        self.bin_counts = counts.to(torch.float64)
        self.bin_sums = sums
        self.count = int(counts[self.offset + 1:].sum())

    def __iter__(self):
        """Yield (flat slice, scores in the compare precision, bins) for every chunk."""
        total = self.logits.numel()
        for start in range(0, total, self.chunk):
            part = slice(start, min(start + self.chunk, total))
            yield part, self.logits[part].to(self.dtype), self.bins[part]


def _false_positive_mass(negatives: _RelevantNegatives, sorted_pos: Tensor) -> Tensor:
    """FP(i) = sum_j H(s_j - s_i) over the relevant negatives, for every sorted positive i."""
    s = sorted_pos.to(torch.float64)
    zero = s.new_zeros(1)
    count_prefix = torch.cat([zero, negatives.bin_counts.cumsum(0)])  # [k]: bins < k
    total = count_prefix[-1]
    fp = total - count_prefix[negatives.upper_bin + 1]  # bins > upper_bin: fully counted
    delta = negatives.delta
    if delta > 0:
        sum_prefix = torch.cat([zero, negatives.bin_sums.cumsum(0)])
        first, last = negatives.lower_bin + 1, negatives.upper_bin + 1
        on_ramp = count_prefix[last] - count_prefix[first]
        ramp_sum = sum_prefix[last] - sum_prefix[first]
        ramp = (ramp_sum - s * on_ramp) / (2.0 * delta) + 0.5 * on_ramp
        # An empty ramp is exactly 0; do not let prefix-sum rounding make it otherwise.
        fp = fp + torch.where(on_ramp > 0.5, ramp, torch.zeros_like(ramp)).clamp_(min=0.0)
    return fp


def _gradient_tables(negatives: _RelevantNegatives, sorted_pos: Tensor, weight: Tensor):
    """Per bin e, the negative gradient g(x) = sum_i weight_i · H(x - s_i) is linear in x:
    g(x) = A[e] + B[e] · (x - c), with c the middle of the edges (it keeps x - c, and so
    the rounding of B[e] · (x - c), small). The bins that take no part get A = B = 0.
    Returned in the compare precision, with c; B is None for δ = 0 (g is constant per
    bin)."""
    s = sorted_pos.to(torch.float64)
    w = weight.to(torch.float64)
    num_bins = negatives.num_bins
    delta = negatives.delta
    first, last = negatives.lower_bin + 1, negatives.upper_bin + 1
    dtype = negatives.dtype

    def starting(index, values):  # sum of values over the positives whose range starts at bin e
        return torch.bincount(index, weights=values, minlength=num_bins + 1)[:num_bins]

    full = starting(last, w).cumsum(0)  # positives that see bin e fully
    if delta <= 0:
        return full.to(dtype), None, 0.0
    centre = float(((negatives.edges[0] + negatives.edges[-1]) / 2).to(dtype))
    ramp_w = (starting(first, w) - starting(last, w)).cumsum(0)  # positives with e on their ramp
    moment = w * (0.5 + (centre - s) / (2.0 * delta))
    ramp_m = (starting(first, moment) - starting(last, moment)).cumsum(0)
    a = full + ramp_m  # g(c), extended linearly from the bin
    b = ramp_w / (2.0 * delta)
    a[: negatives.offset + 1] = 0.0
    b[: negatives.offset + 1] = 0.0
    return a.to(dtype), b.to(dtype), centre


def _negative_gradient(
    negatives: _RelevantNegatives, sorted_pos: Tensor, weight: Tensor, out: Optional[Tensor] = None
) -> Tensor:
    """g_j = sum_i weight_i · H(s_j - s_i) for every entry, flat, in the compare precision:
    exactly 0 for the entries that take no part (bins <= offset). Written into ``out`` if
    given."""
    with _one_thread(sorted_pos.device):
        a, b, centre = _gradient_tables(negatives, sorted_pos, weight)
    bins = negatives.bins
    if out is None:
        out = torch.empty(bins.shape, dtype=negatives.dtype, device=bins.device)
    size = min(negatives.chunk, bins.numel())
    if b is not None:  # scratch, reused by every chunk
        offset_buf = torch.empty(size, dtype=negatives.dtype, device=bins.device)
        slope_buf = torch.empty(size, dtype=negatives.dtype, device=bins.device)
    for part, x, e in negatives:
        g = torch.index_select(a, 0, e, out=out[part])
        if b is not None:
            n = x.numel()
            offset = torch.sub(x, centre, out=offset_buf[:n])
            g.addcmul_(torch.index_select(b, 0, e, out=slope_buf[:n]), offset)
    return out


def _scatter_negative_gradient(
    grad: Tensor, negatives: _RelevantNegatives, sorted_pos: Tensor, weight: Tensor
) -> None:
    """Write g_j = sum_i weight_i · H(s_j - s_i) for every relevant negative j into ``grad``
    (one entry per logit, flat or contiguous); every other entry is left as it is."""
    g = _negative_gradient(negatives, sorted_pos, weight)
    relevant = negatives.bins > negatives.offset
    flat = grad.view(-1)
    flat.copy_(torch.where(relevant, g.to(grad.dtype), flat))


def _sorting_terms_dense(
    sorted_pos: Tensor, sorted_iou: Tensor, delta: float, need_grad: bool
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """:func:`_sorting_terms` on the |P| x |P| comparisons, in row blocks of at most
    ``_PAIR_BLOCK`` entries."""
    num_pos = sorted_pos.numel()
    rank_pos = torch.empty_like(sorted_pos)
    sort_err = torch.empty_like(sorted_pos)
    grad = torch.zeros_like(sorted_pos) if need_grad else None
    one_minus_iou = 1.0 - sorted_iou
    rows = max(1, _PAIR_BLOCK // num_pos)
    for r0 in range(0, num_pos, rows):
        r1 = min(r0 + rows, num_pos)
        h = _step(sorted_pos[None, :] - sorted_pos[r0:r1, None], delta)  # H(s_k - s_i)
        ranked = h.sum(1)
        current = (h @ one_minus_iou) / ranked
        above = sorted_iou[None, :] >= sorted_iou[r0:r1, None]  # T(i)
        h_target = h * above
        target = (h_target @ one_minus_iou) / h_target.sum(1)
        err = current - target
        rank_pos[r0:r1] = ranked
        sort_err[r0:r1] = err
        if need_grad:
            h_mis = h - h_target  # H over Mis(i): lower quality, yet compared with i
            denom = h_mis.sum(1)
            active = denom > _EPS
            grad[r0:r1] -= torch.where(active, err, torch.zeros_like(err))
            coef = torch.where(active, err / denom.clamp(min=_EPS), torch.zeros_like(err))
            grad += coef @ h_mis
    return rank_pos, sort_err, grad


class _PrefixTree:
    """A merge-sort tree over points 0..P-1 (the positives in score order), arranged by
    ``order`` (a permutation: the positives' places in the IoU order).

    ``window_sums`` answers, for many queries at once, sums of point weights over the
    points whose place is < q (a prefix of the IoU order) and whose index lies below,
    inside or above a window [lo, hi) of the score order. The prefix [0, q) is the union
    of one aligned block of 2^L places for every set bit L of q; level L of the tree
    holds every block of 2^L places with its points sorted by index, and a (query,
    level) pair needs the number of points of its block with index < lo (and < hi):
    one sort of the points' and the queries' keys together gives all of them, and
    differences of prefix sums the sums.
    """

    def __init__(self, order: Tensor):
        num = order.numel()
        self.num = num
        device = order.device
        self.levels = torch.arange(max(1, num.bit_length()), device=device)
        block = order[None, :] >> self.levels[:, None]
        index = torch.arange(num, device=device)
        # Keys increasing in (level, block, index), odd; a query's key for the value v in
        # the same block is even and sorts just before the point with index v.
        self.point_keys = (self._base(self.levels[:, None], block) + index).reshape(-1) * 2 + 1
        self.points: Optional[Tensor] = None  # per level, the points sorted by index

    def _base(self, level: Tensor, block: Tensor) -> Tensor:
        return (level * self.num + block) * (self.num + 1)

    def _count_before(self, query_keys: Tensor) -> Tensor:
        """For each (even) query key, the number of point keys below it, i.e. the place in
        the points' sorted order, by one sort of everything."""
        num_points = self.point_keys.numel()
        _, at = torch.cat([self.point_keys, query_keys]).sort()
        is_point = at < num_points
        if self.points is None:
            picked = at[is_point]
            self.points = picked - (picked // self.num) * self.num
        before = torch.cumsum(is_point, 0)
        is_query = ~is_point
        found = torch.empty_like(query_keys)
        found[at[is_query] - num_points] = before[is_query]
        return found

    def window_sums(self, weights: Tensor, q: Tensor, lo: Tensor, hi: Optional[Tensor]) -> Tensor:
        """(P, 3, C) sums of ``weights`` (P, C) over the points with place < q[i] and
        index < lo[i], in [lo[i], hi[i]), >= hi[i], for every query i (hi None: hi = lo)."""
        num, cols = self.num, weights.shape[1]
        nlev = self.levels.numel()
        level, query = (((q[None, :] >> self.levels[:, None]) & 1) > 0).nonzero(as_tuple=True)
        block = (q.index_select(0, query) >> level) - 1  # even: [block·2^L, (block+1)·2^L)
        base = self._base(level, block)
        wanted = [lo] if hi is None else [lo, hi]
        found = self._count_before(torch.cat([(base + v.index_select(0, query)) * 2 for v in wanted]))
        # Positions in ``prefix`` (one row of num + 1 per level): the block's start, end.
        shift = level  # row L starts at L·(num + 1); the found places count L·num points before
        start = level * (num + 1) + (block << level)
        found = found + shift.repeat(len(wanted))
        at_lo = found[: query.numel()]
        at_hi = at_lo if hi is None else found[query.numel():]
        end = start + (1 << level)
        # prefix[c, L·(num+1) + p]: sum of column c over the first p points of level L.
        prefix = weights.new_zeros(cols, nlev, num + 1)
        picked = weights.t().index_select(1, self.points).reshape(cols, nlev, num)
        torch.cumsum(picked, dim=2, out=prefix[:, :, 1:])
        prefix = prefix.reshape(cols, -1)
        out = weights.new_zeros(3, cols, q.numel())
        for c in range(cols):
            column = prefix[c]
            v_start, v_lo, v_end = (column.index_select(0, a) for a in (start, at_lo, end))
            v_hi = v_lo if hi is None else column.index_select(0, at_hi)
            out[0, c].index_add_(0, query, v_lo - v_start)
            out[1, c].index_add_(0, query, v_hi - v_lo)
            out[2, c].index_add_(0, query, v_end - v_hi)
        return out.permute(2, 0, 1)


def _window_sums_all(weights: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """(P, 3, C) sums of ``weights`` (P, C) over the points with index < lo[i], in
    [lo[i], hi[i]) and >= hi[i], for every query i: prefix sums in score order."""
    prefix = weights.new_zeros(weights.shape[0] + 1, weights.shape[1])
    torch.cumsum(weights, dim=0, out=prefix[1:])
    at_lo, at_hi = prefix.index_select(0, lo), prefix.index_select(0, hi)
    return torch.stack([at_lo, at_hi - at_lo, prefix[-1] - at_hi], 1)


def _sorting_terms_tree(
    sorted_pos: Tensor, sorted_iou: Tensor, delta: float, need_grad: bool
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """:func:`_sorting_terms` in O(|P| log² |P|): the sums over all positives are prefix
    sums in score order; those over Mis(i) (lower IoU) are dominance sums on a
    :class:`_PrefixTree` over the IoU order."""
    num_pos = sorted_pos.numel()
    s = sorted_pos - sorted_pos.mean()  # centred: H depends on differences only
    y = sorted_iou
    two_delta = 2.0 * delta
    # Score windows of every positive i: H(s_k - s_i) is 0 for k < lo, on the ramp for
    # lo <= k < hi, 1 for k >= hi (δ = 0: 1 for k >= lo = hi).
    if delta > 0:
        lo = torch.searchsorted(s, s - delta, right=True)
        hi = torch.searchsorted(s, s + delta, right=False)
    else:
        lo = hi = torch.searchsorted(s, s, right=False)
    window_hi = hi if delta > 0 else None  # δ = 0: no ramp, one binary search

    def seen(sums, col):  # sum_k w_k H(s_k - s_i) from (below, ramp, above) sums
        total = sums[:, 2, col]
        if delta > 0:
            ramp_w, ramp_ws = sums[:, 1, col], sums[:, 1, col + 1]
            total = total + (ramp_ws - s * ramp_w) / two_delta + 0.5 * ramp_w
        return total

    one_minus_iou = 1.0 - y
    weights = torch.stack([torch.ones_like(s), s, one_minus_iou, one_minus_iou * s], 1)
    every = _window_sums_all(weights, lo, hi)
    rank_pos = seen(every, 0)  # rank⁺(i)
    current_num = seen(every, 2)  # sum_k H (1 - y_k)

    iou_order = torch.argsort(y, stable=True)
    place = torch.empty_like(iou_order)
    place[iou_order] = torch.arange(num_pos, device=s.device)
    sorted_y = y[iou_order]
    tree = _PrefixTree(place)
    below_q = torch.searchsorted(sorted_y, y, right=False)  # |Mis(i)| = #{k : y_k < y_i}
    mis = tree.window_sums(weights, below_q, lo, window_hi)
    mis_h = seen(mis, 0)  # D(i)
    mis_num = seen(mis, 2)
    current = current_num / rank_pos
    target = (current_num - mis_num) / (rank_pos - mis_h)  # over T(i) = P \ Mis(i)
    sort_err = current - target
    if not need_grad:
        return rank_pos, sort_err, None

    active = mis_h > _EPS
    zero = torch.zeros_like(sort_err)
    grad = -torch.where(active, sort_err, zero)
    coef = torch.where(active, sort_err / mis_h.clamp(min=_EPS), zero)
    # g_k += sum over the positives i with y_i > y_k of coef_i · H(s_k - s_i): as a
    # function of i, H(s_k - s_i) is 1 for i < lo'_k and on the ramp for lo'_k <= i < hi_k.
    lo_k = lo if delta > 0 else torch.searchsorted(s, s, right=True)
    hi_k = hi if delta > 0 else lo_k
    give = torch.stack([coef, coef * s], 1)
    every = _window_sums_all(give, lo_k, hi_k)
    not_above = torch.searchsorted(sorted_y, y, right=True)  # #{i : y_i <= y_k}
    given = every - tree.window_sums(give, not_above, lo_k, window_hi)  # over y_i > y_k
    received = given[:, 0, 0]
    if delta > 0:
        ramp_c, ramp_cs = given[:, 1, 0], given[:, 1, 1]
        received = received + (0.5 + s / two_delta) * ramp_c - ramp_cs / two_delta
    return rank_pos, sort_err, grad + received


def _sorting_terms(
    sorted_pos: Tensor, sorted_iou: Tensor, delta: float, need_grad: bool
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """rank⁺(i), the sorting error e_S(i) and its Identity-Update gradient over the positives
    (float64, ascending scores)."""
    if sorted_pos.numel() <= _DENSE_SORTING_MAX:
        return _sorting_terms_dense(sorted_pos, sorted_iou, delta, need_grad)
    return _sorting_terms_tree(sorted_pos, sorted_iou, delta, need_grad)


def _rank_sort_forward(logits: Tensor, targets: Tensor, delta: float, need_grad: bool):
    """Both losses and, if asked, the ranking gradient (dense) and sorting gradient (on the
    positives), each already divided by |P|. Float64 logits get float64 results, any other
    float dtype float32 ones."""
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    excluded = targets.nonzero().squeeze(1)  # positives and ignored entries
    pos_idx = excluded[targets[excluded] > 0]
    num_pos = pos_idx.numel()
    zero = logits.new_zeros((), dtype=out_dtype)
    if num_pos == 0:
        g_rank = torch.zeros(logits.shape, dtype=out_dtype, device=logits.device)
        return zero, zero.clone(), g_rank, pos_idx, g_rank.new_zeros(0)

    device = logits.device
    with _one_thread(device):
        pos_scores = logits[pos_idx].double()
        sorted_pos, order = pos_scores.sort()
        pos_idx = pos_idx[order]
        sorted_iou = targets[pos_idx].double()

    negatives = _RelevantNegatives(logits, targets, sorted_pos, delta, excluded)
    with _one_thread(device):
        fp = _false_positive_mass(negatives, sorted_pos)
        rank_pos, sort_err, g_sort = _sorting_terms(sorted_pos, sorted_iou, delta, need_grad)
        rank_err = fp / (rank_pos + fp)
        loss_rank = rank_err.mean().to(out_dtype)
        loss_sort = sort_err.mean().to(out_dtype)
        if not need_grad:
            return loss_rank, loss_sort, None, pos_idx, None
        has_fp = fp > _EPS
        no_update = torch.zeros_like(rank_err)
        # Each relevant negative receives rank_err(i) · H / FP(i) = H / rank(i) from positive i.
        weight = torch.where(has_fp, rank_err / fp.clamp(min=_EPS), no_update) / num_pos
        g_pos = (-torch.where(has_fp, rank_err, no_update) / num_pos).to(out_dtype)
        g_sort = (g_sort / num_pos).to(out_dtype)
    if negatives.count == 0:
        g_rank = torch.zeros(logits.shape, dtype=out_dtype, device=device)
    else:  # 0 on every entry that is not a relevant negative
        g_rank = _negative_gradient(negatives, sorted_pos, weight).reshape(logits.shape)
    g_rank[pos_idx] = g_pos
    return loss_rank, loss_sort, g_rank, pos_idx, g_sort


class _RankSortFunction(torch.autograd.Function):
    """Autograd wrapper: the ranking part of the Identity Update goes to ``loss_rank``, the
    sorting part to ``loss_sort``, each scaled by its own incoming gradient."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, delta: float):
        need_grad = bool(ctx.needs_input_grad[0])
        loss_rank, loss_sort, g_rank, pos_idx, g_sort = _rank_sort_forward(
            logits, targets, delta, need_grad
        )
        if need_grad:
            ctx.save_for_backward(g_rank, pos_idx, g_sort)
        ctx.logits_dtype = logits.dtype
        return loss_rank, loss_sort

    @staticmethod
    def backward(ctx, grad_rank: Tensor, grad_sort: Tensor):
        g_rank, pos_idx, g_sort = ctx.saved_tensors
        grad = g_rank * grad_rank.to(g_rank.dtype)
        if pos_idx.numel():
            grad[pos_idx] += g_sort * grad_sort.to(g_sort.dtype)
        return grad.to(ctx.logits_dtype), None, None


def _check_tensors(name: str, logits: Tensor, targets: Tensor) -> None:
    """The checks every ranking loss of the package makes of its two tensors (``name`` in
    the messages): tensors, floating-point logits, as many targets, the same device."""
    if not torch.is_tensor(logits) or not torch.is_tensor(targets):
        raise TypeError(f"{name}: logits and targets must be tensors")
    if not logits.is_floating_point():
        raise TypeError(f"{name}: logits must be floating point, got {logits.dtype}")
    if logits.numel() != targets.numel():
        raise ValueError(
            f"{name}: logits ({tuple(logits.shape)}) and targets "
            f"({tuple(targets.shape)}) must have the same number of elements"
        )
    if logits.device != targets.device:
        raise ValueError(f"{name}: logits on {logits.device} but targets on {targets.device}")


def _check_finite(name: str, logits: Tensor) -> None:
    """FloatingPointError, naming the loss, when ``logits`` hold NaN or Inf."""
    # One reduction each (min and max propagate NaN), no boolean copy of the inputs.
    if logits.numel() and not bool(torch.isfinite(torch.stack(torch.aminmax(logits))).all()):
        raise FloatingPointError(
            f"{name}: logits contain NaN or Inf; training has diverged "
            "(lower the learning rate or check the inputs)"
        )


def _check_inputs(logits: Tensor, targets: Tensor, delta: float) -> None:
    _check_tensors("rank_sort_loss", logits, targets)
    if not delta >= 0:
        raise ValueError(f"rank_sort_loss: delta must be >= 0, got {delta}")
    _check_finite("rank_sort_loss", logits)
    if targets.numel() and not bool(targets.max() <= 1):  # False for NaN too
        raise ValueError(
            "rank_sort_loss: targets must be IoUs in (0, 1] for positives, 0 for negatives "
            "and negative (-1) for ignored entries"
        )


def rank_sort_loss(logits: Tensor, targets: Tensor, delta: float = 0.5) -> Tuple[Tensor, Tensor]:
    """Rank & Sort Loss of ``logits`` against IoU ``targets``; returns ``(loss_rank, loss_sort)``.

    Args:
        logits: scores of any shape (for a detector, anchors x classes), any float dtype.
        targets: same number of elements. ``> 0``: a positive whose value is its
            localisation quality in (0, 1] (detached IoU); ``0``: a negative;
            ``< 0``: ignored (no effect and zero gradient).
        delta: smoothing of the step function; 0 gives a hard step.

    Returns:
        Two scalars (float64 for float64 logits, else float32), the mean ranking error and the mean sorting error over the
        positives. Backpropagating through them applies the Identity Update: the ranking
        part scaled by the gradient reaching ``loss_rank``, the sorting part by the one
        reaching ``loss_sort``. With no positive both are 0 and the gradient is 0.
    """
    delta = float(delta)
    _check_inputs(logits, targets, delta)
    flat_logits = logits.reshape(-1)
    flat_targets = targets.reshape(-1)
    if not flat_targets.is_floating_point():
        flat_targets = flat_targets.float()
    if flat_logits.dtype in (torch.float16, torch.bfloat16):
        # Compare half-precision scores in float32 (exact); autograd casts the gradient back.
        flat_logits = flat_logits.float()
    return _RankSortFunction.apply(flat_logits, flat_targets.detach(), delta)


class RankSortLoss(nn.Module):
    """``nn.Module`` form of :func:`rank_sort_loss`; returns ``(loss_rank, loss_sort)``."""

    def __init__(self, delta: float = 0.5):
        super().__init__()
        if not float(delta) >= 0:
            raise ValueError(f"RankSortLoss: delta must be >= 0, got {delta}")
        self.delta = float(delta)

    def forward(self, logits: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
        return rank_sort_loss(logits, targets, self.delta)

    def extra_repr(self) -> str:
        return f"delta={self.delta}"
