"""MODEL.RS.RANKING_LOSS: the RS heads trained with AP Loss or aLRP Loss in place of RS Loss
(the rest of each head's recipe unchanged), and aLRP's self-balancing weight."""
import os

import pytest
import torch
from fvcore.nn import giou_loss

from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from rs_detectron2.config import add_rs_config
from rs_detectron2.engine import RSTrainer
from rs_detectron2.losses import alrp_loss, ap_loss
from rs_detectron2.modeling.rs_head_recipe import SelfBalance, rs_head_losses

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _head_inputs(seed=0, rows=40, classes=3, positives=7):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=g, requires_grad=True)
    pos_rows = torch.randperm(rows, generator=g)[:positives]  # not sorted on purpose
    pos_classes = torch.randint(0, classes, (positives,), generator=g)
    gt = torch.rand(positives, 2, generator=g) * 50
    gt_boxes = torch.cat([gt, gt + 10 + torch.rand(positives, 2, generator=g) * 20], 1)
    pred_boxes = (gt_boxes + torch.randn(positives, 4, generator=g) * 3).requires_grad_(True)
    ignored = torch.zeros(rows, dtype=torch.bool)
    ignored[[r for r in range(rows) if r not in pos_rows.tolist()][:3]] = True
    return logits, ignored, pos_rows, pos_classes, pred_boxes, gt_boxes


def _targets(logits, ignored, pos_rows, pos_classes, pred_boxes, gt_boxes):
    from rs_detectron2.modeling.rs_head_recipe import localisation_quality

    targets = torch.zeros_like(logits)
    targets[ignored] = -1.0
    targets[pos_rows, pos_classes] = localisation_quality(pred_boxes, gt_boxes)
    return targets


def test_ap_head_losses_are_ap_loss_and_the_balanced_box_loss():
    logits, ignored, rows, classes, pred, gt = _head_inputs()
    out = rs_head_losses(logits, ignored, rows, classes, pred, gt, 1.0, ranking_loss="ap")
    expected = ap_loss(logits.detach(), _targets(logits, ignored, rows, classes, pred, gt), 1.0)
    assert out.sort is None and float(out.rank) == pytest.approx(float(expected), abs=1e-7)
    assert float(out.box) == pytest.approx(float(out.rank), rel=1e-6)  # balanced to 1 - AP
    assert sorted(out.named("loss_roi_")) == ["loss_roi_box", "loss_roi_rank"]


def test_alrp_head_losses_follow_the_published_head():
    logits, ignored, rows, classes, pred, gt = _head_inputs(seed=1)
    balance = SelfBalance(period=3)
    out = rs_head_losses(logits, ignored, rows, classes, pred, gt, 1.0, ranking_loss="alrp",
                         self_balance=balance)
    # the published head: one GIoU loss per positive in the flat order of the positives
    targets = _targets(logits, ignored, rows, classes, pred, gt)
    flat_order = (rows * logits.shape[1] + classes).argsort()
    regression = giou_loss(pred.detach()[flat_order], gt[flat_order], reduction="none")
    expected = alrp_loss(logits.detach(), targets, regression, 1.0)
    assert float(out.rank) == pytest.approx(float(expected.loss_cls), abs=1e-7)
    assert float(out.box) == pytest.approx(50.0 * float(expected.loss_reg), rel=1e-6)
    assert out.box_balance == 50.0 and out.sort is None
    (out.rank + out.box).backward()
    assert float(pred.grad.abs().sum()) > 0 and float(logits.grad.abs().sum()) > 0


def test_self_balance_updates_once_a_period_from_the_means():
    balance = SelfBalance(period=3)
    assert [balance(0.9, 0.3), balance(0.7, 0.1)] == [50.0, 50.0]
    # the third call completes the period: (mean reg + mean cls) / mean reg, used at once
    assert balance(0.5, 0.2) == pytest.approx((0.2 + 0.7) / 0.2)
    assert balance(0.1, 0.1) == pytest.approx(4.5)  # until the next period ends
    state = balance.state_dict()
    assert set(state) == {"weight", "sums", "count"} and int(state["count"]) == 1
    resumed = SelfBalance(period=3)
    resumed.load_state_dict(state)
    assert resumed(0.2, 0.2) == pytest.approx(4.5)
    with pytest.raises(ValueError, match="ALRP_SB_PERIOD"):
        SelfBalance(period=0)


def _cfg(config, loss):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Synthetic", config))
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    cfg.MODEL.RS.RANKING_LOSS = loss
    return cfg


def _batch(num_classes):
    g = torch.Generator().manual_seed(3)
    batch = []
    for i in range(2):
        boxes = torch.tensor([[10.0, 20.0, 90.0, 100.0], [60.0, 40.0, 150.0, 120.0]])
        masks = torch.zeros(2, 128, 160, dtype=torch.bool)
        masks[0, 20:100, 10:90] = masks[1, 40:120, 60:150] = True
        inst = Instances((128, 160), gt_boxes=Boxes(boxes),
                         gt_classes=torch.tensor([i % num_classes, (i + 1) % num_classes]),
                         gt_masks=BitMasks(masks))
        batch.append({"image": torch.randint(0, 256, (3, 128, 160), generator=g).float(),
                      "instances": inst})
    return batch


@pytest.mark.parametrize("loss", ["ap", "alrp"])
@pytest.mark.parametrize("config,num_classes,prefixes", [
    ("rs_mask_rcnn_R_18_FPN.yaml", 6, ("loss_rpn_", "loss_roi_")),
    ("rs_atss_R_18_FPN.yaml", 6, ("loss_",)),
])
def test_every_rs_head_trains_with_the_chosen_loss(config, num_classes, prefixes, loss):
    cfg = _cfg(config, loss)
    torch.manual_seed(0)
    model = RSTrainer.build_model(cfg)
    model.train()
    heads = [m for m in model.modules() if hasattr(m, "ranking_loss")]
    assert len(heads) == len(prefixes) and all(h.ranking_loss == loss for h in heads)
    assert all(h.delta == 1.0 for h in heads)  # MODEL.RS.AP_DELTA, published
    assert all((h.self_balance is not None) == (loss == "alrp") for h in heads)
    with EventStorage():
        losses = model(_batch(num_classes))
    for prefix in prefixes:
        assert f"{prefix}rank" in losses and f"{prefix}box" in losses
        assert f"{prefix}sort" not in losses  # only RS Loss sorts
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    if loss == "alrp":
        # the self-balancing weights are checkpointed, one per head
        assert sum(k.endswith("self_balance.weight") for k in model.state_dict()) == len(heads)


def test_a_bad_ranking_loss_name_fails_at_build():
    cfg = _cfg("rs_mask_rcnn_R_18_FPN.yaml", "focal")
    with pytest.raises(ValueError, match="MODEL.RS.RANKING_LOSS must be one of"):
        RSTrainer.build_model(cfg)


def _ignored_messages(cfg, caplog):
    import logging

    logger = logging.getLogger("rs_detectron2")  # may not propagate (setup_logger)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="rs_detectron2"):
            RSTrainer.build_model(cfg)
    finally:
        logger.removeHandler(caplog.handler)
    records = {id(r): r for r in caplog.records}.values()
    return [r.getMessage() for r in records if "MODEL.RS.RANKING_LOSS" in r.getMessage()]


def test_keys_the_chosen_ranking_loss_does_not_read_are_named(caplog):
    cfg = _cfg("rs_atss_R_18_FPN.yaml", "ap")
    cfg.MODEL.RS.DELTA = 0.3  # RS Loss's delta: AP Loss reads AP_DELTA
    messages = _ignored_messages(cfg, caplog)
    assert any("MODEL.RS.DELTA = 0.3" in m and "'ap'" in m for m in messages), messages
    caplog.clear()
    cfg = _cfg("rs_atss_R_18_FPN.yaml", "rank_sort")
    cfg.MODEL.RS.AP_DELTA, cfg.MODEL.RS.ALRP_SB_PERIOD = 2.0, 123
    messages = _ignored_messages(cfg, caplog)
    assert any("MODEL.RS.AP_DELTA = 2.0" in m and "MODEL.RS.ALRP_SB_PERIOD = 123" in m
               for m in messages), messages
    caplog.clear()
    # the shipped aLRP config sets its period, which aLRP reads: nothing to name
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Synthetic", "alrp_atss_R_18_FPN.yaml"))
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    assert not _ignored_messages(cfg, caplog)
