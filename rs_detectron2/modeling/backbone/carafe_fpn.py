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
from torch.autograd.function import once_differentiable
import torch.nn.functional as F
from detectron2.config import CfgNode as CN
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from .top_down_fpn import TopDownFPN

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

    Computed by k batched matrix products over strided views of the padded features
    (:class:`_CARAFEFunction`): no k*k-fold copy of the features is made.
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
    if g == 1:
        return _CARAFEFunction.apply(features, kernels, k, s)
    per_group = c // g
    return torch.cat([
        _CARAFEFunction.apply(features[:, i * per_group:(i + 1) * per_group],
                              kernels[:, i * k * k:(i + 1) * k * k], k, s)
        for i in range(g)
    ], 1)


class _CARAFEFunction(torch.autograd.Function):
    """CARAFE for one channel group as ``k`` batched matrix products over strided views.

    The features are stored once, channel-last and zero padded, in a flat buffer. Flattening
    (image, padded row, padded column) into one "virtual pixel" index b, the k taps of
    kernel row u of pixel b are the buffer rows ``b + u * cols + v`` (v < k): a (C, k)
    matrix with strides (1, C) at offset ``(b + u * cols) * C``, so ``as_strided`` gives
    every window of kernel row u without copying, and the output is
    ``sum_u bmm(window_u, kernel_u)`` (virtual pixels in the padding are computed and
    dropped). The backward pass uses the same views; nothing of size k*k x the features is
    ever materialised (gathering the windows first took most of the time on the CPU).
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, kernels: torch.Tensor, k: int, s: int):
        n, c, h, w = features.shape
        p = k // 2
        rows, cols = h + 2 * p, w + 2 * p
        nb = n * rows * cols
        # Spare rows after the images: the windows of the last virtual pixels stay inside.
        buf = features.new_zeros((nb + (k - 1) * cols + k) * c)
        buf[: nb * c].view(n, rows, cols, c)[:, p:p + h, p:p + w] = features.permute(0, 2, 3, 1)
        # kernels[n, u*k + v, i*s + a, j*s + b] -> kv[virtual pixel (n, i, j), u, v, a*s + b]
        kv = kernels.new_zeros(n, rows, cols, k, k, s * s)
        kv[:, :h, :w] = kernels.reshape(n, k, k, h, s, w, s).permute(0, 3, 5, 1, 2, 4, 6) \
            .reshape(n, h, w, k, k, s * s)
        kv = kv.view(nb, k, k, s * s)
        out = features.new_zeros(nb, c, s * s)
        for u in range(k):
            out.baddbmm_(buf.as_strided((nb, c, k), (c, 1, c), u * cols * c), kv[:, u])
        ctx.save_for_backward(buf, kv)
        ctx.geometry = (n, c, h, w, k, s)
        out = out.view(n, rows, cols, c, s, s)[:, :h, :w]
        return out.permute(0, 3, 1, 4, 2, 5).reshape(n, c, h * s, w * s)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        buf, kv = ctx.saved_tensors
        n, c, h, w, k, s = ctx.geometry
        p = k // 2
        rows, cols = h + 2 * p, w + 2 * p
        nb = n * rows * cols
        grad_v = grad.new_zeros(n, rows, cols, c, s * s)
        grad_v[:, :h, :w] = grad.reshape(n, c, h, s, w, s).permute(0, 2, 4, 1, 3, 5) \
            .reshape(n, h, w, c, s * s)
        grad_v = grad_v.view(nb, c, s * s)
        grad_features = grad_kernels = None
        if ctx.needs_input_grad[1]:
            per_row = [torch.bmm(buf.as_strided((nb, k, c), (c, c, 1), u * cols * c), grad_v)
                       for u in range(k)]  # (nb, k [v], s*s) each
            grad_kernels = torch.stack(per_row, 1).view(n, rows, cols, k, k, s, s)[:, :h, :w] \
                .permute(0, 3, 4, 1, 5, 2, 6).reshape(n, k * k, h * s, w * s)
        if ctx.needs_input_grad[0]:
            grad_buf = grad.new_zeros(nb + (k - 1) * cols + k, c)
            for u in range(k):
                taps = torch.bmm(kv[:, u], grad_v.transpose(1, 2))  # (nb, k [v], c)
                for v in range(k):
                    start = u * cols + v
                    grad_buf[start:start + nb] += taps[:, v]
            grad_features = grad_buf[:nb].view(n, rows, cols, c)[:, p:p + h, p:p + w] \
                .permute(0, 3, 1, 2).contiguous()
        return grad_features, grad_kernels, None, None


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


class CARAFEFPN(TopDownFPN):
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

    def upsample_top_down(self, idx: int, coarser: torch.Tensor,
                          lateral: torch.Tensor) -> torch.Tensor:
        """CARAFE in place of detectron2's ``F.interpolate(nearest)``."""
        return self.upsamplers[idx - 1](coarser)


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
