"""P3-P7 FPN backbones for the one-stage detectors, with the published ATSS neck available.

detectron2's RetinaNet FPN (``build_retinanet_resnet_fpn_backbone``) computes P6 with a
stride-2 conv on res5 and P7 with a stride-2 conv on ReLU(P6). The published ATSS and
RS-ATSS (mmdetection's FPN with ``add_extra_convs="on_output"``, ``relu_before_extra_convs``
False) compute P6 on P5's *output* and P7 on P6 *without* a ReLU.
``cfg.MODEL.FPN.P6P7_TOP_BLOCK`` picks one of the two for the builders here.
"""
from typing import List

from torch import Tensor, nn

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .small_resnet import build_small_resnet

__all__ = [
    "LastLevelP6P7FromP5",
    "build_p6p7_top_block",
    "build_retinanet_resnet_p3p7_fpn_backbone",
    "build_retinanet_small_resnet_fpn_backbone",
]

TOP_BLOCKS = ("P5_NO_RELU", "RES5_RELU")


class LastLevelP6P7FromP5(LastLevelP6P7):
    """P6 = conv3x3/2(P5 output), P7 = conv3x3/2(P6), no ReLU in between (published ATSS)."""

    def __init__(self, channels: int):
        super().__init__(channels, channels, in_feature="p5")

    def forward(self, p5: Tensor) -> List[Tensor]:
        p6 = self.p6(p5)
        return [p6, self.p7(p6)]


def build_p6p7_top_block(cfg: CfgNode, bottom_up: Backbone) -> nn.Module:
    """The P6/P7 block that ``cfg.MODEL.FPN.P6P7_TOP_BLOCK`` names: "P5_NO_RELU" (published
    ATSS) or "RES5_RELU" (detectron2's RetinaNet)."""
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    kind = cfg.MODEL.FPN.P6P7_TOP_BLOCK
    if kind == "P5_NO_RELU":
        return LastLevelP6P7FromP5(out_channels)
    if kind == "RES5_RELU":
        return LastLevelP6P7(bottom_up.output_shape()["res5"].channels, out_channels)
    raise ValueError(f"MODEL.FPN.P6P7_TOP_BLOCK must be one of {TOP_BLOCKS}, got {kind!r}")


def _p3_p7_fpn(cfg: CfgNode, bottom_up: Backbone) -> FPN:
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=build_p6p7_top_block(cfg, bottom_up),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_retinanet_resnet_p3p7_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """detectron2's ResNet with an FPN P3-P7 whose P6/P7 follow ``MODEL.FPN.P6P7_TOP_BLOCK``."""
    return _p3_p7_fpn(cfg, build_resnet_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_retinanet_small_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """The project's small ResNet (any width, R-18/34) with the same P3-P7 FPN."""
    return _p3_p7_fpn(cfg, build_small_resnet(cfg, input_shape))
