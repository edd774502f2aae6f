"""RS-RetinaNet and RS-ATSS: detectron2's RetinaNet meta-architecture trained with RS Loss.

:class:`RSRetinaNet` subclasses detectron2's :class:`~detectron2.modeling.RetinaNet` and
changes only:

* the losses: RS Loss over all anchors x classes of the batch (a positive's target at its
  class is the IoU of its decoded box with its ground truth), GIoU on decoded boxes weighted
  by each positive's highest class score, balanced to the RS loss (no other weight);
* the assignment (``label_anchors``): ``MODEL.RS_RETINANET.ASSIGNER`` "iou" is detectron2's
  RetinaNet matcher (RS-RetinaNet), "atss" is ATSS (RS-ATSS, :func:`.atss.atss_match`);
* the head, built by name from ``RS_ONE_STAGE_HEAD_REGISTRY`` (``MODEL.RS_RETINANET.HEAD_NAME``):
  detectron2's ``RetinaNetHead`` or :class:`RSATSSHead` (no centerness branch);
* the anchors of locations beyond an image's own padded extent
  (:mod:`.padded_extent`) are ignored, as published: no assignment candidate, no loss;
* the candidates kept per level at inference (``_decode_per_level_predictions``, of
  :class:`PublishedTopAnchors`): the published top-k anchors by highest class score.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage
from detectron2.utils.registry import Registry

from ..ignored_keys import warn_ignored_keys
from rs_detectron2.losses.ranking_pool import check_ranking_pool

from ..rs_head_recipe import make_self_balance, ranking_loss_args, rs_head_losses
from .atss import atss_match
from .padded_extent import anchors_in_padded_extent

__all__ = ["RSRetinaNet", "RSATSSHead", "RS_ONE_STAGE_HEAD_REGISTRY", "ASSIGNERS",
           "PublishedTopAnchors", "build_one_stage_head", "padded_extent_masks"]

RS_ONE_STAGE_HEAD_REGISTRY = Registry("RS_ONE_STAGE_HEAD")
RS_ONE_STAGE_HEAD_REGISTRY.__doc__ = """Heads of RSRetinaNet: called with (cfg, feature
shapes), return per-level class logits and box deltas as detectron2's RetinaNetHead."""
RS_ONE_STAGE_HEAD_REGISTRY.register(RetinaNetHead)

ASSIGNERS = ("atss", "iou")
# detectron2 keys of RetinaNet's losses that RS replaces (RS Loss, balanced GIoU).
IGNORED_RETINANET_KEYS = ("MODEL.RETINANET.FOCAL_LOSS_GAMMA", "MODEL.RETINANET.FOCAL_LOSS_ALPHA",
                          "MODEL.RETINANET.SMOOTH_L1_LOSS_BETA",
                          "MODEL.RETINANET.BBOX_REG_LOSS_TYPE")


@RS_ONE_STAGE_HEAD_REGISTRY.register()
class RSATSSHead(RetinaNetHead):
    """The RS-ATSS head: detectron2's RetinaNet head (towers of ``MODEL.RETINANET.NUM_CONVS``
    conv 3x3 + ``MODEL.RETINANET.NORM`` ("GN": GroupNorm(32)) + ReLU, classifier N(0, 0.01)
    with bias prior ``PRIOR_PROB``) plus one learnable scalar per level multiplying the box
    deltas. No centerness branch: RS Loss's IoU targets already rank by localisation."""

    @configurable
    def __init__(self, *, input_shape, **kwargs):
        super().__init__(input_shape=input_shape, **kwargs)
        self.scales = nn.Parameter(torch.ones(len(input_shape)))

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor]]:
        """RetinaNetHead's forward with each level's box deltas times its scale (written
        out, without super(): TorchScript compiles no super() call)."""
        assert len(features) == self._num_features
        logits: List[Tensor] = []
        bbox_reg: List[Tensor] = []
        for level, feature in enumerate(features):
            logits.append(self.cls_score(self.cls_subnet(feature)))
            bbox_reg.append(self.bbox_pred(self.bbox_subnet(feature)) * self.scales[level])
        return logits, bbox_reg


def build_one_stage_head(cfg, backbone: nn.Module) -> nn.Module:
    """The head named by ``MODEL.RS_RETINANET.HEAD_NAME`` in RS_ONE_STAGE_HEAD_REGISTRY, on
    the backbone's ``MODEL.RETINANET.IN_FEATURES``."""
    shapes = backbone.output_shape()
    feature_shapes = [shapes[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
    return RS_ONE_STAGE_HEAD_REGISTRY.get(cfg.MODEL.RS_RETINANET.HEAD_NAME)(cfg, feature_shapes)


def padded_extent_masks(model: nn.Module, features: List[Tensor], image_sizes) -> List[Tensor]:
    """Per image, the (R,) mask of the anchors of a one-stage ``model`` (its
    ``anchor_generator``) that lie on the image's own padded extent
    (:func:`~.padded_extent.anchors_in_padded_extent`)."""
    generator = model.anchor_generator
    return anchors_in_padded_extent([f.shape[-2:] for f in features], generator.strides,
                                    generator.num_cell_anchors, image_sizes,
                                    device=features[0].device)


class PublishedTopAnchors:
    """Inference of the published one-stage RS models, for a detectron2 ``RetinaNet``
    subclass (mixed in before it)."""

    def _decode_per_level_predictions(self, anchors: Boxes, pred_scores: Tensor,
                                      pred_deltas: Tensor, score_thresh: float,
                                      topk_candidates: int, image_size: Tuple[int, int]
                                      ) -> Instances:
        """The published selection: keep the ``topk_candidates`` anchors of the level with
        the highest class score, then every (anchor, class) of those above
        ``score_thresh``. (detectron2's RetinaNet keeps the top-k (anchor, class) pairs.)"""
        max_scores = pred_scores.max(dim=1)[0]
        # Written for export: a traced size stays a tensor (the top-k follows the image
        # size of the traced model's input), and TorchScript has no nonzero(as_tuple=True).
        num_anchors = max_scores.shape[0]
        if isinstance(num_anchors, Tensor):  # tracing
            num_top = torch.clamp(num_anchors, max=topk_candidates)
        else:
            num_top = min(num_anchors, topk_candidates)
        top = max_scores.topk(num_top)[1]
        anchor_idx, class_idx = torch.nonzero(pred_scores[top] > score_thresh).unbind(1)
        anchor_idx = top[anchor_idx]
        boxes = self.box2box_transform.apply_deltas(pred_deltas[anchor_idx],
                                                    anchors.tensor[anchor_idx])
        return Instances(image_size, pred_boxes=Boxes(boxes),
                         scores=pred_scores[anchor_idx, class_idx], pred_classes=class_idx)


@META_ARCH_REGISTRY.register()
class RSRetinaNet(PublishedTopAnchors, RetinaNet):
    """detectron2's RetinaNet trained with RS Loss (RS-RetinaNet, or RS-ATSS with the ATSS
    assigner and head); see the module docstring for what differs."""

    @configurable
    def __init__(self, *, assigner: str = "atss", atss_topk: int = 9, delta: float = 0.5,
                 ranking_pool: str = "process", ranking_loss: str = "rank_sort",
                 alrp_sb_period: int = 3665, **kwargs):
        """
        Args:
            assigner: "atss" or "iou" (detectron2's matcher, ``anchor_matcher``).
            atss_topk: ATSS candidates per level and ground truth.
            delta: smoothing of the ranking loss.
            ranking_pool: "process" or "global" (``MODEL.RS.RANKING_POOL``).
            ranking_loss: "rank_sort", "ap" or "alrp" (``MODEL.RS.RANKING_LOSS``).
            alrp_sb_period: aLRP's self-balance period (``MODEL.RS.ALRP_SB_PERIOD``).
            kwargs: arguments of detectron2's :class:`RetinaNet`.
        """
        super().__init__(**kwargs)
        if assigner not in ASSIGNERS:
            raise ValueError(f"MODEL.RS_RETINANET.ASSIGNER must be one of {ASSIGNERS}, "
                             f"got {assigner!r}")
        self.assigner = assigner
        self.atss_topk = int(atss_topk)
        self.delta = delta
        self.ranking_pool = check_ranking_pool(ranking_pool)
        self.ranking_loss = ranking_loss
        self.self_balance = make_self_balance(ranking_loss, alrp_sb_period)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        ret["head"] = build_one_stage_head(cfg, ret["backbone"])
        node = cfg.MODEL.RS_RETINANET
        ret.update(assigner=node.ASSIGNER, atss_topk=node.ATSS_TOPK, **ranking_loss_args(cfg))
        warn_ignored_keys(cfg, cls.ignored_retinanet_keys, cls.__name__,
                          "it trains with RS Loss and balanced GIoU")
        return ret

    # detectron2's RetinaNet keys this model does not read (a warning when a config sets one)
    ignored_retinanet_keys = IGNORED_RETINANET_KEYS

    def forward_training(self, images, features, predictions, gt_instances):
        """detectron2's RetinaNet training step, with the anchors beyond each image's own
        padded extent ignored (:func:`padded_extent_masks`)."""
        pred_logits, pred_anchor_deltas = self._transpose_dense_predictions(
            predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(features)
        inside = padded_extent_masks(self, features, images.image_sizes)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt_instances, inside)
        return self.losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances],
                      inside: Optional[List[Tensor]] = None):
        """detectron2's IoU matcher ("iou"), or ATSS ("atss") over the anchors ``inside``
        each image's padded extent (all when None); same outputs as detectron2's: per image
        the class of each anchor (``num_classes`` = background, -1 = ignored: the anchors
        outside, and with "iou" those between the IoU thresholds) and its matched
        ground-truth box. With "iou" the matcher sees every anchor (a ground truth's best
        anchor is never outside: there is only padding)."""
        if self.assigner == "iou":
            gt_labels, matched_gt_boxes = super().label_anchors(anchors, gt_instances)
            if inside is not None:
                for labels, keep in zip(gt_labels, inside):
                    labels[~keep] = -1
            return gt_labels, matched_gt_boxes
        gt_labels, matched_gt_boxes = [], []
        num_anchors = sum(len(a) for a in anchors)
        for i, gt in enumerate(gt_instances):
            keep = inside[i] if inside is not None else None
            level_anchors = anchors
            if keep is not None:
                level_keeps = keep.split([len(a) for a in anchors])
                level_anchors = [a[k] for a, k in zip(anchors, level_keeps)]
            matched_idxs, positive = atss_match(
                level_anchors, gt.gt_boxes, self.atss_topk,
                anchors_per_location=self.anchor_generator.num_cell_anchors[0])
            labels = torch.full((num_anchors,), self.num_classes, dtype=torch.int64,
                                device=matched_idxs.device)
            if keep is None:
                keep = torch.ones(num_anchors, dtype=torch.bool, device=labels.device)
            kept_labels = labels[keep]
            boxes = torch.zeros(num_anchors, 4, device=labels.device)
            if len(gt) > 0:
                kept_labels[positive] = gt.gt_classes[matched_idxs[positive]]
                boxes[keep] = gt.gt_boxes.tensor[matched_idxs].to(boxes.dtype)
            labels[keep] = kept_labels
            labels[~keep] = -1
            gt_labels.append(labels)
            matched_gt_boxes.append(boxes)
        return gt_labels, matched_gt_boxes

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes
               ) -> Dict[str, Tensor]:
        """``loss_rank``, ``loss_sort`` (RS Loss over all anchors x classes of the batch)
        and ``loss_box`` (score-weighted GIoU balanced to their sum)."""
        num_images = len(gt_labels)
        gt_labels = torch.stack(gt_labels)  # (N, R): class, num_classes = bg, -1 ignored
        logits = cat(pred_logits, dim=1)  # (N, R, K)
        valid = gt_labels >= 0
        pos = valid & (gt_labels != self.num_classes)
        image_idx, anchor_idx = pos.nonzero(as_tuple=True)
        pos_classes = gt_labels[image_idx, anchor_idx]

        all_anchors = Boxes.cat(anchors).tensor
        deltas = cat(pred_anchor_deltas, dim=1)[image_idx, anchor_idx]
        pred_boxes = self.box2box_transform.apply_deltas(deltas, all_anchors[anchor_idx])
        matched_gt = torch.stack(gt_boxes)[image_idx, anchor_idx]

        num_anchors, num_classes = logits.shape[1:]
        out = rs_head_losses(
            logits.reshape(-1, num_classes), (~valid).reshape(-1),
            image_idx * num_anchors + anchor_idx, pos_classes, pred_boxes, matched_gt, self.delta,
            ranking_pool=self.ranking_pool, ranking_loss=self.ranking_loss,
            self_balance=self.self_balance)

        storage = get_event_storage()
        storage.put_scalar("num_pos_anchors", pos.sum().item() / num_images)
        storage.put_scalar("box_balance", out.box_balance)
        return out.named("loss_")
