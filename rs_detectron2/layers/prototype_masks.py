"""YOLACT's prototype masks (Bolya et al., ICCV 2019): assembling instance masks from the
prototypes and each detection's coefficients, cropping them to a box, and the mask targets
at the prototypes' size; as mmdetection's ``YOLACTProtonet`` (``forward``, ``crop``,
``sanitize_coordinates``, ``get_targets``). Shared by RS-YOLACT and its stock-loss twin.

Coordinates: every box here is XYXY in the *mask's pixel* frame. mmdet keeps boxes in image
pixels and normalises them (``x / img_w``) before ``crop``, which multiplies by the mask width
again; so ``box_mask_px = box_img_px * (mask_w / img_w, mask_h / img_h, mask_w / img_w,
mask_h / img_h)`` reproduces it (up to float rounding at exact integer boundaries).
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["assemble_masks", "crop_masks", "mask_targets", "mask_bounding_boxes"]


def _sanitize_coordinates(c1: Tensor, c2: Tensor, size: int, padding: int) -> Tuple[Tensor, Tensor]:
    """mmdet's ``sanitize_coordinates(cast=False)`` on coordinates already in mask pixels.

    mmdet writes ``x1 = min(x1, x2); x2 = max(x1, x2)`` with the *new* x1, so x2 is kept as
    is: an inverted box (x1 > x2) becomes the degenerate ``[x2, x2]`` and not the swapped box.
    Kept for exactness; valid boxes (x1 <= x2) are unaffected.
    """
    c1 = torch.minimum(c1, c2)
    c2 = torch.maximum(c1, c2)
    c1 = (c1 - padding).clamp(min=0)
    c2 = (c2 + padding).clamp(max=size)
    return c1, c2


def crop_masks(masks: Tensor, boxes: Tensor, padding: int = 1) -> Tensor:
    """Zero every mask outside its box, as mmdet's ``YOLACTProtonet.crop`` (padding=1).

    masks (M, H, W); boxes (M, 4) XYXY in the mask's pixel coordinates (float, not rounded;
    mmdet's normalised box times (W, H, W, H)). After ``_sanitize_coordinates`` --
    x1' = max(min(x1, x2) - padding, 0), x2' = min(x2 + padding, W) (same for y with H) --
    pixel (row i, column j) is kept iff ``x1' <= j < x2'`` and ``y1' <= i < y2'`` with
    integer j, i compared to the float bounds. So a zero-area box still keeps a
    (2 * padding)-wide window around it, and boxes past the border are clipped to the mask.
    """
    if masks.dim() != 3 or boxes.shape != (masks.shape[0], 4):
        raise ValueError(f"expected masks (M, H, W) and boxes (M, 4), got "
                         f"{list(masks.shape)} and {list(boxes.shape)}")
    m, h, w = masks.shape[0], masks.shape[1], masks.shape[2]
    # bounds compared in the boxes' float dtype (>= float32), as mmdet's arange(dtype=x1.dtype)
    boxes = boxes.to(torch.promote_types(boxes.dtype, torch.float32))
    x1, x2 = _sanitize_coordinates(boxes[:, 0], boxes[:, 2], w, padding)
    y1, y2 = _sanitize_coordinates(boxes[:, 1], boxes[:, 3], h, padding)
    cols = torch.arange(w, device=masks.device, dtype=x1.dtype).view(1, 1, w)
    rows = torch.arange(h, device=masks.device, dtype=y1.dtype).view(1, h, 1)
    keep = ((cols >= x1.view(m, 1, 1)) & (cols < x2.view(m, 1, 1))
            & (rows >= y1.view(m, 1, 1)) & (rows < y2.view(m, 1, 1)))
    return masks * keep.to(masks.dtype)


def assemble_masks(prototypes: Tensor, coefficients: Tensor) -> Tensor:
    """YOLACT's linear combination ``sigmoid(prototypes @ coefficients^T)``, uncropped.

    prototypes (P, H, W): one image's protonet output in detectron2's channel-first layout
    (mmdet permutes to (H, W, P) first; the product is the same); coefficients (M, P) (tanh'd
    head outputs). Returns mask probabilities (M, H, W).
    """
    if prototypes.dim() != 3 or coefficients.dim() != 2 or \
            coefficients.shape[1] != prototypes.shape[0]:
        raise ValueError(f"expected prototypes (P, H, W) and coefficients (M, P), got "
                         f"{list(prototypes.shape)} and {list(coefficients.shape)}")
    p, h, w = prototypes.shape[0], prototypes.shape[1], prototypes.shape[2]
    logits = coefficients @ prototypes.reshape(p, h * w)
    return torch.sigmoid(logits).view(coefficients.shape[0], h, w)


def mask_targets(gt_masks: Tensor, mask_size: Tuple[int, int]) -> Tensor:
    """Binary mask targets at the prototype size, as mmdet's ``YOLACTProtonet.get_targets``.

    gt_masks (G, Hi, Wi) bool/float at image size; mask_size (h, w). Bilinear resize with
    align_corners=False (no antialias), then ``> 0.5``; returns float (G, h, w) in {0, 1}.
    """
    h, w = int(mask_size[0]), int(mask_size[1])
    dtype = gt_masks.dtype if gt_masks.is_floating_point() else torch.float32
    if gt_masks.shape[0] == 0:
        return gt_masks.new_zeros((0, h, w), dtype=dtype)
    resized = F.interpolate(gt_masks.to(dtype).unsqueeze(0), (h, w), mode="bilinear",
                            align_corners=False).squeeze(0)
    return (resized > 0.5).to(dtype)


def mask_bounding_boxes(masks: Tensor) -> Tensor:
    """(N, 4) float32 XYXY tight boxes of (N, H, W) bool masks, all zero for an empty mask:
    detectron2's ``BitMasks.get_bounding_boxes`` without its loop over the masks (so that a
    traced model follows the number of masks)."""
    h, w = masks.shape[-2], masks.shape[-1]
    x_any, y_any = masks.any(dim=1), masks.any(dim=2)
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    x0 = torch.where(x_any, xs, torch.full_like(xs, w)).min(dim=1).values
    x1 = torch.where(x_any, xs, torch.full_like(xs, -1)).max(dim=1).values + 1
    y0 = torch.where(y_any, ys, torch.full_like(ys, h)).min(dim=1).values
    y1 = torch.where(y_any, ys, torch.full_like(ys, -1)).max(dim=1).values + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).to(torch.float32)
    empty = ~(x_any.any(dim=1) & y_any.any(dim=1))
    return torch.where(empty[:, None], torch.zeros_like(boxes), boxes)
