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

from detectron2.structures import Boxes

__all__ = ["atss_match"]

_MIN_INSIDE = 0.01


def _matched_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of boxes ``a`` and ``b`` (both (..., 4), XYXY), element by element."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area_a = (a[..., 2:] - a[..., :2]).prod(dim=-1)
    area_b = (b[..., 2:] - b[..., :2]).prod(dim=-1)
    return torch.where(inter > 0, inter / (area_a + area_b - inter), torch.zeros_like(inter))


def _closest(centres: Tensor, points: Tensor, k: int, per_location: int) -> Tensor:
    """(P, k) indices of the k of ``centres`` (R, 2) closest to each of ``points`` (P, 2),
    nearest first; see :func:`atss_match` for ``per_location``."""
    a = per_location
    if a > 1 and len(centres) % a == 0:
        grouped = centres.view(-1, a, 2)
        if not torch.equal(grouped, grouped[:, :1].expand_as(grouped)):
            a = 1
    else:
        a = 1
    locations = centres[::a]
    # Squared distances up to the per-point constant |p|^2 (which does not change the order
    # within a row): |c|^2 - 2 p.c, as one (P, 3) x (3, L) matrix product.
    lhs = torch.cat([-2.0 * points, torch.ones_like(points[:, :1])], dim=1)
    rhs = torch.cat([locations, (locations * locations).sum(dim=1, keepdim=True)], dim=1)
    dist = lhs @ rhs.t()
    nearest = dist.topk(min(-(-k // a), len(locations)), dim=1, largest=False).indices
    anchors = nearest[:, :, None] * a + torch.arange(a, device=centres.device)
    return anchors.flatten(1)[:, :k]


@torch.no_grad()
def atss_match(anchors: List[Boxes], gt_boxes: Boxes, topk: int = 9,
               anchors_per_location: int = 1) -> Tuple[Tensor, Tensor]:
    """Assign the anchors of one image to its ground truths by ATSS.

    Only the candidates' IoUs are computed (not all anchors x ground truths): the closest
    centres come from squared distances as one matrix product per level, over the
    locations rather than the anchors when ``anchors_per_location`` > 1 (detectron2's
    anchor generators put a location's anchors, which share one centre, next to each
    other: the k closest anchors are then those of the ceil(k / A) closest locations).

    Args:
        anchors: the anchors of each pyramid level (R_l x 4 each, XYXY).
        gt_boxes: the image's G ground-truth boxes (XYXY).
        topk: candidates per level and ground truth (fewer where a level has fewer anchors).
        anchors_per_location: A, the number of consecutive anchors sharing a centre; checked,
            and treated as 1 where the anchors are not laid out so.

    Returns:
        matched_idxs: (R,) int64, index of the assigned ground truth (0 where negative);
        is_positive: (R,) bool.
    """
    all_anchors = Boxes.cat(anchors).tensor
    num_anchors, num_gt = len(all_anchors), len(gt_boxes)
    device = all_anchors.device
    matched_idxs = torch.zeros(num_anchors, dtype=torch.int64, device=device)
    is_positive = torch.zeros(num_anchors, dtype=torch.bool, device=device)
    if num_gt == 0 or num_anchors == 0:
        return matched_idxs, is_positive
    gt = gt_boxes.tensor.to(all_anchors.dtype)
    anchor_centres = (all_anchors[:, :2] + all_anchors[:, 2:]) / 2
    gt_centres = (gt[:, :2] + gt[:, 2:]) / 2

    candidates = []  # (G, k_l) anchor indices per level
    start = 0
    for level in anchors:
        end = start + len(level)
        k = min(topk, end - start)
        if k > 0:
            candidates.append(_closest(anchor_centres[start:end], gt_centres, k,
                                       anchors_per_location) + start)
        start = end
    candidates = torch.cat(candidates, dim=1)  # (G, C)
    cand_ious = _matched_iou(all_anchors[candidates], gt[:, None, :])  # (G, C)
    threshold = cand_ious.mean(dim=1, keepdim=True) + cand_ious.std(dim=1, keepdim=True)
    positive = cand_ious >= threshold  # unbiased std, as published

    centres = anchor_centres[candidates]  # (G, C, 2)
    inside = torch.cat([centres - gt[:, None, :2], gt[:, None, 2:] - centres], dim=2)
    positive &= inside.min(dim=2).values > _MIN_INSIDE

    # An anchor positive for several gts goes to the one of highest IoU (the first such gt
    # on ties, as a max over gts does): resolved over the few anchors that are positive.
    gt_idx, cand_col = positive.nonzero(as_tuple=True)
    anchor_idx = candidates[gt_idx, cand_col]
    if len(anchor_idx) == 0:
        return matched_idxs, is_positive
    rows, inverse = torch.unique(anchor_idx, return_inverse=True)
    scores = torch.full((len(rows), num_gt), float("-inf"), dtype=cand_ious.dtype,
                        device=device)
    scores[inverse, gt_idx] = cand_ious[gt_idx, cand_col]
    matched_idxs[rows] = scores.argmax(dim=1)
    is_positive[rows] = True
    return matched_idxs, is_positive
