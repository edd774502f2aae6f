"""The RS mask head: detectron2's conv-upsample mask head trained with a score-weighted Dice loss."""
from typing import List

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads import ROI_MASK_HEAD_REGISTRY, MaskRCNNConvUpsampleHead
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference
from detectron2.structures import Instances

from rs_detectron2.losses.ranking_pool import check_ranking_pool

from .rs_head_recipe import mask_dice_losses, score_weighted_mean


def weighted_dice_loss(pred_mask_logits: Tensor, instances: List[Instances],
                       pool: str = "process") -> Tensor:
    """Dice loss of each positive RoI's mask for its ground-truth class, weighted by the RoI's
    ``score_weights`` (the box head's score of the RoI) and normalised by their sum (1 when the sum is below 1e-10).

    Per RoI: 1 - 2 sum(p t) / (sum p^2 + sum t^2 + 1e-5) over the M x M grid, p the sigmoid
    mask and t the ground-truth mask cropped to the RoI. A zero attached to the graph when
    there is no RoI.
    """
    class_agnostic = pred_mask_logits.size(1) == 1
    side = pred_mask_logits.size(2)
    if pred_mask_logits.size(0) == 0:
        return pred_mask_logits.sum() * 0.0
    gt_masks, gt_classes, weights = [], [], []
    for inst in instances:
        if len(inst) == 0:
            continue
        gt_masks.append(inst.gt_masks.crop_and_resize(inst.proposal_boxes.tensor, side))
        gt_classes.append(inst.gt_classes)
        if not inst.has("score_weights"):
            raise ValueError("the RS mask loss needs each RoI's box-head score as the field "
                             "'score_weights': use RSMaskRCNNConvUpsampleHead with "
                             "RSStandardROIHeads or RSCascadeROIHeads")
        weights.append(inst.score_weights)
    gt_masks = cat(gt_masks, dim=0).to(pred_mask_logits.dtype)
    weights = cat(weights, dim=0).detach()
    rows = torch.arange(pred_mask_logits.size(0), device=pred_mask_logits.device)
    logits = pred_mask_logits[:, 0] if class_agnostic else pred_mask_logits[rows, cat(gt_classes)]
    return score_weighted_mean(mask_dice_losses(logits.sigmoid(), gt_masks), weights, pool)


@ROI_MASK_HEAD_REGISTRY.register()
class RSMaskRCNNConvUpsampleHead(MaskRCNNConvUpsampleHead):
    """detectron2's MaskRCNNConvUpsampleHead (4 convs, deconv, 28 x 28, class-specific) whose
    training loss is :func:`weighted_dice_loss`. The RoI heads pass it at most
    ``MODEL.RS.MAX_MASK_ROIS`` positive RoIs carrying ``score_weights`` and balance its loss to
    their RS loss (:class:`RSStandardROIHeads`)."""

    @configurable
    def __init__(self, input_shape, *, ranking_pool: str = "process", **kwargs):
        """
        Args:
            ranking_pool: "process" or "global": the Dice loss's weighted mean over this
                process's RoIs or all processes' (``MODEL.RS.RANKING_POOL``).
            input_shape, kwargs: arguments of detectron2's :class:`MaskRCNNConvUpsampleHead`.
        """
        super().__init__(input_shape, **kwargs)
        self.ranking_pool = check_ranking_pool(ranking_pool)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["ranking_pool"] = cfg.MODEL.RS.RANKING_POOL
        return ret

    def forward(self, x: Tensor, instances: List[Instances]):
        x = self.layers(x)
        if self.training:
            loss = weighted_dice_loss(x, instances, self.ranking_pool)
            return {"loss_mask": loss * self.loss_weight}
        mask_rcnn_inference(x, instances)
        return instances
