"""Slow, obviously-correct AP Loss and aLRP Loss: the published per-positive algorithms.

Plain Python loops over the positives in ascending score order, float64 NumPy, following
the RS authors' implementation step by step (the same quantities, the same order of
updates, the same `max_prec <= current_prec` test and the same eps); nothing clever. The
parity tests compare the fast losses in ``rs_detectron2.losses.ap_losses`` against them.

Conventions shared with the fast code: positives are targets > 0, negatives targets == 0,
anything < 0 is ignored; ties in the sort keep the flattened order (a stable sort); for
δ = 0 the step is the hard step [x >= 0] (the published formula divides by 2δ).
"""
import numpy as np

ALRP_EPS = 1e-5


def step(x, delta):
    if delta > 0:
        return np.clip(x / (2 * delta) + 0.5, 0.0, 1.0)
    return (x >= 0).astype(np.float64)


def _split(logits, targets, delta):
    s = np.asarray(logits, dtype=np.float64).reshape(-1)
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    fg = np.flatnonzero(y > 0)
    if len(fg) == 0:
        return s, fg, np.zeros(0, dtype=np.int64)
    threshold = s[fg].min() - delta
    bg = np.flatnonzero((y == 0) & (s >= threshold))  # relevant negatives
    return s, fg, bg


def reference_ap_loss(logits, targets, delta=1.0):
    """Returns (loss, grad, interpolated): float64 loss and dense gradient, and how many
    positives took the interpolation branch."""
    s, fg, bg = _split(logits, targets, delta)
    grad = np.zeros_like(s)
    if len(fg) == 0:
        return 0.0, grad, 0
    fg_logits, bg_logits = s[fg], s[bg]
    fg_grad = np.zeros(len(fg))
    bg_grad = np.zeros(len(bg))
    prec = np.zeros(len(fg))
    max_prec = 0.0
    interpolated = 0
    for ii in np.argsort(fg_logits, kind="stable"):
        fg_relations = step(fg_logits - fg_logits[ii], delta)
        fg_relations[ii] = 0.0  # no self term
        bg_relations = step(bg_logits - fg_logits[ii], delta)
        rank_pos = 1.0 + fg_relations.sum()
        fp_num = bg_relations.sum()
        rank = rank_pos + fp_num
        current_prec = rank_pos / rank
        if max_prec <= current_prec:
            max_prec = current_prec
            bg_grad += bg_relations / rank
        else:
            interpolated += 1
            bg_grad += bg_relations / rank * ((1 - max_prec) / (1 - current_prec))
        fg_grad[ii] = -(1 - max_prec)
        prec[ii] = max_prec
    grad[fg] = fg_grad
    grad[bg] = bg_grad
    grad /= len(fg)
    return float(1 - prec.mean()), grad, interpolated


def reference_alrp_loss(logits, targets, regression_losses, delta=1.0):
    """Returns (loss_cls, grad, rank, order): the classification loss and its dense
    gradient, rank'(i) per positive (positives in flattened order) and the stable
    ascending order of the positives' scores."""
    s, fg, bg = _split(logits, targets, delta)
    grad = np.zeros_like(s)
    reg = np.asarray(regression_losses, dtype=np.float64).reshape(-1)
    if len(fg) == 0:
        return 0.0, grad, np.zeros(0), np.zeros(0, dtype=np.int64)
    fg_logits, bg_logits = s[fg], s[bg]
    fg_grad = np.zeros(len(fg))
    bg_grad = np.zeros(len(bg))
    rank = np.zeros(len(fg))
    prec = np.zeros(len(fg))
    order = np.argsort(fg_logits, kind="stable")
    for ii in order:
        fg_relations = step(fg_logits - fg_logits[ii], delta)
        fg_relations[ii] = 0.0
        bg_relations = step(bg_logits - fg_logits[ii], delta)
        rank_pos = 1.0 + fg_relations.sum()
        fp_num = bg_relations.sum()
        rank[ii] = rank_pos + fp_num
        prec[ii] = rank_pos / rank[ii]
        if fp_num > ALRP_EPS:
            fg_grad[ii] = -((fg_relations * reg).sum() + fp_num) / rank[ii]
            bg_grad += bg_relations * (-fg_grad[ii] / fp_num)
    grad[fg] = fg_grad
    grad[bg] = bg_grad
    grad /= len(fg)
    return float(1 - prec.mean()), grad, rank, order


def reference_alrp_regression(regression_losses, rank, order):
    """Returns (loss_reg, d loss_reg / d regression_losses) by a loop over the positives in
    descending score order: position p averages the losses of positions 0..p over rank."""
    reg = np.asarray(regression_losses, dtype=np.float64).reshape(-1)
    grad = np.zeros_like(reg)
    if len(reg) == 0:
        return 0.0, grad
    descending = np.asarray(order)[::-1]
    total = 0.0
    for p, ii in enumerate(descending):
        above_and_self = descending[: p + 1]
        total += reg[above_and_self].sum() / rank[ii]
        grad[above_and_self] += 1.0 / rank[ii]
    return total / len(reg), grad / len(reg)
