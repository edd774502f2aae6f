"""RS RoI heads: every proposal trains the RS box predictor; the mask loss is balanced to it."""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from ..layers import use_sparse_roi_align
from .rs_box_losses import balance_to
from .rs_fast_rcnn import RSFastRCNNOutputLayers


def label_all_proposals(
    matched_idxs: Tensor, matched_labels: Tensor, gt_classes: Tensor, num_classes: int
) -> Tuple[Tensor, Tensor]:
    """Label every proposal (no sampling): its matched class, ``num_classes`` for background,
    -1 where the matcher ignores it. Returns (indices of all proposals, their labels)."""
    if gt_classes.numel() > 0:
        labels = gt_classes[matched_idxs]
        labels[matched_labels == 0] = num_classes
        labels[matched_labels == -1] = -1
    else:
        labels = torch.full_like(matched_idxs, num_classes)
    return torch.arange(len(labels), device=labels.device), labels


def keep_random_subset(instances: List[Instances], max_total: int) -> List[Instances]:
    """At most ``max_total`` instances over the whole batch, chosen at random."""
    counts = [len(x) for x in instances]
    total = sum(counts)
    if total <= max_total:
        return instances
    device = instances[0].proposal_boxes.device
    keep = torch.zeros(total, dtype=torch.bool, device=device)
    keep[torch.randperm(total, device=device)[:max_total]] = True
    return [x[k] for x, k in zip(instances, keep.split(counts))]


@ROI_HEADS_REGISTRY.register()
class RSStandardROIHeads(StandardROIHeads):
    """StandardROIHeads trained as RS R-CNN (HEADS_SPEC.md, RS RoI heads and mask head).

    All proposals are kept (ground truth appended, no sampling); the box predictor is
    :class:`RSFastRCNNOutputLayers`. With masks on, at most ``max_mask_rois`` random positive
    RoIs of the batch feed the mask head, and its loss is balanced to the box head's
    ``loss_roi_rank + loss_roi_sort`` (unless ``balance_mask_loss`` is False). With
    ``MODEL.RS.SPARSE_CPU_ROI_ALIGN`` its poolers compute ROIAlign on the CPU as a sparse
    matrix product (:class:`~rs_detectron2.layers.SparseROIAlign`, same results).
    """

    @configurable
    def __init__(self, *, max_mask_rois: int = 200, balance_mask_loss: bool = True, **kwargs):
        """
        Args:
            max_mask_rois: positive RoIs of the batch that feed the mask head at most.
            balance_mask_loss: rescale the mask loss to the value of the box head's RS loss
                (published); if False it keeps weight 1 (``MODEL.RS.BALANCE_MASK_LOSS``).
            kwargs: arguments of detectron2's :class:`StandardROIHeads`.
        """
        super().__init__(**kwargs)
        self.max_mask_rois = max_mask_rois
        self.balance_mask_loss = balance_mask_loss
        self._rs_loss_for_mask: Optional[Tensor] = None

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["max_mask_rois"] = cfg.MODEL.RS.MAX_MASK_ROIS
        ret["balance_mask_loss"] = cfg.MODEL.RS.BALANCE_MASK_LOSS
        if cfg.MODEL.RS.SPARSE_CPU_ROI_ALIGN:
            for key in ("box_pooler", "mask_pooler", "keypoint_pooler"):
                if ret.get(key) is not None:
                    use_sparse_roi_align(ret[key])
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = RSFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    def _sample_proposals(
        self, matched_idxs: Tensor, matched_labels: Tensor, gt_classes: Tensor
    ) -> Tuple[Tensor, Tensor]:
        return label_all_proposals(matched_idxs, matched_labels, gt_classes, self.num_classes)

    def _forward_box(self, features: Dict[str, Tensor], proposals: List[Instances]):
        out = super()._forward_box(features, proposals)
        if self.training:
            self._rs_loss_for_mask = (out["loss_roi_rank"] + out["loss_roi_sort"]).detach()
        return out

    def _forward_mask(self, features: Dict[str, Tensor], instances: List[Instances]):
        if not (self.training and self.mask_on):
            return super()._forward_mask(features, instances)
        instances, _ = select_foreground_proposals(instances, self.num_classes)
        instances = keep_random_subset(instances, self.max_mask_rois)
        losses = super()._forward_mask(features, instances)
        if self.balance_mask_loss:
            losses["loss_mask"], coefficient = balance_to(losses["loss_mask"], self._rs_loss_for_mask)
            get_event_storage().put_scalar("roi_head/mask_balance", coefficient)
        return losses
