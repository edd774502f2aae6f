"""SOLOv2 (Wang et al., NeurIPS 2020) as a detectron2 meta-architecture: the stock model
(:class:`SOLOv2`: focal loss + Dice, as published) and RS-SOLOv2 (:class:`RSSOLOv2`, the
published RS-SOLOv2 of kemaloksuz/RankSortLoss-Solov2), which overrides only the losses.

The network (:mod:`.solov2_heads`): detectron2's FPN P2-P6; the category and kernel branches
on the five SOLO levels (grids ``MODEL.SOLOV2.NUM_GRIDS``); the unified mask features at
1/4 of the input; each grid cell's mask is its kernel's 1x1 dynamic convolution of the mask
features. Targets (:func:`.solov2_targets.solov2_targets`): a ground truth of a level's
scale range makes the cells of its mass centre's region positive (first ground truth wins a
shared cell), with its mask at 1/4 as target. Every positive cell is paired with its own
target (``cell_index``; the published code pairs the ranking targets and score weights in
raster order with the Dice values in ground-truth order, which mismatches when several
objects share a level of an image: see :mod:`.solov2_targets`).

Inference (published ``get_seg``): category scores (sigmoid, points NMS) above
``SCORE_THRESH_TEST`` (at most the ``TOPK_CANDIDATES_TEST`` best when > 0), their masks (> ``MASK_THRESH``) larger than the level's stride in
mask pixels, score x maskness, the ``NMS_PRE`` best, Matrix NMS (``NMS_KERNEL``,
``NMS_SIGMA``), decayed score >= ``UPDATE_THRESH``, the ``TEST.DETECTIONS_PER_IMAGE`` best;
masks upsampled x4, cropped to the image and resized to the output size (> MASK_THRESH);
boxes are the masks' bounding boxes.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import get_event_storage

from rs_detectron2.layers import mask_bounding_boxes, matrix_nms
from rs_detectron2.losses import pooled_rank_sort_loss

from ..rs_head_recipe import (
    MIN_POSITIVE_IOU,
    balance_to,
    check_ranking_loss,
    mask_dice_losses,
    score_weighted_mean,
    score_weights,
)
from .solov2_heads import (
    SOLOv2InstanceHead,
    SOLOv2MaskFeatureHead,
    dynamic_masks,
    points_nms,
)
from .gt_masks import padded_gt_masks
from .solov2_targets import OUTPUT_STRIDE, solov2_targets

__all__ = ["SOLOv2", "RSSOLOv2"]

# SOLO's Dice: 1 - 2 sum(p t) / ((sum p^2 + 0.001) + (sum t^2 + 0.001))
_DICE_SMOOTH = 0.002


@META_ARCH_REGISTRY.register()
class SOLOv2(nn.Module):
    """SOLOv2 with its published losses: focal loss over all cells x classes (α, γ of
    ``MODEL.SOLOV2.FOCAL_LOSS_ALPHA`` / ``GAMMA``, normalised by positives + 1) and the
    Dice loss of every positive cell's mask (x ``DICE_LOSS_WEIGHT``, 3)."""

    @configurable
    def __init__(self, *, backbone: nn.Module, ins_head: SOLOv2InstanceHead,
                 mask_head: SOLOv2MaskFeatureHead, num_classes: int, in_features: List[str],
                 scale_ranges: List[Tuple[float, float]], sigma: float,
                 pixel_mean: List[float], pixel_std: List[float], focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, dice_weight: float = 3.0,
                 score_thresh: float = 0.1, mask_thresh: float = 0.5,
                 update_thresh: float = 0.05, nms_pre: int = 500, nms_kernel: str = "gaussian",
                 nms_sigma: float = 2.0, max_detections: int = 100, topk_candidates: int = 0):
        super().__init__()
        self.backbone = backbone
        self.ins_head = ins_head
        self.mask_head = mask_head
        self.num_classes = int(num_classes)
        self.in_features = list(in_features)
        self.scale_ranges = [tuple(r) for r in scale_ranges]
        self.sigma = float(sigma)
        self.focal_alpha, self.focal_gamma = float(focal_alpha), float(focal_gamma)
        self.dice_weight = float(dice_weight)
        self.score_thresh, self.mask_thresh = float(score_thresh), float(mask_thresh)
        self.update_thresh, self.nms_pre = float(update_thresh), int(nms_pre)
        self.nms_kernel, self.nms_sigma = nms_kernel, float(nms_sigma)
        self.max_detections = int(max_detections)
        self.topk_candidates = int(topk_candidates)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @classmethod
    def from_config(cls, cfg):
        node = cfg.MODEL.SOLOV2
        backbone = build_backbone(cfg)
        channels = backbone.output_shape()[node.IN_FEATURES[0]].channels
        if len(node.IN_FEATURES) != 5:
            raise ValueError(f"MODEL.SOLOV2.IN_FEATURES must name 5 FPN maps (P2-P6), got "
                             f"{node.IN_FEATURES}")
        ins_head = SOLOv2InstanceHead(
            in_channels=channels, num_classes=node.NUM_CLASSES,
            seg_feat_channels=node.SEG_FEAT_CHANNELS, stacked_convs=node.STACKED_CONVS,
            ins_out_channels=node.INS_OUT_CHANNELS, num_grids=node.NUM_GRIDS)
        mask_head = SOLOv2MaskFeatureHead(in_channels=channels,
                                          feat_channels=node.MASK_FEAT_CHANNELS,
                                          out_channels=node.INS_OUT_CHANNELS)
        return {"backbone": backbone, "ins_head": ins_head, "mask_head": mask_head,
                "num_classes": node.NUM_CLASSES, "in_features": node.IN_FEATURES,
                "scale_ranges": node.SCALE_RANGES, "sigma": node.SIGMA,
                "pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD,
                "focal_alpha": node.FOCAL_LOSS_ALPHA, "focal_gamma": node.FOCAL_LOSS_GAMMA,
                "dice_weight": node.DICE_LOSS_WEIGHT, "score_thresh": node.SCORE_THRESH_TEST,
                "mask_thresh": node.MASK_THRESH_TEST, "update_thresh": node.UPDATE_THRESH_TEST,
                "nms_pre": node.NMS_PRE_TEST, "nms_kernel": node.NMS_KERNEL,
                "nms_sigma": node.NMS_SIGMA, "max_detections": cfg.TEST.DETECTIONS_PER_IMAGE,
                "topk_candidates": node.TOPK_CANDIDATES_TEST}

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: List[Dict[str, Tensor]]) -> ImageList:
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std
                  for x in batched_inputs]
        return ImageList.from_tensors(images, self.backbone.size_divisibility)

    def forward(self, batched_inputs: List[Dict[str, Tensor]]):
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.in_features]
        cate_preds, kernel_preds = self.ins_head(features)
        mask_feats = self.mask_head(features[:4])
        if self.training:
            gt_instances = [x["instances"].to(self.device) for x in batched_inputs]
            return self.losses(cate_preds, kernel_preds, mask_feats, gt_instances,
                               images.tensor.shape[-2:])
        results = []
        for i, image_size in enumerate(images.image_sizes):
            # sizes stay tensors while tracing, so that an exported model follows its input
            height = batched_inputs[i].get("height", image_size[0])
            width = batched_inputs[i].get("width", image_size[1])
            results.append({"instances": self.inference_single_image(
                [c[i] for c in cate_preds], [k[i] for k in kernel_preds], mask_feats[i],
                image_size, images.tensor.shape[-2:], (height, width))})
        return results

    # ---- training -------------------------------------------------------------------
    def _positives(self, cate_preds, kernel_preds, mask_feats, gt_instances, padded_size):
        """The flattened category logits (R, K) of all levels and images (level-major,
        then image, then raster cell), and per positive cell: its row, class, predicted
        mask probabilities and target mask (paired through the cell index)."""
        num_images = len(gt_instances)
        feat_size = mask_feats.shape[-2:]
        per_image = [solov2_targets(
            gt.gt_boxes.tensor, gt.gt_classes, padded_gt_masks(gt, *padded_size), feat_size,
            self.num_classes, self.ins_head.num_grids, self.scale_ranges, self.sigma)
            for gt in gt_instances]
        logits, rows, classes, probs, targets = [], [], [], [], []
        offset = 0
        for level, (cate, kernels) in enumerate(zip(cate_preds, kernel_preds)):
            cells = cate.shape[-1] * cate.shape[-2]
            logits.append(cate.permute(0, 2, 3, 1).reshape(-1, self.num_classes))
            for i in range(num_images):
                t = per_image[i][level]
                if len(t.cell_index) == 0:
                    continue
                rows.append(offset + i * cells + t.cell_index)
                classes.append(t.labels[t.cell_index])
                k = kernels[i].reshape(kernels.shape[1], -1)[:, t.cell_index].t()
                probs.append(dynamic_masks(mask_feats[i], k).sigmoid())
                targets.append(t.ins_masks.to(mask_feats.dtype))
            offset += num_images * cells
        logits = cat(logits)
        if not rows:
            empty = mask_feats.new_zeros((0,) + tuple(feat_size))
            return logits, logits.new_zeros(0, dtype=torch.long), \
                logits.new_zeros(0, dtype=torch.long), empty + mask_feats.sum() * 0.0, empty
        return logits, cat(rows), cat(classes), cat(probs), cat(targets)

    def losses(self, cate_preds, kernel_preds, mask_feats, gt_instances,
               padded_size) -> Dict[str, Tensor]:
        """``loss_cate`` (focal over all cells x classes / (positives + 1)) and
        ``loss_mask`` (Dice of each positive cell's mask x ``dice_weight``), published."""
        logits, rows, classes, probs, targets = self._positives(
            cate_preds, kernel_preds, mask_feats, gt_instances, padded_size)
        onehot = torch.zeros_like(logits)
        onehot[rows, classes] = 1.0
        loss_cate = sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma,
                                       reduction="sum") / (len(rows) + 1)
        dice = mask_dice_losses(probs, targets, _DICE_SMOOTH)
        loss_mask = (dice.mean() if len(dice) else probs.sum() * 0.0) * self.dice_weight
        get_event_storage().put_scalar("num_pos_cells", len(rows) / len(gt_instances))
        return {"loss_cate": loss_cate, "loss_mask": loss_mask}

    # ---- inference ------------------------------------------------------------------
    def inference_single_image(self, cate_preds: List[Tensor], kernel_preds: List[Tensor],
                               mask_feats: Tensor, image_size: Tuple[int, int],
                               padded_size, output_size: Tuple[int, int]) -> Instances:
        """The published ``get_seg`` of one image (module docstring)."""
        scores, kernels, strides = [], [], []
        for level, (cate, kernel) in enumerate(zip(cate_preds, kernel_preds)):
            heat = points_nms(cate.sigmoid()[None])[0]
            scores.append(heat.permute(1, 2, 0).reshape(-1, self.num_classes))
            kernels.append(kernel.reshape(kernel.shape[0], -1).t())
            strides.append(torch.full((heat.shape[-1] * heat.shape[-2],),
                                      float(self.ins_head.strides[level]),
                                      device=heat.device))
        scores, kernels, strides = cat(scores), cat(kernels), cat(strides)
        cell, label = (scores > self.score_thresh).nonzero(as_tuple=True)
        score = scores[cell, label]
        if 0 < self.topk_candidates < len(score):  # not published: a cap on the masks computed
            top = score.topk(self.topk_candidates).indices
            cell, label, score = cell[top], label[top], score[top]
        masks = dynamic_masks(mask_feats, kernels[cell]).sigmoid()
        seg = masks > self.mask_thresh
        area = seg.flatten(1).sum(1).to(masks.dtype)
        keep = area > strides[cell]
        masks, seg, area, score, label = masks[keep], seg[keep], area[keep], score[keep], label[keep]
        score = score * (masks * seg).flatten(1).sum(1) / area.clamp(min=1)
        order = score.argsort(descending=True)[: self.nms_pre]
        masks, seg, score, label = masks[order], seg[order], score[order], label[order]
        score = matrix_nms(seg, label, score, self.nms_kernel, self.nms_sigma)
        keep = score >= self.update_thresh
        masks, score, label = masks[keep], score[keep], label[keep]
        order = score.argsort(descending=True)[: self.max_detections]
        masks, score, label = masks[order], score[order], label[order]
        # published: x4 to the padded input, crop to the image, resize to the output
        # (one all-zero mask appended and dropped: interpolate rejects an empty batch, and a
        # traced model must not branch on the number of masks)
        h, w = image_size
        padded = torch.cat([masks, masks.new_zeros((1,) + tuple(masks.shape[1:]))])
        up = F.interpolate(padded[None], scale_factor=float(OUTPUT_STRIDE), mode="bilinear",
                           align_corners=False)[0][:, :h, :w]
        final = (F.interpolate(up[None], size=output_size, mode="bilinear",
                               align_corners=False)[0] > self.mask_thresh)[:-1]
        result = Instances(output_size)
        result.pred_masks = final
        result.pred_boxes = Boxes(mask_bounding_boxes(final))
        result.scores = score
        result.pred_classes = label
        return result


@META_ARCH_REGISTRY.register()
class RSSOLOv2(SOLOv2):
    """RS-SOLOv2: SOLOv2 whose category branch is trained with RS Loss over all cells x
    classes of all levels (a positive cell's target: the detached Dice coefficient of its
    own predicted mask) and whose Dice loss is weighted by each cell's score and balanced
    to the RS loss (``MODEL.RS.DELTA``); the focal and Dice-weight keys are not read."""

    @configurable
    def __init__(self, *, delta: float = 0.5, ranking_pool: str = "process", **kwargs):
        super().__init__(**kwargs)
        self.delta = float(delta)
        self.ranking_pool = ranking_pool

    @classmethod
    def from_config(cls, cfg):
        from ..ignored_keys import warn_ignored_keys

        ret = super().from_config(cfg)
        if check_ranking_loss(cfg.MODEL.RS.RANKING_LOSS) != "rank_sort":
            raise NotImplementedError(
                f"RSSOLOv2 trains with RS Loss only; MODEL.RS.RANKING_LOSS "
                f"{cfg.MODEL.RS.RANKING_LOSS!r} is not implemented for SOLOv2 (use 'rank_sort')")
        warn_ignored_keys(cfg, ("MODEL.SOLOV2.FOCAL_LOSS_ALPHA", "MODEL.SOLOV2.FOCAL_LOSS_GAMMA",
                                "MODEL.SOLOV2.DICE_LOSS_WEIGHT"), "RSSOLOv2",
                          "RS Loss and the balanced score-weighted Dice need no weights")
        ret.update(delta=cfg.MODEL.RS.DELTA, ranking_pool=cfg.MODEL.RS.RANKING_POOL)
        return ret

    def losses(self, cate_preds, kernel_preds, mask_feats, gt_instances,
               padded_size) -> Dict[str, Tensor]:
        """``loss_rank``, ``loss_sort`` (RS Loss, Dice-coefficient targets) and
        ``loss_mask`` (score-weighted Dice balanced to the RS loss)."""
        logits, rows, classes, probs, targets = self._positives(
            cate_preds, kernel_preds, mask_feats, gt_instances, padded_size)
        dice = mask_dice_losses(probs, targets, _DICE_SMOOTH)
        quality = (1.0 - dice.detach()).clamp(min=MIN_POSITIVE_IOU, max=1.0)
        labels = torch.zeros_like(logits)
        labels[rows, classes] = quality.to(labels.dtype)
        loss_rank, loss_sort = pooled_rank_sort_loss(logits, labels, self.delta,
                                                     self.ranking_pool)
        weights = score_weights(logits[rows]) if len(rows) else logits.new_zeros(0)
        loss_mask = score_weighted_mean(dice, weights, self.ranking_pool)
        loss_mask, balance = balance_to(loss_mask, loss_rank + loss_sort)
        storage = get_event_storage()
        storage.put_scalar("num_pos_cells", len(rows) / len(gt_instances))
        storage.put_scalar("mask_balance", balance)
        return {"loss_rank": loss_rank, "loss_sort": loss_sort, "loss_mask": loss_mask}
