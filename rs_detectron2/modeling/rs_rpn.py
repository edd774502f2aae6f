"""RS-RPN: detectron2's RPN with every anchor in RS Loss and a score-weighted GIoU loss."""
from typing import Dict, List

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.proposal_generator import PROPOSAL_GENERATOR_REGISTRY, RPN
from detectron2.structures import Boxes
from detectron2.utils.events import get_event_storage

from .ignored_keys import warn_ignored_keys
from rs_detectron2.losses.ranking_pool import check_ranking_pool

from .rs_head_recipe import make_self_balance, ranking_loss_args, rs_head_losses

# detectron2 keys of the RPN that RS-RPN replaces (no sampling, GIoU on decoded boxes).
IGNORED_RPN_KEYS = (
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "MODEL.RPN.POSITIVE_FRACTION",
    "MODEL.RPN.BBOX_REG_LOSS_TYPE",
    "MODEL.RPN.SMOOTH_L1_BETA",
)


@PROPOSAL_GENERATOR_REGISTRY.register()
class RSRPN(RPN):
    """RPN trained with RS Loss (docs/heads.md, RS-RPN).

    No anchor sampling: the objectness logits of all anchors of all images of the batch go
    into one RS Loss (ignored anchors as -1), with the IoU of each positive's decoded box as
    its target. Boxes are regressed with GIoU on decoded boxes weighted by the objectness
    score, balanced to the RS loss (:func:`~.rs_head_recipe.rs_head_losses`). As in
    detectron2, ``MODEL.RPN.LOSS_WEIGHT`` multiplies the losses (the published 0.2 is set
    by the RS configs) and ``MODEL.RPN.BBOX_REG_LOSS_WEIGHT`` the box loss once more.
    Proposals are generated as detectron2's RPN does.
    """

    @configurable
    def __init__(self, *, delta: float = 0.5, ranking_pool: str = "process",
                 ranking_loss: str = "rank_sort", alrp_sb_period: int = 3665, **kwargs):
        """
        Args:
            delta: smoothing of the ranking loss.
            ranking_pool: "process" or "global" (``MODEL.RS.RANKING_POOL``).
            ranking_loss: "rank_sort", "ap" or "alrp" (``MODEL.RS.RANKING_LOSS``).
            alrp_sb_period: aLRP's self-balance period (``MODEL.RS.ALRP_SB_PERIOD``).
            kwargs: arguments of detectron2's :class:`RPN` (its ``loss_weight``:
                ``loss_rpn_cls`` weights the rank and sort losses, ``loss_rpn_loc`` the box
                loss).
        """
        super().__init__(**kwargs)
        self.delta = delta
        self.ranking_pool = check_ranking_pool(ranking_pool)
        self.ranking_loss = ranking_loss
        self.self_balance = make_self_balance(ranking_loss, alrp_sb_period)

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret.update(ranking_loss_args(cfg))
        warn_ignored_keys(cfg, IGNORED_RPN_KEYS, "RSRPN",
                          "it keeps every anchor and regresses with balanced GIoU")
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
        """``loss_rpn_rank``, ``loss_rpn_sort`` (RS Loss) and ``loss_rpn_box`` over the whole
        batch."""
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R): 1 positive, 0 negative, -1 ignored
        logits = cat(pred_objectness_logits, dim=1)  # (N, R)
        pos = gt_labels == 1
        image_idx, anchor_idx = pos.nonzero(as_tuple=True)

        anchors = Boxes.cat(anchors).tensor
        deltas = cat(pred_anchor_deltas, dim=1)[image_idx, anchor_idx]
        pred_boxes = self.box2box_transform.apply_deltas(deltas, anchors[anchor_idx])
        matched_gt = torch.stack(gt_boxes)[image_idx, anchor_idx]

        num_anchors = gt_labels.shape[1]
        out = rs_head_losses(
            logits.reshape(-1, 1), (gt_labels == -1).reshape(-1),
            image_idx * num_anchors + anchor_idx, torch.zeros_like(anchor_idx),
            pred_boxes, matched_gt, self.delta, ranking_pool=self.ranking_pool,
            ranking_loss=self.ranking_loss, self_balance=self.self_balance)

        storage = get_event_storage()
        storage.put_scalar("rpn/num_pos_anchors", pos.sum().item() / num_images)
        storage.put_scalar("rpn/num_neg_anchors", (gt_labels == 0).sum().item() / num_images)
        storage.put_scalar("rpn/box_balance", out.box_balance)
        w_cls = self.loss_weight.get("loss_rpn_cls", 1.0)
        w_box = self.loss_weight.get("loss_rpn_loc", 1.0)
        return out.named("loss_rpn_", w_cls, w_box)
