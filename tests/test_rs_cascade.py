"""RS-Cascade R-CNN as published: box coders, gradient scaling, logit averaging, GT proposals
in every stage, the RPN border threshold, and equality with detectron2 with the options off.

Only the RoI heads (or the RPN) are built, on random FPN features of a tiny image.
"""
import math
import os

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_proposal_generator, build_roi_heads
from detectron2.modeling.roi_heads import CascadeROIHeads
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

import rs_detectron2.config  # noqa: F401  (registers the heads)
from rs_detectron2 import add_rs_config
from rs_detectron2.modeling import RSFastRCNNOutputLayers
from rs_detectron2.modeling.rs_cascade_roi_heads import RSCascadeROIHeads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_YAML = os.path.join(ROOT, "configs", "COCO-Detection", "rs_cascade_rcnn_R_50_FPN_1x.yaml")
BASE_YAML = os.path.join(ROOT, "configs", "Base-RS-RCNN-FPN.yaml")
CHANNELS = 8
SHAPES = {f"p{i}": ShapeSpec(channels=CHANNELS, stride=2 ** i) for i in range(2, 7)}
H, W = 64, 96
GT_BOXES = [[8.0, 10.0, 40.0, 50.0], [50.0, 6.0, 90.0, 30.0]]
GT_CLASSES = [0, 1]


def rs_cfg():
    """detectron2's config with the RS keys, including MODEL.RS.CASCADE."""
    cfg = get_cfg()
    add_rs_config(cfg)
    return cfg


def shrink(cfg):
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 16
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    return cfg


def coco_cfg():
    cfg = rs_cfg()
    cfg.merge_from_file(COCO_YAML)
    return shrink(cfg)


def tiny_heads(**options):
    """RSCascadeROIHeads on the base RS config (detectron2's box coders), options set."""
    cfg = rs_cfg()
    cfg.merge_from_file(BASE_YAML)
    cfg.MODEL.ROI_HEADS.NAME = "RSCascadeROIHeads"
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    for key, value in options.items():
        cfg.MODEL.RS.CASCADE[key] = value
    torch.manual_seed(0)
    return build_roi_heads(shrink(cfg), {k: v for k, v in SHAPES.items() if k != "p6"})


def features(requires_grad=False):
    gen = torch.Generator().manual_seed(0)
    return {
        f"p{i}": torch.randn(2, CHANNELS, H // 2 ** i, W // 2 ** i, generator=gen).requires_grad_(requires_grad)
        for i in range(2, 6)
    }


def targets(empty_second=False):
    out = []
    for boxes, classes in ((GT_BOXES, GT_CLASSES), ([], []) if empty_second else (GT_BOXES[:1], [1])):
        t = Instances((H, W))
        t.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        t.gt_classes = torch.tensor(classes, dtype=torch.long)
        out.append(t)
    return out


def proposals(n=(6, 5)):
    """Jittered ground truth and random boxes, all well inside the image."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for count in n:
        xy = torch.rand(count, 2, generator=gen) * torch.tensor([W - 30.0, H - 30.0])
        wh = 10 + torch.rand(count, 2, generator=gen) * 18
        boxes = torch.cat([xy, xy + wh], dim=1)
        boxes[:2] = torch.tensor(GT_BOXES) + torch.randn(2, 4, generator=gen)
        p = Instances((H, W))
        p.proposal_boxes = Boxes(boxes)
        p.objectness_logits = torch.randn(count, generator=gen)
        out.append(p)
    return out


def set_stage_outputs(heads, cls_bias, box_bias=(0.0, 0.0, 0.0, 0.0)):
    """Make every stage's logits (and box deltas) constants: zero weights, known biases."""
    with torch.no_grad():
        for predictor, bias in zip(heads.box_predictor, cls_bias):
            predictor.cls_score.weight.zero_()
            predictor.cls_score.bias.copy_(torch.tensor(bias))
            predictor.bbox_pred.weight.zero_()
            predictor.bbox_pred.bias.copy_(torch.tensor(box_bias))


def test_defaults_are_the_published_recipe():
    options = rs_cfg().MODEL.RS.CASCADE
    assert (options.SCALE_GRADIENT, options.AVERAGE_LOGITS, options.GT_PROPOSALS_ALL_STAGES) == (False, True, True)
    heads = tiny_heads()
    assert (heads.scale_gradient, heads.average_logits, heads.gt_proposals_all_stages) == (False, True, True)


def test_missing_cascade_keys_say_how_to_add_them():
    cfg = rs_cfg()
    cfg.merge_from_file(BASE_YAML)
    cfg.MODEL.ROI_HEADS.NAME = "RSCascadeROIHeads"
    cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    del cfg.MODEL.RS["CASCADE"]
    with pytest.raises(KeyError, match="add_rs_config"):
        build_roi_heads(shrink(cfg), SHAPES)


def test_coco_yaml_is_the_published_recipe():
    """(10, 10, 5, 5) coders in all three RS stages, the published options, 1000 training
    proposals and border-crossing anchors ignored."""
    cfg = coco_cfg()
    heads = build_roi_heads(cfg, {k: v for k, v in SHAPES.items() if k != "p6"})
    assert isinstance(heads, RSCascadeROIHeads) and heads.num_cascade_stages == 3
    assert all(isinstance(p, RSFastRCNNOutputLayers) for p in heads.box_predictor)
    assert [tuple(p.box2box_transform.weights) for p in heads.box_predictor] == [(10.0, 10.0, 5.0, 5.0)] * 3
    assert [m.thresholds[1] for m in heads.proposal_matchers] == [0.5, 0.6, 0.7]
    assert (heads.scale_gradient, heads.average_logits, heads.gt_proposals_all_stages) == (False, True, True)
    rpn = build_proposal_generator(cfg, SHAPES)
    assert type(rpn).__name__ == "RSRPN"
    assert rpn.post_nms_topk[True] == 1000
    assert rpn.anchor_boundary_thresh == 0
    # The base config (detectron2's cascade coders) differs: the YAML is what sets them.
    assert [tuple(p.box2box_transform.weights) for p in tiny_heads().box_predictor][1] == (20.0, 20.0, 10.0, 10.0)


def test_rsrpn_ignores_anchors_crossing_the_border():
    """RSRPN keeps detectron2's BOUNDARY_THRESH logic: a border-crossing anchor that would be
    positive (IoU 0.73) or negative becomes ignored (-1) with BOUNDARY_THRESH 0."""
    gt = Instances((64, 64))
    gt.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 50.0, 50.0]]))
    anchors = [Boxes(torch.tensor([
        [10.0, 10.0, 50.0, 50.0],  # inside, IoU 1: positive
        [-2.0, 10.0, 48.0, 50.0],  # crosses the left border, IoU 0.73
        [40.0, 40.0, 60.0, 60.0],  # inside, IoU 0.05: negative
        [50.0, 50.0, 70.0, 70.0],  # crosses the right border, IoU 0
    ]))]
    labels = {}
    for thresh in (0, -1):
        cfg = coco_cfg()
        cfg.MODEL.RPN.BOUNDARY_THRESH = thresh
        rpn = build_proposal_generator(cfg, SHAPES)
        labels[thresh] = rpn.label_and_sample_anchors(anchors, [gt])[0][0].tolist()
    assert labels[0] == [1, -1, 0, -1]
    assert labels[-1] == [1, 1, 0, 0]


def _train_grads(heads, scale_gradient):
    heads.scale_gradient = scale_gradient
    heads.zero_grad()
    feats = features(requires_grad=True)
    with EventStorage():
        _, losses = heads(None, feats, proposals(), targets())
    leaves = list(feats.values())
    per_stage = []
    for s in range(heads.num_cascade_stages):
        stage_loss = sum(v for k, v in losses.items() if k.endswith(f"_stage{s}"))
        grads = torch.autograd.grad(stage_loss, leaves, retain_graph=True, allow_unused=True)
        per_stage.append([torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads)])
    sum(losses.values()).backward()
    feature_grads = [torch.zeros_like(x) if x.grad is None else x.grad for x in leaves]
    param_grads = {n: p.grad.clone() for n, p in heads.named_parameters() if p.grad is not None}
    return losses, feature_grads, per_stage, param_grads


def test_no_gradient_scaling_by_default():
    """Published: the feature gradient is the sum of the three stages' gradients. detectron2's
    scaling gives exactly 1/3 of it (the pooled features are each stage's only path to the
    features; proposals between stages are detached), and the heads' gradients are equal."""
    heads = tiny_heads(SCALE_GRADIENT=False)
    heads.train()
    losses_off, grads_off, stages_off, params_off = _train_grads(heads, False)
    losses_on, grads_on, stages_on, params_on = _train_grads(heads, True)
    for name in losses_off:
        assert torch.equal(losses_off[name], losses_on[name]), name
    assert sum(float(g.abs().sum()) for g in grads_off) > 0
    for total, *stage_grads in zip(grads_off, *stages_off):
        assert torch.allclose(total, sum(stage_grads), rtol=1e-5, atol=1e-9)
    for g_off, g_on in zip(grads_off, grads_on):
        assert torch.allclose(g_on * 3, g_off, rtol=1e-5, atol=1e-9)
    assert params_off.keys() == params_on.keys() and len(params_off) > 0
    for name in params_off:
        assert torch.allclose(params_off[name], params_on[name], rtol=1e-6, atol=1e-10), name


@pytest.mark.parametrize("average_logits", [True, False])
def test_test_scores_from_mean_logits(average_logits):
    """Stage logits (2, -4), (-1, 0), (0.5, 1) for one proposal: published scores are
    sigmoid of the mean logits (0.5, -1); detectron2's the mean of the sigmoids."""
    heads = tiny_heads(AVERAGE_LOGITS=average_logits)
    heads.eval()
    logits = torch.tensor([[2.0, -4.0], [-1.0, 0.0], [0.5, 1.0]])
    set_stage_outputs(heads, logits.tolist())
    p = Instances((H, W))
    p.proposal_boxes = Boxes(torch.tensor([[8.0, 8.0, 40.0, 40.0]]))
    p.objectness_logits = torch.zeros(1)
    with torch.no_grad():
        (inst,), _ = heads(None, {k: v[:1] for k, v in features().items()}, [p])
    by_class = dict(zip(inst.pred_classes.tolist(), inst.scores.tolist()))
    published = logits.mean(0).sigmoid()
    detectron2 = logits.sigmoid().mean(0)
    expected = published if average_logits else detectron2
    other = detectron2 if average_logits else published
    assert by_class.keys() == {0, 1}
    for c in (0, 1):
        assert by_class[c] == pytest.approx(float(expected[c]), abs=1e-6)
        assert abs(by_class[c] - float(other[c])) > 1e-2
    if average_logits:  # by hand: sigmoid(0.5), sigmoid(-1)
        assert by_class[0] == pytest.approx(1 / (1 + math.exp(-0.5)), abs=1e-6)
        assert by_class[1] == pytest.approx(1 / (1 + math.exp(1.0)), abs=1e-6)
    assert torch.allclose(inst.pred_boxes.tensor, p.proposal_boxes.tensor.expand(2, 4))


def _stage_proposals(heads, monkeypatch):
    """Train the heads once (image 2 without ground truth); return each stage's
    (proposals, predicted boxes) and the losses."""
    seen = []
    run_stage = heads._run_stage

    def spy(feats, stage_proposals, stage):
        predictions = run_stage(feats, stage_proposals, stage)
        boxes = heads.box_predictor[stage].predict_boxes(predictions, stage_proposals)
        seen.append(([x.proposal_boxes.tensor.clone() for x in stage_proposals], stage_proposals, boxes))
        return predictions

    monkeypatch.setattr(heads, "_run_stage", spy)
    heads.train()
    with EventStorage():
        _, losses = heads(None, features(), proposals(), targets(empty_second=True))
    return seen, losses


@pytest.mark.parametrize("gt_all_stages", [True, False])
def test_later_stages_get_exact_gt_proposals(gt_all_stages, monkeypatch):
    """Published: stages 2 and 3 see the previous stage's boxes of the RPN proposals plus the
    exact ground truth (its regressed copies dropped); detectron2: the previous stage's
    boxes of all its proposals, the exact ground truth only in stage 1."""
    heads = tiny_heads(GT_PROPOSALS_ALL_STAGES=gt_all_stages)
    # Constant deltas: every box moves right by 0.05 of its width, so regressed copies of
    # the ground truth differ from it.
    set_stage_outputs(heads, [[0.0, 0.0]] * 3, box_bias=(0.5, 0.0, 0.0, 0.0))
    seen, losses = _stage_proposals(heads, monkeypatch)
    gt = torch.tensor(GT_BOXES)
    n_rpn = proposals()[0].proposal_boxes.tensor.shape[0]
    assert torch.equal(seen[0][0][0][-2:], gt)  # stage 1: detectron2 appends the GT
    for k in (1, 2):
        boxes, stage_proposals, _ = seen[k]
        prev_boxes = seen[k - 1][2]
        expected = [Boxes(b.clone()) for b in prev_boxes]
        for b in expected:
            b.clip((H, W))
        if gt_all_stages:
            assert len(boxes[0]) == n_rpn + 2
            assert torch.allclose(boxes[0][:n_rpn], expected[0].tensor[:n_rpn])
            assert torch.equal(boxes[0][n_rpn:], gt)
            assert torch.equal(stage_proposals[0].gt_boxes.tensor[n_rpn:], gt)
            assert stage_proposals[0].gt_classes[n_rpn:].tolist() == GT_CLASSES
            # The regressed copies of the ground truth are gone.
            regressed = expected[0].tensor[n_rpn:]
            assert not any(torch.allclose(r, b) for r in regressed for b in boxes[0])
        else:
            assert torch.allclose(boxes[0], expected[0].tensor)
            assert not any(torch.equal(g, b) for g in gt for b in boxes[0])
        # Image without ground truth: the previous stage's boxes, nothing appended.
        assert torch.allclose(boxes[1], expected[1].tensor)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_options_off_equal_detectron2_cascade():
    """SCALE_GRADIENT True, AVERAGE_LOGITS False, GT_PROPOSALS_ALL_STAGES False: the RS
    cascade computes what detectron2's CascadeROIHeads._forward_box computes."""
    heads = tiny_heads(SCALE_GRADIENT=True, AVERAGE_LOGITS=False, GT_PROPOSALS_ALL_STAGES=False)
    feats = features()
    heads.train()
    with EventStorage():
        labelled = heads.label_and_sample_proposals(proposals(), targets())
        ours = heads._forward_box(feats, labelled, targets())
        theirs = CascadeROIHeads._forward_box(heads, feats, labelled, targets())
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.allclose(ours[name], theirs[name], rtol=1e-6, atol=1e-8), name
    heads.eval()
    with torch.no_grad():
        ours = heads._forward_box(feats, proposals())
        theirs = CascadeROIHeads._forward_box(heads, feats, proposals())
    for a, b in zip(ours, theirs):
        assert len(a) > 0
        assert torch.equal(a.pred_classes, b.pred_classes)
        assert torch.allclose(a.scores, b.scores, rtol=1e-6)
        assert torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor, rtol=1e-6)
