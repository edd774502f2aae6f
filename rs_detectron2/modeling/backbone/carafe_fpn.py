"""CARAFE upsampling in detectron2's FPN, in pure PyTorch (the RS "+" models' neck).

The published RS "+" detectors (e.g. RS-Faster R-CNN+, RS-Mask R-CNN+) replace the
nearest-neighbour upsampling of the FPN's top-down pathway with CARAFE (Wang et al.,
ICCV 2019, "CARAFE: Content-Aware ReAssembly of FEatures"), with up kernel 5, encoder
kernel 3, 64 compressed channels, 1 group and scale factor 2. The published code used
mmcv's compiled CARAFE op inside mmdetection's ``FPN_CARAFE``; detectron2 has neither,
so this module provides:

* :func:`carafe` / :class:`CARAFE`: the reassembly op, vectorised (unfolded
  neighbourhoods and one batched matmul);
* :class:`CARAFEUpsample`: mmcv's ``CARAFEPack`` (kernel prediction + reassembly);
* :class:`CARAFEFPN`: detectron2's :class:`FPN` with one :class:`CARAFEUpsample` per
  top-down step instead of ``F.interpolate(..., mode="nearest")``;
* :func:`build_resnet_carafe_fpn_backbone`: a ``BACKBONE_REGISTRY`` builder mirroring
  detectron2's ``build_resnet_fpn_backbone``;
* the ``cfg.MODEL.CARAFE`` keys (published values) are added by ``add_rs_config``.
"""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

__all__ = [
    "carafe",
    "CARAFE",
    "CARAFEUpsample",
    "CARAFEFPN",
    "build_resnet_carafe_fpn_backbone",
]

def carafe(
    features: torch.Tensor, kernels: torch.Tensor, kernel_size: int, groups: int, scale_factor: int
) -> torch.Tensor:
    """Content-aware reassembly: upsample ``features`` by ``scale_factor`` with per-pixel kernels.

    Output pixel (i, j) of channel c in group g is
    ``sum_{u,v} kernels[g*k*k + u*k + v, i, j] * features[c, i//s + u - k//2, j//s + v - k//2]``
    with zeros outside the input (the channel layout of mmcv's CARAFE kernels).

    Args:
        features: (N, C, H, W), C divisible by ``groups``.
        kernels: (N, groups * k * k, s*H, s*W), usually softmax-normalised over the k*k taps.
        kernel_size: k, odd.
        groups: channel groups sharing one kernel per output pixel.
        scale_factor: integer upsampling factor s.

    Returns:
        (N, C, s*H, s*W).

    Memory: the gathered neighbourhoods hold k*k / (s*s) times the output's elements
    (6.25x for k=5, s=2), freed on return in inference; autograd keeps them for backward.
    """
    n, c, h, w = features.shape
    k, s, g = kernel_size, scale_factor, groups
    if k % 2 != 1:
        raise ValueError(f"carafe: kernel_size must be odd, got {k}")
    if c % g != 0:
        raise ValueError(f"carafe: {c} channels are not divisible into {g} groups")
    if tuple(kernels.shape) != (n, g * k * k, s * h, s * w):
        raise ValueError(
            f"carafe: kernels of shape {tuple(kernels.shape)}, "
            f"expected {(n, g * k * k, s * h, s * w)}"
        )
    # The k x k neighbourhood of every source pixel (zero padded), gathered once straight
    # into the layout of a batched matmul: one (C/g, k*k) matrix per (image, group, pixel).
    # (Tensor.unfold windows are a view, so this is the only copy; F.unfold followed by
    # the same permute, or torch.einsum, measured 5-10x slower on the CPU.)
    p = k // 2
    padded = F.pad(features, (p, p, p, p)).view(n, g, c // g, h + 2 * p, w + 2 * p)
    windows = padded.unfold(3, k, 1).unfold(4, k, 1)  # (n, g, c/g, h, w, k, k), a view
    windows = windows.permute(0, 1, 3, 4, 2, 5, 6).reshape(n * g * h * w, c // g, k * k)
    # Output pixel (h*s + a, w*s + b) reads the neighbourhood of source pixel (h, w): the
    # s*s output pixels of one source pixel share its neighbourhood, so they are the
    # columns of one (k*k, s*s) kernel matrix.
    kernels = kernels.view(n, g, k * k, h, s, w, s).permute(0, 1, 3, 5, 2, 4, 6)
    out = torch.bmm(windows, kernels.reshape(n * g * h * w, k * k, s * s))
    out = out.view(n, g, h, w, c // g, s, s).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(n, c, s * h, s * w)


class CARAFE(nn.Module):
    """The CARAFE reassembly op (no parameters): ``forward(features, kernels)``, see
    :func:`carafe`."""

    def __init__(self, kernel_size: int = 5, groups: int = 1, scale_factor: int = 2):
        super().__init__()
        self.kernel_size = kernel_size
        self.groups = groups
        self.scale_factor = scale_factor

    def forward(self, features: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        return carafe(features, kernels, self.kernel_size, self.groups, self.scale_factor)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, groups={self.groups}, "
                f"scale_factor={self.scale_factor}")


class CARAFEUpsample(nn.Module):
    """CARAFE upsampler (mmcv's ``CARAFEPack``): predicts a reassembly kernel for every
    output pixel from the content, then reassembles the input with it.

    1x1 channel compressor (C -> compressed_channels), content encoder conv
    (-> s^2 * groups * k_up^2 channels), pixel shuffle to the s-times grid, softmax over
    the k_up^2 taps of each group's kernel, :func:`carafe`. No activation in between.
    The sub-module names match mmcv's so its weights map one to one.

    Initialisation as mmcv's ``CARAFEPack.init_weights``: compressor xavier-uniform
    (gain 1), encoder normal(0, 0.001), biases 0. The near-zero encoder makes the
    initial kernels nearly uniform (a 5x5 box filter).
    """

    def __init__(
        self,
        channels: int,
        scale_factor: int = 2,
        up_kernel: int = 5,
        groups: int = 1,
        encoder_kernel: int = 3,
        encoder_dilation: int = 1,
        compressed_channels: int = 64,
    ):
        super().__init__()
        self.channels = channels
        self.scale_factor = scale_factor
        self.up_kernel = up_kernel
        self.groups = groups
        self.channel_compressor = nn.Conv2d(channels, compressed_channels, 1)
        self.content_encoder = nn.Conv2d(
            compressed_channels,
            up_kernel * up_kernel * groups * scale_factor * scale_factor,
            encoder_kernel,
            padding=(encoder_kernel - 1) * encoder_dilation // 2,
            dilation=encoder_dilation,
        )
        self.reassemble = CARAFE(up_kernel, groups, scale_factor)
        self.init_weights()

    def init_weights(self) -> None:
        """mmcv's CARAFEPack init: xavier-uniform compressor, normal(std=0.001) encoder,
        zero biases."""
        nn.init.xavier_uniform_(self.channel_compressor.weight)
        nn.init.zeros_(self.channel_compressor.bias)
        nn.init.normal_(self.content_encoder.weight, std=0.001)
        nn.init.zeros_(self.content_encoder.bias)

    def kernels(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised reassembly kernels, (N, groups * k_up^2, s*H, s*W)."""
        kernels = self.content_encoder(self.channel_compressor(x))
        kernels = F.pixel_shuffle(kernels, self.scale_factor)
        n, c, h, w = kernels.shape
        kernels = F.softmax(kernels.view(n, self.groups, -1, h, w), dim=2)
        return kernels.view(n, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, C, s*H, s*W)."""
        return self.reassemble(x, self.kernels(x))


class CARAFEFPN(FPN):
    """detectron2's :class:`FPN` whose top-down upsampling is CARAFE instead of nearest.

    Everything else is detectron2's: lateral and output convs (and their init), norm,
    ``fuse_type``, ``top_block``, output names/strides. One :class:`CARAFEUpsample` per
    top-down step (3 for P5->P4->P3->P2), registered as ``fpn_carafe<stage>`` where
    ``<stage>`` is the level it upsamples *to* (``fpn_carafe4`` takes P5's merged
    features to P4's grid), so detectron2 FPN checkpoints load with only these missing.

    Deviations from mmdetection's ``FPN_CARAFE`` (the published code):

    * P6: mmdet makes P6 with an extra 3x3 stride-2 conv on C5, CARAFE-upsamples it into
      P5 (4 upsamplers) and puts a 3x3 output conv on it; here P6 is detectron2's
      ``top_block`` (``LastLevelMaxPool`` on P5 in the builder) and P5 gets no top-down
      input, as in detectron2's FPN.
    * Init of lateral/output convs: detectron2's ``c2_xavier_fill`` (mmdet: xavier-uniform).
      The upsamplers use mmcv's CARAFEPack init (see :class:`CARAFEUpsample`).
    * Sizes: mmdet crops the upsampled map when it is larger than the lateral one; here,
      as in detectron2's FPN, the input must be padded to ``size_divisibility``.
    """

    def __init__(
        self,
        bottom_up: Backbone,
        in_features: List[str],
        out_channels: int,
        norm: str = "",
        top_block: Optional[nn.Module] = None,
        fuse_type: str = "sum",
        square_pad: int = 0,
        up_kernel: int = 5,
        encoder_kernel: int = 3,
        compressed_channels: int = 64,
        groups: int = 1,
    ):
        super().__init__(
            bottom_up, in_features, out_channels, norm=norm, top_block=top_block,
            fuse_type=fuse_type, square_pad=square_pad,
        )
        stages = [int(name[1:]) for name in self._out_features[: len(self.in_features)]]
        upsamplers = []
        for stage in stages[:-1]:
            upsampler = CARAFEUpsample(
                out_channels, scale_factor=2, up_kernel=up_kernel, groups=groups,
                encoder_kernel=encoder_kernel, compressed_channels=compressed_channels,
            )
            self.add_module(f"fpn_carafe{stage}", upsampler)
            upsamplers.append(upsampler)
        # Top-down order, like lateral_convs/output_convs: upsamplers[idx - 1] feeds level idx.
        self.upsamplers = upsamplers[::-1]

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """detectron2's ``FPN.forward`` with CARAFE in place of ``F.interpolate(nearest)``."""
        bottom_up_features = self.bottom_up(x)
        results = []
        prev_features = self.lateral_convs[0](bottom_up_features[self.in_features[-1]])
        results.append(self.output_convs[0](prev_features))
        for idx, (lateral_conv, output_conv) in enumerate(
            zip(self.lateral_convs, self.output_convs)
        ):
            if idx > 0:
                features = bottom_up_features[self.in_features[-idx - 1]]
                top_down_features = self.upsamplers[idx - 1](prev_features)
                lateral_features = lateral_conv(features)
                prev_features = lateral_features + top_down_features
                if self._fuse_type == "avg":
                    prev_features /= 2
                results.insert(0, output_conv(prev_features))

        if self.top_block is not None:
            if self.top_block.in_feature in bottom_up_features:
                top_block_in_feature = bottom_up_features[self.top_block.in_feature]
            else:
                top_block_in_feature = results[self._out_features.index(self.top_block.in_feature)]
            results.extend(self.top_block(top_block_in_feature))
        assert len(self._out_features) == len(results)
        return {f: res for f, res in zip(self._out_features, results)}


def _carafe_kwargs(cfg: CN) -> Dict[str, int]:
    """CARAFEFPN's keyword arguments from ``cfg.MODEL.CARAFE``."""
    if "CARAFE" not in cfg.MODEL:
        raise KeyError("cfg.MODEL.CARAFE is missing: build the config with "
                       "rs_detectron2.add_rs_config(cfg) before merging a CARAFE config.")
    node = cfg.MODEL.CARAFE
    return {
        "up_kernel": node.UP_KERNEL,
        "encoder_kernel": node.ENCODER_KERNEL,
        "compressed_channels": node.COMPRESSED_CHANNELS,
        "groups": node.GROUPS,
    }


@BACKBONE_REGISTRY.register()
def build_resnet_carafe_fpn_backbone(cfg: CN, input_shape: ShapeSpec) -> CARAFEFPN:
    """detectron2's ``build_resnet_fpn_backbone`` with :class:`CARAFEFPN`: ResNet bottom-up,
    P2-P6 (P6 by ``LastLevelMaxPool``), upsamplers from ``cfg.MODEL.CARAFE``."""
    return CARAFEFPN(
        bottom_up=build_resnet_backbone(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
        **_carafe_kwargs(cfg),
    )
