"""PAA: probabilistic anchor assignment (Kim & Lee, ECCV 2020), as the published RS-PAA runs
it, for detectron2's RetinaNet meta-architecture: :class:`RSPAA` (RS Loss) and its
stock-loss twin :class:`PAA` (detectron2's RetinaNet losses: focal loss and, with
``MODEL.RETINANET.BBOX_REG_LOSS_TYPE`` "giou", GIoU).

The assignment needs the predictions, so it happens in ``forward_training``:

1. candidates (:func:`paa_candidates`): the anchors on the image's padded extent whose
   highest IoU with a ground truth is >= ``MODEL.PAA.CANDIDATE_IOU`` (0.1) go to that
   ground truth, and every ground truth also gets the anchors of its own highest IoU
   (mmdetection's MaxIoUAssigner with pos = neg = 0.1, min_pos_iou 0);
2. each candidate's score is its focal loss (summed over classes, one-hot target; α, γ of
   ``MODEL.RETINANET.FOCAL_LOSS_*``, published 0.25, 2) plus the GIoU loss of its decoded
   box (:func:`candidate_scores`);
3. per ground truth, the ``MODEL.PAA.TOPK`` (9) lowest-score candidates of each level are
   split by a two-component Gaussian mixture (:func:`.paa_gmm.fit_two_gaussians`, one
   batched EM over all ground truths of the batch); the positives are the foreground
   component's candidates up to the one of highest mixture log-likelihood
   (:func:`paa_select`); every other anchor on the extent is a negative.

At test time the detections kept by NMS are moved by score voting
(:func:`rs_detectron2.layers.score_voting`, ``MODEL.PAA.SCORE_VOTING``).
"""
from typing import List, Tuple

import torch
from fvcore.nn import giou_loss, sigmoid_focal_loss
from torch import Tensor

from detectron2.config import configurable
from detectron2.layers import batched_nms, cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.structures import Boxes, Instances, pairwise_iou

from rs_detectron2.layers import score_voting

from ..ignored_keys import warn_ignored_keys
from .paa_gmm import fit_two_gaussians
from .rs_retinanet import (
    IGNORED_RETINANET_KEYS,
    PublishedTopAnchors,
    RSRetinaNet,
    build_one_stage_head,
    padded_extent_masks,
)

__all__ = ["PAA", "RSPAA", "PAAAssignment", "paa_candidates", "candidate_scores",
           "paa_select"]


@torch.no_grad()
def paa_candidates(anchors: Tensor, gt_boxes: Tensor, inside: Tensor,
                   min_iou: float = 0.1) -> Tensor:
    """(R,) int64: the ground truth each anchor is a candidate of, -1 where none.

    mmdetection's ``MaxIoUAssigner(pos_iou_thr=min_iou, neg_iou_thr=min_iou,
    min_pos_iou=0, gt_max_assign_all=True)`` over the anchors ``inside`` the image's
    padded extent: an anchor whose highest IoU reaches ``min_iou`` goes to its
    highest-IoU ground truth (the first on ties); then, ground truth by ground truth, the
    anchors at a ground truth's own highest IoU go to it (a later one wins). A ground truth
    that overlaps no anchor at all gets none (published: every anchor at IoU 0).

    Args:
        anchors: (R, 4) XYXY; gt_boxes: (G, 4) XYXY; inside: (R,) bool.
    """
    matched = torch.full((len(anchors),), -1, dtype=torch.int64, device=anchors.device)
    if len(gt_boxes) == 0 or len(anchors) == 0:
        return matched
    iou = pairwise_iou(Boxes(gt_boxes), Boxes(anchors))  # (G, R)
    iou = torch.where(inside[None, :], iou, torch.full_like(iou, -1.0))
    best_iou, best_gt = iou.max(dim=0)
    matched = torch.where(best_iou >= min_iou, best_gt, matched)
    gt_best = iou.max(dim=1, keepdim=True).values  # (G, 1)
    at_best = (iou == gt_best) & (gt_best > 0)
    order = torch.arange(1, len(gt_boxes) + 1, device=anchors.device)[:, None]
    last = (at_best * order).max(dim=0).values  # the last ground truth at its best, 1-based
    return torch.where(last > 0, last - 1, matched)


@torch.no_grad()
def candidate_scores(logits: Tensor, classes: Tensor, pred_boxes: Tensor, gt_boxes: Tensor,
                     alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """PAA's score of each candidate (lower is better): its sigmoid focal loss summed over
    the K classes against the one-hot target of its ground truth's class, plus the GIoU
    loss of its decoded box against that ground truth.

    Args:
        logits: (C, K); classes: (C,) int64; pred_boxes, gt_boxes: (C, 4) XYXY.
    """
    target = torch.zeros_like(logits)
    target[torch.arange(len(classes), device=logits.device), classes] = 1.0
    focal = sigmoid_focal_loss(logits, target, alpha=alpha, gamma=gamma,
                               reduction="none").sum(dim=1)
    return focal + giou_loss(pred_boxes, gt_boxes, reduction="none")


@torch.no_grad()
def paa_select(scores: Tensor, gt_index: Tensor, level: Tensor, num_gt: int, num_levels: int,
               topk: int = 9) -> Tensor:
    """(C,) bool: which candidates PAA makes positive.

    Per ground truth, the ``topk`` lowest scores of each level (fewer where a level has
    fewer) form one row; one batched EM fits a two-component mixture to every row
    (:func:`~.paa_gmm.fit_two_gaussians`, component 0 started at the row's minimum = the
    foreground); a candidate is positive when it is in the foreground component (posterior
    >= 0.5, scikit-learn's ``predict`` on ties) and its score is at most that of the
    foreground candidate of highest log-likelihood (published: the score-sorted foreground
    candidates up to that one). A row of fewer than 2 candidates gives no positive
    (published: no mixture is fitted, the ground truth is skipped).

    Args:
        scores: (C,) the candidates' scores; gt_index: (C,) int64, their ground truth among
            the ``num_gt`` of the batch; level: (C,) int64, their pyramid level.
    """
    positive = torch.zeros(len(scores), dtype=torch.bool, device=scores.device)
    if len(scores) == 0:
        return positive
    group = gt_index * num_levels + level
    order = torch.argsort(scores, stable=True)
    order = order[torch.argsort(group[order], stable=True)]  # by group, then score
    sorted_group = group[order]
    counts = torch.bincount(sorted_group, minlength=num_gt * num_levels)
    starts = counts.cumsum(0) - counts
    rank = torch.arange(len(order), device=scores.device) - starts[sorted_group]
    kept = rank < topk
    members = order[kept]
    rows = gt_index[members]
    cols = level[members] * topk + rank[kept]
    x = torch.zeros(num_gt, num_levels * topk, dtype=torch.float64, device=scores.device)
    valid = torch.zeros_like(x, dtype=torch.bool)
    x[rows, cols] = scores[members].double()
    valid[rows, cols] = True

    foreground, log_likelihood = fit_two_gaussians(x, valid)
    fg = valid & (foreground >= 0.5) & (valid.sum(dim=1, keepdim=True) >= 2)
    best = torch.where(fg, log_likelihood, torch.full_like(log_likelihood, float("-inf")))
    best_col = best.argmax(dim=1, keepdim=True)
    threshold = x.gather(1, best_col)  # the score of each row's best foreground candidate
    chosen = fg & (x <= threshold)
    positive[members] = chosen[rows, cols]
    return positive


class PAAAssignment(PublishedTopAnchors):
    """PAA's training assignment and test-time score voting for a detectron2 ``RetinaNet``
    subclass (mixed in before it); reads ``MODEL.PAA``. The losses stay the subclass's."""

    @configurable
    def __init__(self, *, paa_topk: int = 9, candidate_iou: float = 0.1,
                 use_score_voting: bool = True, **kwargs):
        """
        Args:
            paa_topk: candidates per level and ground truth that the mixture splits.
            candidate_iou: the IoU making an anchor a candidate of a ground truth.
            use_score_voting: move each detection by score voting at test time.
            kwargs: arguments of the RetinaNet subclass.
        """
        super().__init__(**kwargs)
        self.paa_topk = int(paa_topk)
        self.candidate_iou = float(candidate_iou)
        self.use_score_voting = bool(use_score_voting)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        node = cfg.MODEL.PAA
        ret.update(paa_topk=node.TOPK, candidate_iou=node.CANDIDATE_IOU,
                   use_score_voting=node.SCORE_VOTING)
        return ret

    def forward_training(self, images, features, predictions, gt_instances):
        """detectron2's RetinaNet training step with PAA's assignment, which needs the
        predictions (:meth:`paa_label_anchors`)."""
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(features)
        inside = padded_extent_masks(self, features, images.image_sizes)
        gt_labels, gt_boxes = self.paa_label_anchors(anchors, inside, pred_logits,
                                                     pred_anchor_deltas, gt_instances)
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    @torch.no_grad()
    def paa_label_anchors(self, anchors: List[Boxes], inside: List[Tensor],
                          pred_logits: List[Tensor], pred_anchor_deltas: List[Tensor],
                          gt_instances: List[Instances]) -> Tuple[List[Tensor], List[Tensor]]:
        """PAA's labels, as detectron2's ``label_anchors`` returns them: per image the class
        of each anchor (``num_classes`` = background, -1 = beyond the padded extent) and
        its ground-truth box (zeros where it has none)."""
        all_anchors = Boxes.cat(anchors).tensor
        level_of = torch.cat([torch.full((len(a),), i, dtype=torch.int64,
                                         device=all_anchors.device)
                              for i, a in enumerate(anchors)])
        logits = cat(pred_logits, dim=1).detach()
        deltas = cat(pred_anchor_deltas, dim=1).detach()
        cand_image, cand_anchor, cand_gt = [], [], []
        offset = 0
        for i, gt in enumerate(gt_instances):
            matched = paa_candidates(all_anchors, gt.gt_boxes.tensor, inside[i],
                                     self.candidate_iou)
            anchor_idx = (matched >= 0).nonzero().squeeze(1)
            cand_image.append(torch.full_like(anchor_idx, i))
            cand_anchor.append(anchor_idx)
            cand_gt.append(matched[anchor_idx] + offset)
            offset += len(gt)
        cand_image, cand_anchor, cand_gt = cat(cand_image), cat(cand_anchor), cat(cand_gt)
        gt_boxes_all = cat([gt.gt_boxes.tensor for gt in gt_instances]).to(all_anchors.dtype)
        gt_classes_all = cat([gt.gt_classes for gt in gt_instances])

        pred_boxes = self.box2box_transform.apply_deltas(deltas[cand_image, cand_anchor],
                                                         all_anchors[cand_anchor])
        scores = candidate_scores(logits[cand_image, cand_anchor], gt_classes_all[cand_gt],
                                  pred_boxes, gt_boxes_all[cand_gt],
                                  self.focal_loss_alpha, self.focal_loss_gamma)
        positive = paa_select(scores, cand_gt, level_of[cand_anchor], offset, len(anchors),
                              self.paa_topk)

        gt_labels, matched_gt_boxes = [], []
        for i, keep in enumerate(inside):
            labels = torch.full((len(all_anchors),), self.num_classes, dtype=torch.int64,
                                device=all_anchors.device)
            labels[~keep] = -1
            boxes = torch.zeros_like(all_anchors)
            mine = positive & (cand_image == i)
            labels[cand_anchor[mine]] = gt_classes_all[cand_gt[mine]]
            boxes[cand_anchor[mine]] = gt_boxes_all[cand_gt[mine]]
            gt_labels.append(labels)
            matched_gt_boxes.append(boxes)
        return gt_labels, matched_gt_boxes

    def inference_single_image(self, anchors: List[Boxes], box_cls: List[Tensor],
                               box_delta: List[Tensor], image_size: Tuple[int, int]):
        """detectron2's RetinaNet inference (per-level candidates, class-wise NMS, the
        ``TEST.DETECTIONS_PER_IMAGE`` best), then score voting of the kept detections over
        all the candidates (published)."""
        pred = self._decode_multi_level_predictions(
            anchors, box_cls, box_delta, self.test_score_thresh, self.test_topk_candidates,
            image_size)
        keep = batched_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes,
                           self.test_nms_thresh)
        result = pred[keep[: self.max_detections_per_image]]
        if self.use_score_voting:
            result.pred_boxes = Boxes(score_voting(
                result.pred_boxes.tensor, result.pred_classes, pred.pred_boxes.tensor,
                pred.pred_classes, pred.scores))
        return result


@META_ARCH_REGISTRY.register()
class RSPAA(PAAAssignment, RSRetinaNet):
    """RS-PAA: :class:`~.rs_retinanet.RSRetinaNet` (RS Loss over all anchors x classes,
    balanced score-weighted GIoU, the RS-ATSS head) with PAA's assignment and score voting
    (:class:`PAAAssignment`). ``MODEL.RS_RETINANET.ASSIGNER`` / ``ATSS_TOPK`` are not
    read; the focal loss keys are, for the candidates' scores only."""

    ignored_retinanet_keys = tuple(k for k in IGNORED_RETINANET_KEYS if "FOCAL" not in k)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        warn_ignored_keys(cfg, ("MODEL.RS_RETINANET.ASSIGNER", "MODEL.RS_RETINANET.ATSS_TOPK"),
                          "RSPAA", "PAA assigns the anchors (MODEL.PAA)")
        return ret


@META_ARCH_REGISTRY.register()
class PAA(PAAAssignment, RetinaNet):
    """PAA with detectron2's RetinaNet losses (focal loss; GIoU with
    ``MODEL.RETINANET.BBOX_REG_LOSS_TYPE`` "giou"): RS-PAA's stock-loss twin, the same
    assignment, head (built from ``MODEL.RS_RETINANET.HEAD_NAME``) and inference."""

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["head"] = build_one_stage_head(cfg, ret["backbone"])
        return ret
