"""PAA's score voting (Kim & Lee, ECCV 2020): each detection kept by NMS moves to the
average of the pre-NMS boxes of its class that overlap it, weighted by overlap and score."""
import torch
from torch import Tensor

from .box_iou import box_iou


__all__ = ["score_voting"]


def score_voting(det_boxes: Tensor, det_classes: Tensor, cand_boxes: Tensor,
                 cand_classes: Tensor, cand_scores: Tensor, min_iou: float = 0.01,
                 sigma: float = 0.025) -> Tensor:
    """The voted boxes of the detections (scores and classes are unchanged).

    For detection d, over the candidates c of its class with IoU(d, c) > ``min_iou``:
    ``box_d = Σ_c p_c box_c / Σ_c p_c`` with ``p_c = exp(-(1 - IoU(d, c))² / sigma) · score_c``
    (published: 0.01 and 0.025; the candidates are the pre-NMS (box, class, score)
    triples above the score threshold, the detection itself among them). A detection with
    no such candidate keeps its box.

    Args:
        det_boxes: (D, 4), det_classes: (D,): the detections after NMS.
        cand_boxes: (M, 4), cand_classes: (M,), cand_scores: (M,): the candidates.

    Returns:
        (D, 4) voted boxes.
    """
    if len(det_boxes) == 0 or len(cand_boxes) == 0:
        return det_boxes.clone()
    iou = box_iou(det_boxes, cand_boxes)  # (D, M)
    voters = (iou > min_iou) & (det_classes[:, None] == cand_classes[None, :])
    weights = torch.exp(-(1.0 - iou) ** 2 / sigma) * cand_scores[None, :]
    weights = torch.where(voters, weights, torch.zeros_like(weights))
    total = weights.sum(1, keepdim=True)
    voted = (weights @ cand_boxes) / total.clamp(min=1e-12)
    return torch.where(total > 0, voted, det_boxes)
