"""The built-in long-tailed LVIS-format dataset, repeat factor sampling on it, and LVIS
evaluation on numpy 2 (RSLVISEvaluator)."""
import json
import math
import os
from collections import Counter

import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.evaluation import LVISEvaluator
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.structures.masks import polygons_to_bitmask
from lvis import LVIS

from rs_detectron2.data import LVIS_CLASSES, generate_lvis_split, register_rs_synthetic_lvis
from rs_detectron2.data.synthetic_lvis import lvis_frequency, lvis_train_image_targets
from rs_detectron2.evaluation import RSLVISEvaluator, lvis_numpy_aliases

NUM_TRAIN, NUM_VAL, SIZE = 400, 24, 96


@pytest.fixture(scope="module")
def lvis_data(tmp_path_factory):
    """A 400-image train / 24-image val split of 96 px, registered in this process."""
    root = str(tmp_path_factory.mktemp("lvis_data"))
    register_rs_synthetic_lvis(root=root, num_train=NUM_TRAIN, num_val=NUM_VAL,
                               image_size=SIZE, seed=3)
    train = DatasetCatalog.get("rs_synthetic_lvis_train")
    val = DatasetCatalog.get("rs_synthetic_lvis_val")
    with open(MetadataCatalog.get("rs_synthetic_lvis_train").json_file) as f:
        train_json = json.load(f)
    with open(MetadataCatalog.get("rs_synthetic_lvis_val").json_file) as f:
        val_json = json.load(f)
    return dict(root=root, train=train, val=val, train_json=train_json, val_json=val_json)


# ------------------------------------------------------------------------------ data


def test_lvis_rule():
    assert [lvis_frequency(n) for n in (1, 10, 11, 100, 101, 5000)] == list("rrccff")


def test_tail_targets_at_the_default_size():
    targets = lvis_train_image_targets(1000)
    assert len(LVIS_CLASSES) == len(set(LVIS_CLASSES)) == 36
    tags = Counter(lvis_frequency(int(n)) for n in targets)
    assert tags == {"f": 10, "c": 15, "r": 11}
    assert targets.max() == 400 and targets.min() == 2


def test_categories_follow_the_training_counts(lvis_data):
    js = lvis_data["train_json"]
    images_of = {c["id"]: set() for c in js["categories"]}
    instances = Counter()
    for ann in js["annotations"]:
        images_of[ann["category_id"]].add(ann["image_id"])
        instances[ann["category_id"]] += 1
    for cat in js["categories"]:
        count = len(images_of[cat["id"]])
        assert cat["image_count"] == count and cat["instance_count"] == instances[cat["id"]]
        assert cat["frequency"] == lvis_frequency(count)
    tags = Counter(c["frequency"] for c in js["categories"])
    assert tags["r"] >= 5 and tags["c"] >= 5 and tags["f"] >= 1, tags
    # val carries train's categories (their tags), as LVIS val does.
    assert lvis_data["val_json"]["categories"] == js["categories"]


def test_federated_labels(lvis_data):
    for js in (lvis_data["train_json"], lvis_data["val_json"]):
        labelled = {}
        for ann in js["annotations"]:
            labelled.setdefault(ann["image_id"], set()).add(ann["category_id"])
        any_not_exhaustive = False
        for img in js["images"]:
            pos = labelled.get(img["id"], set())
            assert len(img["neg_category_ids"]) == 6
            assert not pos & set(img["neg_category_ids"])  # verified absent
            assert set(img["not_exhaustive_category_ids"]) <= pos
            any_not_exhaustive |= bool(img["not_exhaustive_category_ids"])
        assert any_not_exhaustive


def test_records_and_files(lvis_data):
    assert len(lvis_data["train"]) == NUM_TRAIN and len(lvis_data["val"]) == NUM_VAL
    rec = lvis_data["val"][0]
    assert os.path.isfile(rec["file_name"])
    assert {"neg_category_ids", "not_exhaustive_category_ids"} <= set(rec)
    for ann in rec["annotations"]:
        assert 0 <= ann["category_id"] < 36 and ann["bbox_mode"] == BoxMode.XYWH_ABS
        assert isinstance(ann["segmentation"], list)  # polygons, like LVIS
    # LVIS's area ranges use "area": the pixel count of the polygon's mask.
    for ann in lvis_data["val_json"]["annotations"][:50]:
        mask = polygons_to_bitmask(ann["segmentation"], SIZE, SIZE)
        assert ann["area"] == mask.sum() and 0 < ann["area"] <= ann["bbox"][2] * ann["bbox"][3]
    meta = MetadataCatalog.get("rs_synthetic_lvis_val")
    assert meta.evaluator_type == "lvis" and meta.thing_classes == list(LVIS_CLASSES)
    LVIS(meta.json_file)  # the lvis package reads it


def test_generation_is_deterministic_and_cached(tmp_path):
    a = generate_lvis_split(str(tmp_path / "a"), 12, 96, seed=5, split_name="train")
    b = generate_lvis_split(str(tmp_path / "b"), 12, 96, seed=5, split_name="train")
    assert open(a).read() == open(b).read()
    mtime = os.path.getmtime(a)
    assert generate_lvis_split(str(tmp_path / "a"), 12, 96, seed=5, split_name="train") == a
    assert os.path.getmtime(a) == mtime
    with pytest.raises(ValueError, match="train_json"):
        generate_lvis_split(str(tmp_path / "v"), 4, 96, seed=5, split_name="val")


# ------------------------------------------------------------------- repeat factors


def test_repeat_factors_match_a_hand_computation(lvis_data):
    """r(I) = max over the classes of I of max(1, sqrt(t / f_c)), f_c = fraction of the
    training images holding class c, worked out for a few images."""
    train, t = lvis_data["train"], 0.1
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(train, t)
    images_with = Counter(c for r in train for c in {a["category_id"] for a in r["annotations"]})
    rare = min(images_with, key=images_with.get)
    i_rare = next(i for i, r in enumerate(train)
                  if rare in {a["category_id"] for a in r["annotations"]})
    n = images_with[rare]  # e.g. 1 image of 400: f = 0.0025, r = sqrt(0.1 / 0.0025) = 6.32
    expected = max(math.sqrt(t / (images_with[c] / NUM_TRAIN))
                   for c in {a["category_id"] for a in train[i_rare]["annotations"]})
    assert expected >= math.sqrt(t / (n / NUM_TRAIN)) > 2
    assert factors[i_rare].item() == pytest.approx(expected, rel=1e-6)
    # An image holding only classes in >= 40 of the 400 images (f >= t) is not repeated.
    i_freq = next(i for i, r in enumerate(train) if r["annotations"] and all(
        images_with[a["category_id"]] >= t * NUM_TRAIN for a in r["annotations"]))
    assert factors[i_freq].item() == 1.0
    # An image whose rarest class is in 10 of 400 images: r = sqrt(0.1 / 0.025) = 2.
    for i, r in enumerate(train):
        counts = [images_with[a["category_id"]] for a in r["annotations"]]
        if counts and min(counts) == 10:
            assert factors[i].item() == pytest.approx(2.0)


def test_sampler_repeats_rare_class_images(lvis_data):
    train = lvis_data["train"]
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(train, 0.1)
    sampler = RepeatFactorTrainingSampler(factors, shuffle=True, seed=0)
    draws = Counter()
    it = iter(sampler)
    for _ in range(NUM_TRAIN * 40):
        draws[next(it)] += 1
    repeated = factors > 1.5
    assert repeated.any() and (~repeated).any()
    per_image = torch.tensor([draws[i] for i in range(NUM_TRAIN)], dtype=torch.float64)
    # Each image is drawn in proportion to its repeat factor (within sampling noise) ...
    ratio = per_image[repeated].mean() / per_image[~repeated].mean()
    expected = factors[repeated].double().mean() / factors[~repeated].double().mean()
    assert ratio == pytest.approx(expected.item(), rel=0.15)
    assert ratio > 1.5
    # ... and the rare classes' share of the drawn images grows.
    rare = {c for c, n in Counter(
        c for r in train for c in {a["category_id"] for a in r["annotations"]}).items() if n <= 10}
    has_rare = torch.tensor([bool(rare & {a["category_id"] for a in r["annotations"]})
                             for r in train])
    assert per_image[has_rare].sum() / per_image.sum() > 1.5 * has_rare.double().mean()


# ------------------------------------------------------------------- LVIS evaluation


def _ground_truth_as_predictions(record):
    anns, h, w = record["annotations"], record["height"], record["width"]
    inst = Instances((h, w))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.linspace(0.99, 0.5, len(anns))
    inst.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    masks = [torch.from_numpy(polygons_to_bitmask(a["segmentation"], h, w)) for a in anns]
    inst.pred_masks = torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool)
    return {"instances": inst}


def _run(evaluator, records):
    evaluator.reset()
    for rec in records:
        evaluator.process([{"image_id": rec["image_id"]}], [_ground_truth_as_predictions(rec)])
    return evaluator.evaluate()


def test_lvis_evaluation_runs_on_numpy2_end_to_end(lvis_data, tmp_path):
    assert "float" not in np.__dict__  # numpy 2: the alias lvis uses is gone
    records = lvis_data["val"]
    with pytest.raises(AttributeError, match="float"):  # detectron2's evaluator as it is
        _run(LVISEvaluator("rs_synthetic_lvis_val", tasks=("bbox",), distributed=False), records)
    results = _run(RSLVISEvaluator("rs_synthetic_lvis_val", tasks=("bbox", "segm"),
                                   distributed=False, output_dir=str(tmp_path)), records)
    assert "float" not in np.__dict__  # put back as it was
    for task in ("bbox", "segm"):
        # The ground truth itself as detections: every evaluated class is found perfectly.
        assert results[task]["AP"] == pytest.approx(100.0, abs=0.5), results[task]
        assert {"APr", "APc", "APf"} <= set(results[task])


def test_numpy_alias_is_scoped():
    with pytest.raises(RuntimeError):
        with lvis_numpy_aliases():
            assert np.float is float
            raise RuntimeError
    assert "float" not in np.__dict__
