"""Backbones registered with detectron2's BACKBONE_REGISTRY."""
from .small_resnet import build_small_resnet, build_small_resnet_fpn_backbone

__all__ = ["build_small_resnet", "build_small_resnet_fpn_backbone"]
