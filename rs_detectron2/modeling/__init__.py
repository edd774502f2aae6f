"""RS heads, registered with detectron2's registries on import."""
from .anchor_generator import FractionalStrideAnchorGenerator
from .ln_box_head import FastRCNNConvLNFCHead
from .rs_cascade_roi_heads import RSCascadeROIHeads
from .rs_fast_rcnn import RSFastRCNNOutputLayers
from .rs_head_recipe import (
    RSHeadLosses,
    balance_to,
    localisation_quality,
    rs_head_losses,
    score_weighted_giou_loss,
    score_weights,
)
from .rs_mask_head import RSMaskRCNNConvUpsampleHead, weighted_dice_loss
from .rs_roi_heads import RSStandardROIHeads
from .rs_rpn import RSRPN
from .sparse_poolers import sparse_cpu_roi_pooler, use_sparse_cpu_poolers
from .backbone import build_small_resnet, build_small_resnet_fpn_backbone, small_resnet
from .meta_arch import RSATSSHead, RSRetinaNet, atss_match

__all__ = [
    "FractionalStrideAnchorGenerator",
    "FastRCNNConvLNFCHead",
    "RSRPN",
    "RSRetinaNet",
    "RSATSSHead",
    "atss_match",
    "RSStandardROIHeads",
    "RSCascadeROIHeads",
    "RSFastRCNNOutputLayers",
    "RSMaskRCNNConvUpsampleHead",
    "RSHeadLosses",
    "rs_head_losses",
    "balance_to",
    "localisation_quality",
    "score_weighted_giou_loss",
    "score_weights",
    "weighted_dice_loss",
    "use_sparse_cpu_poolers",
    "sparse_cpu_roi_pooler",
    "build_small_resnet",
    "build_small_resnet_fpn_backbone",
    "small_resnet",
]
