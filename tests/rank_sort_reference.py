"""A slow, obviously-correct RS Loss written line by line from docs/rs_loss.md (sections 2-3).

A plain Python loop over the positives, float64 NumPy, nothing clever: the parity tests
compare the fast loss against it. It returns the two losses and the ranking and sorting
parts of the Identity-Update gradient separately.
"""
import numpy as np

EPS = 1e-10


def step(x, delta):
    if delta > 0:
        return np.clip(x / (2 * delta) + 0.5, 0.0, 1.0)
    return (x >= 0).astype(np.float64)


def reference_rank_sort(logits, targets, delta=0.5):
    """Returns (loss_rank, loss_sort, grad_rank, grad_sort) as float64 NumPy values."""
    s = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    g_rank = np.zeros_like(s)
    g_sort = np.zeros_like(s)
    pos = np.flatnonzero(y > 0)
    if len(pos) == 0:
        return 0.0, 0.0, g_rank, g_sort
    min_pos = s[pos].min()
    neg = np.flatnonzero((y == 0) & (s >= min_pos - delta))

    rank_errors, sort_errors = [], []
    for i in pos:
        h_pos = step(s[pos] - s[i], delta)  # self term included
        h_neg = step(s[neg] - s[i], delta)
        rank_plus = h_pos.sum()
        fp = h_neg.sum()
        rank = rank_plus + fp
        l_rank = fp / rank

        current = (h_pos * (1 - y[pos])).sum() / rank_plus
        in_target = y[pos] >= y[i]
        h_target = h_pos[in_target]
        target = (h_target * (1 - y[pos][in_target])).sum() / h_target.sum()
        e_sort = current - target
        rank_errors.append(l_rank)
        sort_errors.append(e_sort)

        if fp > EPS:
            g_rank[i] -= l_rank
            g_rank[neg] += l_rank * h_neg / fp
        mis = y[pos] < y[i]
        d = h_pos[mis].sum()
        if d > EPS:
            g_sort[i] -= e_sort
            g_sort[pos[mis]] += e_sort * h_pos[mis] / d

    num_pos = len(pos)
    return (
        float(np.mean(rank_errors)),
        float(np.mean(sort_errors)),
        g_rank / num_pos,
        g_sort / num_pos,
    )
