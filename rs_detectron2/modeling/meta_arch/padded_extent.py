"""Which anchors lie on an image's own padded extent (the published one-stage models'
"valid flags").

detectron2 pads every image of a batch to the largest one, so a small image's feature maps
have locations over padding only. The published models (mmdetection's anchor heads with
``allowed_border=-1``) pad each image to a multiple of 32 on its own and ignore the anchors
of locations beyond that extent: they are no assignment candidate and take no part in the
loss. :func:`anchors_in_padded_extent` gives those flags for detectron2's anchor layout.
"""
import math
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["anchors_in_padded_extent", "PUBLISHED_PAD_DIVISOR"]

# The published pipelines pad each image to a multiple of 32 (mmdetection's Pad,
# size_divisor=32) before batching.
PUBLISHED_PAD_DIVISOR = 32


def anchors_in_padded_extent(grid_sizes: Sequence[Tuple[int, int]], strides: Sequence[int],
                             anchors_per_location: Sequence[int],
                             image_sizes: Sequence[Tuple[int, int]],
                             pad_divisor: int = PUBLISHED_PAD_DIVISOR,
                             device: torch.device = torch.device("cpu")) -> List[Tensor]:
    """Per image, a (R,) bool mask over all anchors (levels concatenated in detectron2's
    order: per level H x W locations row by row, A anchors each): True where the anchor's
    location lies inside the image padded to a multiple of ``pad_divisor``.

    A location (y, x) of a level with stride s is inside when
    ``y < ceil(ceil(h / d) * d / s)`` and ``x < ceil(ceil(w / d) * d / s)`` (h x w the
    image's size before padding, d = ``pad_divisor``), as mmdetection's
    ``AnchorGenerator.valid_flags`` computes from an image's ``pad_shape``.
    """
    if not (len(grid_sizes) == len(strides) == len(anchors_per_location)):
        raise ValueError("anchors_in_padded_extent: grid_sizes, strides and "
                         "anchors_per_location need one entry per level")
    masks = []
    for h, w in image_sizes:
        padded_h = math.ceil(int(h) / pad_divisor) * pad_divisor
        padded_w = math.ceil(int(w) / pad_divisor) * pad_divisor
        levels = []
        for (gh, gw), stride, a in zip(grid_sizes, strides, anchors_per_location):
            rows = torch.arange(int(gh), device=device) < math.ceil(padded_h / stride)
            cols = torch.arange(int(gw), device=device) < math.ceil(padded_w / stride)
            inside = rows[:, None] & cols[None, :]
            levels.append(inside[:, :, None].expand(int(gh), int(gw), int(a)).reshape(-1))
        masks.append(torch.cat(levels))
    return masks
