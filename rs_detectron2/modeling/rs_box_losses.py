"""Pieces shared by every RS head: IoU targets, IoU-weighted GIoU, value-based balancing.

Each RS head (HEADS_SPEC.md) trains its classifier with RS Loss on targets that are the
IoU of a positive's decoded predicted box with its ground truth, regresses decoded boxes
with a GIoU loss weighted by the positive's classification score, and rescales that
auxiliary loss so that its value equals the RS loss of its stage (no tuned weights).
"""
from typing import Tuple

import torch
from fvcore.nn import giou_loss
from torch import Tensor

from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou

_EPS = 1e-10
# A positive whose predicted box misses its ground truth entirely still gets this tiny
# quality, so that it stays a positive for RS Loss (a target of 0 would make it a negative).
MIN_POSITIVE_IOU = 1e-6


@torch.no_grad()
def localisation_quality(pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """IoU of each predicted box with its own ground-truth box (detached), in (0, 1]."""
    iou = matched_pairwise_iou(Boxes(pred_boxes.detach()), Boxes(gt_boxes))
    return iou.clamp(min=MIN_POSITIVE_IOU, max=1.0)


def score_weighted_giou_loss(pred_boxes: Tensor, gt_boxes: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_i GIoU(pred_i, gt_i) / sum_i w_i, with the normaliser 1 when sum_i w_i < 1e-10.

    ``weights`` are the positives' (detached) classification scores. With no positive the
    result is a zero attached to ``pred_boxes``' graph.
    """
    if pred_boxes.numel() == 0:
        return pred_boxes.sum() * 0.0
    return score_weighted_mean(giou_loss(pred_boxes, gt_boxes, reduction="none"), weights)


def score_weighted_mean(losses: Tensor, weights: Tensor) -> Tensor:
    """sum_i w_i l_i / sum_i w_i with detached weights; the normaliser is 1 when
    sum_i w_i < 1e-10 (the RS heads' weighting of box and mask losses)."""
    weights = weights.detach()
    normaliser = weights.sum()
    normaliser = torch.where(normaliser < _EPS, torch.ones_like(normaliser), normaliser)
    return (losses * weights).sum() / normaliser


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
