"""torchvision's ResNet in detectron2, as the published RS-ATSS / RS-PAA backbone.

The published one-stage RS models (mmdetection) use torchvision's ImageNet ResNet-50:
pytorch style (stride in the 3x3 conv), RGB input normalised with ImageNet mean/std,
BatchNorm with its statistics frozen (``norm_eval=True``) but its affine weight/bias
*trained*, and the stem + first stage frozen (``frozen_stages=1``). detectron2's
``get_norm`` offers only BN (statistics updated in training) or FrozenBN (affine frozen
too), so this module provides:

* :func:`convert_torchvision_resnet_state_dict`: torchvision ResNet keys -> detectron2's
  ``ResNet`` keys (``tools/convert_torchvision_to_d2.py`` writes the .pkl with it);
* :class:`FrozenStatisticsBatchNorm2d`: a ``BatchNorm2d`` that always normalises with its
  running statistics (as in eval mode), whatever the module's mode, with trainable
  weight/bias;
* :func:`build_retinanet_torchvision_resnet_p3p7_fpn_backbone`: the project's P3-P7 FPN
  (:func:`~.retinanet_fpn.build_retinanet_resnet_p3p7_fpn_backbone`) whose bottom-up
  ResNet's BatchNorm2d layers are :class:`FrozenStatisticsBatchNorm2d`.

``MODEL.BACKBONE.FREEZE_AT`` 2 (detectron2's default) freezes stem + res2: detectron2's
``ResNet.freeze`` turns their BN into ``FrozenBatchNorm2d`` (statistics and affine fixed),
as mmdetection's ``frozen_stages=1`` does (no gradient, eval-mode BN); only the BN layers
of the trained stages become :class:`FrozenStatisticsBatchNorm2d`.
"""
import re
from collections import OrderedDict
from typing import Dict, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import build_resnet_fpn_backbone
from detectron2.modeling.backbone import FPN

from .retinanet_fpn import build_retinanet_resnet_p3p7_fpn_backbone

__all__ = [
    "FrozenStatisticsBatchNorm2d",
    "convert_torchvision_resnet_state_dict",
    "build_retinanet_torchvision_resnet_p3p7_fpn_backbone",
]

_STEM_KEY = re.compile(r"^(conv1|bn1)\.(\w+)$")
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)$")
_BLOCK_MODULES = {"downsample.0": "shortcut", "downsample.1": "shortcut.norm"}


def _block_module(name: str) -> str:
    if name in _BLOCK_MODULES:
        return _BLOCK_MODULES[name]
    if name.startswith("bn"):
        return f"conv{name[2:]}.norm"
    return name


def convert_torchvision_resnet_state_dict(
    state_dict: Mapping[str, torch.Tensor]
) -> Dict[str, torch.Tensor]:
    """Rename a torchvision ResNet state_dict (``resnet18`` ... ``resnet152``,
    ``resnext*``) to detectron2's ``ResNet`` keys.

    ``conv1``/``bn1`` -> ``stem.conv1``/``stem.conv1.norm``; ``layer{i}.{b}.conv{j}`` ->
    ``res{i+1}.{b}.conv{j}``, ``bn{j}`` -> ``conv{j}.norm``, ``downsample.0``/``.1`` ->
    ``shortcut``/``shortcut.norm``. The ImageNet classifier (``fc.*``) is dropped; every
    BN gets a ``num_batches_tracked`` (0 where an old checkpoint has none), which
    detectron2's ``ResNet.freeze`` keeps on the FrozenBN layers it makes. Raises
    ``ValueError`` on any other key (not a torchvision ResNet).
    """
    converted = OrderedDict()
    for key, value in state_dict.items():
        if key.startswith("fc."):
            continue
        stem = _STEM_KEY.match(key)
        block = _BLOCK_KEY.match(key)
        if stem:
            module = "conv1" if stem.group(1) == "conv1" else "conv1.norm"
            new_key = f"stem.{module}.{stem.group(2)}"
        elif block:
            stage, index, module, tensor = block.groups()
            new_key = f"res{int(stage) + 1}.{index}.{_block_module(module)}.{tensor}"
        else:
            raise ValueError(f"{key!r} is not a key of a torchvision ResNet state_dict")
        converted[new_key] = value
    for key in [k for k in converted if k.endswith(".running_mean")]:
        counter = key[: -len("running_mean")] + "num_batches_tracked"
        converted.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return converted


class FrozenStatisticsBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that normalises with its running statistics in train and eval mode
    alike (never updating them), with a trainable affine weight/bias: mmdetection's
    ``norm_eval=True`` BN, which detectron2's FrozenBN (affine fixed) and BN (statistics
    updated) are not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias,
            training=False, momentum=0.0, eps=self.eps,
        )

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Replace every ``nn.BatchNorm2d`` in ``module`` (not detectron2's
        ``FrozenBatchNorm2d``, nor a ``SyncBatchNorm``) by this class, keeping its
        parameters, statistics and ``requires_grad``; returns the converted module (a new
        one when ``module`` itself is a BatchNorm2d, else ``module`` changed in place)."""
        if type(module) is nn.BatchNorm2d:
            converted = cls(module.num_features, eps=module.eps, momentum=module.momentum,
                            affine=module.affine, track_running_stats=True)
            converted.load_state_dict(module.state_dict())
            if module.affine:
                converted.weight.requires_grad_(module.weight.requires_grad)
                converted.bias.requires_grad_(module.bias.requires_grad)
            return converted.to(module.running_mean.device)
        for name, child in module.named_children():
            new_child = cls.convert(child)
            if new_child is not child:
                module.add_module(name, new_child)
        return module


def _check_bn(cfg: CfgNode, builder: str) -> None:
    if cfg.MODEL.RESNETS.NORM != "BN":
        raise ValueError(
            f"{builder} needs MODEL.RESNETS.NORM 'BN' (turned into frozen-statistics BN), "
            f"got {cfg.MODEL.RESNETS.NORM!r}"
        )


@BACKBONE_REGISTRY.register()
def build_retinanet_torchvision_resnet_p3p7_fpn_backbone(
    cfg: CfgNode, input_shape: ShapeSpec
) -> FPN:
    """:func:`~.retinanet_fpn.build_retinanet_resnet_p3p7_fpn_backbone` with the bottom-up
    ResNet's BN as the published torchvision backbone (:class:`FrozenStatisticsBatchNorm2d`;
    stages frozen by ``MODEL.BACKBONE.FREEZE_AT`` keep detectron2's FrozenBN). Needs
    ``MODEL.RESNETS.NORM`` "BN"; the FPN and the head are unchanged."""
    _check_bn(cfg, "build_retinanet_torchvision_resnet_p3p7_fpn_backbone")
    fpn = build_retinanet_resnet_p3p7_fpn_backbone(cfg, input_shape)
    FrozenStatisticsBatchNorm2d.convert(fpn.bottom_up)
    return fpn


@BACKBONE_REGISTRY.register()
def build_torchvision_resnet_fpn_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> FPN:
    """detectron2's ``build_resnet_fpn_backbone`` (P2-P6) with the bottom-up ResNet's BN as
    the published torchvision backbone (:class:`FrozenStatisticsBatchNorm2d`), for the
    published SOLOv2. Needs ``MODEL.RESNETS.NORM`` "BN"."""
    _check_bn(cfg, "build_torchvision_resnet_fpn_backbone")
    fpn = build_resnet_fpn_backbone(cfg, input_shape)
    FrozenStatisticsBatchNorm2d.convert(fpn.bottom_up)
    return fpn
