"""RS Cascade R-CNN: detectron2's cascade with every stage trained by the RS box predictor."""
from typing import Dict, List

from torch import Tensor

from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads
from detectron2.structures import Instances

from .rs_fast_rcnn import RSFastRCNNOutputLayers
from .rs_roi_heads import RSStandardROIHeads


@ROI_HEADS_REGISTRY.register()
class RSCascadeROIHeads(CascadeROIHeads, RSStandardROIHeads):
    """CascadeROIHeads (3 stages, IoU 0.5 / 0.6 / 0.7) whose stages use the RS box predictor.

    From :class:`RSStandardROIHeads` it takes all proposals without sampling for the first
    stage (later stages keep all boxes already) and the balanced mask loss, which uses the
    first stage's RS loss and weights (those of the proposals the mask head sees). Stage
    losses are named ``loss_roi_rank_stage0`` and so on.
    """

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)  # CascadeROIHeads'
        ret["box_predictors"] = [
            RSFastRCNNOutputLayers(
                cfg, head.output_shape, box2box_transform=predictor.box2box_transform
            )
            for head, predictor in zip(ret["box_heads"], ret["box_predictors"])
        ]
        return ret

    def _forward_box(self, features: Dict[str, Tensor], proposals: List[Instances], targets=None):
        out = super()._forward_box(features, proposals, targets)
        if self.training:
            self._rs_loss_for_mask = (out["loss_roi_rank_stage0"] + out["loss_roi_sort_stage0"]).detach()
        return out
