"""An FC box head whose units cannot all die: detectron2's FastRCNNConvFCHead with a
LayerNorm before each FC layer's ReLU.

Why: trained from scratch, the RS RoI head's ranking gradient does not shrink until the
classifier ranks (the Identity Update hands every positive 1/|P| of the ranking error,
and the error stays near 1 while the features are random), so at learning rates of 0.02
and above the plain 2-FC head takes maximal clipped steps for a hundred iterations, its
second FC layer's pre-activations are driven below zero for every RoI, all of its ReLUs
die and the classifier's scores tie: ``loss_roi_rank`` stays at ~0.97 for good
(docs/rs_vs_stock.md, "The stall"). A LayerNorm over each RoI's FC outputs keeps about
half of the units active for every RoI whatever the weights do. Not the published head
(mmdetection's Shared2FCBBoxHead has no normalisation): the COCO / LVIS configs keep
detectron2's ``FastRCNNConvFCHead``.
"""
from torch import nn

from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_BOX_HEAD_REGISTRY, FastRCNNConvFCHead

__all__ = ["FastRCNNConvLNFCHead"]


@ROI_BOX_HEAD_REGISTRY.register()
class FastRCNNConvLNFCHead(FastRCNNConvFCHead):
    """``FastRCNNConvFCHead`` (same keys: ``MODEL.ROI_BOX_HEAD.NUM_CONV / CONV_DIM / NORM /
    NUM_FC / FC_DIM``) with ``fc{k} -> LayerNorm -> ReLU`` for every FC layer k."""

    @configurable
    def __init__(self, input_shape, *, conv_dims, fc_dims, conv_norm=""):
        """Arguments as detectron2's :class:`FastRCNNConvFCHead`."""
        super().__init__(input_shape, conv_dims=conv_dims, fc_dims=fc_dims, conv_norm=conv_norm)
        for k, fc_dim in enumerate(fc_dims, start=1):
            # Replaces the ReLU child in place, so the module order stays fc, norm, ReLU.
            setattr(self, f"fc_relu{k}", nn.Sequential(nn.LayerNorm(fc_dim), nn.ReLU()))
