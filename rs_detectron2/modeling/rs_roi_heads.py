"""RS RoI heads: every proposal trains the RS box predictor; the mask loss is balanced to it."""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage

from .ignored_keys import warn_ignored_keys
from .rs_fast_rcnn import RSFastRCNNOutputLayers
from .rs_head_recipe import balance_to, ranking_reference

# detectron2 keys of the RoI heads that RS RoI heads replace (every proposal is kept).
IGNORED_ROI_HEADS_KEYS = ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
                          "MODEL.ROI_HEADS.POSITIVE_FRACTION")


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


def with_field(instances: List[Instances], name: str, values: List[Tensor]) -> List[Instances]:
    """Shallow copies of ``instances`` (the same field tensors) with one more field."""
    out = []
    for inst, value in zip(instances, values):
        new = Instances(inst.image_size, **inst.get_fields())
        new.set(name, value)
        out.append(new)
    return out


@ROI_HEADS_REGISTRY.register()
class RSStandardROIHeads(StandardROIHeads):
    """StandardROIHeads trained as RS R-CNN (docs/heads.md, RS RoI heads and mask head).

    All proposals are kept (ground truth appended, no sampling); the box predictor is
    :class:`RSFastRCNNOutputLayers`. With masks on, at most ``max_mask_rois`` random positive
    RoIs of the batch feed the mask head, each carrying its box-head score as the field
    ``score_weights`` (the weight of its mask loss), and :meth:`forward` balances the mask
    loss to the box head's ``loss_roi_rank + loss_roi_sort`` (unless ``balance_mask_loss``
    is False).
    """

    # Constants for TorchScript, as detectron2's export patch makes them for StandardROIHeads
    # (class annotations are not inherited): the heads that are off are compiled away.
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

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

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["max_mask_rois"] = cfg.MODEL.RS.MAX_MASK_ROIS
        ret["balance_mask_loss"] = cfg.MODEL.RS.BALANCE_MASK_LOSS
        warn_ignored_keys(cfg, IGNORED_ROI_HEADS_KEYS, cls.__name__,
                          "it keeps every proposal, without sampling")
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

    def forward(
        self,
        images: ImageList,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """detectron2's forward; in training (:meth:`_forward_training`) the box branch
        also returns each proposal's score weight, which the mask branch gets as a field of
        its RoIs, and the mask loss is balanced to the returned box losses."""
        if self.training:
            return self._forward_training(features, proposals, targets)
        # detectron2's inference (StandardROIHeads.forward) written out, without super():
        # TorchScript compiles no super() call (docs/deployment.md).
        pred_instances = self._forward_box(features, proposals)
        pred_instances = self.forward_with_given_boxes(features, pred_instances)
        return pred_instances, {}

    @torch.jit.unused
    def _forward_training(
        self,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]],
    ) -> Tuple[List[Instances], Dict[str, Tensor]]:
        """The training forward: all proposals labelled, the box losses and score weights,
        then at most ``max_mask_rois`` random foreground RoIs of the batch (with their
        ``score_weights``) to the mask head, whose loss is balanced to the box losses
        (:meth:`_balance_mask_losses`). Unused by TorchScript (training only)."""
        assert targets, "'targets' argument is required during training"
        proposals = self.label_and_sample_proposals(proposals, targets)
        losses, weights = self._box_losses_and_weights(features, proposals, targets)
        if self.mask_on:
            mask_rois = self._mask_training_rois(with_field(proposals, "score_weights", weights))
            mask_losses = self._forward_mask(features, mask_rois)
            losses.update(self._balance_mask_losses(mask_losses, losses))
        losses.update(self._forward_keypoint(features, proposals))
        return proposals, losses

    def _box_losses_and_weights(
        self, features: Dict[str, Tensor], proposals: List[Instances], targets: List[Instances]
    ) -> Tuple[Dict[str, Tensor], List[Tensor]]:
        """The box branch in training: its losses and each image's per-proposal score
        weights (:meth:`RSFastRCNNOutputLayers.score_weights`)."""
        box_features = self.box_pooler([features[f] for f in self.box_in_features],
                                       [x.proposal_boxes for x in proposals])
        predictions = self.box_predictor(self.box_head(box_features))
        losses = self.box_predictor.losses(predictions, proposals)
        weights = self.box_predictor.score_weights(predictions)
        if self.train_on_pred_boxes:  # as detectron2's _forward_box, after the losses
            with torch.no_grad():
                pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(predictions, proposals)
            for proposals_per_image, boxes in zip(proposals, pred_boxes):
                proposals_per_image.proposal_boxes = Boxes(boxes)
        return losses, list(weights.split([len(p) for p in proposals]))

    def _mask_balance_reference(self, box_losses: Dict[str, Tensor]) -> Tensor:
        """The RS loss that the mask loss is balanced to."""
        return ranking_reference(box_losses, "loss_roi_")

    def _balance_mask_losses(
        self, mask_losses: Dict[str, Tensor], box_losses: Dict[str, Tensor]
    ) -> Dict[str, Tensor]:
        """``loss_mask`` rescaled to the value of the box head's RS loss (published), or as
        it is when ``balance_mask_loss`` is False."""
        if not self.balance_mask_loss:
            return mask_losses
        reference = self._mask_balance_reference(box_losses).detach()
        loss, coefficient = balance_to(mask_losses["loss_mask"], reference)
        get_event_storage().put_scalar("roi_head/mask_balance", coefficient)
        return {**mask_losses, "loss_mask": loss}

    def _mask_training_rois(self, instances: List[Instances]) -> List[Instances]:
        """The RoIs of the mask head in training: at most ``max_mask_rois`` random
        foreground proposals of the batch (detectron2's ``_forward_mask`` then keeps the
        foreground of those, i.e. all of them)."""
        instances, _ = select_foreground_proposals(instances, self.num_classes)
        return keep_random_subset(instances, self.max_mask_rois)
