"""RS Cascade R-CNN: detectron2's cascade with every stage trained by the RS box predictor,
with the published (mmdetection) cascade recipe as options.

The published RS-Cascade R-CNN (kemaloksuz/RankSortLoss, ``RankBasedCascadeRoIHead`` on
mmdetection's ``CascadeRoIHead``) differs from detectron2's :class:`CascadeROIHeads` in
three places that need code; each is a key of ``cfg.MODEL.RS.CASCADE``
(added by ``add_rs_config``) whose default is the published behaviour:

- ``SCALE_GRADIENT``: stage losses enter with weight 1 and the gradient that each stage's
  pooled features send back to the FPN is *not* scaled by 1/3 (:meth:`_run_stage`).
- ``AVERAGE_LOGITS``: at test time the stages' class logits are averaged, then turned into
  scores (sigmoid); detectron2 averages the scores.
- ``GT_PROPOSALS_ALL_STAGES``: in training, stages 2 and 3 see the exact ground-truth boxes
  as proposals (mmdetection's samplers ``add_gt_as_proposals`` in every stage, and its
  ``refine_bboxes`` drops the previous stage's regressed copies of them); detectron2 gives
  the exact ground truth to the first stage only.

The other published differences are config values (box coder weights (10, 10, 5, 5) in all
stages, 1000 training proposals, border-crossing anchors ignored by the RPN): see
``configs/COCO-Detection/rs_cascade_rcnn_R_50_FPN_1x.yaml``.
"""
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from detectron2.config import CfgNode as CN
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from .rs_fast_rcnn import RSFastRCNNOutputLayers
from .rs_head_recipe import ranking_reference
from .rs_roi_heads import RSStandardROIHeads


def _cascade_cfg(cfg: CN) -> CN:
    """``cfg.MODEL.RS.CASCADE``, or a KeyError that says how to add it."""
    if "CASCADE" not in cfg.MODEL.RS:
        raise KeyError(
            "cfg.MODEL.RS.CASCADE is missing: build the config with "
            "rs_detectron2.add_rs_config(cfg) before merging a config file or building "
            "RSCascadeROIHeads"
        )
    return cfg.MODEL.RS.CASCADE


def _num_trailing_gt(proposals: Instances, targets: Instances) -> int:
    """How many of the last rows of ``proposals`` are exactly the ground-truth boxes of
    ``targets``, in order: ``len(targets)`` where detectron2's
    ``add_ground_truth_to_proposals`` (first stage) or this cascade (later stages) appended
    them, else 0 (e.g. ``MODEL.ROI_HEADS.PROPOSAL_APPEND_GT`` False)."""
    num_gt = len(targets)
    if num_gt == 0 or len(proposals) < num_gt:
        return 0
    tail = proposals.proposal_boxes.tensor[-num_gt:]
    return num_gt if torch.equal(tail, targets.gt_boxes.tensor.to(tail)) else 0


def _mean(tensors: List[Tensor]) -> Tensor:
    """(t0 + t1 + ...) * (1 / n), summed left to right."""
    total = tensors[0]
    for t in tensors[1:]:
        total = total + t
    return total * (1.0 / len(tensors))


def _clipped_proposals(boxes: List[Tensor], image_sizes: List[Tuple[int, int]]) -> List[Instances]:
    """The next stage's proposals at test time: each image's boxes, detached and clipped
    to the image (detectron2's ``_create_proposals_from_boxes`` outside training, typed
    for TorchScript)."""
    out: List[Instances] = []
    for boxes_i, image_size in zip(boxes, image_sizes):
        clipped = Boxes(boxes_i.detach())
        clipped.clip(image_size)
        proposals = Instances(image_size)
        proposals.proposal_boxes = clipped
        out.append(proposals)
    return out


@ROI_HEADS_REGISTRY.register()
class RSCascadeROIHeads(CascadeROIHeads, RSStandardROIHeads):
    """CascadeROIHeads (3 stages, IoU 0.5 / 0.6 / 0.7) whose stages use the RS box predictor,
    with the published RS-Cascade recipe (module docstring) as options.

    From :class:`RSStandardROIHeads` it takes all proposals without sampling for the first
    stage (later stages keep all boxes already) and the balanced mask loss, which uses the
    first stage's RS loss and weights (those of the proposals the mask head sees). Stage
    losses are named ``loss_roi_rank_stage0`` and so on. Each stage's predictor uses its
    stage's box coder (``MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS``).
    """

    # TorchScript constants (see RSStandardROIHeads; class annotations are not inherited).
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @configurable
    def __init__(
        self,
        *,
        scale_gradient: bool = False,
        average_logits: bool = True,
        gt_proposals_all_stages: bool = True,
        **kwargs,
    ):
        """
        Args:
            scale_gradient: scale the gradient of each stage's pooled features by
                1 / number of stages (detectron2); False for the published sum of the stage
                losses (``MODEL.RS.CASCADE.SCALE_GRADIENT``).
            average_logits: at test time average the stages' logits before the sigmoid
                (published); False averages the scores (detectron2)
                (``MODEL.RS.CASCADE.AVERAGE_LOGITS``).
            gt_proposals_all_stages: in training give every later stage the exact
                ground-truth boxes as proposals (published); False: the first stage only
                (detectron2) (``MODEL.RS.CASCADE.GT_PROPOSALS_ALL_STAGES``).
            kwargs: arguments of :class:`CascadeROIHeads` and :class:`RSStandardROIHeads`.
        """
        super().__init__(**kwargs)
        self.scale_gradient = scale_gradient
        self.average_logits = average_logits
        self.gt_proposals_all_stages = gt_proposals_all_stages

    @classmethod
    def from_config(cls, cfg, input_shape):
        options = _cascade_cfg(cfg)
        ret = super().from_config(cfg, input_shape)
        ret["scale_gradient"] = options.SCALE_GRADIENT
        ret["average_logits"] = options.AVERAGE_LOGITS
        ret["gt_proposals_all_stages"] = options.GT_PROPOSALS_ALL_STAGES
        return ret

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)  # CascadeROIHeads'
        ret["box_predictors"] = [
            RSFastRCNNOutputLayers(
                cfg, head.output_shape, box2box_transform=predictor.box2box_transform
            )
            for head, predictor in zip(ret["box_heads"], ret["box_predictors"])
        ]
        return ret

    # RS R-CNN's forward (the box branch's score weights go to the mask branch, whose loss is
    # balanced to the box losses), not CascadeROIHeads' own: the cascade's parts come in
    # through _box_losses_and_weights, _mask_balance_reference and _forward_box.
    forward = RSStandardROIHeads.forward

    def _run_stage(self, features: List[Tensor], proposals: List[Instances], stage: int):
        """detectron2's stage; without its 1 / num_stages gradient scaling of the pooled
        features unless ``scale_gradient``."""
        if self.scale_gradient:
            return super()._run_stage(features, proposals, stage)
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        box_features = self.box_head[stage](box_features)
        return self.box_predictor[stage](box_features)

    def _forward_box(
        self,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ):
        """detectron2's cascade (:meth:`CascadeROIHeads._forward_box`) with the two published
        changes: the stage losses of :meth:`_run_cascade` in training, the detections of
        :meth:`_cascade_inference` at test time. (No return annotation: TorchScript infers
        the test-time one, ``List[Instances]``, as for detectron2's ``_forward_box``.)"""
        if self.training:
            return self._stage_losses(self._run_cascade(features, proposals, targets))
        return self._cascade_inference(features, proposals)

    def _box_losses_and_weights(
        self, features: Dict[str, Tensor], proposals: List[Instances], targets: List[Instances]
    ) -> Tuple[Dict[str, Tensor], List[Tensor]]:
        """The stage losses and, for the mask head, the first stage's score weights of the
        proposals it was given (those the mask head sees)."""
        head_outputs = self._run_cascade(features, proposals, targets)
        predictor, predictions, stage_proposals = head_outputs[0]
        weights = predictor.score_weights(predictions)
        return (self._stage_losses(head_outputs),
                list(weights.split([len(p) for p in stage_proposals])))

    def _mask_balance_reference(self, box_losses: Dict[str, Tensor]) -> Tensor:
        """The first stage's RS loss (that of the proposals the mask head sees)."""
        return ranking_reference(box_losses, "loss_roi_", "_stage0")

    def _run_cascade(
        self,
        features: Dict[str, Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]],
    ) -> List[Tuple[RSFastRCNNOutputLayers, Tuple[Tensor, Tensor], List[Instances]]]:
        """detectron2's cascade loop, built from its helpers, with the published change of
        training: with ``gt_proposals_all_stages`` each later stage gets the exact ground
        truth in place of the regressed copies of it. With it off it computes exactly what
        detectron2's loop does. Returns (predictor, predictions, proposals) per stage."""
        features = [features[f] for f in self.box_in_features]
        head_outputs = []
        prev_pred_boxes = None
        image_sizes = [x.image_size for x in proposals]
        add_gt = self.training and self.gt_proposals_all_stages
        for k in range(self.num_cascade_stages):
            if k > 0:
                if add_gt:
                    prev_pred_boxes = self._drop_gt_rows(prev_pred_boxes, proposals, targets)
                proposals = self._create_proposals_from_boxes(prev_pred_boxes, image_sizes)
                if self.training:
                    if add_gt:
                        proposals = self._append_gt_proposals(proposals, targets)
                    proposals = self._match_and_label_boxes(proposals, k, targets)
            predictions = self._run_stage(features, proposals, k)
            prev_pred_boxes = self.box_predictor[k].predict_boxes(predictions, proposals)
            head_outputs.append((self.box_predictor[k], predictions, proposals))
        return head_outputs

    @staticmethod
    def _stage_losses(head_outputs) -> Dict[str, Tensor]:
        """Each stage's losses, named ``<loss>_stage<k>``."""
        losses = {}
        storage = get_event_storage()
        for stage, (predictor, predictions, stage_proposals) in enumerate(head_outputs):
            with storage.name_scope("stage{}".format(stage)):
                stage_losses = predictor.losses(predictions, stage_proposals)
            losses.update({k + "_stage{}".format(stage): v for k, v in stage_losses.items()})
        return losses

    def _cascade_inference(
        self, features: Dict[str, Tensor], proposals: List[Instances]
    ) -> List[Instances]:
        """The cascade at test time: each later stage pools the previous stage's boxes
        (clipped), as in detectron2's loop; the detections are the last stage's boxes with
        the cascade's scores (:meth:`_average_scores`) and the last predictor's thresholds.
        Written for TorchScript (typed, the stages' ModuleLists iterated, no tuples of
        modules); at test time ``_run_stage`` is pooler, head, predictor whatever
        ``scale_gradient`` says."""
        stage_features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        stage_predictions: List[Tuple[Tensor, Tensor]] = []
        boxes: List[Tensor] = []
        for k, (head, predictor) in enumerate(zip(self.box_head, self.box_predictor)):
            if k > 0:
                proposals = _clipped_proposals(boxes, image_sizes)
            pooled = self.box_pooler(stage_features, [x.proposal_boxes for x in proposals])
            predictions = predictor(head(pooled))
            boxes = predictor.predict_boxes(predictions, proposals)
            stage_predictions.append(predictions)
        last = self.box_predictor[-1]
        pred_instances, _ = fast_rcnn_inference(
            boxes,
            self._average_scores(stage_predictions, proposals),
            image_sizes,
            last.test_score_thresh,
            last.test_nms_thresh,
            last.test_topk_per_image,
        )
        return pred_instances

    def _average_scores(
        self, stage_predictions: List[Tuple[Tensor, Tensor]], proposals: List[Instances]
    ) -> List[Tensor]:
        """Per-image class scores of the cascade at test time: the last predictor's
        ``predict_probs`` of the stages' mean logits (``average_logits``, published), or
        the mean of the stages' ``predict_probs`` (detectron2)."""
        if self.average_logits:
            mean_logits = _mean([logits for logits, _ in stage_predictions])
            return self.box_predictor[-1].predict_probs(
                (mean_logits, stage_predictions[-1][1]), proposals)
        stage_scores: List[List[Tensor]] = []
        for k, predictor in enumerate(self.box_predictor):
            stage_scores.append(predictor.predict_probs(stage_predictions[k], proposals))
        return [_mean([scores[i] for scores in stage_scores]) for i in range(len(proposals))]

    @staticmethod
    def _drop_gt_rows(
        boxes: List[Tensor], proposals: List[Instances], targets: List[Instances]
    ) -> List[Tensor]:
        """The previous stage's predicted boxes without the rows of its exact ground-truth
        proposals (mmdetection's ``refine_bboxes`` drops them: the next stage gets the
        exact ground truth instead)."""
        out = []
        for boxes_i, proposals_i, targets_i in zip(boxes, proposals, targets):
            num_gt = _num_trailing_gt(proposals_i, targets_i)
            out.append(boxes_i[: len(boxes_i) - num_gt])
        return out

    @staticmethod
    def _append_gt_proposals(proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        """Each image's proposals followed by its exact ground-truth boxes (as detectron2's
        ``add_ground_truth_to_proposals`` does for the first stage)."""
        out = []
        for proposals_i, targets_i in zip(proposals, targets):
            boxes = proposals_i.proposal_boxes
            gt = Boxes(targets_i.gt_boxes.tensor.to(boxes.tensor))
            new = Instances(proposals_i.image_size)
            new.proposal_boxes = Boxes.cat([boxes, gt])
            out.append(new)
        return out
