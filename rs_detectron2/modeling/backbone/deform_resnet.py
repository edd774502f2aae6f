"""DCN / DCNv2 ResNet backbones whose deformable convolutions run on ``torchvision.ops``.

Why: the published RS-R-CNN / RS-Mask R-CNN R-101-DCN and X-101-DCN models put modulated
deformable convolutions (DCNv2, 4 deformable groups) in the 3x3 convs of ResNet stages
res3-res5 (``MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, True, True, True]``,
``DEFORM_MODULATED = True``, ``DEFORM_NUM_GROUPS = 4``). detectron2's
``DeformBottleneckBlock`` builds them from ``detectron2.layers.DeformConv`` /
``ModulatedDeformConv``, which need detectron2's compiled ``_C`` extension: without it
detectron2 replaces both names by dummy classes that raise ``ImportError`` on
construction (and even with ``_C`` the modulated op refuses to run on a CPU).
``torchvision.ops.deform_conv2d`` (with ``mask=``) is the same operator and runs everywhere.

What: :class:`TorchvisionDeformConv` / :class:`TorchvisionModulatedDeformConv` mirror
detectron2's two modules (same constructor, attributes and parameter names: ``weight``,
``bias``, ``norm``, ``activation``; same init) and run ``torchvision.ops.deform_conv2d``.
:class:`TorchvisionDeformBottleneckBlock` *is* detectron2's ``DeformBottleneckBlock``
(``__init__`` and ``forward`` run unchanged) with those two modules as its ``conv2``, so its
parameter and buffer names (``conv1``, ``conv2_offset``, ``conv2``, ``conv3``,
``shortcut``, norms inside the ``Conv2d`` wrappers) and its initialisation (MSRA fill,
zero ``conv2_offset``) are detectron2's, and a detectron2 DCN ResNet ``state_dict`` loads
with ``strict=True``. detectron2's own ``__init__`` looks the conv classes up in its
module's globals, so they are rebound to the torchvision-backed ones while (and only while)
it runs; the builders likewise run detectron2's ``build_resnet_backbone`` /
``build_resnet_fpn_backbone`` with ``DeformBottleneckBlock`` rebound to the subclass.
Nothing of detectron2 is copied and nothing stays changed.

Offset layout (read from detectron2's ``deform_conv_cuda_kernel.cu`` and torchvision's
``deform_conv2d`` kernels): both take ``offset`` of shape ``(N, 2*G*kh*kw, Ho, Wo)`` with
channel ``g*2*kh*kw + 2*k`` the row (dy) and ``g*2*kh*kw + 2*k + 1`` the column (dx) shift
of kernel tap ``k = i*kw + j`` for deformable group ``g``, and ``mask`` of shape
``(N, G*kh*kw, Ho, Wo)`` with channel ``g*kh*kw + k``; input channel ``c`` belongs to
deformable group ``c // (C / G)``; samples are bilinear with zeros outside the image.
detectron2's block splits ``conv2_offset``'s output into thirds, calls the first two
"offset_x, offset_y" and concatenates them back, i.e. ``offset`` is simply the first
``2*9*G`` channels (already in the interleaved (dy, dx) layout above, despite the names)
and ``mask = sigmoid`` of the last ``9*G``. The layouts are identical, so the tensors pass to
torchvision unchanged; ``tests/test_deform_resnet.py`` checks this against a loop reference.
"""
import importlib
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

import torch
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone import resnet as d2_resnet
from detectron2.modeling.backbone.fpn import (
    build_resnet_fpn_backbone,
    build_retinanet_resnet_fpn_backbone,
)
from detectron2.modeling.backbone.resnet import DeformBottleneckBlock, build_resnet_backbone
from torch import nn
from torch.nn.modules.utils import _pair
from torchvision.ops import deform_conv2d

from .carafe_fpn import build_resnet_carafe_fpn_backbone

__all__ = [
    "TorchvisionDeformConv",
    "TorchvisionModulatedDeformConv",
    "TorchvisionDeformBottleneckBlock",
    "build_resnet_deform_backbone",
    "build_resnet_deform_fpn_backbone",
    "build_retinanet_resnet_deform_fpn_backbone",
    "build_resnet_deform_carafe_fpn_backbone",
    "check_deformable_backbone",
    "detectron2_has_compiled_ops",
]


class _TorchvisionDeformConvBase(nn.Module):
    """Shared attributes, weight, forward and repr of the two torchvision-backed deformable
    convolutions (detectron2's DeformConv stores stride / padding / dilation as pairs, its
    ModulatedDeformConv as given: ``pair_geometry``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding,
                 dilation, groups: int, deformable_groups: int, bias: bool,
                 norm: Optional[nn.Module], activation, pair_geometry: bool):
        super().__init__()
        geometry = _pair if pair_geometry else (lambda v: v)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = geometry(stride)
        self.padding = geometry(padding)
        self.dilation = geometry(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.norm = norm
        self.activation = activation
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, *self.kernel_size)
        )
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, nonlinearity="relu")
        if self.bias is not None:
            nn.init.constant_(self.bias, 0)

    def _deform_conv(
        self, x: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        taps = self.kernel_size[0] * self.kernel_size[1]
        if offset.shape[1] != 2 * self.deformable_groups * taps:
            raise ValueError(
                f"{type(self).__name__}: offset has {offset.shape[1]} channels, expected "
                f"2 * deformable_groups * kh * kw = {2 * self.deformable_groups * taps}"
            )
        x = deform_conv2d(
            x,
            offset,
            self.weight,
            self.bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, groups={self.groups}, "
            f"deformable_groups={self.deformable_groups}, bias={self.bias is not None}, "
            "backend=torchvision"
        )


class TorchvisionDeformConv(_TorchvisionDeformConvBase):
    """detectron2's ``DeformConv`` (DCNv1) on ``torchvision.ops.deform_conv2d``.

    Same arguments, attributes, parameter names and init as ``detectron2.layers.DeformConv``;
    ``forward(x, offset)`` with ``offset`` in detectron2's layout (see the module docstring).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = False,
        norm: Optional[nn.Module] = None,
        activation=None,
    ):
        assert not bias, "detectron2's DeformConv has no bias"
        assert in_channels % groups == 0 and out_channels % groups == 0, (in_channels, groups)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, deformable_groups, False, norm, activation, pair_geometry=True)

    def forward(self, x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        return self._deform_conv(x, offset, None)


class TorchvisionModulatedDeformConv(_TorchvisionDeformConvBase):
    """detectron2's ``ModulatedDeformConv`` (DCNv2) on ``torchvision.ops.deform_conv2d``.

    Same arguments, attributes, parameter names and init as
    ``detectron2.layers.ModulatedDeformConv``; ``forward(x, offset, mask)`` with ``mask``
    already in [0, 1] (detectron2's block applies the sigmoid).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = True,
        norm: Optional[nn.Module] = None,
        activation=None,
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, deformable_groups, bias, norm, activation, pair_geometry=False)
        self.with_bias = bias

    def forward(self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self._deform_conv(x, offset, mask)


_REBIND_LOCK = threading.RLock()


@contextmanager
def _rebound(**names) -> Iterator[None]:
    """Temporarily rebind globals of ``detectron2.modeling.backbone.resnet`` (re-entrant)."""
    with _REBIND_LOCK:
        saved = {name: getattr(d2_resnet, name) for name in names}
        try:
            for name, value in names.items():
                setattr(d2_resnet, name, value)
            yield
        finally:
            for name, value in saved.items():
                setattr(d2_resnet, name, value)


class TorchvisionDeformBottleneckBlock(DeformBottleneckBlock):
    """detectron2's ``DeformBottleneckBlock`` whose ``conv2`` runs on torchvision.

    Same constructor arguments, submodule names and initialisation as detectron2's block
    (its ``__init__`` runs with the conv classes rebound); ``forward`` is inherited.
    """

    def __init__(self, *args, **kwargs):
        with _rebound(
            DeformConv=TorchvisionDeformConv, ModulatedDeformConv=TorchvisionModulatedDeformConv
        ):
            super().__init__(*args, **kwargs)


@contextmanager
def _torchvision_deform_blocks() -> Iterator[None]:
    with _rebound(DeformBottleneckBlock=TorchvisionDeformBottleneckBlock):
        yield


@BACKBONE_REGISTRY.register()
def build_resnet_deform_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ResNet:
    """detectron2's ``build_resnet_backbone`` (same keys, incl. ``DEFORM_ON_PER_STAGE``,
    ``DEFORM_MODULATED``, ``DEFORM_NUM_GROUPS``) with torchvision-backed DCN blocks."""
    with _torchvision_deform_blocks():
        return build_resnet_backbone(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_resnet_deform_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """detectron2's ``build_resnet_fpn_backbone`` with torchvision-backed DCN blocks."""
    with _torchvision_deform_blocks():
        return build_resnet_fpn_backbone(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_deform_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """detectron2's ``build_retinanet_resnet_fpn_backbone`` (P3-P7) with torchvision DCN."""
    with _torchvision_deform_blocks():
        return build_retinanet_resnet_fpn_backbone(cfg, input_shape)


@BACKBONE_REGISTRY.register()
def build_resnet_deform_carafe_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """:func:`~.carafe_fpn.build_resnet_carafe_fpn_backbone` (CARAFE FPN, the published "+"
    models) on the ResNet with torchvision-backed DCN blocks."""
    with _torchvision_deform_blocks():
        return build_resnet_carafe_fpn_backbone(cfg, input_shape)


# detectron2's ResNet builders that would construct its compiled DeformConv, and ours.
_DEFORM_REPLACEMENTS = {
    "build_resnet_carafe_fpn_backbone": "build_resnet_deform_carafe_fpn_backbone",
    "build_resnet_backbone": "build_resnet_deform_backbone",
    "build_resnet_fpn_backbone": "build_resnet_deform_fpn_backbone",
    "build_retinanet_resnet_fpn_backbone": "build_retinanet_resnet_deform_fpn_backbone",
}


def detectron2_has_compiled_ops() -> bool:
    """Whether ``detectron2._C`` (its compiled ops, DeformConv among them) imports."""
    try:
        importlib.import_module("detectron2._C")
    except ImportError:
        return False
    return True


def check_deformable_backbone(cfg: CfgNode) -> None:
    """Raise a ``RuntimeError`` saying what to set when ``cfg`` asks detectron2's own
    ResNet builder for deformable convs and detectron2 has no compiled ``_C`` ops."""
    if not any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE):
        return
    name = cfg.MODEL.BACKBONE.NAME
    if name not in _DEFORM_REPLACEMENTS or detectron2_has_compiled_ops():
        return
    raise RuntimeError(
        f"MODEL.RESNETS.DEFORM_ON_PER_STAGE = {list(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE)} "
        f"asks for deformable convolutions, but MODEL.BACKBONE.NAME = {name!r} builds "
        "detectron2's DeformConv, which needs detectron2's compiled ops (detectron2._C), "
        "and they are not installed. Set MODEL.BACKBONE.NAME to "
        f"{_DEFORM_REPLACEMENTS[name]!r} (the same backbone with the deformable convs on "
        "torchvision.ops.deform_conv2d; same weights and state_dict keys)."
    )
