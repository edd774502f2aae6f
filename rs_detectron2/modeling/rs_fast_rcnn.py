"""The RS box predictor: K sigmoid logits (no background), RS Loss and score-weighted GIoU."""
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from .ignored_keys import warn_ignored_keys
from rs_detectron2.losses.ranking_pool import check_ranking_pool

from .rs_head_recipe import make_self_balance, ranking_loss_args, rs_head_losses, score_weights

# detectron2 keys of the box predictor that the RS predictor replaces (GIoU on decoded boxes).
IGNORED_BOX_PREDICTOR_KEYS = ("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE",
                              "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA")


class RSFastRCNNOutputLayers(FastRCNNOutputLayers):
    """detectron2's Fast R-CNN predictor with a K-way sigmoid classifier trained by RS Loss.

    Losses over all proposals of the batch (:func:`~.rs_head_recipe.rs_head_losses`): RS
    Loss on the flattened (proposals x K) logits (a positive's target is the IoU of its
    decoded box for its ground-truth class), and GIoU on decoded boxes weighted by each
    positive's highest class score (:meth:`score_weights`), balanced to the RS loss. As in
    detectron2, ``loss_weight`` scales the losses: its ``loss_cls`` the rank and sort losses,
    its ``loss_box_reg`` (``MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT``) the box loss.
    Inference uses sigmoid scores.
    """

    @configurable
    def __init__(self, input_shape, *, delta: float = 0.5, ranking_pool: str = "process",
                 ranking_loss: str = "rank_sort", alrp_sb_period: int = 3665, **kwargs):
        """
        Args:
            delta: smoothing of the ranking loss.
            ranking_pool: "process" or "global" (``MODEL.RS.RANKING_POOL``).
            ranking_loss: "rank_sort", "ap" or "alrp" (``MODEL.RS.RANKING_LOSS``).
            alrp_sb_period: aLRP's self-balance period (``MODEL.RS.ALRP_SB_PERIOD``).
            input_shape, kwargs: arguments of detectron2's :class:`FastRCNNOutputLayers`.
        """
        super().__init__(input_shape, **kwargs)
        self.delta = delta
        self.ranking_pool = check_ranking_pool(ranking_pool)
        self.ranking_loss = ranking_loss
        self.self_balance = make_self_balance(ranking_loss, alrp_sb_period)
        # K outputs, no background class.
        self.cls_score = nn.Linear(self.cls_score.in_features, self.num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.constant_(self.cls_score.bias, 0.0)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(ranking_loss_args(cfg))
        warn_ignored_keys(cfg, IGNORED_BOX_PREDICTOR_KEYS, "RSFastRCNNOutputLayers",
                          "it regresses decoded boxes with balanced GIoU")
        return ret

    @staticmethod
    def score_weights(predictions: Tuple[Tensor, Tensor]) -> Tensor:
        """Each proposal's highest class score (detached): the weight of its box loss, and
        of its mask loss in the RS mask head."""
        return score_weights(predictions[0])

    def losses(self, predictions: Tuple[Tensor, Tensor], proposals: List[Instances]) -> Dict[str, Tensor]:
        """``loss_roi_rank``, ``loss_roi_sort`` (RS Loss) and ``loss_roi_box`` over the whole
        batch."""
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

        out = rs_head_losses(scores, gt_classes < 0, fg, fg_classes, pred_boxes, gt_boxes[fg],
                             self.delta, pos_weights=self.score_weights(predictions)[fg],
                             ranking_pool=self.ranking_pool, ranking_loss=self.ranking_loss,
                             self_balance=self.self_balance)
        get_event_storage().put_scalar("roi_head/box_balance", out.box_balance)
        w_cls = self.loss_weight.get("loss_cls", 1.0)
        w_box = self.loss_weight.get("loss_box_reg", 1.0)
        return out.named("loss_roi_", w_cls, w_box)

    def predict_probs(
        self, predictions: Tuple[Tensor, Tensor], proposals: List[Instances]
    ) -> List[Tensor]:
        """Sigmoid class scores, with a zero background column (which inference drops);
        one tensor per image. Written for export: the zero column's length follows the
        traced tensor (``zeros_like``, not ``len``), and TorchScript's ``split`` is a list."""
        scores, _ = predictions
        probs = scores.sigmoid()
        probs = torch.cat([probs, torch.zeros_like(probs[:, :1])], dim=1)
        return list(probs.split([len(p) for p in proposals], dim=0))
