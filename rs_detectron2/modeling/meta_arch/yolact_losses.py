"""The stock (published) YOLACT training losses as pure torch functions.

These follow mmdetection's ``YOLACTHead`` (``use_ohem=True``, ``loss_single_OHEM``) and
``YOLACTProtonet`` (``loss``, ``crop``, ``sanitize_coordinates``, ``get_targets``) with the
weights of ``configs/yolact/yolact_r50_1x8_coco.py``; they are the stock-loss twin of RS-YOLACT.
A training step built from them looks like::

    loss_cls  = ohem_softmax_cross_entropy(logits, labels, 3.0)          # (N, R, K+1), (N, R)
    n         = ohem_num_total_samples(labels, K)                        # mmdet's num_total_pos
    loss_bbox = yolact_box_loss(pos_deltas, pos_target_deltas, n)        # all positives, batch
    # per image: keep = select_training_masks(num_pos_i); masks of the kept positives are
    # assemble_masks(protos_i, coeffs_i[keep]) cropped by their *assigned gt* boxes (mmdet
    # crops with gt boxes in training) and compared with mask_targets(gt_masks_i, (h, w))
    loss_mask = yolact_mask_bce_loss(cat(masks), cat(targets), cat(gt_boxes_mask_px))

The mask operations they use (``assemble_masks``, ``crop_masks``, ``mask_targets``) are
in :mod:`rs_detectron2.layers.prototype_masks`; boxes are in the masks' pixel frame there.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ohem_softmax_cross_entropy",
    "ohem_num_total_samples",
    "yolact_box_loss",
    "yolact_mask_bce_loss",
    "select_training_masks",
]


def ohem_num_total_samples(labels: Tensor, num_classes: int) -> int:
    """mmdet's ``num_total_pos`` of ``AnchorHead.get_targets``: ``sum_i max(#pos_i, 1)``.

    Every image counts at least one positive, so this is >= N and never zero for N >= 1; it is
    the normaliser of both the OHEM classification loss and the box loss.
    """
    pos = (labels >= 0) & (labels < num_classes)
    return int(pos.sum(dim=1).clamp(min=1).sum().item())


def ohem_softmax_cross_entropy(logits: Tensor, labels: Tensor,
                               neg_pos_ratio: float = 3.0) -> Tensor:
    """SSD-style OHEM softmax cross entropy, as mmdet's ``YOLACTHead.loss_single_OHEM``.

    logits (N, R, K+1) over K foreground classes plus background (index K); labels (N, R)
    int64 in {0..K-1} foreground, K background, -1 ignored. Per image: CE of every anchor; the
    sum over all positives plus the sum of the ``min(int(neg_pos_ratio * #pos), #neg)``
    highest-CE negatives -- *all* negatives if the image has no positive (mmdet does this);
    ignored anchors never count. The total over the batch is divided by
    ``ohem_num_total_samples`` = ``sum_i max(#pos_i, 1)`` (mmdet clamps per image), so a batch
    without any positive gives (sum of all negatives' CE) / N, as mmdet. A batch with no
    positive and no negative gives a zero attached to the graph.

    mmdet marks ignored anchors with label K and label weight 0; their CE is 0, so they can only
    fill top-k slots beyond the real negatives and add nothing: excluding them is identical.
    """
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"expected logits (N, R, K+1) and labels (N, R), got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    num_classes = logits.shape[-1] - 1
    labels = labels.long()
    pos = (labels >= 0) & (labels < num_classes)
    neg = labels == num_classes
    ce = F.cross_entropy(logits.flatten(0, 1), labels.clamp(min=0).flatten(),
                         reduction="none").view(labels.shape)
    loss_pos = torch.where(pos, ce, torch.zeros_like(ce)).sum()

    num_pos = pos.sum(dim=1)
    num_neg = neg.sum(dim=1)
    k = torch.minimum((num_pos.double() * neg_pos_ratio).floor().long(), num_neg)
    k = torch.where(num_pos == 0, num_neg, k)
    # CE >= 0, so a fill of -1 puts non-negatives after every negative; k <= #neg keeps them out.
    neg_ce, _ = torch.where(neg, ce, torch.full_like(ce, -1.0)).sort(dim=1, descending=True)
    ranks = torch.arange(ce.shape[1], device=ce.device)
    take = ranks.view(1, -1) < k.view(-1, 1)
    loss_neg = torch.where(take, neg_ce, torch.zeros_like(neg_ce)).sum()

    denom = num_pos.clamp(min=1).sum().clamp(min=1).to(ce.dtype)
    return (loss_pos + loss_neg) / denom


def yolact_box_loss(pred_deltas: Tensor, target_deltas: Tensor, num_total_pos: float,
                    beta: float = 1.0, weight: float = 1.5) -> Tensor:
    """Smooth L1 box loss of the positives, as mmdet's ``SmoothL1Loss(beta, loss_weight)``.

    pred_deltas, target_deltas (P, 4): encoded deltas (mmdet: DeltaXYWHBBoxCoder, stds
    0.1/0.1/0.2/0.2) of all positives of the batch. Elementwise smooth L1 (0.5 d^2 / beta if
    |d| < beta else |d| - 0.5 beta), summed over coordinates and positives, divided by
    ``num_total_pos`` (mmdet's avg_factor, i.e. ``ohem_num_total_samples``; clamped to >= 1
    here), times ``weight``. P = 0 gives a zero attached to the graph.
    """
    if beta <= 0:
        raise ValueError("beta must be > 0 (as mmdet asserts)")
    if pred_deltas.shape != target_deltas.shape:
        raise ValueError(f"shape mismatch {tuple(pred_deltas.shape)} vs "
                         f"{tuple(target_deltas.shape)}")
    diff = (pred_deltas - target_deltas).abs()
    loss = torch.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)
    return loss.sum() / max(float(num_total_pos), 1.0) * weight


def yolact_mask_bce_loss(mask_probs: Tensor, targets: Tensor, gt_boxes_mask_px: Tensor,
                         weight: float = 6.125, min_area: float = 1.0,
                         normalize_by_box_area: bool = True) -> Tensor:
    """Stock YOLACT mask loss, as mmdet's ``YOLACTProtonet.loss`` (loss_mask_weight 6.125).

    mask_probs (M, H, W) cropped probabilities of the selected positives of the whole batch;
    targets (M, H, W) in {0, 1}; gt_boxes_mask_px (M, 4) XYXY of each positive's assigned gt
    box in mask pixels. Per instance: ``weight * sum_pixels BCE(clamp(p, 0, 1), t)`` (log
    clamped at -100 as ``F.binary_cross_entropy``) divided by its gt box area
    ``(x2 - x1) * (y2 - y1)`` in mask pixels. mmdet writes this as
    ``mean_pixels(BCE) / (gt_w / img_w) / (gt_h / img_h)``, which is the same. mmdet sums these
    per image and divides every image by the batch's total of selected positives (clamped to
    1), i.e. this is the mean over the M instances. mmdet does not clamp the area (its
    pipeline drops boxes under 4x4 image px, about 1 mask px at 550 -> 138); here the area is
    clamped to ``min_area`` (1 mask px^2 by default; 0 reproduces mmdet's inf/nan) so
    degenerate boxes stay finite. ``normalize_by_box_area=False`` gives the variant in the
    RankSortLoss repo's own ``yolact_head.py`` (area term commented out: mean over pixels).
    M = 0 gives a zero attached to the graph.
    """
    if mask_probs.shape != targets.shape or mask_probs.dim() != 3 or \
            gt_boxes_mask_px.shape != (mask_probs.shape[0], 4):
        raise ValueError(f"expected mask_probs, targets (M, H, W) and boxes (M, 4), got "
                         f"{tuple(mask_probs.shape)}, {tuple(targets.shape)}, "
                         f"{tuple(gt_boxes_mask_px.shape)}")
    m = mask_probs.shape[0]
    if m == 0:
        return mask_probs.sum() * 0.0
    bce = F.binary_cross_entropy(mask_probs.clamp(0, 1), targets.to(mask_probs.dtype),
                                 reduction="none") * weight
    if normalize_by_box_area:
        b = gt_boxes_mask_px.to(mask_probs.dtype)
        area = ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).clamp(min=min_area)
        per_instance = bce.sum(dim=(1, 2)) / area
    else:
        per_instance = bce.mean(dim=(1, 2))
    return per_instance.sum() / m


def select_training_masks(num_pos: int, max_masks: int = 100,
                          generator: Optional[torch.Generator] = None,
                          device: Optional[torch.device] = None) -> Tensor:
    """Indices of the positives of *one image* that get a mask loss (mmdet: per image).

    As ``YOLACTProtonet.loss``: if ``num_pos > max_masks``, ``torch.randperm(num_pos)[:max]``
    (random order, not sorted); otherwise all of them, ``arange(num_pos)``. The box and class
    losses still use every positive. Returns int64 (min(num_pos, max_masks),).
    """
    if num_pos > max_masks:
        perm = torch.randperm(num_pos, generator=generator)
        return perm[:max_masks].to(device) if device is not None else perm[:max_masks]
    return torch.arange(num_pos, dtype=torch.long, device=device)
