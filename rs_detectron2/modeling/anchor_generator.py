"""Anchors on non-integer strides: YOLACT's layout.

The published (RS-)YOLACT lays its anchors out with stride ``550 / feature side`` per level
(550/69 = 7.97..., 550/35, 550/18, 550/9, 550/5) and centres half a stride in (mmdet's
``strides=[550 / x ...]``, ``centers=[(550 * 0.5 / x, ...)]``): the grid spans the image
exactly, where detectron2's integer strides (8, 16, ..., 128) would put the last P7 centre
81 px further out (576 vs 495). :class:`FractionalStrideAnchorGenerator` does this when
given the input's size.

Cell anchors are detectron2's (area ``size**2``, ratio h/w: h = size*sqrt(r), w =
size/sqrt(r)), the same boxes as mmdet's ``base_size * scale``. YOLACT: SIZES
[[24], [48], [96], [192], [384]] (base sizes 8-128 times octave_base_scale 3),
ASPECT_RATIOS [[0.5, 1.0, 2.0]] and OFFSET 0.5 (detectron2's default is 0.0).
"""
from typing import List, Optional

import torch
from torch import Tensor

from detectron2.layers import move_device_like
from detectron2.modeling.anchor_generator import (
    ANCHOR_GENERATOR_REGISTRY,
    DefaultAnchorGenerator,
)
from detectron2.structures import Boxes

__all__ = ["FractionalStrideAnchorGenerator"]


def _fractional_grid_offsets(
    size: List[int], image_size: List[int], offset: float, target_device_tensor: Tensor
):
    """Centres ``(i + offset) * image side / grid side`` along each axis, row-major.

    Computed as ``(i + offset) * side / n`` (not a float ``arange`` step, whose rounding can
    add a point), from shapes only, so that a traced graph follows the input size."""
    grid_height, grid_width = size[0], size[1]
    shifts_x = move_device_like(
        (torch.arange(grid_width, dtype=torch.float32) + offset) * image_size[1] / grid_width,
        target_device_tensor,
    )
    shifts_y = move_device_like(
        (torch.arange(grid_height, dtype=torch.float32) + offset) * image_size[0] / grid_height,
        target_device_tensor,
    )
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    return shift_x.reshape(-1), shift_y.reshape(-1)


@ANCHOR_GENERATOR_REGISTRY.register()
class FractionalStrideAnchorGenerator(DefaultAnchorGenerator):
    """:class:`DefaultAnchorGenerator` whose strides, given the input's (H, W), are
    H / h_l and W / w_l of each level's (h_l, w_l): YOLACT's anchors.

    Same anchor order as detectron2 (per level: locations row-major, then the cell anchors:
    sizes, then aspect ratios), same non-persistent cell-anchor buffers.
    """

    def _fractional_grid_anchors(
        self, grid_sizes: List[List[int]], image_size: List[int]
    ) -> List[Tensor]:
        """Per feature map, (#locations x #cell_anchors) x 4 anchors on fractional strides."""
        anchors = []
        # buffers() is not supported by TorchScript: named_buffers() (as detectron2).
        buffers: List[Tensor] = [x[1] for x in self.cell_anchors.named_buffers()]
        for size, base_anchors in zip(grid_sizes, buffers):
            shift_x, shift_y = _fractional_grid_offsets(size, image_size, self.offset, base_anchors)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            anchors.append((shifts.view(-1, 1, 4) + base_anchors.view(1, -1, 4)).reshape(-1, 4))
        return anchors

    def forward(
        self, features: List[Tensor], image_size: Optional[List[int]] = None
    ) -> List[Boxes]:
        """
        Args:
            features: the feature maps, high to low resolution.
            image_size: (H, W) of the (padded) input, e.g. ``images.tensor.shape[-2:]``.
                None: detectron2's integer strides (exactly :class:`DefaultAnchorGenerator`).

        Returns:
            list[Boxes]: the anchors of each feature map, H_l x W_l x #cell_anchors each.
        """
        grid_sizes = [feature_map.shape[-2:] for feature_map in features]
        if image_size is None:
            anchors = self._grid_anchors(grid_sizes)
        else:
            anchors = self._fractional_grid_anchors(grid_sizes, image_size)
        return [Boxes(x) for x in anchors]
