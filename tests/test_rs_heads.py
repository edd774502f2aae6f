"""The RS heads: shapes, loss names, gradients, empty images, and hand-computed toy cases."""
import glob
import math
import os

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import rs_detectron2.config  # noqa: F401  (registers the heads)
from rs_detectron2 import add_rs_config
from rs_detectron2.modeling import RSFastRCNNOutputLayers, weighted_dice_loss
from rs_detectron2.modeling import rs_head_recipe
from rs_detectron2.modeling.rs_roi_heads import keep_random_subset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))
NUM_CLASSES = 3


def tiny_cfg(roi_heads="RSStandardROIHeads", mask_on=True):
    """The base RS R-CNN config, shrunk to run in a second on a CPU."""
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-RS-RCNN-FPN.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = mask_on
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 32
    cfg.MODEL.RESNETS.WIDTH_PER_GROUP = 16
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ROI_HEADS.NAME = roi_heads
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_MASK_HEAD.CONV_DIM = 16
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    if roi_heads == "RSCascadeROIHeads":
        cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = True
    return cfg


def make_instances(h, w, boxes, classes):
    inst = Instances((h, w))
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for k, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
        masks[k, y0:y1, x0:x1] = True
    inst.gt_masks = BitMasks(masks)
    return inst


def make_batch(empty=(False, False), h=96, w=128):
    gen = torch.Generator().manual_seed(0)
    batch = []
    for is_empty in empty:
        image = torch.randint(0, 256, (3, h, w), generator=gen).float()
        if is_empty:
            inst = make_instances(h, w, [], [])
        else:
            inst = make_instances(h, w, [[10, 12, 50, 60], [60, 20, 120, 70], [30, 50, 70, 90]], [0, 1, 2])
        batch.append({"image": image, "instances": inst, "height": h, "width": w})
    return batch


EXPECTED_LOSSES = {
    "RSStandardROIHeads": {
        "loss_rpn_rank", "loss_rpn_sort", "loss_rpn_box",
        "loss_roi_rank", "loss_roi_sort", "loss_roi_box", "loss_mask",
    },
    "RSCascadeROIHeads": {"loss_rpn_rank", "loss_rpn_sort", "loss_rpn_box", "loss_mask"}
    | {f"loss_roi_{n}_stage{s}" for n in ("rank", "sort", "box") for s in range(3)},
}


@pytest.mark.parametrize("roi_heads", sorted(EXPECTED_LOSSES))
def test_training_losses_and_gradients(roi_heads):
    torch.manual_seed(0)
    # Box deltas start near zero, so the appended ground-truth proposals stay positives in
    # every cascade stage and every parameter has something to learn from.
    model = build_model(tiny_cfg(roi_heads))
    model.train()
    with EventStorage() as storage:
        losses = model(make_batch())
    assert set(losses) == EXPECTED_LOSSES[roi_heads]
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    sum(losses.values()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, f"no gradient reaches {name}"
        if name.endswith("weight") and "norm" not in name:
            assert param.grad.abs().sum() > 0, f"zero gradient for {name}"
    # Balancing: the box loss equals its stage's RS loss; the mask loss equals the RoI RS loss.
    suffix = "_stage0" if roi_heads == "RSCascadeROIHeads" else ""
    roi_rs = losses[f"loss_roi_rank{suffix}"] + losses[f"loss_roi_sort{suffix}"]
    assert torch.allclose(losses[f"loss_roi_box{suffix}"], roi_rs, rtol=1e-5)
    assert torch.allclose(losses["loss_mask"], roi_rs, rtol=1e-5)
    rpn_rs = losses["loss_rpn_rank"] + losses["loss_rpn_sort"]
    assert torch.allclose(losses["loss_rpn_box"], rpn_rs, rtol=1e-5)
    logged = storage.latest()
    for key in ("rpn/box_balance", "roi_head/mask_balance"):
        assert key in logged


@pytest.mark.parametrize("roi_heads", sorted(EXPECTED_LOSSES))
def test_mask_loss_unbalanced(roi_heads):
    """MODEL.RS.BALANCE_MASK_LOSS False: the mask loss is the raw weighted Dice (weight 1),
    the box losses stay balanced, and no mask coefficient is logged."""
    batch = make_batch()
    values = {}
    for balance in (True, False):
        cfg = tiny_cfg(roi_heads)
        cfg.MODEL.RS.BALANCE_MASK_LOSS = balance
        torch.manual_seed(0)
        model = build_model(cfg)
        model.train()
        with EventStorage() as storage:
            torch.manual_seed(1)
            losses = model(batch)
        values[balance] = (losses, storage.latest())
    (balanced, logged_b), (raw, logged_r) = values[True], values[False]
    coefficient = logged_b["roi_head/mask_balance"][0]
    assert "roi_head/mask_balance" not in logged_r
    assert coefficient > 0 and abs(coefficient - 1.0) > 1e-3
    assert torch.allclose(raw["loss_mask"] * coefficient, balanced["loss_mask"], rtol=1e-4)
    assert 0.0 < raw["loss_mask"].item() <= 1.0  # a weighted mean of Dice losses
    suffix = "_stage0" if roi_heads == "RSCascadeROIHeads" else ""
    assert torch.allclose(raw[f"loss_roi_box{suffix}"], raw[f"loss_roi_rank{suffix}"] + raw[f"loss_roi_sort{suffix}"], rtol=1e-5)
    raw["loss_mask"].backward()


@pytest.mark.parametrize("roi_heads", sorted(EXPECTED_LOSSES))
def test_batch_without_any_annotation(roi_heads):
    model = build_model(tiny_cfg(roi_heads))
    model.train()
    with EventStorage():
        losses = model(make_batch(empty=(True, True)))
    assert set(losses) == EXPECTED_LOSSES[roi_heads]
    total = sum(losses.values())
    assert torch.isfinite(total)
    # RPN and RoI heads have no positive: each of their losses is an attached zero.
    for name, value in losses.items():
        assert float(value) == 0.0, name
        assert value.requires_grad, name
    total.backward()


def test_mixed_batch_one_image_empty():
    model = build_model(tiny_cfg())
    model.train()
    with EventStorage():
        losses = model(make_batch(empty=(False, True)))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


@pytest.mark.parametrize("roi_heads", sorted(EXPECTED_LOSSES))
def test_inference_outputs(roi_heads):
    model = build_model(tiny_cfg(roi_heads))
    model.eval()
    batch = [{"image": b["image"], "height": 48, "width": 64} for b in make_batch()]
    with torch.no_grad():
        outputs = model(batch)
    assert len(outputs) == 2
    for out in outputs:
        inst = out["instances"]
        assert inst.image_size == (48, 64)
        assert 0 < len(inst) <= 100
        assert inst.pred_boxes.tensor.shape == (len(inst), 4)
        assert inst.pred_masks.shape == (len(inst), 48, 64)
        assert torch.all((inst.scores >= 0) & (inst.scores <= 1))
        assert torch.all((inst.pred_classes >= 0) & (inst.pred_classes < NUM_CLASSES))


def test_rs_predictor_toy_case_by_hand(monkeypatch):
    """IoU targets from the decoded box of the ground-truth class, weights = max sigmoid,
    the balanced box loss equals L_rank + L_sort, and the weighted GIoU by hand."""
    cfg = tiny_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    from detectron2.layers import ShapeSpec

    predictor = RSFastRCNNOutputLayers(cfg, ShapeSpec(channels=8))
    seen = {}
    real_loss = rs_head_recipe.pooled_rank_sort_loss

    def spy(logits, targets, delta, pool):
        seen["targets"] = targets.clone()
        return real_loss(logits, targets, delta, pool)

    monkeypatch.setattr(rs_head_recipe, "pooled_rank_sort_loss", spy)
    props = Instances((100, 100))
    props.proposal_boxes = Boxes(torch.tensor([[0, 0, 10, 10], [20, 20, 40, 40], [60, 60, 80, 80.0]]))
    props.gt_boxes = Boxes(torch.tensor([[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 10, 10.0]]))
    props.gt_classes = torch.tensor([1, 0, 2])  # 2 = background
    scores = torch.tensor([[0.0, math.log(3)], [math.log(0.25), -2.0], [1.0, -1.0]], requires_grad=True)
    deltas = torch.zeros(3, 8)
    deltas[0, 4] = 10 * 0.5  # class 1 of proposal 0: shift right by half a width -> IoU 1/3
    deltas[0, 0:4] = torch.tensor([0.0, 0.0, 5.0, 5.0])  # class 0 (not its class): ignored
    deltas[1, 2] = 5 * math.log(2)  # class 0 of proposal 1: twice as wide -> IoU 1/2
    deltas.requires_grad_()
    with EventStorage() as storage:
        losses = predictor.losses((scores, deltas), [props])
    expected_targets = torch.tensor([[0.0, 1 / 3], [0.5, 0.0], [0.0, 0.0]])
    assert torch.allclose(seen["targets"], expected_targets, atol=1e-6)
    # Weights: highest sigmoid score of each proposal.
    assert torch.allclose(predictor.score_weights((scores, deltas)),
                          torch.tensor([0.75, 0.2, 1 / (1 + math.exp(-1))]), atol=1e-6)
    assert not props.has("score_weights")  # the predictor's losses write nothing on proposals
    # GIoU losses: 1 - 1/3 (no enclosing gap) and 1 - 1/2, weighted by 0.75 and 0.2.
    giou = (0.75 * (2 / 3) + 0.2 * 0.5) / (0.75 + 0.2)
    rs = float(losses["loss_roi_rank"] + losses["loss_roi_sort"])
    assert abs(float(losses["loss_roi_box"]) - rs) < 1e-6
    assert abs(storage.latest()["roi_head/box_balance"][0] - rs / giou) < 1e-5
    sum(losses.values()).backward()
    assert deltas.grad[0, 4:].abs().sum() > 0 and deltas.grad[0, :4].abs().sum() == 0
    assert deltas.grad[2].abs().sum() == 0  # background proposal: no box loss


def test_weighted_dice_by_hand():
    inst = Instances((8, 8))
    inst.proposal_boxes = Boxes(torch.tensor([[0, 0, 8, 8.0], [0, 0, 8, 8.0]]))
    full = torch.ones(8, 8, dtype=torch.bool)
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True
    inst.gt_masks = BitMasks(torch.stack([full, left]))
    inst.gt_classes = torch.tensor([0, 1])
    inst.score_weights = torch.tensor([0.5, 1.5])
    logits = torch.full((2, 2, 4, 4), -30.0)
    logits[0, 0] = 30.0  # RoI 0, its class 0: all ones -> dice 0
    logits[1, 1, :, :2] = 30.0  # RoI 1, its class 1: exactly the left half -> dice 0
    logits[1, 0] = 30.0  # another class: must not matter
    assert float(weighted_dice_loss(logits, [inst])) < 1e-6
    logits[1, 1] = 30.0  # all ones against half: 1 - 2*8/(16+8)
    expected = 1.5 * (1 - 16 / 24 - 0) / 2.0
    dice1 = 1 - 2 * 8 / (16 + 8 + 1e-5)
    expected = 1.5 * dice1 / 2.0
    assert abs(float(weighted_dice_loss(logits, [inst])) - expected) < 1e-5


def test_mask_rois_are_capped():
    insts = []
    for n in (150, 120, 0):
        inst = Instances((10, 10))
        inst.proposal_boxes = Boxes(torch.zeros(n, 4))
        insts.append(inst)
    kept = keep_random_subset(insts, 200)
    assert sum(len(x) for x in kept) == 200
    assert all(len(k) <= len(x) for k, x in zip(kept, insts))
    assert keep_random_subset(insts[:1], 200) == insts[:1]


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.relpath(c, ROOT) for c in CONFIGS])
def test_every_config_trains_one_iteration(config):
    """Each shipped config builds its model and runs one training iteration (reduced input)."""
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(config)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    model.train()
    classes = [0, min(1, cfg.MODEL.ROI_HEADS.NUM_CLASSES - 1)]
    batch = [
        {"image": torch.rand(3, 128, 160) * 255, "instances": make_instances(128, 160, [[10, 10, 60, 70], [70, 30, 150, 100]], classes)},
        {"image": torch.rand(3, 128, 160) * 255, "instances": make_instances(128, 160, [], [])},
    ]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    arch = cfg.MODEL.META_ARCHITECTURE
    sorts = cfg.MODEL.RS.RANKING_LOSS == "rank_sort"  # AP / aLRP Loss have no sorting part
    if arch in ("RSSOLOv2", "SOLOv2"):  # grid cells, no boxes
        assert set(losses) == ({"loss_rank", "loss_sort", "loss_mask"} if arch == "RSSOLOv2"
                               else {"loss_cate", "loss_mask"})
    elif arch in ("RSRetinaNet", "RSPAA", "RSYOLACT"):  # one-stage RS
        assert set(losses) == ({"loss_rank", "loss_box"} | ({"loss_sort"} if sorts else set())
                               | ({"loss_mask"} if arch == "RSYOLACT" else set()))
    elif arch in ("RetinaNet", "PAA", "YOLACT"):  # the stock one-stage baselines
        assert set(losses) == {"loss_cls", "loss_box_reg"} | ({"loss_mask"} if arch == "YOLACT" else set())
    elif cfg.MODEL.PROPOSAL_GENERATOR.NAME == "RSRPN":
        assert {"loss_rpn_rank", "loss_rpn_sort", "loss_rpn_box"} <= set(losses)
    else:  # detectron2's stock baselines of the comparison
        assert {"loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg"} <= set(losses)
    assert ("loss_mask" in losses) == cfg.MODEL.MASK_ON


def _training_losses(cfg, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    model.train()
    with EventStorage():
        return {k: float(v) for k, v in model(make_batch()).items()}


def test_rpn_loss_weight_scales_the_rs_rpn_losses():
    """MODEL.RPN.LOSS_WEIGHT is honoured (0.2 in the RS configs): 0.5 halves every RS-RPN
    loss and leaves the others alone; BBOX_REG_LOSS_WEIGHT scales the box loss once more."""
    base_cfg = tiny_cfg()
    assert base_cfg.MODEL.RPN.LOSS_WEIGHT == 0.2
    base_cfg.MODEL.RPN.LOSS_WEIGHT = 1.0
    base = _training_losses(base_cfg)
    half_cfg = tiny_cfg()
    half_cfg.MODEL.RPN.LOSS_WEIGHT = 0.5
    half = _training_losses(half_cfg)
    box_cfg = tiny_cfg()
    box_cfg.MODEL.RPN.LOSS_WEIGHT = 1.0
    box_cfg.MODEL.RPN.BBOX_REG_LOSS_WEIGHT = 3.0
    box = _training_losses(box_cfg)
    for name in ("loss_rpn_rank", "loss_rpn_sort", "loss_rpn_box"):
        assert base[name] > 0 and abs(half[name] - 0.5 * base[name]) < 1e-6 * max(1.0, base[name])
    assert abs(box["loss_rpn_box"] - 3.0 * base["loss_rpn_box"]) < 1e-5
    assert abs(box["loss_rpn_rank"] - base["loss_rpn_rank"]) < 1e-6
    for name in ("loss_roi_rank", "loss_roi_sort", "loss_roi_box", "loss_mask"):
        assert abs(half[name] - base[name]) < 1e-6, name


def test_box_predictor_loss_weight_scales_the_box_loss():
    cfg = tiny_cfg()
    base = _training_losses(cfg)
    cfg = tiny_cfg()
    cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_WEIGHT = 2.0
    doubled = _training_losses(cfg)
    assert abs(doubled["loss_roi_box"] - 2.0 * base["loss_roi_box"]) < 1e-5
    assert abs(doubled["loss_roi_rank"] - base["loss_roi_rank"]) < 1e-6


def test_keys_the_rs_heads_ignore_are_named_once(caplog):
    import logging

    cfg = tiny_cfg()
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 256
    cfg.MODEL.RPN.POSITIVE_FRACTION = 0.25
    logger = logging.getLogger("rs_detectron2")  # may not propagate (setup_logger)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="rs_detectron2"):
            build_model(cfg)
            build_model(cfg)
    finally:
        logger.removeHandler(caplog.handler)
    records = {id(r): r for r in caplog.records}.values()  # one record may reach it twice
    messages = [r.getMessage() for r in records if "ignores" in r.getMessage()]
    assert sum("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 256" in m for m in messages) == 1
    assert sum("MODEL.RPN.POSITIVE_FRACTION = 0.25" in m for m in messages) == 1
    assert not any("BBOX_REG_LOSS_TYPE" in m for m in messages)  # left at its default


def test_mask_branch_gets_score_weights_as_an_argument_only():
    """The box branch hands the mask branch each RoI's score through the RoIs it is given
    (a field of copies), not by writing on the proposals or on the heads."""
    model = build_model(tiny_cfg())
    model.train()
    seen = {}
    real_forward_mask = model.roi_heads._forward_mask

    def spy(features, instances):
        seen["fields"] = [set(x.get_fields()) for x in instances]
        return real_forward_mask(features, instances)

    model.roi_heads._forward_mask = spy
    state_before = set(vars(model.roi_heads))
    with EventStorage():
        model(make_batch())
    assert all("score_weights" in f for f in seen["fields"])
    assert set(vars(model.roi_heads)) == state_before


def test_rs_mask_head_says_what_it_needs():
    inst = Instances((8, 8))
    inst.proposal_boxes = Boxes(torch.tensor([[0, 0, 8, 8.0]]))
    inst.gt_masks = BitMasks(torch.ones(1, 8, 8, dtype=torch.bool))
    inst.gt_classes = torch.tensor([0])
    with pytest.raises(ValueError, match="score_weights"):
        weighted_dice_loss(torch.zeros(1, 1, 4, 4), [inst])
