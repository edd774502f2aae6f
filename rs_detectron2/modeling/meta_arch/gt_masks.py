"""The ground-truth masks of an image as one padded bitmask tensor, for the one-stage mask
models (YOLACT, SOLOv2), which compare whole-image masks rather than RoI crops."""
import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.structures import BitMasks, Instances, PolygonMasks

__all__ = ["padded_gt_masks"]


def padded_gt_masks(gt: Instances, height: int, width: int) -> Tensor:
    """``gt.gt_masks`` (bitmasks or polygons, at the image's size) as a (G, height, width)
    bool tensor, zero-padded to the batch's padded input size."""
    masks = gt.gt_masks
    if isinstance(masks, PolygonMasks):
        masks = BitMasks.from_polygon_masks(masks, *gt.image_size)
    tensor = masks.tensor if isinstance(masks, BitMasks) else torch.as_tensor(masks)
    tensor = tensor.bool()
    return F.pad(tensor, (0, width - tensor.shape[-1], 0, height - tensor.shape[-2]))
