"""The built-in synthetic dataset: determinism, COCO validity, caching and registration."""
import glob
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
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.engine import default_argument_parser
from detectron2.structures import BitMasks, BoxMode

from rs_detectron2.config import add_rs_config
from rs_detectron2.data import (
    RS_SYNTHETIC_DEFAULTS,
    RS_SYNTHETIC_FAMILIES,
    RS_SYNTHETIC_HARD_SPLITS,
    RS_SYNTHETIC_LVIS_SPLITS,
    RS_SYNTHETIC_SPLITS,
    SYNTHETIC_CLASSES,
    generate_synthetic_image,
    generate_synthetic_split,
    prepare_rs_synthetic,
    register_rs_synthetic,
    register_rs_synthetic_datasets,
    register_rs_synthetic_from_cfg,
)
from rs_detectron2.data import synthetic_core, synthetic_shapes
from rs_detectron2.data.synthetic_shapes import GENERATOR_VERSION
from rs_detectron2.engine import default_rs_setup

from .synthetic_checks import read_pixels, tight_box

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("rs_synthetic_train", "rs_synthetic_val")
ALL_NAMES = (*RS_SYNTHETIC_SPLITS, *RS_SYNTHETIC_HARD_SPLITS, *RS_SYNTHETIC_LVIS_SPLITS)
SYNTHETIC_CONFIGS = sorted(
    os.path.relpath(p, os.path.join(ROOT, "configs", "Synthetic"))
    for p in glob.glob(os.path.join(ROOT, "configs", "Synthetic", "**", "*.yaml"), recursive=True))


@pytest.fixture(scope="module")
def split_256(tmp_path_factory):
    """40 images of 256 px: enough for the statistics (classes, overlap, tiny objects)."""
    out = tmp_path_factory.mktemp("split256")
    return generate_synthetic_split(str(out), 40, 256, 5, "val")


# ------------------------------------------------------------------------ generator
def test_deterministic(tmp_path):
    a = generate_synthetic_split(str(tmp_path / "a"), 6, 96, 7, "train")
    b = generate_synthetic_split(str(tmp_path / "b"), 6, 96, 7, "train")
    with open(a, "rb") as fa, open(b, "rb") as fb:
        assert fa.read() == fb.read()
    pa, pb = read_pixels(tmp_path / "a"), read_pixels(tmp_path / "b")
    assert list(pa) == [f"train_{i:06d}.png" for i in range(6)] == list(pb)
    for f in pa:
        assert pa[f].shape == (96, 96, 3) and pa[f].dtype == np.uint8
        np.testing.assert_array_equal(pa[f], pb[f])
    # Another seed gives other images; image i does not depend on the number of images.
    c = generate_synthetic_split(str(tmp_path / "c"), 6, 96, 8, "train")
    pc = read_pixels(tmp_path / "c")
    assert all(not np.array_equal(pa[f], pc[f]) for f in pa)
    img3, _ = generate_synthetic_image(96, 7, 3)
    np.testing.assert_array_equal(img3, pa["train_000003.png"])
    with open(c) as f:
        assert json.load(f)["images"][0]["file_name"] == "train_000000.png"


def test_coco_valid(split_256):
    with open(split_256) as f:
        data = json.load(f)
    coco = COCO(split_256)
    cats = coco.loadCats(coco.getCatIds())
    assert [(c["id"], c["name"]) for c in cats] == [
        (i + 1, n) for i, n in enumerate(SYNTHETIC_CLASSES)
    ]
    assert 5 <= len(SYNTHETIC_CLASSES) <= 7
    assert sorted(coco.getImgIds()) == list(range(1, 41))
    image_dir = os.path.join(os.path.dirname(split_256), "images")
    for img in data["images"]:
        assert (img["height"], img["width"]) == (256, 256)
        assert os.path.isfile(os.path.join(image_dir, img["file_name"]))
    anns = data["annotations"]
    assert len({a["id"] for a in anns}) == len(anns)
    per_image = {i: coco.getAnnIds(imgIds=[i]) for i in coco.getImgIds()}
    assert all(len(v) <= 7 for v in per_image.values())
    assert sum(len(v) > 0 for v in per_image.values()) >= 38
    assert len(anns) >= 40 * 2.5  # 1-7 instances per image, few dropped

    union = {}
    for a in anns:
        assert a["iscrowd"] == 0 and 1 <= a["category_id"] <= len(SYNTHETIC_CLASSES)
        assert isinstance(a["segmentation"]["counts"], str)
        m = mask_util.decode(a["segmentation"]).astype(bool)
        assert m.shape == (256, 256)
        assert a["bbox"] == [float(v) for v in tight_box(m)]
        assert a["bbox"] == mask_util.toBbox(a["segmentation"]).tolist()
        assert a["area"] == m.sum() >= 12
        # pycocotools' own decoding agrees.
        assert np.array_equal(coco.annToMask(a).astype(bool), m)
        # Visible masks of one image are disjoint (occluded parts are removed).
        u = union.setdefault(a["image_id"], np.zeros((256, 256), bool))
        assert not (u & m).any()
        u |= m

    classes = {a["category_id"] for a in anns}
    assert len(classes) == len(SYNTHETIC_CLASSES)
    # Tiny objects: both box sides <= 13 px (usual objects are >= 16 px at 256 px).
    tiny = [a for a in anns if max(a["bbox"][2:]) <= 13]
    assert 1 <= len(tiny) <= 0.3 * len(anns)
    assert max(max(a["bbox"][2:]) for a in anns) >= 80
    # Overlapping instances: some pairs of boxes of one image intersect.
    overlaps = 0
    for ids in per_image.values():
        for a, b in itertools.combinations(coco.loadAnns(ids), 2):
            (ax, ay, aw, ah), (bx, by, bw, bh) = a["bbox"], b["bbox"]
            overlaps += ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah
    assert overlaps >= 3


def test_occlusion_and_contrast():
    occluded, n = 0, 0
    for index in range(30):
        image, instances = generate_synthetic_image(128, 11, index)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        for ins in instances:
            area = ins["mask"].sum()
            n += 1
            assert area >= 0.4 * ins["full_area"] and area >= 12
            occluded += area < ins["full_area"]
            # The object stands out from the pixels around it (class is not hidden).
            m = ins["mask"].astype(np.uint8)
            ring = cv2.dilate(m, np.ones((7, 7), np.uint8)).astype(bool) & ~ins["mask"]
            others = np.zeros_like(ring)
            for o in instances:
                others |= o["mask"]
            ring &= ~others
            if ring.sum() >= 10:
                inside = image[ins["mask"]].astype(float).mean(0)
                outside = image[ring].astype(float).mean(0)
                assert np.linalg.norm(inside - outside) > 40
    assert n >= 60 and occluded >= 3


class _Recorder(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_cache_reused(tmp_path, monkeypatch):
    # Record the generator's own log lines, whatever logging other tests set up.
    recorder = _Recorder()
    module_logger = synthetic_core.logger  # write_coco_split, shared by the generators
    old_level = module_logger.level
    module_logger.setLevel(logging.INFO)
    module_logger.addHandler(recorder)
    try:
        _check_cache_reused(tmp_path, monkeypatch, recorder)
    finally:
        module_logger.removeHandler(recorder)
        module_logger.setLevel(old_level)


def _check_cache_reused(tmp_path, monkeypatch, recorder):
    out = str(tmp_path / "split")
    json_file = generate_synthetic_split(out, 6, 96, 1, "train")
    mtime = os.stat(json_file).st_mtime_ns
    pixels = read_pixels(out)

    def boom(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(synthetic_shapes, "generate_synthetic_image", boom)
    recorder.messages.clear()
    t0 = time.perf_counter()
    again = generate_synthetic_split(out, 6, 96, 1, "train")
    assert time.perf_counter() - t0 < 0.5
    assert again == json_file
    assert os.stat(json_file).st_mtime_ns == mtime
    assert any("reusing" in m for m in recorder.messages), recorder.messages
    assert read_pixels(out).keys() == pixels.keys()


def test_interrupted_run_regenerated(tmp_path):
    out = str(tmp_path / "split")
    json_file = generate_synthetic_split(out, 6, 96, 2, "train")
    with open(json_file, "rb") as f:
        reference = f.read()
    pixels = read_pixels(out)
    # Simulate an interrupted run: images (one of them truncated), no JSON, a stale temp.
    os.remove(json_file)
    with open(os.path.join(out, "images", "train_000004.png"), "wb") as f:
        f.write(b"\x89PNG")
    with open(json_file + ".tmp999", "w") as f:
        f.write("{")
    assert generate_synthetic_split(out, 6, 96, 2, "train") == json_file
    with open(json_file, "rb") as f:
        assert f.read() == reference
    regenerated = read_pixels(out)
    for name, img in pixels.items():
        np.testing.assert_array_equal(regenerated[name], img)


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generate_synthetic_split(str(tmp_path), 0, 96, 0, "train")
    with pytest.raises(ValueError):
        generate_synthetic_split(str(tmp_path), 3, 8, 0, "train")


# --------------------------------------------------------------------- registration
def test_default_registration():
    for name, split in zip(NAMES, ("train", "val")):
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == list(SYNTHETIC_CLASSES)
        assert meta.evaluator_type == "coco"
        n = 1000 if split == "train" else 200
        assert meta.json_file.endswith(
            os.path.join("rs_synthetic", f"v{GENERATOR_VERSION}_img192_n{n}_seed0", split, "annotations.json")
        )
        assert meta.image_root == os.path.join(os.path.dirname(meta.json_file), "images")


def test_register_and_load(tmp_path):
    names = register_rs_synthetic(root=str(tmp_path), num_train=5, num_val=3,
                                  image_size=64, seed=1)
    assert tuple(names) == NAMES
    meta = MetadataCatalog.get("rs_synthetic_train")
    assert meta.json_file.startswith(str(tmp_path))
    assert meta.thing_classes == list(SYNTHETIC_CLASSES) and meta.evaluator_type == "coco"
    assert not os.path.exists(meta.json_file)  # registration is lazy

    train = DatasetCatalog.get("rs_synthetic_train")
    assert os.path.isfile(meta.json_file)
    assert len(train) == 5
    for d in train:
        assert os.path.isfile(d["file_name"]) and (d["height"], d["width"]) == (64, 64)
        assert d["file_name"].startswith(meta.image_root)
        for a in d["annotations"]:
            assert a["bbox_mode"] == BoxMode.XYWH_ABS
            assert 0 <= a["category_id"] < len(SYNTHETIC_CLASSES)
            assert isinstance(a["segmentation"], dict)
    val_meta = MetadataCatalog.get("rs_synthetic_val")
    assert os.path.dirname(val_meta.json_file) != os.path.dirname(meta.json_file)
    assert prepare_rs_synthetic("rs_synthetic_val") == val_meta.json_file
    val = DatasetCatalog.get("rs_synthetic_val")
    assert len(val) == 3
    # Train and val use different seeds: their first images differ.
    assert not np.array_equal(cv2.imread(train[0]["file_name"]), cv2.imread(val[0]["file_name"]))

    # Re-registering with other sizes replaces the entries (and never shares a cache dir).
    old_json = meta.json_file
    register_rs_synthetic(root=str(tmp_path), num_train=7, num_val=3, image_size=64, seed=1)
    assert MetadataCatalog.get("rs_synthetic_train").json_file != old_json
    assert len(DatasetCatalog.get("rs_synthetic_train")) == 7
    assert len(DatasetCatalog.get("rs_synthetic_val")) == 3
    with pytest.raises(KeyError):
        prepare_rs_synthetic("coco_2017_train")


def test_register_from_cfg(tmp_path, monkeypatch):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.DATASETS.RS_SYNTHETIC.ROOT = str(tmp_path / "root")
    cfg.DATASETS.RS_SYNTHETIC.NUM_TRAIN = 4
    cfg.DATASETS.RS_SYNTHETIC.NUM_VAL = 2
    cfg.DATASETS.RS_SYNTHETIC.IMAGE_SIZE = 64
    cfg.DATASETS.RS_SYNTHETIC.SEED = 3
    register_rs_synthetic_from_cfg(cfg)
    meta = MetadataCatalog.get("rs_synthetic_train")
    assert meta.json_file == os.path.join(
        str(tmp_path / "root"), "rs_synthetic", f"v{GENERATOR_VERSION}_img64_n4_seed3", "train", "annotations.json"
    )
    assert len(DatasetCatalog.get("rs_synthetic_train")) == 4
    assert len(DatasetCatalog.get("rs_synthetic_val")) == 2

    # ROOT "" -> $DETECTRON2_DATASETS.
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "env"))
    cfg.DATASETS.RS_SYNTHETIC.ROOT = ""
    register_rs_synthetic_from_cfg(cfg)
    assert MetadataCatalog.get("rs_synthetic_val").json_file.startswith(str(tmp_path / "env"))


def _synthetic_cfg(config, *opts):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Synthetic", config))
    cfg.merge_from_list(list(opts))
    return cfg


def _json_files():
    return {name: MetadataCatalog.get(name).json_file for name in ALL_NAMES}


@pytest.mark.parametrize("config", SYNTHETIC_CONFIGS)
def test_shipped_configs_use_the_default_sizes(config):
    """The data of every shipped config is what importing rs_detectron2.data registers."""
    assert len(SYNTHETIC_CONFIGS) >= 30
    cfg = _synthetic_cfg(config)
    assert tuple(RS_SYNTHETIC_DEFAULTS) == (1000, 200, 192, 0)
    for family in RS_SYNTHETIC_FAMILIES:
        node = cfg.DATASETS[family.upper()]
        assert node.ROOT == ""
        assert (node.NUM_TRAIN, node.NUM_VAL, node.IMAGE_SIZE, node.SEED) == RS_SYNTHETIC_DEFAULTS


@pytest.mark.parametrize("config", ["pretrained/rs_mask_rcnn_R_18_FPN.yaml",
                                    "rs_mask_rcnn_R_18_FPN.yaml"])
def test_python_and_train_net_register_the_same_data(config, tmp_path):
    def train_net_setup(*opts):
        default_rs_setup(default_argument_parser().parse_args([
            "--config-file", os.path.join(ROOT, "configs", "Synthetic", config),
            "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu", *opts]))

    # What importing rs_detectron2.data registers is what train_net.py uses for the config.
    register_rs_synthetic_datasets()
    imported = _json_files()
    assert imported["rs_synthetic_val"].endswith(os.path.join(
        "rs_synthetic", f"v{GENERATOR_VERSION}_img192_n200_seed0", "val", "annotations.json"))
    train_net_setup()
    assert _json_files() == imported

    # The config changed in Python: register_rs_synthetic_datasets(cfg) gives train_net.py's
    # data (2 val images generated once, then reused by the train_net.py registration).
    opts = ("DATASETS.RS_SYNTHETIC.ROOT", str(tmp_path / "data"),
            "DATASETS.RS_SYNTHETIC.NUM_VAL", "2")
    register_rs_synthetic_datasets(_synthetic_cfg(config, *opts))
    from_python = _json_files()
    val = DatasetCatalog.get("rs_synthetic_val")
    assert from_python["rs_synthetic_val"] == os.path.join(
        str(tmp_path / "data"), "rs_synthetic", f"v{GENERATOR_VERSION}_img192_n2_seed0", "val",
        "annotations.json")
    train_net_setup(*opts)
    assert _json_files() == from_python
    assert DatasetCatalog.get("rs_synthetic_val") == val and len(val) == 2


@pytest.mark.parametrize("resize", [False, True])
def test_annotations_to_instances_bitmask(tmp_path, resize):
    register_rs_synthetic(root=str(tmp_path), num_train=4, num_val=2, image_size=96, seed=4)
    dicts = DatasetCatalog.get("rs_synthetic_train")
    augs = [T.RandomFlip(prob=1.0)]
    if resize:
        augs.insert(0, T.ResizeShortestEdge(80, 200))
    total = 0
    for d in dicts:
        image = utils.read_image(d["file_name"], format="BGR")
        aug_input = T.AugInput(image)
        transforms = T.AugmentationList(augs)(aug_input)
        h, w = aug_input.image.shape[:2]
        annos = [utils.transform_instance_annotations(a, transforms, (h, w))
                 for a in d["annotations"]]
        inst = utils.annotations_to_instances(annos, (h, w), mask_format="bitmask")
        assert isinstance(inst.gt_masks, BitMasks)
        assert inst.gt_masks.tensor.shape == (len(annos), h, w)
        assert inst.gt_classes.tolist() == [a["category_id"] for a in d["annotations"]]
        mask_boxes = inst.gt_masks.get_bounding_boxes().tensor
        tol = 1.5 if resize else 1e-4
        assert torch.allclose(mask_boxes, inst.gt_boxes.tensor, atol=tol)
        assert (inst.gt_masks.tensor.flatten(1).sum(1) > 0).all()
        total += len(annos)
    assert total > 0
