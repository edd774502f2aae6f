"""A ResNet-18/34 + FPN backbone of any width, for small from-scratch models on a CPU.

detectron2's ``build_resnet_backbone`` fixes the first stage of basic-block ResNets
(R-18/34) at 64 channels. The built-in synthetic demo trains from scratch on a laptop
CPU, where a narrower R-18 is the difference between minutes and hours, so this builder
takes ``MODEL.RESNETS.RES2_OUT_CHANNELS`` as given (doubling per stage, as usual) and
otherwise reads the same keys as detectron2's ``build_resnet_fpn_backbone``.
"""
from typing import Sequence

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem

_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


def small_resnet(
    *,
    depth: int = 18,
    stem_out_channels: int = 16,
    res2_out_channels: int = 32,
    norm: str = "BN",
    out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
    freeze_at: int = 0,
    in_channels: int = 3,
) -> ResNet:
    """A basic-block ResNet (depth 18 or 34) whose widths start at ``res2_out_channels``
    (doubling per stage), with its first ``freeze_at`` stages frozen (as detectron2's
    ``ResNet.freeze``). The constructor that LazyConfigs call (``L(small_resnet)(...)``)."""
    if depth not in _BLOCKS_PER_STAGE:
        raise ValueError(f"small_resnet: depth (MODEL.RESNETS.DEPTH) must be 18 or 34, got {depth}")
    stem = BasicStem(in_channels=in_channels, out_channels=stem_out_channels, norm=norm)
    in_channels, out_channels = stem.out_channels, res2_out_channels
    stages = []
    for index, num_blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
        first_stride = 1 if index == 0 else 2
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                num_blocks,
                stride_per_block=[first_stride] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=norm,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    resnet = ResNet(stem, stages, out_features=list(out_features))
    return resnet.freeze(freeze_at)


def build_small_resnet(cfg, input_shape: ShapeSpec) -> ResNet:
    """:func:`small_resnet` from ``MODEL.RESNETS.{DEPTH, STEM_OUT_CHANNELS,
    RES2_OUT_CHANNELS, NORM, OUT_FEATURES}`` and ``MODEL.BACKBONE.FREEZE_AT``."""
    r = cfg.MODEL.RESNETS
    return small_resnet(
        depth=r.DEPTH, stem_out_channels=r.STEM_OUT_CHANNELS,
        res2_out_channels=r.RES2_OUT_CHANNELS, norm=r.NORM, out_features=r.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT, in_channels=input_shape.channels,
    )


@BACKBONE_REGISTRY.register()
def build_small_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """:func:`build_small_resnet` with detectron2's FPN (P2-P6) on top."""
    return FPN(
        bottom_up=build_small_resnet(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
