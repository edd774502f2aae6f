"""Tests of the oLRP evaluator (rs_detectron2.evaluation.olrp)."""
import contextlib
import io
import json
import uuid

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, BoxMode, Instances

from rs_detectron2.evaluation.olrp import (
    FP,
    IGNORED,
    TP,
    OLRPEvaluator,
    match_image,
    optimal_lrp,
)


@pytest.fixture
def register():
    """Register tiny datasets under unique names; remove them after the test."""
    names = []

    def _register(records, classes, **metadata):
        name = f"olrp_test_{uuid.uuid4().hex[:8]}"
        DatasetCatalog.register(name, lambda: records)
        MetadataCatalog.get(name).set(thing_classes=list(classes), **metadata)
        names.append(name)
        return name

    yield _register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def box_polygon(box):
    x0, y0, x1, y1 = box
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def gt(box, cls, iscrowd=0, segmentation=None):
    return {"bbox": list(box), "bbox_mode": BoxMode.XYXY_ABS, "category_id": cls,
            "iscrowd": iscrowd,
            "segmentation": box_polygon(box) if segmentation is None else segmentation}


def record(image_id, annotations, height=100, width=100, **extra):
    return {"image_id": image_id, "height": height, "width": width,
            "annotations": annotations, **extra}


def instances(boxes, scores, classes, height=100, width=100, masks=None):
    inst = Instances((height, width))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    if masks is not None:
        inst.pred_masks = torch.as_tensor(np.asarray(masks, dtype=bool)).reshape(
            -1, height, width)
    return inst


def run(evaluator, per_image):
    """Feed ``{image_id: Instances}`` to the evaluator and evaluate."""
    evaluator.reset()
    for image_id, inst in per_image.items():
        evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    return evaluator.evaluate()


def uncompressed_rle(mask):
    """COCO's uncompressed RLE (list counts, column-major runs starting with 0s)."""
    flat = mask.flatten(order="F").astype(np.int8)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(flat)) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": list(mask.shape), "counts": ([0] if flat[0] else []) + counts}


def segm_mask(segmentation, height=100, width=100):
    """The bool mask of a detectron2 ``segmentation`` (polygons or either RLE)."""
    if isinstance(segmentation, list):
        rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation["counts"], list):
        rle = mask_util.frPyObjects(segmentation, height, width)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
    return mask_util.decode(rle).astype(bool)


def test_perfect_detector_and_undetected_class(register):
    annos = {1: [gt([10, 10, 40, 50], 0), gt([50, 20, 90, 60], 1)],
             2: [gt([5, 5, 30, 30], 0), gt([60, 60, 95, 90], 2)]}
    # One gt as an RLE with str counts, one as an uncompressed RLE (list counts).
    m = segm_mask(annos[1][1]["segmentation"])
    rle = mask_util.encode(np.asfortranarray(m, dtype=np.uint8))
    annos[1][1]["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    m = segm_mask(annos[2][0]["segmentation"])
    annos[2][0]["segmentation"] = uncompressed_rle(m)
    assert np.array_equal(segm_mask(annos[2][0]["segmentation"]), m)
    name = register([record(i, a) for i, a in annos.items()], ["a", "b", "c"],
                    evaluator_type="coco")
    preds = {}
    for i, a in annos.items():
        det = [x for x in a if x["category_id"] != 2]  # class "c" is never detected
        preds[i] = instances([x["bbox"] for x in det], [1.0] * len(det),
                             [x["category_id"] for x in det],
                             masks=[segm_mask(x["segmentation"]) for x in det])
    res = run(OLRPEvaluator(name, tasks=("bbox", "segm"), distributed=False), preds)
    assert set(res) == {"bbox_oLRP", "segm_oLRP"}
    for task in ("bbox", "segm"):
        r = res[f"{task}_oLRP"]
        assert r["oLRP-a"] == pytest.approx(0.0, abs=1e-9)
        assert r["oLRP-b"] == pytest.approx(0.0, abs=1e-9)
        assert r["oLRP-c"] == 100.0
        assert r["oLRP"] == pytest.approx(100.0 / 3)
        # Components over the classes with a threshold ("c" keeps nothing: left out).
        assert r["oLRP_loc"] == pytest.approx(0.0, abs=1e-9)
        assert r["oLRP_FP"] == 0.0 and r["oLRP_FN"] == 0.0


def test_hand_worked_single_class(register, tmp_path):
    # 3 gts; detections (score, outcome): 0.9 TP IoU 0.8, 0.8 FP, 0.7 TP IoU 0.7, 0.6 FP.
    # keep >= 0.9: (0.2/0.5 + 0 + 2) / (1 + 0 + 2) = 2.4 / 3 = 0.8
    # keep >= 0.8: (0.4 + 1 + 2) / (1 + 1 + 2) = 3.4 / 4 = 0.85
    # keep >= 0.7: (0.4 + 0.3/0.5 + 1 + 1) / (2 + 1 + 1) = 3.0 / 4 = 0.75   <- optimum
    # keep >= 0.6: (1.0 + 2 + 1) / (2 + 2 + 1) = 4.0 / 5 = 0.8
    # keep nothing: 1.  oLRP = 75; loc = mean(0.2, 0.3) = 25; FP = 1/3; FN = 1/3.
    gts = [gt([0, 0, 10, 10], 0), gt([20, 20, 30, 30], 0), gt([50, 50, 60, 60], 0)]
    name = register([record(7, gts)], ["thing"])
    dets = instances([[0, 0, 10, 8], [70, 70, 80, 80], [20, 20, 30, 27], [85, 85, 95, 95]],
                     [0.9, 0.8, 0.7, 0.6], [0, 0, 0, 0])
    res = run(OLRPEvaluator(name, distributed=False, output_dir=str(tmp_path)), {7: dets})
    r = res["bbox_oLRP"]
    assert r["oLRP"] == pytest.approx(75.0)
    assert r["oLRP-thing"] == pytest.approx(75.0)
    assert r["oLRP_loc"] == pytest.approx(25.0)
    assert r["oLRP_FP"] == pytest.approx(100 / 3)
    assert r["oLRP_FN"] == pytest.approx(100 / 3)
    with open(tmp_path / "olrp_thresholds_bbox.json") as f:
        data = json.load(f)
    (cls,) = data["classes"]
    assert cls["threshold"] == pytest.approx(0.7)
    assert data["thresholds"]["thing"] == pytest.approx(0.7)
    assert (cls["num_gt"], cls["num_tp"], cls["num_fp"], cls["num_fn"]) == (3, 2, 1, 1)
    assert cls["oLRP"] == pytest.approx(75.0) and cls["loc"] == pytest.approx(25.0)
    assert data["summary"]["oLRP"] == pytest.approx(75.0)


def test_crowd_region_detection_is_ignored(register):
    gts = [gt([0, 0, 10, 10], 0), gt([40, 40, 80, 80], 0, iscrowd=1)]
    name = register([record(1, gts)], ["a"])
    # The det inside the crowd region has the top score: as a FP it would make oLRP 50.
    dets = instances([[50, 50, 60, 60], [0, 0, 10, 10]], [0.95, 0.9], [0, 0])
    ev = OLRPEvaluator(name, distributed=False)
    res = run(ev, {1: dets})
    assert res["bbox_oLRP"]["oLRP"] == pytest.approx(0.0, abs=1e-9)
    m = ev.match_predictions(task="bbox")[1]
    assert m.status.tolist() == [IGNORED, TP]
    assert m.gt_index.tolist() == [1, 0]
    (r,) = ev.per_class_lrp("bbox", ev.match_predictions(task="bbox")).values()
    assert (r.num_gt, r.num_tp, r.num_fp) == (1, 1, 0)  # the crowd gt is no gt


def test_class_without_gt_is_skipped(register, tmp_path):
    name = register([record(1, [gt([0, 0, 10, 10], 0)])], ["a", "b"])
    dets = instances([[0, 0, 10, 10], [50, 50, 60, 60]], [0.9, 0.99], [0, 1])
    res = run(OLRPEvaluator(name, distributed=False, output_dir=str(tmp_path)), {1: dets})
    r = res["bbox_oLRP"]
    assert "oLRP-b" not in r and r["oLRP"] == pytest.approx(0.0, abs=1e-9)
    with open(tmp_path / "olrp_thresholds_bbox.json") as f:
        data = json.load(f)
    assert data["skipped_classes"] == ["b"] and list(data["thresholds"]) == ["a"]


def test_ties_in_score_cannot_be_separated(register):
    name = register([record(1, [gt([0, 0, 10, 10], 0)])], ["a"])
    # A FP with the same score as the TP: every threshold keeping the TP keeps the FP,
    # (0 + 1 + 0) / (1 + 1 + 0) = 0.5, although cutting between them would give 0.
    for order in ([0, 1], [1, 0]):
        boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60]])[order]
        ev = OLRPEvaluator(name, distributed=False)
        res = run(ev, {1: instances(boxes, [0.9, 0.9], [0, 0])})
        assert res["bbox_oLRP"]["oLRP"] == pytest.approx(50.0)
        (r,) = ev.per_class_lrp("bbox", ev.match_predictions(task="bbox")).values()
        assert r.threshold == pytest.approx(0.9) and (r.num_tp, r.num_fp) == (1, 1)
    r = optimal_lrp(np.array([0.9, 0.9]), np.array([True, False]), np.array([1.0, 0.0]), 1)
    assert r.olrp == pytest.approx(0.5)
    r = optimal_lrp(np.array([0.9, 0.8]), np.array([True, False]), np.array([1.0, 0.0]), 1)
    assert r.olrp == 0.0 and r.threshold == pytest.approx(0.9)


@pytest.mark.parametrize("id_map", [None, {10: 0, 20: 1, 30: 2}])
def test_lvis_federated_rules(register, id_map):
    ids = [1, 2, 3] if id_map is None else [10, 20, 30]  # LVIS ids of classes a, b, c
    meta = {"evaluator_type": "lvis"}
    if id_map is not None:
        meta["thing_dataset_id_to_contiguous_id"] = id_map
    records = [
        record(1, [gt([0, 0, 10, 10], 0)], neg_category_ids=[ids[1]],
               not_exhaustive_category_ids=[]),
        record(2, [gt([0, 0, 10, 10], 1), gt([20, 20, 30, 30], 2)], neg_category_ids=[],
               not_exhaustive_category_ids=[ids[2]]),
    ]
    name = register(records, ["a", "b", "c"], **meta)
    preds = {
        # a: TP; c: neither in image 1 nor a neg class there -> ignored; b: neg -> FP.
        1: instances([[0, 0, 10, 10], [40, 40, 50, 50], [60, 60, 70, 70]],
                     [0.9, 0.95, 0.95], [0, 2, 1]),
        # b: TP; c: TP, and an unmatched c (not exhaustive) -> ignored.
        2: instances([[0, 0, 10, 10], [20, 20, 30, 30], [60, 60, 70, 70]],
                     [0.5, 0.9, 0.95], [1, 2, 2]),
    }
    ev = OLRPEvaluator(name, distributed=False)
    assert ev._max_dets == 300
    r = run(ev, preds)["bbox_oLRP"]
    assert r["oLRP-a"] == pytest.approx(0.0, abs=1e-9)
    assert r["oLRP-c"] == pytest.approx(0.0, abs=1e-9)
    # b: FP at 0.95 (image 1), TP at 0.5: keep >= 0.95 gives 1, keep >= 0.5 gives 1/2.
    assert r["oLRP-b"] == pytest.approx(50.0)
    m = ev.match_predictions(task="bbox")
    assert dict(zip(m[1].det_index.tolist(), m[1].status.tolist())) == {0: TP, 1: IGNORED,
                                                                         2: FP}
    assert dict(zip(m[2].det_index.tolist(), m[2].status.tolist())) == {0: TP, 1: TP,
                                                                         2: IGNORED}


def test_max_detections_per_image(register):
    records = [record(1, [gt([0, 0, 10, 10], 0)]), record(2, [gt([0, 0, 10, 10], 1)])]
    name = register(records, ["a", "b"])
    # Two higher-scored class-b FPs on image 1 push the class-a TP out of the top 2.
    preds = {1: instances([[50, 50, 60, 60], [70, 70, 80, 80], [0, 0, 10, 10]],
                          [0.9, 0.8, 0.5], [1, 1, 0]),
             2: instances([[0, 0, 10, 10]], [0.9], [1])}
    r2 = run(OLRPEvaluator(name, distributed=False, max_dets_per_image=2), preds)["bbox_oLRP"]
    r3 = run(OLRPEvaluator(name, distributed=False, max_dets_per_image=3), preds)["bbox_oLRP"]
    assert r2["oLRP-a"] == 100.0
    assert r3["oLRP-a"] == pytest.approx(0.0, abs=1e-9)
    assert OLRPEvaluator(name)._max_dets == 100


# ------------------------------------------------------------------ agreement with COCOeval
def _random_case(seed, num_images=60, height=60, width=80, num_classes=3):
    """Random gts (some crowd) and <= 100 random detections per image: detectron2 records,
    the same gts as a COCO dict, Instances per image, COCO results per task."""
    rng = np.random.default_rng(seed)
    records, images, anns, preds = [], [], [], {}
    results = {"bbox": [], "segm": []}
    for image_id in range(1, num_images + 1):
        annos = []
        for _ in range(int(rng.integers(0, 7))):
            x0, y0 = rng.uniform(0, width - 6), rng.uniform(0, height - 6)
            w, h = rng.uniform(4, 40), rng.uniform(4, 30)
            x1, y1 = min(x0 + w, width), min(y0 + h, height)
            poly = [x0, y0, x1, y0 + rng.uniform(0, 2), x1, y1, x0 + rng.uniform(0, 2), y1]
            annos.append({"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS,
                          "category_id": int(rng.integers(num_classes)),
                          "iscrowd": int(rng.random() < 0.2), "segmentation": [poly]})
        records.append(record(image_id, annos, height, width))
        images.append({"id": image_id, "height": height, "width": width})
        for a in annos:
            x0, y0, x1, y1 = a["bbox"]
            anns.append({"id": len(anns) + 1, "image_id": image_id,
                         "category_id": a["category_id"] + 1,
                         "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                         "iscrowd": a["iscrowd"], "segmentation": a["segmentation"]})
        boxes, classes, masks = [], [], []
        for a in annos:  # several perturbed copies of each gt, mostly of its class
            m = mask_util.decode(mask_util.merge(mask_util.frPyObjects(
                a["segmentation"], height, width))).astype(bool)
            for _ in range(int(rng.integers(0, 4))):
                boxes.append(np.asarray(a["bbox"]) + rng.normal(0, 2.0, 4))
                classes.append(a["category_id"] if rng.random() < 0.8
                               else int(rng.integers(num_classes)))
                masks.append(np.roll(m, tuple(rng.integers(-3, 4, 2)), axis=(0, 1)))
        for _ in range(int(rng.integers(0, 100 - len(boxes) + 1))):
            x0, y0 = rng.uniform(0, width - 6), rng.uniform(0, height - 6)
            b = np.array([x0, y0, x0 + rng.uniform(3, 40), y0 + rng.uniform(3, 30)])
            boxes.append(b)
            classes.append(int(rng.integers(num_classes)))
            mk = np.zeros((height, width), bool)
            mk[int(b[1]):int(np.ceil(b[3])), int(b[0]):int(np.ceil(b[2]))] = True
            masks.append(mk)
        n = len(boxes)
        scores = np.round(rng.random(n), 1)  # many ties
        inst = instances(np.array(boxes).reshape(-1, 4), scores, classes, height, width,
                         np.array(masks).reshape(-1, height, width))
        preds[image_id] = inst
        b32 = inst.pred_boxes.tensor.numpy().astype(np.float64)
        for k in range(n):
            common = {"image_id": image_id, "category_id": int(classes[k]) + 1,
                      "score": float(inst.scores[k])}
            x0, y0, x1, y1 = b32[k]
            results["bbox"].append({**common, "bbox": [x0, y0, x1 - x0, y1 - y0]})
            rle = mask_util.encode(np.asfortranarray(masks[k], dtype=np.uint8))
            rle["counts"] = rle["counts"].decode()
            results["segm"].append({**common, "segmentation": rle})
    coco = {"images": images, "annotations": anns,
            "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(num_classes)]}
    return records, coco, preds, results


def _cocoeval_matches(coco_dict, results, task):
    """{result index: (status, matched COCO gt id or 0)} and IoUs of TPs, from COCOeval."""
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = coco_dict
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        E = COCOeval(coco_gt, coco_dt, task)
        E.params.iouThrs = np.array([0.5])
        E.params.areaRng = [[0, 1e10]]
        E.params.areaRngLbl = ["all"]
        E.params.maxDets = [100]
        E.evaluate()
    out, tp_iou = {}, {}
    for e in E.evalImgs:
        if e is None:
            continue
        key = (e["image_id"], e["category_id"])
        gt_ids = [g["id"] for g in E._gts[key]]
        for k, dt_id in enumerate(e["dtIds"]):
            gid, ign = int(e["dtMatches"][0, k]), bool(e["dtIgnore"][0, k])
            status = IGNORED if ign else (TP if gid > 0 else FP)
            out[dt_id - 1] = (status, gid)
            if status == TP:
                tp_iou[dt_id - 1] = E.ious[key][k, gt_ids.index(gid)]
    return out, tp_iou


def _reference_olrp(scores, is_tp, ious, num_gt, iou_threshold=0.5):
    """Slow and plain: LRP at every distinct score threshold, in float64, and its minimum
    (keep nothing first, then thresholds from the highest; ties keep the first)."""
    best = (1.0, None, 0, 0, float("nan"))
    for s in sorted(set(float(x) for x in scores), reverse=True):
        n_tp = n_fp = 0
        loc = 0.0
        for score, t, iou in zip(scores, is_tp, ious):
            if score >= s:
                if t:
                    n_tp += 1
                    loc += 1.0 - float(iou)
                else:
                    n_fp += 1
        n_fn = num_gt - n_tp
        lrp = (loc / (1.0 - iou_threshold) + n_fp + n_fn) / (n_tp + n_fp + n_fn)
        if lrp < best[0]:
            best = (lrp, s, n_tp, n_fp, loc / n_tp if n_tp else float("nan"))
    return best


@pytest.mark.parametrize("task", ["bbox", "segm"])
def test_matching_agrees_with_cocoeval(register, task):
    records, coco_dict, preds, results = _random_case(seed=1 if task == "bbox" else 2)
    name = register(records, ["c0", "c1", "c2"])
    ev = OLRPEvaluator(name, tasks=(task,), distributed=False)
    res = run(ev, preds)[f"{task}_oLRP"]
    matches = ev.match_predictions(task=task)
    first = {}  # image id -> index of its first detection in the COCO results
    gt_ids = {}  # (image id, index in the record) -> COCO ann id
    n = 0
    for image_id, inst in preds.items():
        first[image_id] = n
        n += len(inst)
    ann_id = 0
    for r in records:
        for k in range(len(r["annotations"])):
            ann_id += 1
            gt_ids[r["image_id"], k] = ann_id
    mine, my_iou = {}, {}
    for image_id, m in matches.items():
        for d, s, g, iou in zip(m.det_index, m.status, m.gt_index, m.ious):
            key = first[image_id] + int(d)
            mine[key] = (int(s), gt_ids[image_id, int(g)] if g >= 0 else 0)
            if s == TP:
                my_iou[key] = iou
    theirs, their_iou = _cocoeval_matches(coco_dict, results[task], task)
    assert len(mine) == n
    statuses = [s for s, _ in mine.values()]
    assert statuses.count(TP) > 40 and statuses.count(IGNORED) > 3  # a non-trivial case
    # Status of every detection, and the gt each TP / crowd-ignored detection took.
    assert mine == theirs
    assert my_iou.keys() == their_iou.keys()
    assert all(abs(my_iou[k] - their_iou[k]) < 1e-12 for k in my_iou)
    # End to end: per-class oLRP from COCOeval's matches with the slow reference.
    for c in range(3):
        idx = [k for k, (s, _) in theirs.items()
               if s != IGNORED and results[task][k]["category_id"] == c + 1]
        num_gt = sum(1 for a in coco_dict["annotations"]
                     if a["category_id"] == c + 1 and not a["iscrowd"])
        ref = _reference_olrp([results[task][k]["score"] for k in idx],
                              [theirs[k][0] == TP for k in idx],
                              [their_iou.get(k, 0.0) for k in idx], num_gt)
        assert res[f"oLRP-c{c}"] == pytest.approx(ref[0] * 100, abs=1e-9)


def test_vectorised_lrp_matches_slow_reference():
    rng = np.random.default_rng(0)
    for case in range(300):
        n = int(rng.integers(0, 50))
        thr = 0.5 if case % 3 else 0.75
        scores = np.round(rng.random(n), 2)  # with ties
        is_tp = rng.random(n) < rng.random()
        ious = np.where(is_tp, rng.uniform(thr, 1.0, n), 0.0)
        num_gt = int(is_tp.sum()) + int(rng.integers(0 if is_tp.any() else 1, 6))
        got = optimal_lrp(scores, is_tp, ious, num_gt, thr)
        lrp, s, n_tp, n_fp, loc = _reference_olrp(scores, is_tp, ious, num_gt, thr)
        assert got.olrp == pytest.approx(lrp, abs=1e-12)
        assert got.threshold == s
        assert (got.num_tp, got.num_fp, got.num_fn) == (n_tp, n_fp, num_gt - n_tp)
        if s is None:
            assert np.isnan(got.loc) and np.isnan(got.fp) and got.fn == 1.0
        else:
            assert got.loc == pytest.approx(loc, abs=1e-12)
            assert got.fp == pytest.approx(n_fp / (n_tp + n_fp))
            assert got.fn == pytest.approx((num_gt - n_tp) / num_gt)


def test_match_image_greedy_order_and_ties():
    # Two dets on one gt: the higher score takes it, the other is a FP; among two gts of
    # equal IoU COCO takes the later one.
    gts = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], dtype=np.float64)
    dets = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], dtype=np.float64)
    m = match_image(dets, np.array([0.5, 0.9, 0.7]), np.zeros(3, np.int64), gts,
                    np.zeros(2, np.int64), np.zeros(2, bool))
    assert m.det_index.tolist() == [1, 2, 0]
    assert m.status.tolist() == [TP, TP, FP]
    assert m.gt_index.tolist() == [1, 0, -1]


def test_thresholds_file_bad_tasks_and_empty(register, tmp_path, caplog):
    name = register([record(1, [gt([0, 0, 10, 10], 0)]), record(2, [gt([5, 5, 30, 30], 1)])],
                    ["a", "b"])
    with pytest.raises(ValueError, match="subset"):
        OLRPEvaluator(name, tasks=("bbox", "keypoints"))
    with pytest.raises(ValueError, match="subset"):
        OLRPEvaluator(name, tasks=())
    ev = OLRPEvaluator(name, tasks=("segm", "bbox"), distributed=False,
                       output_dir=str(tmp_path))
    ev.reset()
    assert ev.evaluate() == {}  # nothing processed: warning and {}
    m = segm_mask(box_polygon([0, 0, 10, 10]))
    preds = {1: instances([[0, 0, 10, 10], [60, 60, 70, 70]], [0.8, 0.3], [0, 1],
                          masks=[m, np.zeros_like(m)])}
    res = run(ev, preds)
    assert list(res) == ["bbox_oLRP", "segm_oLRP"]
    # Only masks that can match are encoded: class "b" has no gt on image 1.
    kept = ev._predictions[0]["masks"]
    assert kept[0]["size"] == [100, 100] and kept[1] is None
    for task in ("bbox", "segm"):
        with open(tmp_path / f"olrp_thresholds_{task}.json") as f:
            data = json.load(f)
        assert data["task"] == task
        assert data["thresholds"] == {"a": pytest.approx(0.8), "b": None}
        b = data["classes"][1]
        assert b["oLRP"] == 100.0 and b["loc"] is None and b["FN"] == 100.0
        assert res[f"{task}_oLRP"]["oLRP"] == pytest.approx(50.0, abs=1e-9)
