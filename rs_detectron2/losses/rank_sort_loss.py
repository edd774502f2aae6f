"""Rank & Sort (RS) Loss, exact and sub-quadratic in the number of negatives.

RS Loss (Oksuz et al., ICCV 2021) trains a classifier to rank every positive above
every negative (ranking error) and to sort the positives by their localisation
quality (sorting error). Its gradient is the "Identity Update" of the paper, which is
defined rather than derived: the paper's Algorithm 1, restated in :func:`rank_sort_loss`
and checked against a float64 loop in ``tests/rank_sort_reference.py``.

The published implementation loops over positives in Python, touching every relevant
negative each time (O(|P|·|N|) work). Here everything that involves negatives is
computed at once, exactly, from the sorted positive scores: the step function H is
piecewise linear, so each negative counts fully for a prefix of the sorted positives
and on a linear ramp for the next range of them. A binary search finds both ranges;
difference arrays over the positives give every FP(i), and prefix sums over the
positives give every negative's gradient. Only the positive-vs-positive sorting part
is quadratic in |P|, and it is processed in row blocks of bounded size.

This module does not import detectron2, so the loss can be used on its own.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["rank_sort_loss", "RankSortLoss"]

_EPS = 1e-10
# Entries of the logits scanned at once for negatives: small on CPU (bounded temporaries,
# same speed), large on accelerators (fewer kernel launches).
_NEGATIVE_CHUNK_CPU = 1 << 16
_NEGATIVE_CHUNK_ACCELERATOR = 1 << 22
# Entries of one positive x positive block of the sorting part.
_PAIR_BLOCK = 1 << 22


def _step(diff: Tensor, delta: float) -> Tensor:
    """The smoothed step H(x) = clamp(x / 2δ + 1/2, 0, 1); a hard step [x >= 0] for δ = 0."""
    if delta > 0:
        return (diff / (2.0 * delta) + 0.5).clamp_(0.0, 1.0)
    return (diff >= 0).to(diff.dtype)


def _negative_windows(x: Tensor, sorted_pos: Tensor, delta: float) -> Tuple[Tensor, Tensor]:
    """Where negatives with scores ``x`` fall among the ascending positive scores.

    A negative counts fully (H = 1) for the positives ``[0, a)`` and on the linear ramp
    for the positives ``[a, b)``; it does not count for the rest. For δ = 0, ``a == b``.
    """
    if delta > 0:
        a = torch.searchsorted(sorted_pos, x - delta, right=True, out_int32=True)
        b = torch.searchsorted(sorted_pos, x + delta, right=False, out_int32=True)
        return a, b
    a = torch.searchsorted(sorted_pos, x, right=True, out_int32=True)
    return a, a


class _RelevantNegatives:
    """The relevant negatives, scanned chunk by chunk, with their windows among the positives.

    Relevant negatives are those with s_j >= min_P s - δ; any other negative has H = 0 for
    every positive. The windows are found once and reused for the gradient pass.
    """

    def __init__(self, logits: Tensor, targets: Tensor, sorted_pos: Tensor, delta: float):
        self.logits = logits
        self.delta = delta
        threshold = sorted_pos[0].item() - delta
        self.chunks = []
        self.count = 0
        total = logits.numel()
        chunk = _NEGATIVE_CHUNK_CPU if logits.device.type == "cpu" else _NEGATIVE_CHUNK_ACCELERATOR
        for start in range(0, total, chunk):
            part = slice(start, min(start + chunk, total))
            scores = logits[part]
            mask = (targets[part] == 0) & (scores >= threshold)
            x = scores[mask].double()
            if x.numel() == 0:
                continue
            self.count += x.numel()
            self.chunks.append((part, mask) + _negative_windows(x, sorted_pos, delta))

    def __iter__(self):
        """Yield (flat slice, mask within it, float64 scores, a, b) for every chunk."""
        for part, mask, a, b in self.chunks:
            yield part, mask, self.logits[part][mask].double(), a, b


def _false_positive_mass(negatives: _RelevantNegatives, sorted_pos: Tensor) -> Tensor:
    """FP(i) = sum_j H(s_j - s_i) over the relevant negatives, for every sorted positive i."""
    num_pos = sorted_pos.numel()
    delta = negatives.delta
    opts = dict(dtype=torch.float64, device=sorted_pos.device)
    starts = torch.zeros(num_pos + 1, **opts)  # negatives whose ramp starts at positive k
    ends = torch.zeros(num_pos + 1, **opts)  # negatives whose ramp ends at positive k
    start_c = torch.zeros(num_pos + 1, **opts)  # sum of x/2δ + 1/2 over those starting at k
    end_c = torch.zeros(num_pos + 1, **opts)
    for _, _, x, a, b in negatives:
        ones = torch.ones_like(x)
        starts.index_add_(0, a, ones)
        if delta > 0:
            c = x / (2.0 * delta) + 0.5
            ends.index_add_(0, b, ones)
            start_c.index_add_(0, a, c)
            end_c.index_add_(0, b, c)
    started = starts.cumsum(0)[:num_pos]
    fp = negatives.count - started  # negatives with a_j > i count fully
    if delta > 0:
        on_ramp = started - ends.cumsum(0)[:num_pos]
        ramp_c = start_c.cumsum(0)[:num_pos] - end_c.cumsum(0)[:num_pos]
        ramp = ramp_c - sorted_pos / (2.0 * delta) * on_ramp
        # An empty ramp is exactly 0; do not let prefix-sum rounding make it otherwise.
        fp = fp + torch.where(on_ramp > 0.5, ramp, torch.zeros_like(ramp)).clamp_(min=0.0)
    return fp


def _scatter_negative_gradient(
    grad: Tensor, negatives: _RelevantNegatives, sorted_pos: Tensor, weight: Tensor
) -> None:
    """Write g_j = sum_i weight_i · H(s_j - s_i) for every relevant negative j into ``grad``."""
    delta = negatives.delta
    zero = sorted_pos.new_zeros(1)
    w_prefix = torch.cat([zero, weight.cumsum(0)])
    ws_prefix = torch.cat([zero, (weight * sorted_pos).cumsum(0)])
    for part, mask, x, a, b in negatives:
        g = w_prefix[a]
        if delta > 0:
            ramp_w = w_prefix[b] - g
            ramp_ws = ws_prefix[b] - ws_prefix[a]
            g = g + (x / (2.0 * delta) + 0.5) * ramp_w - ramp_ws / (2.0 * delta)
        grad[part][mask] = g.to(grad.dtype)


def _sorting_terms(
    sorted_pos: Tensor, sorted_iou: Tensor, delta: float, need_grad: bool
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """rank⁺(i), the sorting error e_S(i) and its Identity-Update gradient over the positives.

    Processes the |P| x |P| comparisons in row blocks of at most ``_PAIR_BLOCK`` entries.
    """
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


def _rank_sort_forward(logits: Tensor, targets: Tensor, delta: float, need_grad: bool):
    """Both losses and, if asked, the ranking gradient (dense) and sorting gradient (on the
    positives), each already divided by |P|. Float64 logits get float64 results, any other
    float dtype float32 ones."""
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    pos_idx = (targets > 0).nonzero().squeeze(1)
    num_pos = pos_idx.numel()
    zero = logits.new_zeros((), dtype=out_dtype)
    if num_pos == 0:
        g_rank = torch.zeros(logits.shape, dtype=out_dtype, device=logits.device)
        return zero, zero.clone(), g_rank, pos_idx, g_rank.new_zeros(0)

    pos_scores = logits[pos_idx].double()
    sorted_pos, order = pos_scores.sort()
    pos_idx = pos_idx[order]
    sorted_iou = targets[pos_idx].double()

    negatives = _RelevantNegatives(logits, targets, sorted_pos, delta)
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
    g_rank = torch.zeros(logits.shape, dtype=out_dtype, device=logits.device)
    _scatter_negative_gradient(g_rank, negatives, sorted_pos, weight)
    g_rank[pos_idx] = (-torch.where(has_fp, rank_err, no_update) / num_pos).to(out_dtype)
    return loss_rank, loss_sort, g_rank, pos_idx, (g_sort / num_pos).to(out_dtype)


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


def _check_inputs(logits: Tensor, targets: Tensor, delta: float) -> None:
    if not torch.is_tensor(logits) or not torch.is_tensor(targets):
        raise TypeError("rank_sort_loss: logits and targets must be tensors")
    if not logits.is_floating_point():
        raise TypeError(f"rank_sort_loss: logits must be floating point, got {logits.dtype}")
    if logits.numel() != targets.numel():
        raise ValueError(
            f"rank_sort_loss: logits ({tuple(logits.shape)}) and targets "
            f"({tuple(targets.shape)}) must have the same number of elements"
        )
    if logits.device != targets.device:
        raise ValueError(
            f"rank_sort_loss: logits on {logits.device} but targets on {targets.device}"
        )
    if not delta >= 0:
        raise ValueError(f"rank_sort_loss: delta must be >= 0, got {delta}")
    if logits.numel() and not bool(torch.isfinite(logits).all()):
        raise FloatingPointError(
            "rank_sort_loss: logits contain NaN or Inf; training has diverged "
            "(lower the learning rate or check the inputs)"
        )
    if targets.numel() and bool((targets > 1).any() | torch.isnan(targets).any()):
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
