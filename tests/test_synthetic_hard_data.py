"""The hard built-in dataset (look-alike glyphs): determinism, COCO validity, caching,
registration and its configs."""
import hashlib
import itertools
import json
import logging
import os
import time

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import default_argument_parser
from detectron2.modeling import build_model
from detectron2.structures import BoxMode

from rs_detectron2.config import add_rs_config
from rs_detectron2.data import (
    GLYPH_CLASSES,
    GLYPH_GENERATOR_VERSION,
    RS_SYNTHETIC_HARD_SPLITS,
    generate_glyph_image,
    generate_glyph_split,
    prepare_rs_synthetic,
    register_rs_synthetic_hard_from_cfg,
)
from rs_detectron2.data import builtin, synthetic_core, synthetic_glyphs
from rs_detectron2.engine import default_rs_setup

from .synthetic_checks import read_pixels, tight_box

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("rs_synthetic_hard_train", "rs_synthetic_hard_val")
HARD_CONFIGS = ("rs_faster_rcnn_R_18_FPN_hard", "rs_mask_rcnn_R_18_FPN_hard",
                "faster_rcnn_R_18_FPN_hard", "mask_rcnn_R_18_FPN_hard")


@pytest.fixture(scope="module")
def split_192(tmp_path_factory):
    """24 images of the default size: enough for the statistics (classes, sizes, overlap)."""
    out = tmp_path_factory.mktemp("hard192")
    return generate_glyph_split(str(out), 24, 192, 5, "val")


# ------------------------------------------------------------------------ generator
def test_deterministic(tmp_path):
    a = generate_glyph_split(str(tmp_path / "a"), 5, 96, 7, "train")
    b = generate_glyph_split(str(tmp_path / "b"), 5, 96, 7, "train")
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()
    pa, pb = read_pixels(tmp_path / "a"), read_pixels(tmp_path / "b")
    assert list(pa) == [f"train_{i:06d}.png" for i in range(5)] == list(pb)
    for f in pa:
        assert pa[f].shape == (96, 96, 3) and pa[f].dtype == np.uint8
        np.testing.assert_array_equal(pa[f], pb[f])
    # Image i is generate_glyph_image with the stream (seed, i).
    img3, _ = generate_glyph_image(np.random.default_rng([7, 3]), 96)
    np.testing.assert_array_equal(img3, pa["train_000003.png"])
    # Another seed (as the val split gets) gives other images.
    generate_glyph_split(str(tmp_path / "c"), 5, 96, 8, "val")
    pc = read_pixels(tmp_path / "c")
    assert all(not np.array_equal(pa[f"train_{i:06d}.png"], pc[f"val_{i:06d}.png"])
               for i in range(5))


def test_coco_valid(split_192):
    with open(split_192) as f:
        data = json.load(f)
    coco = COCO(split_192)
    assert len(GLYPH_CLASSES) >= 10 and len(set(GLYPH_CLASSES)) == len(GLYPH_CLASSES)
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [
        (i + 1, n) for i, n in enumerate(GLYPH_CLASSES)
    ]
    assert sorted(coco.getImgIds()) == list(range(1, 25))
    image_dir = os.path.join(os.path.dirname(split_192), "images")
    for img in data["images"]:
        assert (img["height"], img["width"]) == (192, 192)
        assert os.path.isfile(os.path.join(image_dir, img["file_name"]))
    anns = data["annotations"]
    assert len({a["id"] for a in anns}) == len(anns)
    per_image = {i: coco.getAnnIds(imgIds=[i]) for i in coco.getImgIds()}
    assert all(1 <= len(v) <= 6 for v in per_image.values())
    assert len(anns) >= 24 * 3

    union = {}
    for a in anns:
        assert a["iscrowd"] == 0 and 1 <= a["category_id"] <= len(GLYPH_CLASSES)
        assert isinstance(a["segmentation"]["counts"], str)
        m = mask_util.decode(a["segmentation"]).astype(bool)
        assert m.shape == (192, 192)
        x, y, w, h = a["bbox"]
        assert x >= 0 and y >= 0 and x + w <= 192 and y + h <= 192
        assert a["bbox"] == [float(v) for v in tight_box(m)]
        assert a["bbox"] == mask_util.toBbox(a["segmentation"]).tolist()
        assert a["area"] == m.sum() == int(mask_util.area(a["segmentation"])) >= 12
        assert np.array_equal(coco.annToMask(a).astype(bool), m)
        # Visible masks of one image are disjoint (occluded parts are removed).
        u = union.setdefault(a["image_id"], np.zeros((192, 192), bool))
        assert not (u & m).any()
        u |= m

    # Every class appears; sizes span small to large glyphs (height 20-72 px at 192).
    assert {a["category_id"] for a in anns} == set(range(1, len(GLYPH_CLASSES) + 1))
    sides = np.array([max(a["bbox"][2:]) for a in anns])
    assert sides.min() <= 26 and sides.max() >= 60 and sides.max() <= 100
    assert (sides <= 32).sum() >= 0.15 * len(anns)
    # Overlapping instances: some pairs of boxes of one image intersect.
    overlaps = 0
    for ids in per_image.values():
        for a, b in itertools.combinations(coco.loadAnns(ids), 2):
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
            overlaps += ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
    assert overlaps >= 3


def test_occlusion_contrast_and_clutter():
    occluded, n, cluttered = 0, 0, 0
    for index in range(20):
        image, annotations = generate_glyph_image(np.random.default_rng([11, index]), 128)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        objects = np.zeros((128, 128), bool)
        for ann in annotations:
            objects |= ann["mask"]
        for ann in annotations:
            area = ann["mask"].sum()
            n += 1
            assert area >= 0.7 * ann["full_area"] and area >= 12
            occluded += area < ann["full_area"]
            # The glyph stands out from the pixels right around it.
            ring = cv2.dilate(ann["mask"].astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            ring &= ~objects
            if ring.sum() >= 10:
                inside = image[ann["mask"]].astype(float).mean(0)
                outside = image[ring].astype(float).mean(0)
                assert np.linalg.norm(inside - outside) > 40
        # Clutter: much of the image's strong edges lie outside every object.
        edges = cv2.Canny(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), 60, 120) > 0
        grown = cv2.dilate(objects.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        cluttered += (edges & ~grown).sum() >= 0.3 * edges.sum()
    assert n >= 50 and occluded >= 3
    assert cluttered >= 15


def test_fast_enough():
    """1,000 images must take well under a minute: at most 30 ms of CPU per image (about
    10 ms measured), whatever else the machine runs."""
    t0 = time.process_time()
    for index in range(15):
        generate_glyph_image(np.random.default_rng([0, index]), 192)
    assert (time.process_time() - t0) / 15 < 0.03


class _Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_cache_reused(tmp_path, monkeypatch):
    recorder = _Recorder()
    module_logger = synthetic_core.logger  # write_coco_split, shared by the generators
    old_level = module_logger.level
    module_logger.setLevel(logging.INFO)
    module_logger.addHandler(recorder)
    try:
        out = str(tmp_path / "split")
        json_file = generate_glyph_split(out, 4, 96, 1, "train")
        mtime = os.stat(json_file).st_mtime_ns

        def boom(*args, **kwargs):
            raise AssertionError("the cache should have been reused")

        monkeypatch.setattr(synthetic_glyphs, "generate_glyph_image", boom)
        recorder.messages.clear()
        assert generate_glyph_split(out, 4, 96, 1, "train") == json_file
        assert os.stat(json_file).st_mtime_ns == mtime
        assert any("reusing" in m and "rs_synthetic_hard" in m for m in recorder.messages)
        # An interrupted run (no JSON) is regenerated.
        os.remove(json_file)
        with pytest.raises(AssertionError, match="reused"):
            generate_glyph_split(out, 4, 96, 1, "train")
    finally:
        module_logger.removeHandler(recorder)
        module_logger.setLevel(old_level)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_glyph_split(str(tmp_path), 0, 96, 0, "train")
    with pytest.raises(ValueError):
        generate_glyph_split(str(tmp_path), 3, 32, 0, "train")


# --------------------------------------------------------------------- registration
def test_default_registration():
    assert tuple(RS_SYNTHETIC_HARD_SPLITS) == NAMES
    for name, split in zip(NAMES, ("train", "val")):
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(GLYPH_CLASSES)
        assert meta.evaluator_type == "coco"
        n = 1000 if split == "train" else 200
        assert meta.json_file.endswith(os.path.join(
            "rs_synthetic_hard", f"v{GLYPH_GENERATOR_VERSION}_img192_n{n}_seed0", split,
            "annotations.json"))
        assert meta.image_root == os.path.join(os.path.dirname(meta.json_file), "images")


def test_families_do_not_share_seeds_or_caches():
    # The shapes family keeps the split seeds (so its caches) it had before the hard one.
    digest = hashlib.sha256(b"rs_synthetic:0:train").digest()
    assert builtin._split_seed(0, "train") == int.from_bytes(digest[:8], "little")
    assert builtin._split_seed(0, "train", "rs_synthetic_hard") != builtin._split_seed(0, "train")
    assert (builtin._split_dir("/r", "train", 5, 64, 0, "rs_synthetic_hard")
            != builtin._split_dir("/r", "train", 5, 64, 0))


def test_register_from_cfg(tmp_path, monkeypatch):
    shapes_json = MetadataCatalog.get("rs_synthetic_train").json_file
    cfg = get_cfg()
    add_rs_config(cfg)
    assert (cfg.DATASETS.RS_SYNTHETIC_HARD.NUM_TRAIN, cfg.DATASETS.RS_SYNTHETIC_HARD.NUM_VAL,
            cfg.DATASETS.RS_SYNTHETIC_HARD.IMAGE_SIZE, cfg.DATASETS.RS_SYNTHETIC_HARD.SEED,
            cfg.DATASETS.RS_SYNTHETIC_HARD.ROOT) == (1000, 200, 192, 0, "")
    cfg.DATASETS.RS_SYNTHETIC_HARD.ROOT = str(tmp_path / "root")
    cfg.DATASETS.RS_SYNTHETIC_HARD.NUM_TRAIN = 3
    cfg.DATASETS.RS_SYNTHETIC_HARD.NUM_VAL = 2
    cfg.DATASETS.RS_SYNTHETIC_HARD.IMAGE_SIZE = 64
    cfg.DATASETS.RS_SYNTHETIC_HARD.SEED = 2
    assert tuple(register_rs_synthetic_hard_from_cfg(cfg)) == NAMES
    meta = MetadataCatalog.get("rs_synthetic_hard_train")
    assert meta.json_file == os.path.join(
        str(tmp_path / "root"), "rs_synthetic_hard", f"v{GLYPH_GENERATOR_VERSION}_img64_n3_seed2",
        "train", "annotations.json")
    assert meta.thing_classes == list(GLYPH_CLASSES) and meta.evaluator_type == "coco"
    assert meta.thing_dataset_id_to_contiguous_id == {i + 1: i for i in range(len(GLYPH_CLASSES))}
    assert not os.path.exists(meta.json_file)  # registration is lazy

    train = DatasetCatalog.get("rs_synthetic_hard_train")
    assert os.path.isfile(meta.json_file) and len(train) == 3
    for d in train:
        assert d["file_name"].startswith(meta.image_root) and os.path.isfile(d["file_name"])
        assert (d["height"], d["width"]) == (64, 64)
        for a in d["annotations"]:
            assert a["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= a["category_id"] < len(GLYPH_CLASSES)
            assert isinstance(a["segmentation"], dict)
    val_meta = MetadataCatalog.get("rs_synthetic_hard_val")
    assert os.path.dirname(val_meta.json_file) != os.path.dirname(meta.json_file)
    assert prepare_rs_synthetic("rs_synthetic_hard_val") == val_meta.json_file
    val = DatasetCatalog.get("rs_synthetic_hard_val")
    assert len(val) == 2
    # Train and val use different seeds: their first images differ.
    assert not np.array_equal(cv2.imread(train[0]["file_name"]), cv2.imread(val[0]["file_name"]))
    # The shapes datasets are left alone.
    assert MetadataCatalog.get("rs_synthetic_train").json_file == shapes_json

    # ROOT "" -> $DETECTRON2_DATASETS.
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "env"))
    cfg.DATASETS.RS_SYNTHETIC_HARD.ROOT = ""
    register_rs_synthetic_hard_from_cfg(cfg)
    assert MetadataCatalog.get("rs_synthetic_hard_val").json_file.startswith(str(tmp_path / "env"))


def test_default_rs_setup_registers_hard(tmp_path):
    root = str(tmp_path / "data")
    args = default_argument_parser().parse_args([
        "--config-file",
        os.path.join(ROOT, "configs", "Synthetic", "rs_faster_rcnn_R_18_FPN_hard.yaml"),
        "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu",
        "DATASETS.RS_SYNTHETIC_HARD.ROOT", root, "DATASETS.RS_SYNTHETIC_HARD.NUM_TRAIN", "4",
        "DATASETS.RS_SYNTHETIC_HARD.NUM_VAL", "2",
    ])
    cfg = default_rs_setup(args)
    assert cfg.DATASETS.TRAIN == ("rs_synthetic_hard_train",)
    assert MetadataCatalog.get("rs_synthetic_hard_train").json_file == os.path.join(
        root, "rs_synthetic_hard", f"v{GLYPH_GENERATOR_VERSION}_img192_n4_seed0", "train",
        "annotations.json")
    assert not os.path.exists(root)  # nothing generated by the setup


# -------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", HARD_CONFIGS)
def test_hard_config_builds(name):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Synthetic", f"{name}.yaml"))
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(GLYPH_CLASSES) == 10
    assert cfg.DATASETS.TRAIN == ("rs_synthetic_hard_train",)
    assert cfg.DATASETS.TEST == ("rs_synthetic_hard_val",)
    assert cfg.MODEL.MASK_ON == name.startswith(("mask", "rs_mask"))
    assert cfg.OUTPUT_DIR == f"./output/{name}"
    # Everything else is the setting of the shapes counterpart (same base config).
    easy = get_cfg()
    add_rs_config(easy)
    easy.merge_from_file(os.path.join(ROOT, "configs", "Synthetic",
                                      f"{name[:-len('_hard')]}.yaml"))
    for c in (cfg, easy):
        c.MODEL.ROI_HEADS.NUM_CLASSES = 0
        c.DATASETS.TRAIN = c.DATASETS.TEST = ()
        c.OUTPUT_DIR = ""
    assert cfg.dump() == easy.dump()

    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 10
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    predictor = model.roi_heads.box_predictor
    assert predictor.bbox_pred.out_features == 4 * 10  # class-specific boxes
    # RS scores each class with a sigmoid; the stock head adds a background logit.
    assert predictor.cls_score.out_features == (10 if name.startswith("rs_") else 11)
    assert model.device == torch.device("cpu")
