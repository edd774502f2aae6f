"""RS-SOLOv2 and its stock twin SOLOv2: training losses (RS Loss targets = each positive
cell's own Dice coefficient, paired through its cell; the score-weighted Dice balanced to
the RS loss; the stock focal + Dice), gradients, inference (Matrix NMS, masks and boxes
at the output size) and the configs."""
import os

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from rs_detectron2.config import add_rs_config
from rs_detectron2.engine import RSTrainer
from rs_detectron2.modeling.meta_arch import RSSOLOv2, SOLOv2
from rs_detectron2.modeling.meta_arch.solov2_heads import dynamic_masks
from rs_detectron2.modeling.meta_arch.solov2_targets import solov2_targets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "configs", "Synthetic")


def _cfg(name, *opts):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(SYNTHETIC, name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.STEM_OUT_CHANNELS", 8,
                         "MODEL.RESNETS.RES2_OUT_CHANNELS", 8, "MODEL.FPN.OUT_CHANNELS", 32,
                         "MODEL.SOLOV2.SEG_FEAT_CHANNELS", 32,
                         "MODEL.SOLOV2.INS_OUT_CHANNELS", 32,
                         "MODEL.SOLOV2.MASK_FEAT_CHANNELS", 32, *opts])
    return cfg


def _batch(seed=0, size=96):
    g = torch.Generator().manual_seed(seed)
    batch = []
    # two objects of one level in one image, listed against raster order (the published
    # pairing would mismatch them); a second image with one object
    for boxes in ([[40.0, 60, 60, 84], [10, 6, 30, 26]], [[20.0, 20, 60, 70]]):
        boxes = torch.tensor(boxes)
        masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
            m[y0:y1, x0:x1] = True
        inst = Instances((size, size), gt_boxes=Boxes(boxes),
                         gt_classes=torch.tensor([2, 4][: len(boxes)]), gt_masks=BitMasks(masks))
        batch.append({"image": torch.rand(3, size, size, generator=g) * 255, "instances": inst,
                      "height": size, "width": size})
    return batch


def _run(model, batch):
    captured = {}
    original = model.losses

    def spy(cate, kernels, feats, gts, padded):
        captured.update(cate=cate, kernels=kernels, feats=feats, gts=gts, padded=padded)
        return original(cate, kernels, feats, gts, padded)

    model.losses = spy
    with EventStorage(0) as storage:
        losses = model(batch)
        latest = storage.latest()
    return losses, captured, latest


def test_rs_targets_are_each_cells_own_dice_and_the_mask_loss_is_balanced():
    """Loop over the positive cells of every level and image: the RS Loss target of (cell,
    class) must be the Dice coefficient of that cell's own mask (its kernel over the mask
    features) with its own target; RS Loss on those targets equals loss_rank + loss_sort;
    the unbalanced mask loss is the score-weighted mean Dice loss."""
    from rs_detectron2.losses import rank_sort_loss

    torch.manual_seed(0)
    model = RSTrainer.build_model(_cfg("rs_solov2_R_18_FPN.yaml")).train()
    assert type(model) is RSSOLOv2
    losses, cap, latest = _run(model, _batch())
    K = model.num_classes
    logits, labels, dice_losses, weights = [], [], [], []
    feats = cap["feats"].detach()
    per_image = [solov2_targets(g.gt_boxes.tensor, g.gt_classes,
                                torch.nn.functional.pad(g.gt_masks.tensor, (0, 0, 0, 0)),
                                feats.shape[-2:], K, model.ins_head.num_grids,
                                model.scale_ranges, model.sigma) for g in cap["gts"]]
    mixed_order = False
    for level, (cate, kern) in enumerate(zip(cap["cate"], cap["kernels"])):
        for i in range(len(cap["gts"])):
            flat = cate[i].detach().permute(1, 2, 0).reshape(-1, K)
            target = torch.zeros_like(flat)
            t = per_image[i][level]
            mixed_order |= bool((t.cell_index[1:] < t.cell_index[:-1]).any())
            for cell, mask in zip(t.cell_index.tolist(), t.ins_masks):
                k = kern[i].detach().reshape(kern.shape[1], -1)[:, cell]
                p = dynamic_masks(feats[i], k[None])[0].sigmoid().double()
                m = mask.double()
                d = 1 - 2 * (p * m).sum() / ((p * p).sum() + 0.001 + (m * m).sum() + 0.001)
                target[cell, int(t.labels[cell])] = max(float(1 - d), 1e-6)
                dice_losses.append(float(d))
                weights.append(float(flat[cell].sigmoid().max()))
            logits.append(flat)
            labels.append(target)
    assert mixed_order  # the case the published pairing gets wrong is in the batch
    rank, sort = rank_sort_loss(torch.cat(logits).double(), torch.cat(labels).double(), 0.5)
    assert abs(float(rank) - float(losses["loss_rank"])) < 1e-5
    assert abs(float(sort) - float(losses["loss_sort"])) < 1e-5
    weighted = sum(w * d for w, d in zip(weights, dice_losses)) / sum(weights)
    balance = latest["mask_balance"][0]
    assert abs(float(losses["loss_mask"]) - float(rank + sort)) < 1e-5
    assert abs(float(rank + sort) / balance - weighted) < 1e-5


@pytest.mark.parametrize("name,cls,expected", [
    ("rs_solov2_R_18_FPN.yaml", RSSOLOv2, {"loss_rank", "loss_sort", "loss_mask"}),
    ("solov2_R_18_FPN.yaml", SOLOv2, {"loss_cate", "loss_mask"})])
def test_training_step_reaches_every_branch(name, cls, expected):
    torch.manual_seed(0)
    model = RSTrainer.build_model(_cfg(name)).train()
    assert type(model) is cls
    losses, _, _ = _run(model, _batch(1))
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for module in (model.ins_head.solo_cate, model.ins_head.solo_kernel,
                   model.backbone.bottom_up.res5[0].conv1):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.mask_head.parameters())


def test_stock_losses_are_focal_and_dice_by_hand():
    from fvcore.nn import sigmoid_focal_loss

    torch.manual_seed(0)
    model = RSTrainer.build_model(_cfg("solov2_R_18_FPN.yaml")).train()
    losses, cap, _ = _run(model, _batch(2))
    logits, rows, classes, probs, targets = model._positives(
        cap["cate"], cap["kernels"], cap["feats"], cap["gts"], cap["padded"])
    onehot = torch.zeros_like(logits)
    onehot[rows, classes] = 1
    focal = sigmoid_focal_loss(logits, onehot, 0.25, 2.0, reduction="sum") / (len(rows) + 1)
    assert abs(float(focal) - float(losses["loss_cate"])) < 1e-5
    p, t = probs.flatten(1), targets.flatten(1)
    dice = 1 - 2 * (p * t).sum(1) / ((p * p).sum(1) + 0.001 + (t * t).sum(1) + 0.001)
    assert abs(float(dice.mean() * 3.0) - float(losses["loss_mask"])) < 1e-5


def test_inference_masks_and_boxes_at_the_output_size():
    torch.manual_seed(0)
    model = RSTrainer.build_model(_cfg("rs_solov2_R_18_FPN.yaml",
                                       "MODEL.SOLOV2.SCORE_THRESH_TEST", 0.0,
                                       "MODEL.SOLOV2.UPDATE_THRESH_TEST", 0.0,
                                       "TEST.DETECTIONS_PER_IMAGE", 5))
    for m in model.modules():  # BatchNorm statistics from the image (random backbone)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    image = torch.rand(3, 96, 128) * 255
    model.train()
    with torch.no_grad():
        model.backbone(model.preprocess_image([{"image": image}]).tensor)
    model.eval()
    with torch.no_grad():
        out = model([{"image": image, "height": 48, "width": 64}])[0]["instances"]
    assert out.image_size == (48, 64) and len(out) <= 5
    assert out.pred_masks.shape[1:] == (48, 64) and out.pred_masks.dtype == torch.bool
    assert bool((out.scores[:-1] >= out.scores[1:]).all())
    boxes = BitMasks(out.pred_masks).get_bounding_boxes().tensor
    assert torch.equal(boxes, out.pred_boxes.tensor)


def test_inference_without_any_detection():
    """A score threshold nothing passes: an empty result of the output size, no error."""
    model = RSTrainer.build_model(_cfg("rs_solov2_R_18_FPN.yaml",
                                       "MODEL.SOLOV2.SCORE_THRESH_TEST", 1.0)).eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 64, 64) * 255, "height": 32, "width": 40}])
    inst = out[0]["instances"]
    assert len(inst) == 0 and inst.pred_masks.shape == (0, 32, 40)
    assert inst.pred_boxes.tensor.shape == (0, 4)


def test_candidate_cap_keeps_the_best_scores():
    torch.manual_seed(0)
    model = RSTrainer.build_model(_cfg("rs_solov2_R_18_FPN.yaml", "MODEL.SOLOV2.SCORE_THRESH_TEST",
                                       0.0, "MODEL.SOLOV2.TOPK_CANDIDATES_TEST", 3,
                                       "MODEL.SOLOV2.UPDATE_THRESH_TEST", 0.0)).eval()
    seen = {}
    import rs_detectron2.modeling.meta_arch.solov2 as solo

    original = solo.dynamic_masks

    def spy(feats, kernels, *a):
        seen["n"] = len(kernels)
        return original(feats, kernels, *a)

    solo.dynamic_masks = spy
    try:
        with torch.no_grad():
            model([{"image": torch.rand(3, 64, 64) * 255}])
    finally:
        solo.dynamic_masks = original
    assert seen["n"] == 3


def test_mask_bounding_boxes_equal_detectron2s():
    from rs_detectron2.layers import mask_bounding_boxes

    g = torch.Generator().manual_seed(0)
    masks = torch.rand(6, 9, 13, generator=g) > 0.8
    masks[0] = False  # empty
    masks[1] = False
    masks[1, 4, 7] = True  # one pixel
    assert torch.equal(mask_bounding_boxes(masks), BitMasks(masks).get_bounding_boxes().tensor)


def test_other_ranking_losses_fail_loudly():
    with pytest.raises(NotImplementedError, match="RS Loss only"):
        RSTrainer.build_model(_cfg("rs_solov2_R_18_FPN.yaml", "MODEL.RS.RANKING_LOSS", "ap"))


def test_full_model_gradient_clipping_clips_the_total_norm():
    """SOLVER.CLIP_GRADIENTS.CLIP_TYPE "full_model" (published SOLOv2: max_norm 35): after
    step, the update equals SGD on the gradients scaled to total norm CLIP_VALUE."""
    from rs_detectron2.solver import build_rs_optimizer

    cfg = _cfg("solov2_R_18_FPN.yaml", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "full_model",
               "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.5, "SOLVER.MOMENTUM", 0.0,
               "SOLVER.WEIGHT_DECAY", 0.0, "SOLVER.WEIGHT_DECAY_NORM", 0.0, "SOLVER.BASE_LR", 0.1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = build_rs_optimizer(cfg, model)
    x = torch.randn(5, 3)
    model(x).pow(2).sum().mul(10).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    total = torch.sqrt(sum((g * g).sum() for g in grads))
    assert total > 0.5
    opt.step()
    for p, b, g in zip(model.parameters(), before, grads):
        assert torch.allclose(p.detach(), b - 0.1 * g * (0.5 / (total + 1e-6)), atol=1e-6)
    # per-parameter types still go through detectron2
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    assert "FullModel" not in type(build_rs_optimizer(cfg, model)).__name__
