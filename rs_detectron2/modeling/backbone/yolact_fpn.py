"""YOLACT's FPN (P3-P7) as a detectron2 backbone.

The published (RS-)YOLACT uses mmdetection's FPN with ``start_level=1`` (res3-res5),
``upsample_cfg=dict(mode="bilinear")``, ``add_extra_convs="on_input"`` and
``relu_before_extra_convs`` False. It differs from detectron2's RetinaNet FPN in two ways:

* the top-down path resizes each coarser map *bilinearly to the lateral's size*: YOLACT runs
  on 550x550 inputs, whose res3/res4/res5 maps are 69/35/18 (not a factor of 2 apart), so
  detectron2's nearest x2 upsampling would not even match the shapes;
* P6 = conv3x3/2 on C5 (the input, "on_input") and P7 = conv3x3/2 on P6 *without* a ReLU
  (detectron2's ``LastLevelP6P7`` applies one before P7).

The input is not padded to the last stride (``size_divisibility`` 0): the published
pipeline resizes every image to 550x550 and pads nothing (no ``Pad`` transform; mmcv's
``collate`` only pads to the largest image of the batch), which is what gives its 69x69 P3
and 138x138 prototypes.
"""
from typing import List, Sequence

import torch.nn.functional as F
from torch import Tensor

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import Backbone
from detectron2.modeling.backbone.fpn import LastLevelP6P7
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from .small_resnet import build_small_resnet
from .top_down_fpn import TopDownFPN

__all__ = [
    "YOLACT_IN_FEATURES",
    "LastLevelP6P7FromC5NoReLU",
    "YolactFPN",
    "build_yolact_resnet_fpn_backbone",
    "build_yolact_small_resnet_fpn_backbone",
]

YOLACT_IN_FEATURES = ("res3", "res4", "res5")


class LastLevelP6P7FromC5NoReLU(LastLevelP6P7):
    """P6 = conv3x3/2(C5), P7 = conv3x3/2(P6), no ReLU in between (published YOLACT)."""

    def __init__(self, in_channels: int, out_channels: int, in_feature: str = "res5"):
        super().__init__(in_channels, out_channels, in_feature=in_feature)

    def forward(self, c5: Tensor) -> List[Tensor]:
        p6 = self.p6(c5)
        return [p6, self.p7(p6)]


class YolactFPN(TopDownFPN):
    """detectron2's FPN with a bilinear, size-matched top-down path and no input padding."""

    @property
    def size_divisibility(self) -> int:
        """0: inputs are not padded to the last stride (YOLACT's 550 is no multiple of 128)."""
        return 0

    def upsample_top_down(self, idx: int, coarser: Tensor, lateral: Tensor) -> Tensor:
        """The coarser map resized bilinearly (align_corners False) to the size of the
        lateral it is added to."""
        return F.interpolate(coarser, size=lateral.shape[-2:], mode="bilinear",
                             align_corners=False)


def _yolact_fpn(
    cfg: CfgNode, bottom_up: Backbone, in_features: Sequence[str] = YOLACT_IN_FEATURES
) -> YolactFPN:
    """:class:`YolactFPN` over res3-res5 (p3-p5) with P6/P7 from C5 (p6, p7)."""
    missing = [f for f in in_features if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"YOLACT's FPN needs the bottom-up features {list(in_features)}; "
            f"MODEL.RESNETS.OUT_FEATURES lacks {missing}"
        )
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    return YolactFPN(
        bottom_up=bottom_up,
        in_features=list(in_features),
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelP6P7FromC5NoReLU(
            bottom_up.output_shape()[in_features[-1]].channels, out_channels, in_features[-1]
        ),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_yolact_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> YolactFPN:
    """detectron2's ResNet with YOLACT's FPN: res3-res5 -> p3-p7 (``MODEL.FPN.IN_FEATURES``
    is not read: the pyramid is res3-res5 by construction)."""
    return _yolact_fpn(cfg, build_resnet_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_yolact_small_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> YolactFPN:
    """The project's small ResNet (any width, R-18/34) with YOLACT's FPN."""
    return _yolact_fpn(cfg, build_small_resnet(cfg, input_shape))
