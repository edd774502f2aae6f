"""The RS head recipe, written once for every RS head (RPN, RoI box predictor, one-stage).

Each RS head (docs/heads.md) trains its classifier with RS Loss on targets that are the
IoU of a positive's decoded predicted box with its ground truth, regresses decoded boxes
with a GIoU loss weighted by the positive's classification score, and rescales that
auxiliary loss so that its value equals the RS loss of its stage (no tuned weights):
:func:`rs_head_losses`. The pieces (IoU targets, score-weighted means, value-based
balancing) are public for the heads that combine other losses (the mask head).
"""
from typing import Dict, NamedTuple, Optional, Tuple

import torch
from fvcore.nn import giou_loss
from torch import Tensor, nn

from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou

from rs_detectron2.losses import (
    global_sum,
    pooled_alrp_loss,
    pooled_ap_loss,
    pooled_rank_sort_loss,
)

from .ignored_keys import warn_ignored_keys

_EPS = 1e-10
# The classification losses an RS head can train with (MODEL.RS.RANKING_LOSS).
RANKING_LOSSES = ("rank_sort", "ap", "alrp")
# A positive whose predicted box misses its ground truth entirely still gets this tiny
# quality, so that it stays a positive for RS Loss (a target of 0 would make it a negative).
MIN_POSITIVE_IOU = 1e-6


@torch.no_grad()
def localisation_quality(pred_boxes: Tensor, gt_boxes: Tensor) -> Tensor:
    """IoU of each predicted box with its own ground-truth box (detached), in (0, 1]."""
    iou = matched_pairwise_iou(Boxes(pred_boxes.detach()), Boxes(gt_boxes))
    return iou.clamp(min=MIN_POSITIVE_IOU, max=1.0)


def score_weighted_giou_loss(pred_boxes: Tensor, gt_boxes: Tensor, weights: Tensor,
                             pool: str = "process") -> Tensor:
    """sum_i w_i GIoU(pred_i, gt_i) / sum_i w_i, with the normaliser 1 when sum_i w_i < 1e-10.

    ``weights`` are the positives' (detached) classification scores; the sums run over this
    process's positives ("process") or all processes' (``pool`` "global"). With no positive
    the result is a zero attached to ``pred_boxes``' graph.
    """
    if pred_boxes.numel() == 0 and pool == "process":
        return pred_boxes.sum() * 0.0
    return score_weighted_mean(giou_loss(pred_boxes, gt_boxes, reduction="none"), weights, pool)


def score_weighted_mean(losses: Tensor, weights: Tensor, pool: str = "process") -> Tensor:
    """sum_i w_i l_i / sum_i w_i with detached weights; the normaliser is 1 when
    sum_i w_i < 1e-10 (the RS heads' weighting of box and mask losses). With ``pool``
    "global" both sums run over all processes
    (:func:`~rs_detectron2.losses.global_sum`: every process calls it, with or without
    positives)."""
    weights = weights.detach()
    normaliser = global_sum(weights.sum(), pool)
    normaliser = torch.where(normaliser < _EPS, torch.ones_like(normaliser), normaliser)
    return global_sum((losses * weights).sum(), pool) / normaliser


def mask_dice_losses(probs: Tensor, targets: Tensor, smooth: float = 1e-5) -> Tensor:
    """Each mask's Dice loss, 1 - 2 sum(p t) / (sum p^2 + sum t^2 + smooth), over all but the
    first dimension (the published RS mask losses: Mask R-CNN's RoI masks, YOLACT's
    prototype masks). (M, ...) -> (M,)."""
    probs, targets = probs.flatten(1), targets.to(probs.dtype).flatten(1)
    return 1 - 2 * (probs * targets).sum(1) / (
        (probs * probs).sum(1) + (targets * targets).sum(1) + smooth)


def balance_to(loss: Tensor, reference: Tensor) -> Tuple[Tensor, float]:
    """Rescale ``loss`` so that its value equals ``reference`` (its gradient is scaled alike).

    Returns the rescaled loss and the coefficient ``reference / loss`` (0 when ``loss`` is 0,
    so a perfect auxiliary loss stays 0 and attached to the graph).
    """
    value = loss.detach()
    if float(value) <= _EPS:
        return loss * 0.0, 0.0
    coefficient = reference.detach().to(value.dtype) / value
    return loss * coefficient, float(coefficient)


def score_weights(logits: Tensor) -> Tensor:
    """Each row's highest class score (sigmoid of its largest logit), detached: the weight of
    a positive's box (and mask) loss. ``logits`` is (R, K)."""
    return logits.detach().sigmoid().max(dim=1).values


def check_ranking_loss(name: str) -> str:
    """``name`` if it is one of :data:`RANKING_LOSSES`, else a ValueError naming them."""
    if name not in RANKING_LOSSES:
        raise ValueError(f"MODEL.RS.RANKING_LOSS must be one of {RANKING_LOSSES}, got {name!r}")
    return name


class SelfBalance(nn.Module):
    """aLRP Loss's self-balancing weight of its regression part (Oksuz et al., NeurIPS 2020):
    50 at first, then every ``period`` iterations (an epoch in the published recipe) set to
    (mean classification + mean regression) / mean regression over those iterations. Kept
    in buffers, so that checkpoints resume it."""

    def __init__(self, period: int, initial: float = 50.0):
        super().__init__()
        if period <= 0:
            raise ValueError(f"SelfBalance: period (MODEL.RS.ALRP_SB_PERIOD) must be > 0, "
                             f"got {period}")
        self.period = int(period)
        self.register_buffer("weight", torch.tensor(float(initial), dtype=torch.float64))
        self.register_buffer("sums", torch.zeros(2, dtype=torch.float64))  # cls, reg
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))

    def forward(self, loss_cls: float, loss_reg: float) -> float:
        """Record this iteration's two values and return the weight of its regression loss
        (updated first when this iteration completes a period, as published)."""
        self.sums += torch.tensor([loss_cls, loss_reg], dtype=torch.float64)
        self.count += 1
        if int(self.count) == self.period:
            cls_mean, reg_mean = (self.sums / self.period).tolist()
            if reg_mean > _EPS:
                self.weight.fill_((reg_mean + cls_mean) / reg_mean)
            self.sums.zero_()
            self.count.zero_()
        return float(self.weight)


def ranking_loss_args(cfg) -> Dict[str, object]:
    """The RS heads' loss arguments from ``cfg.MODEL.RS``: ``ranking_loss``
    (``RANKING_LOSS``), ``delta`` (``DELTA`` for RS Loss, ``AP_DELTA`` for AP and aLRP
    Loss), ``ranking_pool`` (``RANKING_POOL``) and ``alrp_sb_period`` (``ALRP_SB_PERIOD``).
    Warns once when the config sets one of the keys that the chosen loss does not read."""
    rs = cfg.MODEL.RS
    loss = check_ranking_loss(rs.RANKING_LOSS)
    unread = ["MODEL.RS.AP_DELTA"] if loss == "rank_sort" else ["MODEL.RS.DELTA"]
    if loss != "alrp":
        unread.append("MODEL.RS.ALRP_SB_PERIOD")
    warn_ignored_keys(cfg, unread, f"MODEL.RS.RANKING_LOSS {loss!r}",
                      "AP_DELTA is the δ of AP and aLRP Loss, DELTA RS Loss's; ALRP_SB_PERIOD "
                      "is aLRP's")
    return {"ranking_loss": loss, "delta": rs.DELTA if loss == "rank_sort" else rs.AP_DELTA,
            "ranking_pool": rs.RANKING_POOL, "alrp_sb_period": rs.ALRP_SB_PERIOD}


def make_self_balance(ranking_loss: str, period: int) -> Optional[SelfBalance]:
    """The head's :class:`SelfBalance` for aLRP Loss, None for the other losses."""
    return SelfBalance(period) if check_ranking_loss(ranking_loss) == "alrp" else None


class RSHeadLosses(NamedTuple):
    """What :func:`rs_head_losses` returns; each head names and scales the losses
    (:meth:`named`)."""

    rank: Tensor  # the ranking loss: RS's ranking error, 1 - AP (ap), aLRP's classification part
    sort: Optional[Tensor]  # RS Loss's sorting error (None for ap and alrp)
    box: Tensor  # the box loss: balanced score-weighted GIoU, or aLRP's regression part x SB
    box_balance: float  # the coefficient of the box loss, for the logs

    def named(self, prefix: str, w_cls: float = 1.0, w_box: float = 1.0) -> Dict[str, Tensor]:
        """``{prefix}rank``, ``{prefix}sort`` (RS Loss only) and ``{prefix}box``, the
        classification losses times ``w_cls``, the box loss times ``w_box``."""
        out = {f"{prefix}rank": self.rank * w_cls}
        if self.sort is not None:
            out[f"{prefix}sort"] = self.sort * w_cls
        out[f"{prefix}box"] = self.box * w_box
        return out


def ranking_reference(losses: Dict[str, Tensor], prefix: str, suffix: str = "") -> Tensor:
    """The classification loss a head's auxiliary losses are balanced to: its
    ``{prefix}rank{suffix}`` plus its ``{prefix}sort{suffix}`` where it has one."""
    reference = losses[f"{prefix}rank{suffix}"]
    sort = losses.get(f"{prefix}sort{suffix}", None)
    return reference if sort is None else reference + sort


def rs_head_losses(
    logits: Tensor,
    ignored: Tensor,
    pos_rows: Tensor,
    pos_classes: Tensor,
    pred_boxes: Tensor,
    gt_boxes: Tensor,
    delta: float,
    pos_weights: Optional[Tensor] = None,
    ranking_pool: str = "process",
    ranking_loss: str = "rank_sort",
    self_balance: Optional[SelfBalance] = None,
) -> RSHeadLosses:
    """RS Loss and the balanced, score-weighted GIoU loss of one head over a whole batch
    (or, by ``ranking_loss``, AP Loss or aLRP Loss in its place).

    Args:
        logits: (R, K) class logits of the R candidates (anchors or proposals of every
            image) for K classes (K = 1 for objectness).
        ignored: (R,) bool, the candidates that take no part (all their targets are -1).
        pos_rows, pos_classes: (P,) the row and the ground-truth class of each positive.
        pred_boxes, gt_boxes: (P, 4) each positive's decoded predicted box and its ground
            truth (XYXY).
        delta: smoothing of the ranking loss's step function.
        pos_weights: (P,) the positives' box-loss weights if the head has them already
            (the RoI box predictor computes every proposal's, for the mask head too);
            default :func:`score_weights` of the positives' rows.
        ranking_pool: "process" (published: rank this process's candidates) or "global"
            (rank those of all processes together, the GIoU mean over all processes'
            positives: :mod:`rs_detectron2.losses.ranking_pool`).
        ranking_loss: "rank_sort" (RS Loss), "ap" (AP Loss, Chen et al. 2019: 1 - AP; the
            box loss as RS's, balanced to it) or "alrp" (aLRP Loss, Oksuz et al. 2020: its
            classification part, and its regression part on each positive's GIoU loss times
            the self-balancing weight of ``self_balance``).
        self_balance: aLRP's :class:`SelfBalance` of the head (required for "alrp").

    With RS Loss a positive's target is the IoU of its predicted box with its ground truth
    (at its class; every other entry of its row is a negative); its box loss is weighted by
    its highest class score (:func:`score_weights`) and the box loss is rescaled to the value
    of ``rank + sort`` (:func:`balance_to`).
    """
    targets = torch.zeros_like(logits)
    targets[ignored] = -1.0
    targets[pos_rows, pos_classes] = localisation_quality(pred_boxes, gt_boxes).to(targets.dtype)
    if check_ranking_loss(ranking_loss) == "alrp":
        if self_balance is None:
            raise ValueError("rs_head_losses: ranking_loss 'alrp' needs the head's SelfBalance")
        # one GIoU loss per positive (published: GIoU / 2 / (1 - 0.5)), in the flat order
        # of the positives in the targets, which aLRP Loss expects
        order = (pos_rows * logits.shape[1] + pos_classes).argsort()
        regression = giou_loss(pred_boxes[order], gt_boxes[order], reduction="none")
        out = pooled_alrp_loss(logits, targets, regression, delta, ranking_pool)
        weight = self_balance(float(out.loss_cls), float(out.loss_reg))
        return RSHeadLosses(out.loss_cls, None, out.loss_reg * weight, weight)
    if ranking_loss == "ap":
        loss_rank, loss_sort = pooled_ap_loss(logits, targets, delta, ranking_pool), None
        reference = loss_rank
    else:
        loss_rank, loss_sort = pooled_rank_sort_loss(logits, targets, delta, ranking_pool)
        reference = loss_rank + loss_sort
    if pos_weights is None:
        pos_weights = score_weights(logits[pos_rows])
    loss_box = score_weighted_giou_loss(pred_boxes, gt_boxes, pos_weights, ranking_pool)
    loss_box, coefficient = balance_to(loss_box, reference)
    return RSHeadLosses(loss_rank, loss_sort, loss_box, coefficient)
