"""RS-PAA and its stock-loss twin PAA: each step of PAA's assignment against a float64 loop
written from the published algorithm (mmdetection's MaxIoUAssigner, the RS-PAA head's
per-candidate loss and reassignment), the padded-extent flags, and the models end to end
(labels, losses, gradients, score voting at test time, the configs)."""
import math
import os

import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from rs_detectron2.config import add_rs_config
from rs_detectron2.engine import RSTrainer
from rs_detectron2.modeling.meta_arch import (
    PAA,
    RSPAA,
    anchors_in_padded_extent,
    atss_match,
    candidate_scores,
    paa_candidates,
    paa_select,
)

from .test_paa_gmm import _reference as gmm_reference
from .test_rs_retinanet import _iou64  # the float64 IoU loop of the ATSS tests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "configs", "Synthetic")


def _random_boxes(g, n, size=100.0):
    xy = g.uniform(0, size, (n, 2))
    wh = g.uniform(4, size / 2, (n, 2))
    return np.concatenate([xy, xy + wh], 1)


# -------------------------------------------------------------------- candidates


def loop_candidates(anchors, gts, inside, min_iou):
    """mmdetection's MaxIoUAssigner(pos=neg=min_iou, min_pos_iou=0, gt_max_assign_all),
    over the inside anchors, written out (a ground truth with no overlap gets none)."""
    assigned = [-1] * len(anchors)
    ious = [[_iou64(g, a) if inside[r] else -1.0 for r, a in enumerate(anchors)] for g in gts]
    for r in range(len(anchors)):
        if not inside[r] or not gts:
            continue
        best = max(range(len(gts)), key=lambda j: (ious[j][r], -j))
        if ious[best][r] >= min_iou:
            assigned[r] = best
    for j in range(len(gts)):
        gt_max = max(ious[j])
        if gt_max <= 0:
            continue
        for r in range(len(anchors)):
            if ious[j][r] == gt_max:
                assigned[r] = j
    return assigned


@pytest.mark.parametrize("seed", range(25))
def test_candidates_match_the_max_iou_assigner_loop(seed):
    g = np.random.default_rng(seed)
    anchors = _random_boxes(g, int(g.integers(1, 120)))
    if seed % 4 == 0:  # duplicated anchors: ties at a ground truth's best IoU
        anchors = np.concatenate([anchors, anchors[:10]])
    gts = _random_boxes(g, int(g.integers(0, 6)))
    inside = g.uniform(size=len(anchors)) > (0.3 if seed % 3 == 0 else 0.0)
    got = paa_candidates(torch.tensor(anchors), torch.tensor(gts).reshape(-1, 4),
                         torch.tensor(inside), 0.1)
    assert got.tolist() == loop_candidates(anchors.tolist(), gts.tolist(), inside.tolist(), 0.1)


def test_candidates_hand_case():
    """a0 overlaps A at 0.5 and B at 10 / 320 -> A; a1 overlaps B at 20 / 310 only (< 0.1),
    but is B's best anchor -> B; a2 touches nothing -> none; a3 (a0's copy) is outside the
    extent -> none."""
    anchors = torch.tensor([[0.0, 0, 10, 10], [30.0, 0, 40, 10], [100.0, 100, 110, 110],
                            [0.0, 0, 10, 10]])
    gts = torch.tensor([[0.0, 0, 10, 5], [9.0, 0, 32, 10]])
    got = paa_candidates(anchors, gts, torch.tensor([True, True, True, False]), 0.1)
    assert got.tolist() == [0, 1, -1, -1]


# ------------------------------------------------------------------------ scores


def test_candidate_scores_are_focal_plus_giou_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 4, generator=g, dtype=torch.float64)
    classes = torch.tensor([0, 3, 1, 1, 2, 0, 3])
    pred = torch.tensor(_random_boxes(np.random.default_rng(1), 7))
    gt = torch.tensor(_random_boxes(np.random.default_rng(2), 7))
    got = candidate_scores(logits, classes, pred, gt, alpha=0.25, gamma=2.0)
    for i in range(7):
        focal = 0.0
        for k in range(4):
            p = 1 / (1 + math.exp(-float(logits[i, k])))
            if k == int(classes[i]):
                focal += -0.25 * (1 - p) ** 2 * math.log(p)
            else:
                focal += -0.75 * p ** 2 * math.log(1 - p)
        a, b = pred[i].tolist(), gt[i].tolist()
        iou = _iou64(a, b)
        hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
        inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        union = inter / iou if iou > 0 else (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1])
        giou = iou - (hull - union) / hull
        assert abs(float(got[i]) - (focal + 1 - giou)) < 1e-6


# ------------------------------------------------------------------------ select


def loop_select(scores, gt_index, level, num_gt, num_levels, topk):
    """The published reassignment, ground truth by ground truth: the topk lowest scores of
    each level, sorted; skipped below 2; the mixture (float64 EM loop); the foreground
    candidates (predict == 0) in sorted order up to the one of highest score_samples."""
    positive = [False] * len(scores)
    for j in range(num_gt):
        chosen = []
        for lv in range(num_levels):
            idx = [c for c in range(len(scores)) if gt_index[c] == j and level[c] == lv]
            idx.sort(key=lambda c: scores[c])
            chosen += idx[:topk]
        if len(chosen) < 2:
            continue
        chosen.sort(key=lambda c: scores[c])
        prob, loglik = gmm_reference([scores[c] for c in chosen])
        fg = [c for c, p in zip(chosen, prob) if p >= 0.5]
        if not fg:
            continue
        fg_ll = [ll for c, p, ll in zip(chosen, prob, loglik) if p >= 0.5]
        last = int(np.argmax(fg_ll))
        for c in fg[: last + 1]:
            positive[c] = True
    return positive


@pytest.mark.parametrize("seed", range(30))
def test_select_matches_the_published_loop(seed):
    g = np.random.default_rng(seed)
    num_gt, num_levels, topk = int(g.integers(1, 6)), int(g.integers(1, 6)), int(g.integers(1, 10))
    n = int(g.integers(0, 150))
    gt_index = g.integers(0, num_gt, n)
    level = g.integers(0, num_levels, n)
    # a low (good) cluster and a high one, per ground truth; continuous: no ties
    scores = np.where(g.uniform(size=n) < 0.4, g.gamma(2.0, 0.2, n) + 0.3,
                      g.normal(1.8, 0.4, n))
    got = paa_select(torch.tensor(scores), torch.tensor(gt_index), torch.tensor(level),
                     num_gt, num_levels, topk)
    want = loop_select(scores.tolist(), gt_index.tolist(), level.tolist(), num_gt, num_levels, topk)
    assert got.tolist() == want


def test_select_edge_cases():
    empty = torch.zeros(0)
    assert paa_select(empty, empty.long(), empty.long(), 3, 5).shape == (0,)
    # one candidate for its ground truth: no mixture, no positive (published: skipped)
    scores, gt, level = [0.3, 0.2, 0.25, 1.9], [0, 1, 1, 1], [0, 0, 1, 2]
    got = paa_select(torch.tensor(scores), torch.tensor(gt), torch.tensor(level), 2, 3)
    assert not bool(got[0]) and bool(got[1]) and not bool(got[3])
    assert got.tolist() == loop_select(scores, gt, level, 2, 3, 9)
    # equal scores (ties): all of the foreground at the best one's score are positive
    got = paa_select(torch.tensor([0.2, 0.2, 0.2, 2.0, 2.1]), torch.zeros(5).long(),
                     torch.tensor([0, 1, 2, 3, 4]), 1, 5)
    assert got.tolist() == [True, True, True, False, False]


# ------------------------------------------------------------------ padded extent


def test_padded_extent_flags_match_the_loop():
    grids, strides, per_loc = [(13, 17), (7, 9), (4, 5)], [8, 16, 32], [3, 3, 3]
    sizes = [(100, 130), (64, 33), (97, 129)]
    masks = anchors_in_padded_extent(grids, strides, per_loc, sizes)
    for (h, w), mask in zip(sizes, masks):
        ph, pw = math.ceil(h / 32) * 32, math.ceil(w / 32) * 32
        want = []
        for (gh, gw), s, a in zip(grids, strides, per_loc):
            for y in range(gh):
                for x in range(gw):
                    want += [y < math.ceil(ph / s) and x < math.ceil(pw / s)] * a
        assert mask.tolist() == want
    assert bool(masks[0].all()) and not bool(masks[1].all())  # 100x130 pads to 128x160


# -------------------------------------------------------------------- the models


def _tiny_cfg(name, *opts):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(SYNTHETIC, name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.STEM_OUT_CHANNELS", 8,
                         "MODEL.RESNETS.RES2_OUT_CHANNELS", 8, "MODEL.FPN.OUT_CHANNELS", 32,
                         "MODEL.RETINANET.SCORE_THRESH_TEST", 0.0, *opts])
    return cfg


def _batch(g, sizes=((96, 128), (64, 96))):
    batch = []
    for h, w in sizes:
        boxes = torch.tensor([[8.0, 10, 40, 50], [50, 20, 90, 60]])[: 2 if w > 96 else 1]
        inst = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([1, 4])[: len(boxes)])
        batch.append({"image": torch.rand(3, h, w, generator=g) * 255, "instances": inst,
                      "height": h, "width": w})
    return batch


@pytest.mark.parametrize("name,cls", [("rs_paa_R_18_FPN.yaml", RSPAA), ("paa_R_18_FPN.yaml", PAA)])
def test_models_train_assign_and_ignore_the_padding(name, cls):
    """One training step: the published loss names, finite, gradients into the head and
    backbone; the anchors beyond the small image's padded extent are ignored (-1), the
    positives are PAA's (a subset of the candidates, each ground truth at least one)."""
    torch.manual_seed(0)
    cfg = _tiny_cfg(name)
    model = RSTrainer.build_model(cfg)
    assert type(model) is cls
    model.train()
    batch = _batch(torch.Generator().manual_seed(0))
    seen = {}
    original = model.paa_label_anchors

    def spy(anchors, inside, *args):
        out = original(anchors, inside, *args)
        seen.update(inside=inside, labels=out[0], anchors=Boxes.cat(anchors).tensor)
        return out

    model.paa_label_anchors = spy
    with EventStorage(0):
        losses = model(batch)
    expected = {"loss_rank", "loss_sort", "loss_box"} if cls is RSPAA else {"loss_cls", "loss_box_reg"}
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.head.cls_score.weight.grad.abs().sum() > 0
    assert model.backbone.bottom_up.res5[0].conv1.weight.grad.abs().sum() > 0
    small = seen["inside"][1]
    assert 0 < int((~small).sum()) and bool(seen["inside"][0].all())  # 96x128 fills the batch
    assert bool((seen["labels"][1][~small] == -1).all())
    assert bool((seen["labels"][1][small] >= 0).all())
    for labels, n_gt in zip(seen["labels"], (2, 1)):
        pos = (labels >= 0) & (labels < cfg.MODEL.RETINANET.NUM_CLASSES)
        assert 1 <= int(pos.sum())


def test_score_voting_moves_boxes_not_scores():
    torch.manual_seed(0)
    cfg = _tiny_cfg("rs_paa_R_18_FPN.yaml", "TEST.DETECTIONS_PER_IMAGE", 20)
    model = RSTrainer.build_model(cfg).eval()
    batch = [{"image": torch.rand(3, 128, 192) * 255, "height": 128, "width": 192}]
    with torch.no_grad():
        voted = model(batch)[0]["instances"]
        model.use_score_voting = False
        plain = model(batch)[0]["instances"]
    assert len(voted) == len(plain) == 20
    assert torch.equal(voted.scores, plain.scores) and torch.equal(voted.pred_classes, plain.pred_classes)
    assert not torch.allclose(voted.pred_boxes.tensor, plain.pred_boxes.tensor)


def test_rs_atss_ignores_the_padding_too():
    """RS-ATSS: the anchors beyond an image's padded extent are no candidates and ignored;
    inside, the labels are ATSS's over the inside anchors only."""
    cfg = _tiny_cfg("rs_atss_R_18_FPN.yaml")
    model = RSTrainer.build_model(cfg).train()
    batch = _batch(torch.Generator().manual_seed(1))
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    anchors = model.anchor_generator(features)
    from rs_detectron2.modeling.meta_arch.rs_retinanet import padded_extent_masks

    inside = padded_extent_masks(model, features, images.image_sizes)
    gts = [b["instances"] for b in batch]
    labels, _ = model.label_anchors(anchors, gts, inside)
    small = inside[1]
    assert bool((labels[1][~small] == -1).all())
    level_keeps = small.split([len(a) for a in anchors])
    matched, positive = atss_match([a[k] for a, k in zip(anchors, level_keeps)], gts[1].gt_boxes,
                                   9, anchors_per_location=model.anchor_generator.num_cell_anchors[0])
    want = torch.full((int(small.sum()),), cfg.MODEL.RETINANET.NUM_CLASSES)
    want[positive] = gts[1].gt_classes[matched[positive]]
    assert torch.equal(labels[1][small], want)


def test_paa_configs():
    from .test_model_zoo_configs import load

    cfg = load("COCO-Detection/rs_paa_R_50_FPN_1x.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "RSPAA"
    assert (cfg.MODEL.PAA.TOPK, cfg.MODEL.PAA.CANDIDATE_IOU, cfg.MODEL.PAA.SCORE_VOTING) == (9, 0.1, True)
    assert (cfg.MODEL.RETINANET.FOCAL_LOSS_ALPHA, cfg.MODEL.RETINANET.FOCAL_LOSS_GAMMA) == (0.25, 2.0)
    with open(os.path.join(ROOT, "configs", "COCO-Detection", "rs_paa_R_50_FPN_1x.yaml")) as f:
        assert f.readline().startswith("# RS-PAA, R-50-FPN, 1x (paper: 41.0 box AP, 67.3 box oLRP")
    for folder in ("", "pretrained"):
        rs = load(os.path.join("Synthetic", folder, "rs_paa_R_18_FPN.yaml"))
        stock = load(os.path.join("Synthetic", folder, "paa_R_18_FPN.yaml"))
        assert (rs.MODEL.META_ARCHITECTURE, stock.MODEL.META_ARCHITECTURE) == ("RSPAA", "PAA")
        assert stock.MODEL.RETINANET.BBOX_REG_LOSS_TYPE == "giou"
        assert rs.MODEL.RS_RETINANET.HEAD_NAME == stock.MODEL.RS_RETINANET.HEAD_NAME == "RSATSSHead"
        assert rs.MODEL.ANCHOR_GENERATOR.SIZES == stock.MODEL.ANCHOR_GENERATOR.SIZES
        assert rs.MODEL.PAA == stock.MODEL.PAA and rs.SOLVER == stock.SOLVER
