"""Backbones registered with detectron2's BACKBONE_REGISTRY."""
from .deform_resnet import (
    TorchvisionDeformBottleneckBlock,
    TorchvisionDeformConv,
    TorchvisionModulatedDeformConv,
    build_resnet_deform_backbone,
    build_resnet_deform_carafe_fpn_backbone,
    build_resnet_deform_fpn_backbone,
    build_retinanet_resnet_deform_fpn_backbone,
    check_deformable_backbone,
    detectron2_has_compiled_ops,
)
from .carafe_fpn import (
    CARAFE,
    CARAFEFPN,
    CARAFEUpsample,
    build_resnet_carafe_fpn_backbone,
    carafe,
)
from .small_resnet import build_small_resnet, build_small_resnet_fpn_backbone, small_resnet
from .retinanet_fpn import (
    LastLevelP6P7FromP5,
    build_retinanet_resnet_p3p7_fpn_backbone,
    build_retinanet_small_resnet_fpn_backbone,
)
from .yolact_fpn import (
    LastLevelP6P7FromC5NoReLU,
    YolactFPN,
    build_yolact_resnet_fpn_backbone,
    build_yolact_small_resnet_fpn_backbone,
)
from .torchvision_resnet import (
    FrozenStatisticsBatchNorm2d,
    build_retinanet_torchvision_resnet_p3p7_fpn_backbone,
    build_torchvision_resnet_fpn_backbone,
    convert_torchvision_resnet_state_dict,
)

__all__ = [
    "build_small_resnet",
    "build_small_resnet_fpn_backbone",
    "small_resnet",
    "LastLevelP6P7FromP5",
    "build_retinanet_resnet_p3p7_fpn_backbone",
    "build_retinanet_small_resnet_fpn_backbone",
    "LastLevelP6P7FromC5NoReLU",
    "YolactFPN",
    "build_yolact_resnet_fpn_backbone",
    "build_yolact_small_resnet_fpn_backbone",
    "FrozenStatisticsBatchNorm2d",
    "build_retinanet_torchvision_resnet_p3p7_fpn_backbone",
    "build_torchvision_resnet_fpn_backbone",
    "convert_torchvision_resnet_state_dict",
    "carafe",
    "CARAFE",
    "CARAFEUpsample",
    "CARAFEFPN",
    "build_resnet_carafe_fpn_backbone",
    "TorchvisionDeformConv",
    "TorchvisionModulatedDeformConv",
    "TorchvisionDeformBottleneckBlock",
    "build_resnet_deform_backbone",
    "build_resnet_deform_fpn_backbone",
    "build_resnet_deform_carafe_fpn_backbone",
    "build_retinanet_resnet_deform_fpn_backbone",
    "check_deformable_backbone",
    "detectron2_has_compiled_ops",
]
