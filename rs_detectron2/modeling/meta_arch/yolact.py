"""YOLACT (Bolya et al., ICCV 2019) on detectron2's RetinaNet meta-architecture: RS-YOLACT
(:class:`RSYOLACT`, RS Loss as the published RS-YOLACT) and its stock-loss twin
(:class:`YOLACT`, YOLACT's OHEM softmax cross entropy, smooth L1 and mask BCE).

Both share, through :class:`YOLACTMasks`:

* the head (:class:`YOLACTHead`): ``MODEL.YOLACT.NUM_HEAD_CONVS`` (1) shared conv 3x3 + ReLU,
  then per anchor the class logits, 4 box deltas and ``NUM_PROTOS`` (32) mask coefficients
  (tanh), one head for every level;
* the prototype net (:class:`ProtoNet`) on the first head feature (P3): 3 conv 3x3 + ReLU,
  bilinear x2, conv 3x3 + ReLU, conv 1x1 to ``NUM_PROTOS`` + ReLU (138 x 138 at 550 px);
* the assignment: detectron2's IoU matcher (``MODEL.RETINANET.IOU_THRESHOLDS`` [0.4, 0.5]),
  anchors from ``FractionalStrideAnchorGenerator`` (strides = input side / map side);
* a positive's mask: sigmoid(prototypes . coefficients) cropped to its ground-truth box
  (training) or predicted box (test), against the ground-truth mask at the prototypes' size;
* inference: per level the ``TOPK_CANDIDATES_TEST`` anchors of highest class score, Fast
  NMS (:func:`rs_detectron2.layers.fast_nms`, ``MODEL.YOLACT.NMS_TOP_K`` per class,
  ``NMS_THRESH_TEST``), score > ``SCORE_THRESH_TEST``, the ``TEST.DETECTIONS_PER_IMAGE``
  best, their masks assembled and cropped to the box, then pasted at the output size by
  detectron2's postprocessing (bilinear, > 0.5).

RS-YOLACT's losses: RS Loss over all anchors x classes (IoU targets), the score-weighted
GIoU and the score-weighted Dice loss of every positive's mask, each balanced to the RS
loss; no OHEM, no semantic segmentation head.
"""
import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.structures import Boxes, ImageList, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

from rs_detectron2.layers import assemble_masks, crop_masks, fast_nms, mask_targets

from ..ignored_keys import warn_ignored_keys
from ..rs_head_recipe import (
    balance_to,
    mask_dice_losses,
    ranking_reference,
    rs_head_losses,
    score_weighted_mean,
    score_weights,
)
from .gt_masks import padded_gt_masks
from .rs_retinanet import IGNORED_RETINANET_KEYS, RSRetinaNet
from .yolact_losses import (
    ohem_num_total_samples,
    ohem_softmax_cross_entropy,
    select_training_masks,
    yolact_box_loss,
    yolact_mask_bce_loss,
)

__all__ = ["YOLACTHead", "ProtoNet", "YOLACTMasks", "RSYOLACT", "YOLACT", "box_mask_samples"]


def _xavier(module: nn.Module) -> None:
    """mmdetection's xavier_init(distribution='uniform', bias=0) of every conv."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


class YOLACTHead(nn.Module):
    """YOLACT's head, shared by all levels: ``num_head_convs`` conv 3x3 + ReLU, then conv
    3x3 branches for the class logits, the box deltas and the mask coefficients (tanh)."""

    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], num_logits: int, num_anchors: int,
                 num_protos: int = 32, num_head_convs: int = 1):
        """
        Args:
            input_shape: the levels' shapes (one channel count).
            num_logits: class logits per anchor: K (sigmoid, RS-YOLACT) or K + 1 (softmax
                with background, YOLACT's stock loss).
            num_anchors: anchors per location; num_protos: mask coefficients per anchor.
        """
        super().__init__()
        channels = input_shape[0].channels
        convs: List[nn.Module] = []
        for _ in range(num_head_convs):
            convs += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU()]
        self.head_convs = nn.Sequential(*convs)
        self.cls_score = nn.Conv2d(channels, num_anchors * num_logits, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        self.coeff_pred = nn.Conv2d(channels, num_anchors * num_protos, 3, padding=1)
        _xavier(self)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec], background_logit: bool = False):
        from detectron2.modeling.anchor_generator import build_anchor_generator

        num_anchors = build_anchor_generator(cfg, input_shape).num_cell_anchors
        if len(set(num_anchors)) != 1:
            raise ValueError("YOLACTHead: every level needs the same number of anchors")
        return {"input_shape": input_shape,
                "num_logits": cfg.MODEL.RETINANET.NUM_CLASSES + int(background_logit),
                "num_anchors": num_anchors[0], "num_protos": cfg.MODEL.YOLACT.NUM_PROTOS,
                "num_head_convs": cfg.MODEL.YOLACT.NUM_HEAD_CONVS}

    def forward(self, features: List[Tensor]) -> Tuple[List[Tensor], List[Tensor], List[Tensor]]:
        logits: List[Tensor] = []
        deltas: List[Tensor] = []
        coeffs: List[Tensor] = []
        for feature in features:
            x = self.head_convs(feature)
            logits.append(self.cls_score(x))
            deltas.append(self.bbox_pred(x))
            coeffs.append(torch.tanh(self.coeff_pred(x)))
        return logits, deltas, coeffs


class ProtoNet(nn.Module):
    """YOLACT's prototype net on P3: 3 x (conv 3x3 + ReLU), bilinear x2, conv 3x3 + ReLU,
    conv 1x1 to ``num_protos`` + ReLU (published ``proto_channels`` (256, 256, 256, None,
    256, 32), kernels (3, 3, 3, -2, 3, 1), last ReLU kept)."""

    def __init__(self, in_channels: int, num_protos: int = 32, width: Optional[int] = None):
        super().__init__()
        width = width or in_channels
        self.num_protos = num_protos
        self.before = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.after = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, num_protos, 1), nn.ReLU())
        _xavier(self)

    def forward(self, p3: Tensor) -> Tensor:
        """(N, C, h, w) -> (N, num_protos, 2h, 2w)."""
        x = self.before(p3)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.after(x)


class YOLACTMasks:
    """YOLACT's mask branch, assignment and inference for a detectron2 ``RetinaNet``
    subclass (mixed in before it); the subclass gives the losses (:meth:`yolact_losses`)
    and the class scores (:meth:`class_scores`)."""

    # one logit per class and anchor (sigmoid), or one more for the background (softmax)
    background_logit = False

    @configurable
    def __init__(self, *, protonet: nn.Module, nms_top_k: int = 200, mask_side: int = 138,
                 **kwargs):
        """
        Args:
            protonet: the prototype net (:class:`ProtoNet`) on the first head feature.
            nms_top_k: Fast NMS candidates per class (``MODEL.YOLACT.NMS_TOP_K``).
            mask_side: side of the RoI masks the detections' masks are sampled on
                (:func:`box_mask_samples`): the prototypes' side at the largest test input
                (``INPUT.MAX_SIZE_TEST`` / the prototypes' stride), so at least one sample
                per prototype pixel; fixed, so that a traced model follows its input size.
            kwargs: arguments of the RetinaNet subclass.
        """
        super().__init__(**kwargs)
        self.protonet = protonet
        self.nms_top_k = int(nms_top_k)
        self.mask_side = int(mask_side)
        self.num_logits = self.num_classes + int(type(self).background_logit)
        self.num_protos = int(protonet.num_protos)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        shapes = ret["backbone"].output_shape()
        feature_shapes = [shapes[f] for f in cfg.MODEL.RETINANET.IN_FEATURES]
        ret["head"] = YOLACTHead(cfg, feature_shapes, background_logit=cls.background_logit)
        ret["protonet"] = ProtoNet(feature_shapes[0].channels, cfg.MODEL.YOLACT.NUM_PROTOS)
        ret["nms_top_k"] = cfg.MODEL.YOLACT.NMS_TOP_K
        proto_stride = feature_shapes[0].stride / 2  # the prototypes: P3 upsampled x2
        ret["mask_side"] = int(math.ceil(cfg.INPUT.MAX_SIZE_TEST / proto_stride))
        return ret

    def _anchors(self, features: List[Tensor], images: ImageList) -> List[Boxes]:
        return self.anchor_generator(features, images.tensor.shape[-2:])

    def forward_training(self, images, features, predictions, gt_instances):
        """Anchors, IoU assignment (with each positive's ground-truth index), prototypes,
        then the subclass's :meth:`yolact_losses`."""
        pred_logits, pred_deltas, pred_coeffs = self._transpose_dense_predictions(
            predictions, [self.num_logits, 4, self.num_protos])
        anchors = self._anchors(features, images)
        gt_labels, matched_idxs = self.label_anchors_with_indices(anchors, gt_instances)
        prototypes = self.protonet(features[0])
        masks = [padded_gt_masks(gt, *images.tensor.shape[-2:]).float() for gt in gt_instances]
        return self.yolact_losses(anchors, cat(pred_logits, 1), cat(pred_deltas, 1),
                                  cat(pred_coeffs, 1), prototypes, gt_labels, matched_idxs,
                                  gt_instances, masks, images.tensor.shape[-2:])

    @torch.no_grad()
    def label_anchors_with_indices(self, anchors: List[Boxes], gt_instances: List[Instances]
                                   ) -> Tuple[Tensor, Tensor]:
        """detectron2's RetinaNet assignment (``anchor_matcher``), returning (N, R) labels
        (class, ``num_classes`` = background, -1 = ignored) and (N, R) matched indices."""
        all_anchors = Boxes.cat(anchors)
        labels, indices = [], []
        for gt in gt_instances:
            if len(gt) == 0:
                labels.append(torch.full((len(all_anchors),), self.num_classes,
                                         dtype=torch.int64, device=all_anchors.device))
                indices.append(torch.zeros_like(labels[-1]))
                continue
            matched, anchor_labels = self.anchor_matcher(pairwise_iou(gt.gt_boxes, all_anchors))
            classes = gt.gt_classes[matched].clone()
            classes[anchor_labels == 0] = self.num_classes
            classes[anchor_labels == -1] = -1
            labels.append(classes)
            indices.append(matched)
        return torch.stack(labels), torch.stack(indices)

    def _positives(self, anchors, deltas, gt_labels, matched_idxs, gt_instances):
        """The positives of the batch: (image, anchor) indices, classes, ground-truth boxes
        and indices, decoded predicted boxes, anchors."""
        pos = (gt_labels >= 0) & (gt_labels != self.num_classes)
        image_idx, anchor_idx = pos.nonzero(as_tuple=True)
        all_anchors = Boxes.cat(anchors).tensor
        gt_idx = matched_idxs[image_idx, anchor_idx]
        offsets = torch.tensor([0] + [len(g) for g in gt_instances],
                               device=gt_idx.device).cumsum(0)[:-1]
        gt_boxes = cat([g.gt_boxes.tensor for g in gt_instances])[offsets[image_idx] + gt_idx]
        pred_boxes = self.box2box_transform.apply_deltas(deltas[image_idx, anchor_idx],
                                                         all_anchors[anchor_idx])
        return pos, image_idx, anchor_idx, gt_idx, gt_boxes, pred_boxes, all_anchors

    @staticmethod
    def _to_mask_px(boxes: Tensor, prototypes: Tensor, padded_size: List[int]) -> Tensor:
        """Boxes of the (padded) input frame in the prototypes' pixel frame."""
        h, w = prototypes.shape[-2:]
        scale = torch.tensor([w / padded_size[1], h / padded_size[0]] * 2, device=boxes.device,
                             dtype=boxes.dtype)
        return boxes * scale

    def _positive_masks(self, prototypes, coeffs, image_idx, anchor_idx, gt_idx, gt_boxes,
                        gt_masks, padded_size, select: Optional[List[Tensor]] = None):
        """Each positive's cropped mask probabilities and its target, image by image (the
        prototypes differ): (M, h, w) both, and the crop boxes in mask pixels. ``select``:
        per image, the indices (among its positives) that get a mask loss (all if None)."""
        probs, targets, boxes = [], [], []
        for i in range(len(gt_masks)):
            mine = (image_idx == i).nonzero().squeeze(1)
            if select is not None:
                mine = mine[select[i]]
            if len(mine) == 0:
                continue
            box_px = self._to_mask_px(gt_boxes[mine], prototypes, padded_size)
            mask = assemble_masks(prototypes[i], coeffs[i, anchor_idx[mine]])
            probs.append(crop_masks(mask, box_px))
            targets.append(mask_targets(gt_masks[i], prototypes.shape[-2:])[gt_idx[mine]])
            boxes.append(box_px)
        if not probs:
            h, w = prototypes.shape[-2:]
            empty = prototypes.new_zeros(0, h, w)
            return empty + prototypes.sum() * 0.0, empty, prototypes.new_zeros(0, 4)
        return cat(probs), cat(targets), cat(boxes)

    def forward_inference(self, images: ImageList, features: List[Tensor],
                          predictions: List[List[Tensor]]):
        pred_logits, pred_deltas, pred_coeffs = self._transpose_dense_predictions(
            predictions, [self.num_logits, 4, self.num_protos])
        anchors = self._anchors(features, images)
        prototypes = self.protonet(features[0])
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            results.append(self.inference_single_image(
                anchors, [self.class_scores(x[i]) for x in pred_logits],
                [x[i] for x in pred_deltas], [x[i] for x in pred_coeffs], prototypes[i],
                image_size, images.tensor.shape[-2:]))
        return results

    def inference_single_image(self, anchors: List[Boxes], scores: List[Tensor],
                               deltas: List[Tensor], coeffs: List[Tensor], prototypes: Tensor,
                               image_size: Tuple[int, int], padded_size: List[int]) -> Instances:
        """Per level the top-k anchors by highest class score; Fast NMS; score threshold;
        the best ``max_detections_per_image``; their masks (assembled, cropped to the box)
        as RoI masks (:func:`box_mask_samples`) that detectron2's postprocessing pastes."""
        boxes_all, scores_all, coeffs_all = [], [], []
        for level_anchors, s, d, c in zip(anchors, scores, deltas, coeffs):
            num_top = min(self.test_topk_candidates, s.shape[0])
            top = s.max(dim=1).values.topk(num_top).indices
            boxes_all.append(self.box2box_transform.apply_deltas(d[top], level_anchors.tensor[top]))
            scores_all.append(s[top])
            coeffs_all.append(c[top])
        boxes, scores_, coeffs_ = cat(boxes_all), cat(scores_all), cat(coeffs_all)
        keep, classes, kept_scores = fast_nms(boxes, scores_, self.test_nms_thresh, self.nms_top_k)
        above = kept_scores > self.test_score_thresh
        keep, classes, kept_scores = keep[above], classes[above], kept_scores[above]
        order = kept_scores.argsort(descending=True)[: self.max_detections_per_image]
        keep, classes, kept_scores = keep[order], classes[order], kept_scores[order]
        det_boxes = boxes[keep]
        masks = assemble_masks(prototypes, coeffs_[keep])
        box_px = self._to_mask_px(det_boxes, prototypes, padded_size)
        masks = crop_masks(masks, box_px)
        return Instances(image_size, pred_boxes=Boxes(det_boxes), scores=kept_scores,
                         pred_classes=classes,
                         pred_masks=box_mask_samples(masks, box_px, self.mask_side))


def box_mask_samples(masks: Tensor, boxes: Tensor, side: int) -> Tensor:
    """Each (cropped) full-image mask sampled inside its box on a ``side`` x ``side`` grid
    (2 x 2 bilinear samples per cell, averaged): (D, 1, side, side), the
    RoI-mask form that detectron2's ``detector_postprocess`` pastes into the output image
    (bilinear, > 0.5). YOLACT's masks are zero outside their boxes, so nothing is lost but
    the resampling (published: one bilinear resize of the whole mask to the output size).

    Args:
        masks: (D, h, w) mask probabilities; boxes: (D, 4) XYXY in the masks' pixels.
    """
    rois = torch.cat([torch.arange(len(boxes), device=boxes.device,
                                   dtype=boxes.dtype)[:, None], boxes], dim=1)
    return roi_align(masks[:, None], rois, (side, side), spatial_scale=1.0, sampling_ratio=2,
                     aligned=True)


@META_ARCH_REGISTRY.register()
class RSYOLACT(YOLACTMasks, RSRetinaNet):
    """RS-YOLACT: YOLACT (:class:`YOLACTMasks`) trained with RS Loss over all anchors x
    classes (IoU targets), the score-weighted GIoU and Dice losses balanced to it."""

    ignored_retinanet_keys = IGNORED_RETINANET_KEYS
    # YOLACT's stock-loss keys, not read here (the RS losses need no weights)
    ignored_yolact_keys = ("MODEL.YOLACT.NEG_POS_RATIO", "MODEL.YOLACT.BOX_LOSS_WEIGHT",
                           "MODEL.YOLACT.MASK_LOSS_WEIGHT", "MODEL.YOLACT.MAX_MASKS_TO_TRAIN")

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        warn_ignored_keys(cfg, cls.ignored_yolact_keys + (
            "MODEL.RS_RETINANET.ASSIGNER", "MODEL.RS_RETINANET.ATSS_TOPK",
            "MODEL.RS_RETINANET.HEAD_NAME"), "RSYOLACT",
            "it assigns by IoU (MODEL.RETINANET.IOU_*), has YOLACT's head and RS losses")
        return ret

    def class_scores(self, logits: Tensor) -> Tensor:
        return logits.sigmoid()

    def yolact_losses(self, anchors, logits, deltas, coeffs, prototypes, gt_labels,
                      matched_idxs, gt_instances, gt_masks, padded_size) -> Dict[str, Tensor]:
        """``loss_rank``, ``loss_sort`` (RS Loss over all anchors x classes), ``loss_box``
        (score-weighted GIoU) and ``loss_mask`` (score-weighted Dice of each positive's
        cropped mask), the last two balanced to the RS loss."""
        pos, image_idx, anchor_idx, gt_idx, gt_boxes, pred_boxes, _ = self._positives(
            anchors, deltas, gt_labels, matched_idxs, gt_instances)
        num_anchors, num_classes = logits.shape[1:]
        flat = logits.reshape(-1, num_classes)
        rows = image_idx * num_anchors + anchor_idx
        weights = score_weights(flat[rows])
        out = rs_head_losses(
            flat, (gt_labels < 0).reshape(-1), rows, gt_labels[image_idx, anchor_idx], pred_boxes,
            gt_boxes, self.delta, pos_weights=weights, ranking_pool=self.ranking_pool,
            ranking_loss=self.ranking_loss, self_balance=self.self_balance)
        losses = out.named("loss_")
        probs, targets, _ = self._positive_masks(prototypes, coeffs, image_idx, anchor_idx,
                                                 gt_idx, gt_boxes, gt_masks, padded_size)
        loss_mask = score_weighted_mean(mask_dice_losses(probs.clamp(0, 1), targets), weights,
                                        self.ranking_pool)
        losses["loss_mask"], mask_balance = balance_to(loss_mask, ranking_reference(losses, "loss_"))
        storage = get_event_storage()
        storage.put_scalar("num_pos_anchors", pos.sum().item() / len(gt_instances))
        storage.put_scalar("box_balance", out.box_balance)
        storage.put_scalar("mask_balance", mask_balance)
        return losses


@META_ARCH_REGISTRY.register()
class YOLACT(YOLACTMasks, RetinaNet):
    """YOLACT with its published standard losses (RS-YOLACT's stock-loss twin): softmax
    cross entropy over K + 1 classes with OHEM (``MODEL.YOLACT.NEG_POS_RATIO`` negatives
    per positive), smooth L1 on the deltas (weight ``BOX_LOSS_WEIGHT``), and the mask BCE
    normalised by the box area (weight ``MASK_LOSS_WEIGHT``, at most ``MAX_MASKS_TO_TRAIN``
    random positives per image); no semantic segmentation head."""

    background_logit = True

    @configurable
    def __init__(self, *, neg_pos_ratio: float = 3.0, box_loss_weight: float = 1.5,
                 mask_loss_weight: float = 6.125, max_masks_to_train: int = 100, **kwargs):
        super().__init__(**kwargs)
        self.neg_pos_ratio = float(neg_pos_ratio)
        self.box_loss_weight = float(box_loss_weight)
        self.mask_loss_weight = float(mask_loss_weight)
        self.max_masks_to_train = int(max_masks_to_train)

    @classmethod
    def from_config(cls, cfg):
        ret = super().from_config(cfg)
        node = cfg.MODEL.YOLACT
        ret.update(neg_pos_ratio=node.NEG_POS_RATIO, box_loss_weight=node.BOX_LOSS_WEIGHT,
                   mask_loss_weight=node.MASK_LOSS_WEIGHT,
                   max_masks_to_train=node.MAX_MASKS_TO_TRAIN)
        warn_ignored_keys(cfg, IGNORED_RETINANET_KEYS, "YOLACT",
                          "it trains with YOLACT's OHEM cross entropy, smooth L1 (beta 1) and "
                          "mask BCE (MODEL.YOLACT.*)")
        return ret

    def class_scores(self, logits: Tensor) -> Tensor:
        return logits.softmax(dim=-1)[:, : self.num_classes]

    def yolact_losses(self, anchors, logits, deltas, coeffs, prototypes, gt_labels,
                      matched_idxs, gt_instances, gt_masks, padded_size) -> Dict[str, Tensor]:
        """``loss_cls`` (OHEM softmax CE), ``loss_box_reg`` (smooth L1 on the deltas) and
        ``loss_mask`` (box-area-normalised BCE), as mmdetection's YOLACT."""
        pos, image_idx, anchor_idx, gt_idx, gt_boxes, _, all_anchors = self._positives(
            anchors, deltas, gt_labels, matched_idxs, gt_instances)
        loss_cls = ohem_softmax_cross_entropy(logits, gt_labels, self.neg_pos_ratio)
        total = ohem_num_total_samples(gt_labels, self.num_classes)
        target_deltas = self.box2box_transform.get_deltas(all_anchors[anchor_idx], gt_boxes)
        loss_box = yolact_box_loss(deltas[image_idx, anchor_idx], target_deltas, total,
                                   weight=self.box_loss_weight)
        select = [select_training_masks(int((image_idx == i).sum()), self.max_masks_to_train,
                                        device=image_idx.device)
                  for i in range(len(gt_instances))]
        probs, targets, boxes = self._positive_masks(prototypes, coeffs, image_idx, anchor_idx,
                                                     gt_idx, gt_boxes, gt_masks, padded_size,
                                                     select)
        loss_mask = yolact_mask_bce_loss(probs, targets, boxes, self.mask_loss_weight)
        get_event_storage().put_scalar("num_pos_anchors", pos.sum().item() / len(gt_instances))
        return {"loss_cls": loss_cls, "loss_box_reg": loss_box, "loss_mask": loss_mask}
