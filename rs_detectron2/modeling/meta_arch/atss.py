"""ATSS: adaptive training sample selection (Zhang et al., CVPR 2020), vectorised.

For each ground truth: on every pyramid level the ``topk`` anchors whose centres are
closest to its centre are candidates; the IoU threshold is the mean plus the (unbiased)
standard deviation of the candidates' IoUs; a candidate whose IoU reaches the threshold
and whose centre lies inside the box (at least 0.01 from every side) is positive. An
anchor positive for several ground truths goes to the one of highest IoU. There is no
sampling. Everything is tensor operations over anchors x ground truths (a loop over the
few pyramid levels only): it runs for every image of every training iteration.
"""
from typing import List, Tuple

import torch
from torch import Tensor

from detectron2.structures import Boxes, pairwise_iou

__all__ = ["atss_match"]

_MIN_INSIDE = 0.01


@torch.no_grad()
def atss_match(anchors: List[Boxes], gt_boxes: Boxes, topk: int = 9) -> Tuple[Tensor, Tensor]:
    """Assign the anchors of one image to its ground truths by ATSS.

    Args:
        anchors: the anchors of each pyramid level (R_l x 4 each, XYXY).
        gt_boxes: the image's G ground-truth boxes (XYXY).
        topk: candidates per level and ground truth (fewer where a level has fewer anchors).

    Returns:
        matched_idxs: (R,) int64, index of the assigned ground truth (0 where negative);
        is_positive: (R,) bool.
    """
    all_anchors = Boxes.cat(anchors).tensor
    num_anchors, num_gt = len(all_anchors), len(gt_boxes)
    device = all_anchors.device
    if num_gt == 0:
        return (torch.zeros(num_anchors, dtype=torch.int64, device=device),
                torch.zeros(num_anchors, dtype=torch.bool, device=device))
    gt = gt_boxes.tensor
    ious = pairwise_iou(Boxes(all_anchors), gt_boxes)  # (R, G)
    anchor_centres = (all_anchors[:, :2] + all_anchors[:, 2:]) / 2
    gt_centres = (gt[:, :2] + gt[:, 2:]) / 2
    distances = torch.cdist(anchor_centres, gt_centres)  # (R, G)

    candidates = []
    start = 0
    for level in anchors:
        end = start + len(level)
        k = min(topk, end - start)
        if k > 0:
            _, idx = distances[start:end].topk(k, dim=0, largest=False)  # (k, G)
            candidates.append(idx + start)
        start = end
    candidates = torch.cat(candidates, dim=0)  # (C, G)
    gt_index = torch.arange(num_gt, device=device).expand_as(candidates)
    cand_ious = ious[candidates, gt_index]  # (C, G)
    threshold = cand_ious.mean(dim=0) + cand_ious.std(dim=0)  # unbiased, as published
    positive = cand_ious >= threshold

    cx, cy = anchor_centres[candidates, 0], anchor_centres[candidates, 1]
    inside = torch.stack([cx - gt[:, 0], cy - gt[:, 1], gt[:, 2] - cx, gt[:, 3] - cy])
    positive &= inside.min(dim=0).values > _MIN_INSIDE

    # IoU of each (anchor, gt) pair that is positive, -inf elsewhere; max over the gts.
    scores = torch.full((num_anchors, num_gt), float("-inf"), dtype=ious.dtype, device=device)
    scores[candidates[positive], gt_index[positive]] = ious[candidates[positive],
                                                            gt_index[positive]]
    best, matched_idxs = scores.max(dim=1)
    is_positive = best > float("-inf")
    return torch.where(is_positive, matched_idxs, torch.zeros_like(matched_idxs)), is_positive
