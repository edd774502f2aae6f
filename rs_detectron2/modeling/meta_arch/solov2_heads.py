"""SOLOv2's network heads (Wang et al., NeurIPS 2020) as published by RS-SOLOv2
(kemaloksuz/RankSortLoss-Solov2: ``mmdet/models/anchor_heads/rank_based_solov2_head.py``,
``mmdet/models/mask_heads/mask_feat_head.py``, wired by ``mmdet/models/detectors/
single_stage_ins.py``):

* :class:`SOLOv2InstanceHead` on detectron2's p2..p6 (strides 4..64): :func:`split_feats`
  (P2 bilinear x0.5, P3-P5, P6 bilinear to P5's size: strides 8, 8, 16, 32, 32), then per
  level the 2 coordinate channels (:func:`coord_features`), bilinear resize to S x S, the
  kernel branch (``stacked_convs`` x conv 3x3 + GN(32) + ReLU, first on C + 2, then conv 3x3
  to E * k * k) and the category branch (same tower on the C feature channels, conv 3x3 to
  K logits, prior 0.01);
* :class:`SOLOv2MaskFeatureHead`: the unified mask feature branch on P2..P5 at stride 4;
* :func:`gather_kernels` / :func:`dynamic_masks`: the positive cells' kernels and their mask
  logits (the dynamic 1 x 1 convolution of the mask features);
* :func:`points_nms`: the inference-time 2 x 2 max-pool peak filter of category scores.

Published settings: R-101 ``seg_feat_channels`` 512, ``stacked_convs`` 4,
``ins_out_channels`` 256, mask branch 128 -> 256; light R-34 256, 2, 128, mask 128 -> 128;
both ``num_grids`` (40, 36, 24, 16, 12).
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SOLOv2InstanceHead", "SOLOv2MaskFeatureHead", "coord_features", "split_feats",
           "points_nms", "gather_kernels", "dynamic_masks", "SPLIT_STRIDES"]

#: the strides (w.r.t. the input) of :func:`split_feats`'s five levels (published ``strides``)
SPLIT_STRIDES = (8, 8, 16, 32, 32)


def coord_features(x: Tensor) -> Tensor:
    """The 2 CoordConv channels of ``x`` (N, C, H, W): (N, 2, H, W), channel 0 = x
    (``linspace(-1, 1, W)`` along the width), channel 1 = y (``linspace(-1, 1, H)`` along
    the height), as the published ``forward_single`` / ``MaskFeatHead.forward``."""
    n, _, h, w = x.shape
    x_range = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
    y_range = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
    y, xx = torch.meshgrid(y_range, x_range, indexing="ij")
    return torch.stack([xx, y], 0).unsqueeze(0).expand(n, -1, -1, -1)


def split_feats(feats: List[Tensor]) -> List[Tensor]:
    """The published ``split_feats`` of p2..p6: P2 bilinearly resized by 0.5 (sizes floored,
    align_corners False; ``recompute_scale_factor`` keeps torch < 1.6's size-based sampling,
    which the published torch >= 1.1 used), P3, P4, P5 as is, P6 bilinearly resized to P5's
    size."""
    if len(feats) != 5:
        raise ValueError(f"split_feats: expected the 5 maps p2..p6, got {len(feats)}")
    return [F.interpolate(feats[0], scale_factor=0.5, mode="bilinear", align_corners=False,
                          recompute_scale_factor=True),
            feats[1], feats[2], feats[3],
            F.interpolate(feats[4], size=feats[3].shape[-2:], mode="bilinear",
                          align_corners=False)]


def points_nms(heat: Tensor, kernel: int = 2) -> Tensor:
    """The published ``points_nms``: ``heat`` (N, K, S, S) scores kept where they equal the
    max of their 2 x 2 window (the cell and its upper/left neighbours), else zeroed."""
    if kernel != 2:
        raise ValueError("points_nms: the published kernel is 2")
    hmax = F.max_pool2d(heat, (kernel, kernel), stride=1, padding=1)
    keep = (hmax[:, :, :-1, :-1] == heat).to(heat.dtype)
    return heat * keep


def _conv_gn_relu(in_channels: int, out_channels: int, kernel_size: int,
                  num_groups: int) -> nn.Sequential:
    """mmdet's ConvModule with GN: conv (no bias) -> GroupNorm -> ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.GroupNorm(num_groups, out_channels), nn.ReLU())


class SOLOv2InstanceHead(nn.Module):
    """SOLOv2's kernel and category branches (the published ``RankBasedSOLOv2Head``'s
    layers and ``forward``), shared by the five :func:`split_feats` levels."""

    def __init__(self, *, in_channels: int = 256, num_classes: int = 80,
                 seg_feat_channels: int = 512, stacked_convs: int = 4,
                 ins_out_channels: int = 256, kernel_size: int = 1,
                 num_grids: Sequence[int] = (40, 36, 24, 16, 12), num_groups: int = 32,
                 prior_prob: float = 0.01):
        """
        Args:
            in_channels: the FPN maps' channels C.
            num_classes: K foreground classes (sigmoid; the published ``num_classes - 1``).
            seg_feat_channels, stacked_convs: the towers' width and depth (R-101: 512, 4;
                light: 256, 2).
            ins_out_channels: E, the mask features' channels (R-101 256, light 128).
            kernel_size: the dynamic kernels' size k (published 1): E * k * k outputs.
            num_grids: S per level. num_groups: GroupNorm groups. prior_prob: the category
                bias prior.
        """
        super().__init__()
        if len(num_grids) != len(SPLIT_STRIDES):
            raise ValueError("SOLOv2InstanceHead: one grid number per level (5)")
        self.num_classes = num_classes
        self.num_grids = tuple(int(s) for s in num_grids)
        self.ins_out_channels = ins_out_channels
        self.kernel_size = kernel_size
        self.kernel_out_channels = ins_out_channels * kernel_size * kernel_size
        self.strides = SPLIT_STRIDES
        self.kernel_convs = nn.Sequential(*[
            _conv_gn_relu(in_channels + 2 if i == 0 else seg_feat_channels, seg_feat_channels,
                          3, num_groups) for i in range(stacked_convs)])
        self.cate_convs = nn.Sequential(*[
            _conv_gn_relu(in_channels if i == 0 else seg_feat_channels, seg_feat_channels,
                          3, num_groups) for i in range(stacked_convs)])
        tower_out = seg_feat_channels if stacked_convs > 0 else in_channels
        self.solo_kernel = nn.Conv2d(tower_out + (2 if stacked_convs == 0 else 0),
                                     self.kernel_out_channels, 3, padding=1)
        self.solo_cate = nn.Conv2d(tower_out, num_classes, 3, padding=1)
        # published init_weights: normal(0, 0.01) of every conv, category bias -log(99)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.constant_(self.solo_cate.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward_single(self, x: Tensor, num_grid: int) -> Tuple[Tensor, Tensor]:
        """One level (N, C, h, w) -> category logits (N, K, S, S), kernels (N, E k k, S, S)."""
        kernel_feat = torch.cat([x, coord_features(x)], 1)
        kernel_feat = F.interpolate(kernel_feat, size=num_grid, mode="bilinear",
                                    align_corners=False)
        cate_feat = kernel_feat[:, :-2].contiguous()
        kernel_pred = self.solo_kernel(self.kernel_convs(kernel_feat.contiguous()))
        cate_pred = self.solo_cate(self.cate_convs(cate_feat))
        return cate_pred, kernel_pred

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """p2..p6 -> per level (strides 8, 8, 16, 32, 32 before the resize): category logits
        (N, K, S, S) and kernels (N, E * k * k, S, S)."""
        cate_preds: List[Tensor] = []
        kernel_preds: List[Tensor] = []
        for x, num_grid in zip(split_feats(features), self.num_grids):
            cate, kernel = self.forward_single(x, num_grid)
            cate_preds.append(cate)
            kernel_preds.append(kernel)
        return cate_preds, kernel_preds


class SOLOv2MaskFeatureHead(nn.Module):
    """The unified mask feature branch (published ``MaskFeatHead``): level 0 (P2) conv 3x3 +
    GN + ReLU; level i > 0, i x (conv 3x3 + GN + ReLU, bilinear x2), the coordinate channels
    concatenated to level 3's (P5's) input; summed at stride 4, then conv 1x1 + GN + ReLU."""

    def __init__(self, *, in_channels: int = 256, feat_channels: int = 128,
                 out_channels: int = 256, start_level: int = 0, end_level: int = 3,
                 num_groups: int = 32):
        """
        Args:
            in_channels: the FPN maps' channels.
            feat_channels: the per-level convs' width (published ``out_channels`` 128).
            out_channels: E, the mask features' channels (published ``num_classes``: 256,
                light 128); equals the instance head's ``ins_out_channels``.
            start_level, end_level: the FPN levels used (p2 = level 0; published 0, 3).
            num_groups: GroupNorm groups.
        """
        super().__init__()
        if not 0 <= start_level <= end_level:
            raise ValueError("SOLOv2MaskFeatureHead: need 0 <= start_level <= end_level")
        self.start_level, self.end_level = start_level, end_level
        self.out_channels = out_channels
        self.convs_all_levels = nn.ModuleList()
        for i in range(start_level, end_level + 1):
            if i == 0:
                self.convs_all_levels.append(
                    _conv_gn_relu(in_channels, feat_channels, 3, num_groups))
                continue
            layers: List[nn.Module] = []
            for j in range(i):
                chn = (in_channels + 2 if i == 3 else in_channels) if j == 0 else feat_channels
                layers += [*_conv_gn_relu(chn, feat_channels, 3, num_groups),
                           nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)]
            self.convs_all_levels.append(nn.Sequential(*layers))
        self.conv_pred = _conv_gn_relu(feat_channels, out_channels, 1, num_groups)
        # published init_weights: normal(0, 0.01) of every conv
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)

    def forward(self, features: List[Tensor]) -> Tensor:
        """The maps of levels ``start_level..end_level`` (p2..p5) -> mask features
        (N, E, H/4, W/4) at P2's size (input sizes divisible by 32)."""
        if len(features) != self.end_level - self.start_level + 1:
            raise ValueError("SOLOv2MaskFeatureHead: one map per level "
                             f"{self.start_level}..{self.end_level}, got {len(features)}")
        out: Optional[Tensor] = None
        for level, (x, convs) in enumerate(zip(features, self.convs_all_levels),
                                           self.start_level):
            if level == 3:
                x = torch.cat([x, coord_features(x)], 1)
            y = convs(x)
            out = y if out is None else out + y
        return self.conv_pred(out)


def gather_kernels(kernel_maps: Sequence[Tensor], positives: Sequence[Tensor],
                   return_image_index: bool = False
                   ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """The positive cells' kernels.

    Args:
        kernel_maps: per level (N, D, S, S) (D = E * k * k).
        positives: per level a boolean (N, S, S) or (N, S * S) mask of positive cells.
        return_image_index: also return each kernel's image index.
    Returns:
        (M, D) kernels in level, then image, then raster (row-major cell) order; with
        ``return_image_index`` also the (M,) image indices.
    """
    kernels: List[Tensor] = []
    images: List[Tensor] = []
    for kmap, pos in zip(kernel_maps, positives):
        n, d = kmap.shape[:2]
        flat = kmap.reshape(n, d, -1).permute(0, 2, 1)  # (N, S*S, D)
        pos = pos.reshape(n, -1).to(torch.bool)
        kernels.append(flat[pos])
        if return_image_index:
            images.append(torch.arange(n, device=kmap.device)[:, None].expand_as(pos)[pos])
    if not kernels:
        raise ValueError("gather_kernels: no levels")
    out = torch.cat(kernels, 0)
    return (out, torch.cat(images, 0)) if return_image_index else out


def dynamic_masks(mask_features: Tensor, kernels: Tensor, kernel_size: int = 1) -> Tensor:
    """Mask logits (M, h, w) of one image's mask features (E, h, w) and kernels
    (M, E * k * k): the dynamic convolution (F.conv2d with each kernel viewed (E, k, k) as a
    filter, padding k // 2; published k = 1)."""
    e, h, w = mask_features.shape
    m = kernels.shape[0]
    if kernels.shape[1] != e * kernel_size * kernel_size:
        raise ValueError(f"dynamic_masks: kernels of {kernels.shape[1]} channels for E = {e}, "
                         f"k = {kernel_size}")
    if m == 0:
        return mask_features.new_zeros((0, h, w))
    weight = kernels.reshape(m, e, kernel_size, kernel_size)
    return F.conv2d(mask_features[None], weight, padding=kernel_size // 2)[0]
