"""AP Loss and aLRP Loss, exact and sub-quadratic, the ranking-based baselines of RS Loss.

AP Loss (Chen et al., CVPR 2019) and aLRP Loss (Oksuz et al., NeurIPS 2020) are, like RS
Loss, trained with a gradient that is *defined* per positive rather than derived. Both are
computed here as the RS authors' implementation computes them (interpolated AP; the
aLRP classification part with the regression losses of the positives above), with the
same values and gradient, but without its per-positive loop over the negatives:

* everything that involves negatives reuses the machinery of
  :mod:`rank_sort_loss`: the positives are sorted, each relevant negative's window among
  them is found by binary search, difference arrays give every FP(i) and prefix sums give
  every negative's gradient;
* the positive-vs-positive sums (1 + Σ_{k≠i} H(s_k - s_i), and the same weighted by the
  regression losses for aLRP) use the same windows with the positives playing the
  negatives of themselves, on negated scores so that a prefix sum runs over the positives
  *above* each one: O(P log P), no P x P matrix.

In all O(M + (N + P) log P) time and O(M + P) memory for M entries, P positives and N
relevant negatives; no P x N matrix is built. This module does not import detectron2.
"""
from typing import NamedTuple, Tuple

import torch
from torch import Tensor, nn

from .rank_sort_loss import (
    _check_finite,
    _check_tensors,
    _RelevantNegatives,
    _false_positive_mass,
    _scatter_negative_gradient,
    _step,
)

__all__ = [
    "ap_loss",
    "alrp_loss",
    "alrp_regression_loss",
    "ALRPLossOutput",
    "APLoss",
    "ALRPLoss",
]

# A positive of aLRP Loss whose false-positive mass is at most this gets no update (the
# published aLRP code's eps). AP Loss has no such threshold.
ALRP_EPS = 1e-5


def _check_ranking_inputs(name: str, logits: Tensor, targets: Tensor, delta: float) -> None:
    """The checks of ``rank_sort_loss`` for losses whose positives are any target > 0."""
    _check_tensors(name, logits, targets)
    if not (delta >= 0 and delta < float("inf")):
        raise ValueError(f"{name}: delta must be finite and >= 0, got {delta}")
    _check_finite(name, logits)
    if targets.is_floating_point() and targets.numel() and bool(torch.isnan(targets).any()):
        raise ValueError(
            f"{name}: targets contain NaN; use > 0 for positives, 0 for negatives and "
            "< 0 (-1) for ignored entries"
        )


def _flatten(logits: Tensor, targets: Tensor) -> Tuple[Tensor, Tensor]:
    """Flat logits (half precision upcast to float32, exactly) and flat, detached targets."""
    flat_logits = logits.reshape(-1)
    if flat_logits.dtype in (torch.float16, torch.bfloat16):
        flat_logits = flat_logits.float()
    flat_targets = targets.reshape(-1).detach()
    if not flat_targets.is_floating_point():
        flat_targets = flat_targets.float()
    return flat_logits, flat_targets


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 results for float64 inputs, float32 for any other float dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sorted_positives(logits: Tensor, targets: Tensor):
    """Flat indices of the positives (mask order), their float64 scores sorted ascending
    and the stable ascending order (indices into the mask order)."""
    pos_idx = (targets > 0).nonzero().squeeze(1)
    sorted_pos, order = logits[pos_idx].double().sort(stable=True)
    return pos_idx, sorted_pos, order


def _mass_above(sorted_pos: Tensor, delta: float, weights: Tensor) -> Tensor:
    """Σ_{k≠i} w_k · H(s_k - s_i) for every sorted positive i (weights in sorted order).

    On the negated scores t = -s (ascending when flipped) H(s_k - s_i) = H(t_i - t_k), so
    scattering ``weights`` with the positives as the negatives of themselves gives the
    mass above each positive; the self term w_i · H(0) is then removed.
    """
    t = -sorted_pos.flip(0)
    as_negatives = _RelevantNegatives(t, torch.zeros_like(t), t, delta)
    total = torch.zeros_like(t)
    _scatter_negative_gradient(total, as_negatives, t, weights.flip(0))
    h0 = float(_step(sorted_pos.new_zeros(()), delta))  # 1/2 for δ > 0, 1 for δ = 0
    return total.flip(0) - h0 * weights


def _positive_ranks(sorted_pos: Tensor, delta: float) -> Tensor:
    """rank⁺'(i) = 1 + Σ_{k≠i} H(s_k - s_i) for every sorted positive (at least 1)."""
    above = _mass_above(sorted_pos, delta, torch.ones_like(sorted_pos))
    return 1.0 + above.clamp_(min=0.0)


# ---------------------------------------------------------------------------------------
# AP Loss
# ---------------------------------------------------------------------------------------


def _ap_forward(logits: Tensor, targets: Tensor, delta: float, need_grad: bool):
    """The AP loss and, if asked, its dense gradient (already divided by |P|)."""
    out_dtype = _compute_dtype(logits.dtype)
    pos_idx, sorted_pos, order = _sorted_positives(logits, targets)
    num_pos = pos_idx.numel()
    if num_pos == 0:
        grad = torch.zeros(logits.shape, dtype=out_dtype, device=logits.device)
        return logits.new_zeros((), dtype=out_dtype), grad
    pos_idx = pos_idx[order]

    negatives = _RelevantNegatives(logits, targets, sorted_pos, delta)
    fp = _false_positive_mass(negatives, sorted_pos)
    rank_pos = _positive_ranks(sorted_pos, delta)
    rank = rank_pos + fp
    prec = rank_pos / rank
    # Interpolated AP: the running maximum of precision, positives in ascending score
    # order. The published loop takes `max_prec <= current_prec` as "no interpolation";
    # that holds exactly where the inclusive running maximum equals the current value.
    max_prec = prec.cummax(0).values
    loss = (1.0 - max_prec.mean()).to(out_dtype)
    if not need_grad:
        return loss, None

    interpolated = max_prec != prec  # here prec < max_prec <= 1, so 1 - prec > 0
    scale = torch.where(
        interpolated, (1.0 - max_prec) / (1.0 - prec).clamp(min=1e-300), torch.ones_like(prec)
    )
    grad = torch.zeros(logits.shape, dtype=out_dtype, device=logits.device)
    _scatter_negative_gradient(grad, negatives, sorted_pos, scale / rank / num_pos)
    grad[pos_idx] = (-(1.0 - max_prec) / num_pos).to(out_dtype)
    return loss, grad


class _APLossFunction(torch.autograd.Function):
    """Autograd wrapper: the AP update, scaled by the gradient reaching the loss."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, delta: float):
        need_grad = bool(ctx.needs_input_grad[0])
        loss, grad = _ap_forward(logits, targets, delta, need_grad)
        if need_grad:
            ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss.to(grad.dtype)).to(ctx.logits_dtype), None, None


def ap_loss(logits: Tensor, targets: Tensor, delta: float = 1.0) -> Tensor:
    """AP Loss: 1 - the mean interpolated precision of the positives.

    For each positive i, with H the step of ``rank_sort_loss`` (a ramp of half-width δ),
    ``rank⁺'(i) = 1 + Σ_{k in P, k≠i} H(s_k - s_i)``, ``FP(i) = Σ_{j in N} H(s_j - s_i)``
    and ``prec(i) = rank⁺'(i) / (rank⁺'(i) + FP(i))``; ``maxprec(i)`` is the running
    maximum of prec over the positives in ascending score order (interpolated AP). The
    gradient is the published AP update: each negative j receives
    ``H(s_j - s_i) / rank'(i)`` from every positive i, times
    ``(1 - maxprec(i)) / (1 - prec(i))`` where interpolation applies, each positive
    ``-(1 - maxprec(i))``, all divided by |P|.

    Args:
        logits: scores of any shape and float dtype (half precision computed in float32,
            float64 in float64, anything else in float64 internally).
        targets: same number of elements; ``> 0`` positive (any value), ``0`` negative,
            ``< 0`` ignored (no effect and zero gradient).
        delta: half-width of the ramp of H (the published default 1); 0 gives the hard
            step ``[x >= 0]``.

    Returns:
        A scalar (float64 for float64 logits, else float32). With no positive it is 0,
        still attached to the graph, and the gradient is 0. With no relevant negative
        every precision is 1: the loss and the gradient are 0.
    """
    delta = float(delta)
    _check_ranking_inputs("ap_loss", logits, targets, delta)
    flat_logits, flat_targets = _flatten(logits, targets)
    return _APLossFunction.apply(flat_logits, flat_targets, delta)


# ---------------------------------------------------------------------------------------
# aLRP Loss
# ---------------------------------------------------------------------------------------


def _alrp_forward(
    logits: Tensor, targets: Tensor, regression_losses: Tensor, delta: float, need_grad: bool
):
    """aLRP classification loss, ``rank`` and ``order`` (mask order of the positives) and,
    if asked, the dense classification gradient (already divided by |P|)."""
    out_dtype = _compute_dtype(logits.dtype)
    pos_idx, sorted_pos, order = _sorted_positives(logits, targets)
    num_pos = pos_idx.numel()
    if num_pos == 0:
        grad = torch.zeros(logits.shape, dtype=out_dtype, device=logits.device)
        empty = logits.new_zeros(0, dtype=out_dtype)
        return logits.new_zeros((), dtype=out_dtype), empty, order, grad

    negatives = _RelevantNegatives(logits, targets, sorted_pos, delta)
    fp = _false_positive_mass(negatives, sorted_pos)
    rank_pos = _positive_ranks(sorted_pos, delta)
    rank = rank_pos + fp
    loss = (1.0 - (rank_pos / rank).mean()).to(out_dtype)
    rank_mask_order = torch.empty_like(rank)
    rank_mask_order[order] = rank
    rank_mask_order = rank_mask_order.to(out_dtype)
    if not need_grad:
        return loss, rank_mask_order, order, None

    sorted_reg = regression_losses.double()[order]
    reg_above = _mass_above(sorted_pos, delta, sorted_reg)  # Σ_{k≠i} H(s_k - s_i) · ℓ_reg(k)
    active = fp > ALRP_EPS
    zeros = torch.zeros_like(fp)
    update = torch.where(active, (reg_above + fp) / rank, zeros)  # -(positive's gradient)
    weight = torch.where(active, update / fp.clamp(min=ALRP_EPS), zeros) / num_pos
    grad = torch.zeros(logits.shape, dtype=out_dtype, device=logits.device)
    _scatter_negative_gradient(grad, negatives, sorted_pos, weight)
    grad[pos_idx[order]] = (-update / num_pos).to(out_dtype)
    return loss, rank_mask_order, order, grad


class _ALRPLossFunction(torch.autograd.Function):
    """Autograd wrapper of the aLRP classification part; ``rank`` and ``order`` carry no
    gradient, and none flows to the regression losses through this part."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, regression_losses: Tensor, delta: float):
        need_grad = bool(ctx.needs_input_grad[0])
        loss, rank, order, grad = _alrp_forward(
            logits, targets, regression_losses, delta, need_grad
        )
        if need_grad:
            ctx.save_for_backward(grad)
        ctx.logits_dtype = logits.dtype
        ctx.mark_non_differentiable(rank, order)
        return loss, rank, order

    @staticmethod
    def backward(ctx, grad_loss: Tensor, grad_rank: Tensor, grad_order: Tensor):
        (grad,) = ctx.saved_tensors
        return (grad * grad_loss.to(grad.dtype)).to(ctx.logits_dtype), None, None, None


class ALRPLossOutput(NamedTuple):
    """What :func:`alrp_loss` returns."""

    loss_cls: Tensor  # scalar: 1 - mean precision, with the aLRP classification update
    loss_reg: Tensor  # scalar: the aLRP regression part; gradient to the regression losses
    rank: Tensor  # (P,) rank'(i) = rank⁺'(i) + FP(i), positives in mask order; detached
    order: Tensor  # (P,) int64: positives (mask order) by ascending score, stable


def alrp_regression_loss(regression_losses: Tensor, rank: Tensor, order: Tensor) -> Tensor:
    """The aLRP regression part as the published head computes it.

    With the positives in descending score order (``order`` reversed), the mean over them
    of the cumulative sum of their regression losses divided by their rank. ``rank`` is
    detached; the gradient flows to ``regression_losses`` only. All three are in the mask
    order of the positives (as :func:`alrp_loss` returns them). With no positive: 0,
    attached to ``regression_losses``' graph.
    """
    losses = regression_losses.reshape(-1)
    dtype = _compute_dtype(losses.dtype)
    if losses.numel() == 0:
        return losses.sum().to(dtype) * 0.0
    descending = order.flip(0)
    ranks = rank.detach()[descending].to(dtype)
    return (losses[descending].to(dtype).cumsum(0) / ranks).mean()


def alrp_loss(
    logits: Tensor, targets: Tensor, regression_losses: Tensor, delta: float = 1.0
) -> ALRPLossOutput:
    """aLRP Loss: returns ``(loss_cls, loss_reg, rank, order)`` (an :class:`ALRPLossOutput`).

    ``loss_cls = 1 - mean_i rank⁺'(i) / rank'(i)`` over the positives, with the published
    aLRP update as its gradient: every positive i with FP(i) > 1e-5 gets
    ``-(Σ_{k≠i} H(s_k - s_i) ℓ_reg(k) + FP(i)) / rank'(i)`` and hands the same amount to
    the negatives in proportion to H(s_j - s_i) / FP(i); all divided by |P|. ``loss_reg``
    is :func:`alrp_regression_loss`, differentiable in ``regression_losses``. The
    self-balancing weight of the published heads (which multiplies ``loss_reg``) is left
    to the caller.

    Args:
        logits: scores of any shape and float dtype (as for :func:`ap_loss`).
        targets: same number of elements; ``> 0`` positive, ``0`` negative, ``< 0`` ignored.
        regression_losses: (P,) one localisation error per positive (the published heads use
            GIoU loss / 2, in [0, 1]), **in the order of the positives in the flattened
            targets**, i.e. of ``(targets.reshape(-1) > 0).nonzero()``. The classification
            part uses them detached.
        delta: half-width of the ramp of H (the published default 1); 0: hard step.

    Returns:
        ``loss_cls`` and ``loss_reg`` scalars (float64 for float64 inputs, else float32);
        ``rank`` (P,) and ``order`` (P,) in the mask order of the positives, no gradient.
        With no positive: both losses 0 (attached), zero gradients, empty rank and order.
    """
    delta = float(delta)
    _check_ranking_inputs("alrp_loss", logits, targets, delta)
    if not torch.is_tensor(regression_losses) or not regression_losses.is_floating_point():
        raise TypeError("alrp_loss: regression_losses must be a floating-point tensor")
    flat_logits, flat_targets = _flatten(logits, targets)
    num_pos = int((flat_targets > 0).sum())
    if regression_losses.numel() != num_pos:
        raise ValueError(
            f"alrp_loss: regression_losses has {regression_losses.numel()} elements but "
            f"targets have {num_pos} positives (one loss per positive, in their flat order)"
        )
    if regression_losses.device != flat_logits.device:
        raise ValueError(
            f"alrp_loss: logits on {flat_logits.device} but regression_losses on "
            f"{regression_losses.device}"
        )
    if num_pos and not bool(torch.isfinite(regression_losses).all()):
        raise FloatingPointError("alrp_loss: regression_losses contain NaN or Inf")
    flat_reg = regression_losses.reshape(-1)
    loss_cls, rank, order = _ALRPLossFunction.apply(
        flat_logits, flat_targets, flat_reg.detach(), delta
    )
    return ALRPLossOutput(loss_cls, alrp_regression_loss(flat_reg, rank, order), rank, order)


# ---------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------


def _checked_delta(name: str, delta: float) -> float:
    delta = float(delta)
    if not (delta >= 0 and delta < float("inf")):
        raise ValueError(f"{name}: delta must be finite and >= 0, got {delta}")
    return delta


class APLoss(nn.Module):
    """``nn.Module`` form of :func:`ap_loss`."""

    def __init__(self, delta: float = 1.0):
        super().__init__()
        self.delta = _checked_delta("APLoss", delta)

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return ap_loss(logits, targets, self.delta)

    def extra_repr(self) -> str:
        return f"delta={self.delta}"


class ALRPLoss(nn.Module):
    """``nn.Module`` form of :func:`alrp_loss`; returns an :class:`ALRPLossOutput`."""

    def __init__(self, delta: float = 1.0):
        super().__init__()
        self.delta = _checked_delta("ALRPLoss", delta)

    def forward(
        self, logits: Tensor, targets: Tensor, regression_losses: Tensor
    ) -> ALRPLossOutput:
        return alrp_loss(logits, targets, regression_losses, self.delta)

    def extra_repr(self) -> str:
        return f"delta={self.delta}"
