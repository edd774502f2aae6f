"""Bucketed RS Loss, for the benchmark only: the baseline that ``bench_rank_sort_loss.py``
times our exact RS Loss against.

Written from the paper's description of the method (Yavuz, Cam, Oksuz, Akbas, Kalkan,
*Bucketed Ranking-based Losses for Efficient Training of Object Detectors*, ECCV 2024),
not from its published code. The method:

1. sort the positives and the relevant negatives (s >= min_P s - δ) together by score;
2. the negatives between two consecutive positives (and those above the top one and
   below the bottom one) form a *bucket*, represented by its mean score and its size:
   at most |P| + 1 buckets;
3. compute RS Loss with the buckets in place of the negatives, each counted with its size
   (FP(i) = sum_b size_b · H(mean_b - s_i)); the sorting part, positive vs positive, is
   RS Loss's own;
4. a bucket's ranking gradient is shared equally by its negatives: each gets
   sum_i H(mean_b - s_i) · ℓ_R(i) / FP(i) / |P|.

That is O(N log N) for the sort plus O(|P|²) for positives x buckets and positives x
positives. It is **exact only at δ = 0**: there every negative of a bucket compares the
same way with every positive (ties are sorted negatives first, so a negative equal to a
positive's score is above it, and the mean is kept within the bucket's range), while for
δ > 0 the ramp of H sees the bucket mean instead of each score, which changes the loss.

Like the published implementations it computes in float32 (float64 for float64 logits);
the |P| x |P| and |P| x buckets comparisons are processed in column blocks of bounded
size, so memory stays bounded for any |P|. Device-agnostic PyTorch; returns
``(loss_rank, loss_sort)`` with the gradient routed as in ``rank_sort_loss``.
"""
from typing import Tuple

import torch
from torch import Tensor

__all__ = ["bucketed_rank_sort_loss"]

_EPS = 1e-10
_BLOCK = 1 << 22  # entries of one comparison block


def _step(diff: Tensor, delta: float) -> Tensor:
    if delta > 0:
        return (diff / (2.0 * delta) + 0.5).clamp_(0.0, 1.0)
    return (diff >= 0).to(diff.dtype)


def _buckets(logits: Tensor, targets: Tensor, pos_idx: Tensor, delta: float):
    """Steps 1-2: the negatives' flat indices, the bucket of each, and per bucket its
    mean score and size (only the non-empty buckets)."""
    pos_scores = logits[pos_idx]
    threshold = pos_scores.min() - delta
    neg_idx = ((targets == 0) & (logits >= threshold)).nonzero().squeeze(1)
    # Negatives first, so that a stable descending sort puts a negative tied with a
    # positive above it (at δ = 0, H(0) = 1: it counts for that positive).
    scores = torch.cat([logits[neg_idx], pos_scores])
    is_pos = torch.cat([torch.zeros_like(neg_idx, dtype=torch.bool),
                        torch.ones_like(pos_idx, dtype=torch.bool)])
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_is_pos = is_pos[order]
    above = torch.cumsum(sorted_is_pos, 0)  # positives ranked at or above each place
    sorted_neg = ~sorted_is_pos
    bucket = above[sorted_neg]  # negatives in descending order: their bucket 0..P
    neg_order = order[sorted_neg]  # positions in ``scores`` (< len(neg_idx))
    neg_scores = scores[neg_order]
    num_pos = pos_idx.numel()
    size = torch.bincount(bucket, minlength=num_pos + 1)
    total = torch.bincount(bucket, weights=neg_scores.double(), minlength=num_pos + 1)
    mean = (total / size.clamp(min=1)).to(logits.dtype)
    # Keep each mean inside its bucket's range (rounding could push it onto a positive).
    hi = torch.full_like(mean, float("-inf")).scatter_reduce_(0, bucket, neg_scores, "amax")
    lo = torch.full_like(mean, float("inf")).scatter_reduce_(0, bucket, neg_scores, "amin")
    filled = size > 0
    mean = torch.minimum(torch.maximum(mean, lo), hi)
    # Renumber the non-empty buckets 0..B-1.
    renumber = torch.cumsum(filled, 0) - 1
    return neg_idx[neg_order], renumber[bucket], mean[filled], size[filled].to(logits.dtype)


def _bucketed_forward(logits: Tensor, targets: Tensor, delta: float):
    dtype = logits.dtype
    pos_idx = (targets > 0).nonzero().squeeze(1)
    num_pos = pos_idx.numel()
    grad_rank = torch.zeros_like(logits)
    grad_sort = torch.zeros_like(logits)
    if num_pos == 0:
        zero = logits.new_zeros(())
        return zero, zero.clone(), grad_rank, grad_sort
    neg_idx, neg_bucket, mean, size = _buckets(logits, targets, pos_idx, delta)
    s = logits[pos_idx]
    y = targets[pos_idx].to(dtype)
    num_buckets = mean.numel()

    # Step 3, ranking part, in column blocks over the positives i.
    fp = torch.empty_like(s)
    rank_pos = torch.empty_like(s)
    bucket_grad = torch.zeros(num_buckets, dtype=dtype, device=logits.device)
    cols = max(1, _BLOCK // max(num_buckets, num_pos))
    for c0 in range(0, num_pos, cols):
        si = s[c0:c0 + cols]
        h_neg = _step(mean[:, None] - si[None, :], delta)  # (B, c): H(mean_b - s_i)
        fp_c = size @ h_neg
        rank_c = _step(s[:, None] - si[None, :], delta).sum(0)
        fp[c0:c0 + cols] = fp_c
        rank_pos[c0:c0 + cols] = rank_c
        err = fp_c / (rank_c + fp_c)
        w = torch.where(fp_c > _EPS, err / fp_c.clamp(min=_EPS), torch.zeros_like(err))
        bucket_grad += h_neg @ w  # step 4: per negative of bucket b
    rank_err = fp / (rank_pos + fp)
    has_fp = fp > _EPS
    grad_rank[pos_idx] = -torch.where(has_fp, rank_err, torch.zeros_like(rank_err)) / num_pos
    grad_rank[neg_idx] = bucket_grad[neg_bucket] / num_pos

    # Sorting part (positives only), in row blocks over i.
    sort_err = torch.empty_like(s)
    g_sort = torch.zeros_like(s)
    one_minus_y = 1.0 - y
    rows = max(1, _BLOCK // num_pos)
    for r0 in range(0, num_pos, rows):
        h = _step(s[None, :] - s[r0:r0 + rows, None], delta)  # H(s_k - s_i)
        ranked = h.sum(1)
        current = (h @ one_minus_y) / ranked
        in_target = y[None, :] >= y[r0:r0 + rows, None]
        h_target = h * in_target
        target = (h_target @ one_minus_y) / h_target.sum(1)
        err = current - target
        sort_err[r0:r0 + rows] = err
        h_mis = h - h_target
        denom = h_mis.sum(1)
        active = denom > _EPS
        g_sort[r0:r0 + rows] -= torch.where(active, err, torch.zeros_like(err))
        g_sort += torch.where(active, err / denom.clamp(min=_EPS), torch.zeros_like(err)) @ h_mis
    grad_sort[pos_idx] = g_sort / num_pos
    return rank_err.mean(), sort_err.mean(), grad_rank, grad_sort


class _BucketedRankSort(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, delta: float):
        loss_rank, loss_sort, grad_rank, grad_sort = _bucketed_forward(logits, targets, delta)
        ctx.save_for_backward(grad_rank, grad_sort)
        return loss_rank, loss_sort

    @staticmethod
    def backward(ctx, out_rank: Tensor, out_sort: Tensor):
        grad_rank, grad_sort = ctx.saved_tensors
        return grad_rank * out_rank + grad_sort * out_sort, None, None


def bucketed_rank_sort_loss(logits: Tensor, targets: Tensor, delta: float = 0.5) -> Tuple[Tensor, Tensor]:
    """Bucketed RS Loss of ``logits`` against IoU ``targets`` (> 0 positive, 0 negative,
    < 0 ignored); returns ``(loss_rank, loss_sort)``. Exact RS Loss only for δ = 0."""
    flat = logits.reshape(-1)
    if flat.dtype != torch.float64:
        flat = flat.float()
    y = targets.reshape(-1).to(flat.dtype).detach()
    return _BucketedRankSort.apply(flat, y, float(delta))
