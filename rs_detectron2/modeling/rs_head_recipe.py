"""The RS head recipe, written once for every RS head (RPN, RoI box predictor, one-stage).

Each RS head (docs/heads.md) trains its classifier with RS Loss on targets that are the
IoU of a positive's decoded predicted box with its ground truth, regresses decoded boxes
with a GIoU loss weighted by the positive's classification score, and rescales that
auxiliary loss so that its value equals the RS loss of its stage (no tuned weights):
:func:`rs_head_losses`. The pieces (IoU targets, score-weighted means, value-based
balancing) are public for the heads that combine other losses (the mask head).
"""
from typing import NamedTuple, Optional, Tuple

import torch
from fvcore.nn import giou_loss
from torch import Tensor

from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou

from rs_detectron2.losses import global_sum, pooled_rank_sort_loss

_EPS = 1e-10
# A positive whose predicted box misses its ground truth entirely still gets this tiny
# quality, so that it stays a positive for RS Loss (a target of 0 would make it a negative).
MIN_POSITIVE_IOU = 1e-6


@torch.no_grad()
def localisation_quality(pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """IoU of each predicted box with its own ground-truth box (detached), in (0, 1]."""
    iou = matched_pairwise_iou(Boxes(pred_boxes.detach()), Boxes(gt_boxes))
    return iou.clamp(min=MIN_POSITIVE_IOU, max=1.0)


def score_weighted_giou_loss(pred_boxes: Tensor, gt_boxes: Tensor, weights: Tensor,
                             pool: str = "process") -> Tensor:
    """sum_i w_i GIoU(pred_i, gt_i) / sum_i w_i, with the normaliser 1 when sum_i w_i < 1e-10.

    ``weights`` are the positives' (detached) classification scores; the sums run over this
    process's positives ("process") or all processes' (``pool`` "global"). With no positive
    the result is a zero attached to ``pred_boxes``' graph.
    """
    if pred_boxes.numel() == 0 and pool == "process":
        return pred_boxes.sum() * 0.0
    return score_weighted_mean(giou_loss(pred_boxes, gt_boxes, reduction="none"), weights, pool)


def score_weighted_mean(losses: Tensor, weights: Tensor, pool: str = "process") -> Tensor:
    """sum_i w_i l_i / sum_i w_i with detached weights; the normaliser is 1 when
    sum_i w_i < 1e-10 (the RS heads' weighting of box and mask losses). With ``pool``
    "global" both sums run over all processes
    (:func:`~rs_detectron2.losses.global_sum`: every process calls it, with or without
    positives)."""
    weights = weights.detach()
    normaliser = global_sum(weights.sum(), pool)
    normaliser = torch.where(normaliser < _EPS, torch.ones_like(normaliser), normaliser)
    return global_sum((losses * weights).sum(), pool) / normaliser


def balance_to(loss: Tensor, reference: Tensor) -> Tuple[Tensor, float]:
    """Rescale ``loss`` so that its value equals ``reference`` (its gradient is scaled alike).

    Returns the rescaled loss and the coefficient ``reference / loss`` (0 when ``loss`` is 0,
    so a perfect auxiliary loss stays 0 and attached to the graph).
    """
    value = loss.detach()
    if float(value) <= _EPS:
        return loss * 0.0, 0.0
    coefficient = reference.detach().to(value.dtype) / value
    return loss * coefficient, float(coefficient)


def score_weights(logits: Tensor) -> Tensor:
    """Each row's highest class score (sigmoid of its largest logit), detached: the weight of
    a positive's box (and mask) loss. ``logits`` is (R, K)."""
    return logits.detach().sigmoid().max(dim=1).values


class RSHeadLosses(NamedTuple):
    """What :func:`rs_head_losses` returns; each head names and scales the three losses."""

    rank: Tensor  # ranking error of RS Loss
    sort: Tensor  # sorting error of RS Loss
    box: Tensor  # score-weighted GIoU, balanced to rank + sort
    box_balance: float  # the balancing coefficient (rank + sort) / GIoU, for the logs


def rs_head_losses(
    logits: Tensor,
    ignored: Tensor,
    pos_rows: Tensor,
    pos_classes: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    delta: float,
    pos_weights: Optional[Tensor] = None,
    ranking_pool: str = "process",
) -> RSHeadLosses:
    """RS Loss and the balanced, score-weighted GIoU loss of one head over a whole batch.

    Args:
        logits: (R, K) class logits of the R candidates (anchors or proposals of every
            image) for K classes (K = 1 for objectness).
        ignored: (R,) bool, the candidates that take no part (all their targets are -1).
        pos_rows, pos_classes: (P,) the row and the ground-truth class of each positive.
        pred_boxes, gt_boxes: (P, 4) each positive's decoded predicted box and its ground
            truth (XYXY).
        delta: smoothing of RS Loss.
        pos_weights: (P,) the positives' box-loss weights if the head has them already
            (the RoI box predictor computes every proposal's, for the mask head too);
            default :func:`score_weights` of the positives' rows.
        ranking_pool: "process" (published: rank this process's candidates) or "global"
            (rank those of all processes together, the GIoU mean over all processes'
            positives: :mod:`rs_detectron2.losses.ranking_pool`).

    A positive's RS target is the IoU of its predicted box with its ground truth (at its
    class; every other entry of its row is a negative); its box loss is weighted by its
    highest class score (:func:`score_weights`) and the box loss is rescaled to the value
    of ``rank + sort`` (:func:`balance_to`).
    """
    targets = torch.zeros_like(logits)
    targets[ignored] = -1.0
    targets[pos_rows, pos_classes] = localisation_quality(pred_boxes, gt_boxes).to(targets.dtype)
    loss_rank, loss_sort = pooled_rank_sort_loss(logits, targets, delta, ranking_pool)
    if pos_weights is None:
        pos_weights = score_weights(logits[pos_rows])
    loss_box = score_weighted_giou_loss(pred_boxes, gt_boxes, pos_weights, ranking_pool)
    loss_box, coefficient = balance_to(loss_box, loss_rank + loss_sort)
    return RSHeadLosses(loss_rank, loss_sort, loss_box, coefficient)
