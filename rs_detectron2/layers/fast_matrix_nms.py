"""The parallel NMS variants of the one-stage instance-segmentation detectors: YOLACT's Fast
NMS (Bolya et al., ICCV 2019) and SOLOv2's Matrix NMS (Wang et al., NeurIPS 2020), each
one matrix computation instead of detectron2's sequential NMS."""
from typing import Tuple

import torch
from torch import Tensor

from .box_iou import box_iou


__all__ = ["fast_nms", "matrix_nms"]


def _batched_box_iou(boxes: Tensor) -> Tensor:
    """(C, k, k) IoU of each of the C groups of k XYXY boxes with itself."""
    area = (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)
    lt = torch.max(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.min(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area[:, :, None] + area[:, None, :] - inter
    positive = union > 0
    return torch.where(positive, inter / torch.where(positive, union, torch.ones_like(union)),
                       torch.zeros_like(inter))


def fast_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5,
             top_k: int = 200) -> Tuple[Tensor, Tensor, Tensor]:
    """YOLACT's Fast NMS, class by class and all classes at once.

    Per class, the ``top_k`` highest-scoring candidates are kept in score order and a
    candidate is dropped when its IoU with *any* higher-scoring candidate of the class
    exceeds ``iou_threshold``, whether or not that one was dropped itself (which is what
    makes it a single upper-triangular matrix max rather than a sequential loop).

    Args:
        boxes: (N, 4) XYXY boxes shared by the classes.
        scores: (N, C) class scores.

    Returns:
        ``(indices, classes, kept_scores)`` of the kept (box, class) pairs, ordered by
        class, then score descending.
    """
    if boxes.dim() != 2 or scores.dim() != 2 or boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"fast_nms: boxes (N, 4) and scores (N, C) expected, got "
                         f"{list(boxes.shape)} and {list(scores.shape)}")
    num_classes = scores.shape[1]
    k = min(int(top_k), scores.shape[0])
    top_scores, top_idx = scores.t().sort(1, descending=True)
    top_scores, top_idx = top_scores[:, :k], top_idx[:, :k]  # (C, k)
    cand = boxes[top_idx.reshape(-1)].view(num_classes, k, 4)
    iou = _batched_box_iou(cand).triu(diagonal=1)  # iou[c, i, j]: candidate i scored above j
    if k > 0:
        keep = iou.max(dim=1).values <= iou_threshold
    else:
        keep = torch.zeros(num_classes, 0, dtype=torch.bool, device=scores.device)
    classes = torch.arange(num_classes, device=scores.device)[:, None].expand_as(top_idx)
    return top_idx[keep], classes[keep], top_scores[keep]


def matrix_nms(masks: Tensor, labels: Tensor, scores: Tensor, kernel: str = "gaussian",
               sigma: float = 2.0) -> Tensor:
    """SOLOv2's Matrix NMS: every mask's score decayed by the masks of its class scored
    above it, in one matrix computation.

    For masks sorted by descending score, with IoU_ij the mask IoU of i above j (same class
    only, else 0) and the compensation C_i = max_{k above i} IoU_ki of i itself, the decay of
    j is min_{i above j} f(IoU_ij) / f(C_i), f(x) = exp(-sigma x^2) ("gaussian") or 1 - x
    ("linear"); j's new score is its score times that (1 with nothing above).

    Args:
        masks: (N, H, W) binary masks, sorted by descending ``scores``.
        labels: (N,) their classes; scores: (N,) their scores, descending.

    Returns:
        (N,) the decayed scores.
    """
    if kernel not in ("gaussian", "linear"):
        raise ValueError(f"matrix_nms: kernel must be 'gaussian' or 'linear', got {kernel!r}")
    if not torch.jit.is_tracing():  # (a traced model follows the number of masks)
        if len(labels) == 0:
            return scores.clone()
        if bool((scores[1:] > scores[:-1]).any()):
            raise ValueError("matrix_nms: masks must be sorted by descending score")
    flat = masks.flatten(1).to(torch.float64)
    inter = flat @ flat.t()
    area = flat.sum(1)
    union = area[:, None] + area[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter)).triu(1)
    same = (labels[:, None] == labels[None, :]).triu(1)
    iou = iou * same
    compensate = iou.max(0).values  # C_i: the largest IoU of i with a mask above it
    if kernel == "gaussian":
        decay = torch.exp(-sigma * iou ** 2) / torch.exp(-sigma * compensate[:, None] ** 2)
    else:
        decay = (1 - iou) / (1 - compensate[:, None]).clamp(min=1e-12)
    decay = torch.where(torch.ones_like(iou, dtype=torch.bool).triu(1), decay,
                        torch.full_like(decay, float("inf")))
    coefficient = decay.min(0).values.clamp(max=1.0)
    coefficient = torch.where(torch.isinf(coefficient), torch.ones_like(coefficient), coefficient)
    return (scores.to(torch.float64) * coefficient).to(scores.dtype)
