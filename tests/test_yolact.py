"""RS-YOLACT and its stock-loss twin YOLACT: the head and prototype net, the assignment
with ground-truth indices, RS-YOLACT's mask loss against a float64 loop (assembly, crop,
targets, Dice, score weights, balancing), the stock losses' wiring, inference (Fast NMS,
masks at the output size) and the configs."""
import math
import os

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import RetinaNet
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from rs_detectron2.config import add_rs_config
from rs_detectron2.engine import RSTrainer
from rs_detectron2.layers import fast_nms
from rs_detectron2.modeling.meta_arch import RSYOLACT, YOLACT, ProtoNet
from rs_detectron2.modeling.meta_arch.yolact import box_mask_samples

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "configs", "Synthetic")


def _cfg(name, *opts):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(SYNTHETIC, name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.RESNETS.STEM_OUT_CHANNELS", 8,
                         "MODEL.RESNETS.RES2_OUT_CHANNELS", 8, "MODEL.FPN.OUT_CHANNELS", 16,
                         "MODEL.YOLACT.NUM_PROTOS", 4, *opts])
    return cfg


def _batch(seed=0, size=96):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for boxes in ([[8.0, 10, 40, 50], [50, 20, 90, 60]], [[20.0, 20, 70, 80]]):
        boxes = torch.tensor(boxes)
        masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
            m[y0 + 2:y1 - 2, x0 + 2:x1 - 2] = True
        inst = Instances((size, size), gt_boxes=Boxes(boxes),
                         gt_classes=torch.tensor([1, 3][: len(boxes)]), gt_masks=BitMasks(masks))
        batch.append({"image": torch.rand(3, size, size, generator=g) * 255, "instances": inst,
                      "height": size, "width": size})
    return batch


def test_protonet_doubles_p3_and_head_shapes():
    net = ProtoNet(16, 4)
    assert net(torch.rand(2, 16, 69, 69)).shape == (2, 4, 138, 138)
    assert float(net(torch.randn(1, 16, 5, 5)).min()) >= 0  # the last ReLU is kept
    model = RSTrainer.build_model(_cfg("rs_yolact_R_18_FPN.yaml"))
    feats = [torch.rand(1, 16, s, s) for s in (12, 6, 3, 2, 1)]
    logits, deltas, coeffs = model.head(feats)
    assert [x.shape[1] for x in (logits[0], deltas[0], coeffs[0])] == [3 * 6, 3 * 4, 3 * 4]
    assert float(coeffs[0].abs().max()) <= 1.0  # tanh
    stock = RSTrainer.build_model(_cfg("yolact_R_18_FPN.yaml"))
    assert stock.head(feats)[0][0].shape[1] == 3 * 7  # softmax: K + 1 logits


def loop_dice_loss(probs, targets):
    out = []
    for p, t in zip(probs.double(), targets.double()):
        inter = sum(float(a * b) for a, b in zip(p.flatten(), t.flatten()))
        den = float((p * p).sum()) + float((t * t).sum()) + 1e-5
        out.append(1 - 2 * inter / den)
    return out


def test_rs_yolact_mask_loss_against_a_loop():
    """The unbalanced mask loss = sum_i w_i dice_loss_i / sum_i w_i over the positives, with
    mask_i = crop(sigmoid(protos . coeff_i), gt box in mask pixels) (loop: pixel by pixel)
    and t_i = the ground-truth mask resized to the prototypes, > 0.5; balanced to the RS loss."""
    torch.manual_seed(0)
    model = RSTrainer.build_model(_cfg("rs_yolact_R_18_FPN.yaml")).train()
    batch = _batch()
    captured = {}
    original = model.yolact_losses

    def spy(anchors, logits, deltas, coeffs, prototypes, gt_labels, matched, gts, masks, padded):
        captured.update(logits=logits, coeffs=coeffs, prototypes=prototypes, labels=gt_labels,
                        matched=matched, gts=gts, masks=masks, padded=padded)
        return original(anchors, logits, deltas, coeffs, prototypes, gt_labels, matched, gts,
                        masks, padded)

    model.yolact_losses = spy
    with EventStorage(0) as storage:
        losses = model(batch)
        balance = storage.latest()["mask_balance"][0]
    labels, k = captured["labels"], model.num_classes
    protos = captured["prototypes"].detach().double()
    _, ph, pw = protos.shape[1:]
    H, W = captured["padded"]
    num, den = 0.0, 0.0
    for i, j in zip(*((labels >= 0) & (labels != k)).nonzero(as_tuple=True)):
        i, j = int(i), int(j)
        g = int(captured["matched"][i, j])
        w = float(captured["logits"][i, j].detach().sigmoid().max())
        coeff = captured["coeffs"][i, j].detach().double()
        x0, y0, x1, y1 = (captured["gts"][i].gt_boxes.tensor[g].double()
                          * torch.tensor([pw / W, ph / H, pw / W, ph / H])).tolist()
        x0, x1 = max(min(x0, x1) - 1, 0), min(max(x0, x1) + 1, pw)
        y0, y1 = max(min(y0, y1) - 1, 0), min(max(y0, y1) + 1, ph)
        mask = torch.zeros(ph, pw, dtype=torch.float64)
        for r in range(ph):
            for c in range(pw):
                if x0 <= c < x1 and y0 <= r < y1:
                    mask[r, c] = 1 / (1 + math.exp(-float((protos[i, :, r, c] * coeff).sum())))
        target = torch.nn.functional.interpolate(captured["masks"][i][None, g:g + 1].double(),
                                                 (ph, pw), mode="bilinear",
                                                 align_corners=False)[0, 0] > 0.5
        num += w * loop_dice_loss(mask[None], target[None])[0]
        den += w
    assert den > 0
    want = num / den
    reference = float(losses["loss_rank"] + losses["loss_sort"])
    assert abs(float(losses["loss_mask"]) - reference) < 1e-5  # balanced to the RS loss
    assert abs(reference / balance - want) < 1e-5


@pytest.mark.parametrize("name,cls,expected", [
    ("rs_yolact_R_18_FPN.yaml", RSYOLACT, {"loss_rank", "loss_sort", "loss_box", "loss_mask"}),
    ("yolact_R_18_FPN.yaml", YOLACT, {"loss_cls", "loss_box_reg", "loss_mask"})])
def test_training_step_reaches_every_branch(name, cls, expected):
    torch.manual_seed(0)
    model = RSTrainer.build_model(_cfg(name)).train()
    assert type(model) is cls
    with EventStorage(0):
        losses = model(_batch(1))
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for module in (model.head.cls_score, model.head.bbox_pred, model.head.coeff_pred,
                   model.protonet.after[-2], model.backbone.bottom_up.res5[0].conv1):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0


def test_assignment_indices_match_detectron2s_labels():
    model = RSTrainer.build_model(_cfg("rs_yolact_R_18_FPN.yaml")).train()
    batch = _batch(2)
    images = model.preprocess_image(batch)
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    anchors = model._anchors(features, images)
    gts = [b["instances"] for b in batch]
    labels, matched = model.label_anchors_with_indices(anchors, gts)
    ref_labels, ref_boxes = RetinaNet.label_anchors(model, anchors, gts)  # detectron2
    for i, gt in enumerate(gts):
        assert torch.equal(labels[i], ref_labels[i])
        pos = (labels[i] >= 0) & (labels[i] < model.num_classes)
        assert torch.equal(gt.gt_boxes.tensor[matched[i][pos]], ref_boxes[i][pos])


def _calibrate_batchnorm(model, image):
    """BatchNorm statistics of the random backbone from one image (as a trained backbone's
    would normalise): with the initial ones the activations explode and every box is
    degenerate. Leaves the model in eval mode."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model.backbone(model.preprocess_image([{"image": image}]).tensor)
    model.eval()


def test_inference_fast_nms_and_masks_at_the_output_size():
    torch.manual_seed(0)
    model = RSTrainer.build_model(_cfg("rs_yolact_R_18_FPN.yaml",
                                       "TEST.DETECTIONS_PER_IMAGE", 7))
    image = torch.rand(3, 96, 128) * 255
    _calibrate_batchnorm(model, image)
    with torch.no_grad():
        out = model([{"image": image, "height": 48, "width": 64}])[0]["instances"]
    assert len(out) == 7 and out.pred_masks.shape == (7, 48, 64)
    assert out.pred_masks.dtype == torch.bool
    # no mask pixel outside its (output-size) box, as YOLACT crops the masks to the boxes
    for mask, box in zip(out.pred_masks, out.pred_boxes.tensor):
        ys, xs = mask.nonzero(as_tuple=True)
        if len(ys):
            assert xs.min() >= box[0].floor() - 1 and xs.max() <= box[2].ceil() + 1
            assert ys.min() >= box[1].floor() - 1 and ys.max() <= box[3].ceil() + 1
    assert bool((out.scores[:-1] >= out.scores[1:]).all())
    # the same detections as Fast NMS over the candidates, by hand
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        feats = model.backbone(images.tensor)
        feats = [feats[f] for f in model.head_in_features]
        raw = model.forward_inference(images, feats, model.head(feats))[0]
    assert len(raw) == 7 and raw.pred_masks.shape[:2] == (7, 1)
    assert torch.allclose(raw.scores, out.scores)


def test_box_mask_samples_are_bilinear_samples_inside_each_box():
    """Sample (r, c) of detection d is the bilinear value of its mask at the centre of cell
    (r, c) of its box split S x S (loop), S = the masks' larger side."""
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(2, 6, 8, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[1.0, 0.5, 6.0, 4.5], [0.0, 0.0, 8.0, 6.0]], dtype=torch.float64)
    got = box_mask_samples(masks, boxes, 8)
    assert got.shape == (2, 1, 8, 8)

    def bilinear(m, y, x):  # aligned=True: pixel centres at integer + 0.5
        y, x = y - 0.5, x - 0.5
        h, w = m.shape
        if y < -1 or y > h or x < -1 or x > w:
            return 0.0
        y, x = min(max(y, 0.0), h - 1), min(max(x, 0.0), w - 1)
        y0, x0 = int(y), int(x)
        y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
        ly, lx = y - y0, x - x0
        return float((1 - ly) * (1 - lx) * m[y0, x0] + (1 - ly) * lx * m[y0, x1]
                     + ly * (1 - lx) * m[y1, x0] + ly * lx * m[y1, x1])

    for d in range(2):
        x0, y0, x1, y1 = boxes[d].tolist()
        bw, bh = (x1 - x0) / 8, (y1 - y0) / 8
        for r in range(8):
            for c in range(8):
                # sampling_ratio 2: the mean of 2 x 2 points in the cell
                want = sum(bilinear(masks[d], y0 + (r + (a + 0.5) / 2) * bh,
                                    x0 + (c + (b + 0.5) / 2) * bw)
                           for a in range(2) for b in range(2)) / 4
                assert abs(float(got[d, 0, r, c]) - want) < 1e-9


def test_fast_nms_is_what_inference_uses_per_class():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    scores = torch.tensor([[0.9, 0.1], [0.8, 0.7], [0.3, 0.6]])
    keep, classes, kept = fast_nms(boxes, scores, 0.5, 200)
    assert sorted(zip(keep.tolist(), classes.tolist())) == [(0, 0), (1, 1), (2, 0), (2, 1)]


def test_inference_without_any_detection():
    model = RSTrainer.build_model(_cfg("rs_yolact_R_18_FPN.yaml",
                                       "MODEL.RETINANET.SCORE_THRESH_TEST", 1.0)).eval()
    with torch.no_grad():
        out = model([{"image": torch.rand(3, 64, 64) * 255, "height": 32, "width": 40}])
    inst = out[0]["instances"]
    assert len(inst) == 0 and inst.pred_masks.shape == (0, 32, 40)
