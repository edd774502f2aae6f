"""The RS box predictor: K sigmoid logits (no background), RS Loss and score-weighted GIoU."""
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from rs_detectron2.losses import rank_sort_loss

from .rs_box_losses import balance_to, localisation_quality, score_weighted_giou_loss


class RSFastRCNNOutputLayers(FastRCNNOutputLayers):
    """detectron2's Fast R-CNN predictor with a K-way sigmoid classifier trained by RS Loss.

    Losses over all proposals of the batch: RS Loss on the flattened (proposals x K) logits
    (a positive's target is the IoU of its decoded box for its ground-truth class), and GIoU
    on decoded boxes weighted by each positive's highest class score, balanced to the RS
    loss. :meth:`losses` also stores every proposal's weight (its highest class score,
    detached) as the field ``rs_weights`` of the proposals, for the mask head.
    Inference uses sigmoid scores.
    """

    @configurable
    def __init__(self, input_shape, *, delta: float = 0.5, **kwargs):
        """
        Args:
            delta: smoothing of RS Loss.
            input_shape, kwargs: arguments of detectron2's :class:`FastRCNNOutputLayers`.
        """
        super().__init__(input_shape, **kwargs)
        self.delta = delta
        # K outputs, no background class.
        self.cls_score = nn.Linear(self.cls_score.in_features, self.num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.constant_(self.cls_score.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["delta"] = cfg.MODEL.RS.DELTA
        return ret

    def losses(self, predictions: Tuple[Tensor, Tensor], proposals: List[Instances]) -> Dict[str, Tensor]:
        """``loss_roi_rank``, ``loss_roi_sort`` and ``loss_roi_box`` over the whole batch."""
        scores, deltas = predictions  # (R, K), (R, K*4) or (R, 4)
        gt_classes = cat([p.gt_classes for p in proposals], dim=0)
        proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
        gt_boxes = cat(
            [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals], dim=0
        )
        fg = ((gt_classes >= 0) & (gt_classes < self.num_classes)).nonzero().squeeze(1)
        fg_classes = gt_classes[fg]
        fg_deltas = deltas[fg].view(len(fg), deltas.shape[1] // 4, 4)  # class-specific or agnostic
        fg_deltas = fg_deltas[torch.arange(len(fg)), fg_classes if fg_deltas.shape[1] > 1 else 0]
        pred_boxes = self.box2box_transform.apply_deltas(fg_deltas, proposal_boxes[fg])
        fg_gt_boxes = gt_boxes[fg]

        targets = torch.zeros_like(scores)
        targets[gt_classes < 0] = -1.0  # proposals the matcher ignores
        targets[fg, fg_classes] = localisation_quality(pred_boxes, fg_gt_boxes).to(targets.dtype)
        loss_rank, loss_sort = rank_sort_loss(scores, targets, self.delta)

        weights = scores.detach().sigmoid().max(dim=1).values
        loss_box = score_weighted_giou_loss(pred_boxes, fg_gt_boxes, weights[fg])
        loss_box, coefficient = balance_to(loss_box, loss_rank + loss_sort)
        for p, w in zip(proposals, weights.split([len(p) for p in proposals])):
            p.rs_weights = w

        get_event_storage().put_scalar("roi_head/box_balance", coefficient)
        return {"loss_roi_rank": loss_rank, "loss_roi_sort": loss_sort, "loss_roi_box": loss_box}

    def predict_probs(self, predictions: Tuple[Tensor, Tensor], proposals: List[Instances]) -> Tuple[Tensor, ...]:
        """Sigmoid class scores, with a zero background column (which inference drops)."""
        scores, _ = predictions
        probs = scores.sigmoid()
        probs = torch.cat([probs, probs.new_zeros(len(probs), 1)], dim=1)
        return probs.split([len(p) for p in proposals], dim=0)
