"""RS-RPN: detectron2's RPN with every anchor in RS Loss and a score-weighted GIoU loss."""
from typing import Dict, List

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from rs_detectron2.losses import rank_sort_loss

from .rs_box_losses import balance_to, localisation_quality, score_weighted_giou_loss


@PROPOSAL_GENERATOR_REGISTRY.register()
class RSRPN(RPN):
    """RPN trained with RS Loss (HEADS_SPEC.md, RS-RPN).

    No anchor sampling: the objectness logits of all anchors of all images of the batch go
    into one RS Loss (ignored anchors as -1), with the IoU of each positive's decoded box as
    its target. Boxes are regressed with GIoU on decoded boxes weighted by the objectness
    score, balanced to the RS loss; all three losses are multiplied by ``head_weight``.
    Proposals are generated as detectron2's RPN does.
    """

    @configurable
    def __init__(self, *, delta: float = 0.5, head_weight: float = 0.2, **kwargs):
        """
        Args:
            delta: smoothing of RS Loss.
            head_weight: multiplies the rank, sort and box losses of the RPN.
            kwargs: arguments of detectron2's :class:`RPN`.
        """
        super().__init__(**kwargs)
        self.delta = delta
        self.head_weight = head_weight

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(delta=cfg.MODEL.RS.DELTA, head_weight=cfg.MODEL.RS.RPN_HEAD_WEIGHT)
        return ret

    def _subsample_labels(self, label: Tensor) -> Tensor:
        """Keep every anchor: RS Loss needs no sampling heuristic."""
        return label

    @torch.jit.unused
    def losses(
        self,
        anchors: List[Boxes],
        pred_objectness_logits: List[Tensor],
        gt_labels: List[Tensor],
        pred_anchor_deltas: List[Tensor],
        gt_boxes: List[Tensor],
    ) -> Dict[str, Tensor]:
        """``loss_rpn_rank``, ``loss_rpn_sort`` and ``loss_rpn_box`` over the whole batch."""
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R): 1 positive, 0 negative, -1 ignored
        logits = cat(pred_objectness_logits, dim=1)  # (N, R)
        pos = gt_labels == 1
        image_idx, anchor_idx = pos.nonzero(as_tuple=True)

        anchors = Boxes.cat(anchors).tensor
        deltas = cat(pred_anchor_deltas, dim=1)[image_idx, anchor_idx]
        pred_boxes = self.box2box_transform.apply_deltas(deltas, anchors[anchor_idx])
        matched_gt = torch.stack(gt_boxes)[image_idx, anchor_idx]

        targets = gt_labels.to(logits.dtype).clamp(max=0.0)  # 0 negative, -1 ignored
        targets[image_idx, anchor_idx] = localisation_quality(pred_boxes, matched_gt).to(targets.dtype)
        loss_rank, loss_sort = rank_sort_loss(logits, targets, self.delta)

        weights = logits[image_idx, anchor_idx].detach().sigmoid()
        loss_box = score_weighted_giou_loss(pred_boxes, matched_gt, weights)
        loss_box, coefficient = balance_to(loss_box, loss_rank + loss_sort)

        storage = get_event_storage()
        storage.put_scalar("rpn/num_pos_anchors", pos.sum().item() / num_images)
        storage.put_scalar("rpn/num_neg_anchors", (gt_labels == 0).sum().item() / num_images)
        storage.put_scalar("rpn/box_balance", coefficient)
        w = self.head_weight
        return {
            "loss_rpn_rank": loss_rank * w,
            "loss_rpn_sort": loss_sort * w,
            "loss_rpn_box": loss_box * w,
        }
