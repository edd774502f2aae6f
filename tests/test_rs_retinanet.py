"""RS one-stage detectors: ATSS assignment, the RS-ATSS head, the P6/P7 neck, RSRetinaNet's
losses, assignment choice and inference selection, and train_net.py end to end."""
import math
import os
import subprocess
import sys

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from rs_detectron2.config import add_rs_config
from rs_detectron2.modeling.backbone.retinanet_fpn import LastLevelP6P7FromP5
from rs_detectron2.modeling.meta_arch import RSATSSHead, RSRetinaNet, atss_match

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ATSS_CONFIG = os.path.join(ROOT, "configs", "Synthetic", "rs_atss_R_18_FPN.yaml")


# ------------------------------------------------------------------------------ ATSS


def test_atss_hand_worked_case():
    """Two levels along x, two boxes, topk 3 (numbers worked out below).

    Level 0: six 10x10 anchors a0..a5 at x = 10i..10i+10 (centres 5, 15, ..., 55).
    Level 1: three 20x20 anchors b0..b2 at x = 20i..20i+20, y = -5..15 (centres 10, 30, 50).
    A = [10, 0, 33, 10] (centre 21.5, area 230), B = [11, 0, 24, 10] (centre 17.5, area 130).

    A's candidates: a2, a1, a3 (distances 3.5, 6.5, 13.5) and b0..b2; IoUs .4348 (a1),
    .4348 (a2), .1 (a3), .1887 (b0), .26 (b1), 0 (b2): mean .2364 + std .1767 = .4131 ->
    a1 and a2 (centres inside A).
    B's candidates: a1, a2, a0 and b0..b2; IoUs .6429 (a1), .2105 (a2), 0, .2045, .0816, 0:
    mean .1899 + std .2407 = .4306 -> a1 only.
    a1 is claimed twice and goes to B (IoU .6429 > .4348); a2 goes to A.
    """
    level0 = Boxes(torch.tensor([[10.0 * i, 0, 10 * i + 10, 10] for i in range(6)]))
    level1 = Boxes(torch.tensor([[20.0 * i, -5, 20 * i + 20, 15] for i in range(3)]))
    gt = Boxes(torch.tensor([[10.0, 0, 33, 10], [11.0, 0, 24, 10]]))
    matched, positive = atss_match([level0, level1], gt, topk=3)
    assert positive.tolist() == [False, True, True] + [False] * 6
    assert matched[1].item() == 1 and matched[2].item() == 0
    # Each box alone: A takes a1 and a2, B takes a1.
    assert atss_match([level0, level1], gt[[0]], topk=3)[1].nonzero().flatten().tolist() == [1, 2]
    assert atss_match([level0, level1], gt[[1]], topk=3)[1].nonzero().flatten().tolist() == [1]


def _iou64(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if inter > 0 else 0.0


def brute_force_atss(levels, gts, topk):
    """ATSS written out with loops over boxes, float64."""
    anchors = [a for level in levels for a in level.tensor.double().tolist()]
    gt_list = gts.tensor.double().tolist()
    best = [(-math.inf, 0)] * len(anchors)  # (IoU, gt) of each anchor's positive claim
    for g, box in enumerate(gt_list):
        gx, gy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        cands, start = [], 0
        for level in levels:
            idx = list(range(start, start + len(level)))
            dist = [math.hypot((anchors[i][0] + anchors[i][2]) / 2 - gx,
                               (anchors[i][1] + anchors[i][3]) / 2 - gy) for i in idx]
            order = sorted(range(len(idx)), key=lambda j: (dist[j], j))
            cands += [idx[j] for j in order[:topk]]
            start += len(level)
        ious = [_iou64(anchors[i], box) for i in cands]
        mean = sum(ious) / len(ious)
        std = math.sqrt(sum((v - mean) ** 2 for v in ious) / (len(ious) - 1))
        for i, v in zip(cands, ious):
            cx, cy = (anchors[i][0] + anchors[i][2]) / 2, (anchors[i][1] + anchors[i][3]) / 2
            inside = min(cx - box[0], cy - box[1], box[2] - cx, box[3] - cy) > 0.01
            if v >= mean + std and inside and v > best[i][0]:
                best[i] = (v, g)
    positive = [b[0] > -math.inf for b in best]
    return [b[1] for b in best], positive


def grid_levels(image, strides, sizes, per_location):
    levels = []
    for stride, size in zip(strides, sizes):
        h, w = -(-image[0] // stride), -(-image[1] // stride)
        ys, xs = torch.meshgrid(torch.arange(h) * stride + stride / 2,
                                torch.arange(w) * stride + stride / 2, indexing="ij")
        centres = torch.stack([xs.flatten(), ys.flatten()], dim=1).double()
        scales = size * 2 ** (torch.arange(per_location, dtype=torch.float64) / per_location)
        half = scales[None, :, None] / 2
        boxes = torch.cat([centres[:, None] - half, centres[:, None] + half], dim=2)
        levels.append(Boxes(boxes.reshape(-1, 4).float()))
    return levels


@pytest.mark.parametrize("per_location", [1, 3])
def test_atss_matches_brute_force_loop(per_location):
    g = torch.Generator().manual_seed(per_location)
    image = (96, 128)
    levels = grid_levels(image, (8, 16, 32), (16, 32, 64), per_location)
    cases = 0
    for num_gt in [0, 1, 1, 2, 3, 5, 8] * 4:
        wh = torch.empty(num_gt, 2).uniform_(3, 150, generator=g)  # tiny to larger than all
        xy = torch.rand(num_gt, 2, generator=g) * torch.tensor([image[1], image[0]]) - wh / 3
        gts = Boxes(torch.cat([xy, xy + wh], dim=1))
        matched, positive = atss_match(levels, gts, topk=9, anchors_per_location=per_location)
        ref_matched, ref_positive = brute_force_atss(levels, gts, topk=9)
        assert positive.tolist() == ref_positive
        assert matched[positive].tolist() == [m for m, p in zip(ref_matched, ref_positive) if p]
        cases += bool(num_gt)
    assert cases > 20


def test_atss_without_ground_truth():
    level = Boxes(torch.tensor([[0.0, 0, 10, 10], [10.0, 0, 20, 10]]))
    matched, positive = atss_match([level], Boxes(torch.zeros(0, 4)), topk=9)
    assert not positive.any() and matched.tolist() == [0, 0]


# ------------------------------------------------------------------------ the model


def tiny_cfg(*opts):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(ATSS_CONFIG)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.FPN.OUT_CHANNELS", 64, *opts])
    return cfg


def batch(with_empty=True):
    def inst(boxes, classes):
        i = Instances((96, 128))
        i.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        i.gt_classes = torch.tensor(classes, dtype=torch.int64)
        return i

    torch.manual_seed(0)
    images = [{"image": torch.rand(3, 96, 128) * 255,
               "instances": inst([[10, 10, 50, 60], [60, 20, 120, 90]], [0, 3])}]
    if with_empty:
        images.append({"image": torch.rand(3, 96, 128) * 255, "instances": inst([], [])})
    return images


def test_rs_atss_losses_and_gradients():
    model = build_model(tiny_cfg())
    assert isinstance(model, RSRetinaNet) and isinstance(model.head, RSATSSHead)
    assert model.assigner == "atss" and isinstance(model.backbone.top_block, LastLevelP6P7FromP5)
    model.train()
    with EventStorage():
        losses = model(batch())
    assert set(losses) == {"loss_rank", "loss_sort", "loss_box"}
    assert all(torch.isfinite(v) for v in losses.values())
    # The box loss is balanced to the RS loss: same value.
    rs = float(losses["loss_rank"].detach() + losses["loss_sort"].detach())
    assert abs(float(losses["loss_box"].detach()) - rs) < 1e-5
    sum(losses.values()).backward()
    head = model.head
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.cls_subnet.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.bbox_subnet.parameters())
    # The scales of the levels holding positives (the 40-70 px boxes) get gradient.
    assert head.scales.grad is not None and (head.scales.grad != 0).sum() >= 2
    assert head.cls_score.weight.grad.abs().sum() > 0


def test_images_without_annotations_give_finite_losses():
    model = build_model(tiny_cfg())
    model.train()
    images = batch()[1:] * 2
    with EventStorage():
        losses = model(images)
    assert all(torch.isfinite(v) for v in losses.values())
    assert float(losses["loss_box"]) == 0.0


def test_assigner_choice():
    iou = build_model(tiny_cfg("MODEL.RS_RETINANET.ASSIGNER", "iou"))
    atss = build_model(tiny_cfg())
    images = batch(with_empty=False)
    gt = [images[0]["instances"]]
    with torch.no_grad():
        features = [atss.backbone(torch.zeros(1, 3, 96, 128))[f] for f in atss.head_in_features]
    anchors = atss.anchor_generator(features)
    labels_atss, _ = atss.label_anchors(anchors, gt)
    labels_iou, _ = iou.label_anchors(anchors, gt)
    assert not (labels_atss[0] == -1).any()  # ATSS ignores nothing
    assert (labels_iou[0] == -1).any()  # detectron2's matcher: IoU in [0.4, 0.5) ignored
    assert not torch.equal(labels_atss[0], labels_iou[0])
    with pytest.raises(ValueError, match="RS_RETINANET.ASSIGNER"):
        build_model(tiny_cfg("MODEL.RS_RETINANET.ASSIGNER", "sampling"))
    with pytest.raises(ValueError, match="FPN.P6P7_TOP_BLOCK"):
        build_model(tiny_cfg("MODEL.FPN.P6P7_TOP_BLOCK", "P6_ONLY"))


def test_p6_p7_from_p5_without_relu():
    block = LastLevelP6P7FromP5(8)
    p5 = torch.randn(1, 8, 8, 8)
    p6, p7 = block(p5)
    assert torch.equal(p7, block.p7(block.p6(p5)))
    assert not torch.allclose(p7, block.p7(torch.relu(block.p6(p5))))  # detectron2's ReLU
    assert block.in_feature == "p5"


def test_inference_keeps_top_anchors_then_classes_above_threshold():
    model = build_model(tiny_cfg())
    anchors = Boxes(torch.tensor([[0.0, 0, 10, 10]] * 5))
    scores = torch.tensor([[0.90, 0.20, 0.01],  # anchor 0: max .90
                           [0.30, 0.04, 0.02],  # anchor 1: max .30, 4th: not in the top 3
                           [0.10, 0.60, 0.55],  # anchor 2: max .60
                           [0.50, 0.49, 0.48],  # anchor 3: max .50
                           [0.02, 0.03, 0.04]])  # anchor 4: max .04
    out = model._decode_per_level_predictions(anchors, scores, torch.zeros(5, 4), 0.05, 3, (10, 10))
    kept = sorted(zip(out.scores.tolist(), out.pred_classes.tolist()))
    # Every class above 0.05 of anchors 0, 2, 3 (detectron2 would keep the top 3 pairs).
    expected = [(0.90, 0), (0.20, 1), (0.10, 0), (0.60, 1), (0.55, 2), (0.50, 0), (0.49, 1),
                (0.48, 2)]
    assert [(round(s, 6), c) for s, c in kept] == sorted(expected)
    model.eval()
    with torch.no_grad():
        results = model([{"image": torch.rand(3, 96, 128) * 255, "height": 96, "width": 128}])
    assert len(results[0]["instances"]) <= 100


def test_train_net_then_eval_only(tmp_path):
    def run(*args):
        env = dict(os.environ, OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "train_net.py"), *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
        return proc.stdout + proc.stderr

    opts = ["DATASETS.RS_SYNTHETIC.ROOT", str(tmp_path / "data"),
            "DATASETS.RS_SYNTHETIC.NUM_TRAIN", "6", "DATASETS.RS_SYNTHETIC.NUM_VAL", "3",
            "DATASETS.RS_SYNTHETIC.IMAGE_SIZE", "96",
            "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96",
            "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
            "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0"]
    out = tmp_path / "out"
    log = run("--config-file", ATSS_CONFIG, *opts, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(out))
    assert "loss_rank" in log and "loss_sort" in log and "loss_box" in log
    assert "Evaluation results for bbox" in log and "copypaste: Task: bbox_oLRP" in log
    evaluated = run("--config-file", ATSS_CONFIG, "--eval-only", *opts,
                    "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "e"))
    assert "Evaluation results for bbox" in evaluated
