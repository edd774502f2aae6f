"""Pairwise IoU of XYXY boxes in the boxes' own dtype (detectron2's ``pairwise_iou`` goes
through ``Boxes``, which is float32): the NMS variants and score voting use it so that
float64 inputs stay float64."""
import torch
from torch import Tensor

__all__ = ["box_iou"]


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """(N, M) IoU of the (N, 4) boxes ``a`` with the (M, 4) boxes ``b`` (0 where the union
    is empty)."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    positive = union > 0
    # (a where, not a clamp at finfo.tiny: TorchScript has no torch.finfo)
    return torch.where(positive, inter / torch.where(positive, union, torch.ones_like(union)),
                       torch.zeros_like(inter))
