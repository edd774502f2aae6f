"""The project's own pretrained backbone: the classification set, the pretraining, its
checkpoint in detectors (FrozenBN and BN), the rs_pretrained:// handler and the pretrained
configs. Every pretraining here is TINY (a few images and iterations)."""
import dataclasses
import importlib.util
import os

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from rs_detectron2 import pretrained_weights, pretraining
from rs_detectron2.config import add_rs_config
from rs_detectron2.data import synthetic_classification as cls_data
from rs_detectron2.data import synthetic_glyphs, synthetic_lvis, synthetic_shapes
from rs_detectron2.pretrained_weights import PRETRAINED_PREFIX, pretrained_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(ROOT, "configs", "Synthetic")
NAME = "small_resnet18_w32_s16.pth"
TINY = pretraining.PretrainRecipe(num_train=94, num_val=47, image_size=32, iterations=3,
                                  batch_size=16, warmup_iters=1, precise_bn_batches=2)
PRETRAINED_CONFIGS = sorted(
    [f"{m}{s}.yaml" for m in ("rs_mask_rcnn_R_18_FPN", "mask_rcnn_R_18_FPN",
                              "rs_faster_rcnn_R_18_FPN", "faster_rcnn_R_18_FPN",
                              "rs_atss_R_18_FPN", "retinanet_R_18_FPN") for s in ("", "_hard")]
    + ["rs_mask_rcnn_R_18_FPN_lvis.yaml"])
# What a pretrained config may change in the from-scratch config it _BASE_s.
PRETRAINED_KEYS = {"MODEL.WEIGHTS", "MODEL.RESNETS.NORM", "MODEL.BACKBONE.FREEZE_AT", "OUTPUT_DIR"}


def load_cfg(path):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(path)
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def flat(node, prefix=""):
    out = {}
    for k, v in node.items():
        out.update(flat(v, f"{prefix}{k}.") if hasattr(v, "items") else {f"{prefix}{k}": v})
    return out


# ------------------------------------------------------------------ classification set
def test_classes_share_nothing_with_the_detection_datasets():
    classes = cls_data.CLASSIFICATION_CLASSES
    assert 40 <= len(classes) <= 60 and len(set(classes)) == len(classes)
    glyph_chars = set(synthetic_glyphs.GLYPH_CLASSES) | set(synthetic_glyphs._DISTRACTOR_GLYPHS)
    assert not set(cls_data.GLYPH_CHARS) & glyph_chars
    assert not set(cls_data.SHAPES) & set(synthetic_shapes.SYNTHETIC_CLASSES)
    # LVIS classes are colour x detection shape: none is a shape here, and no class is a colour.
    for name in synthetic_lvis.LVIS_CLASSES:
        assert name.split("_", 1)[1] in synthetic_shapes.SYNTHETIC_CLASSES
    detection = (set(synthetic_shapes.SYNTHETIC_CLASSES) | set(synthetic_glyphs.GLYPH_CLASSES)
                 | set(synthetic_lvis.LVIS_CLASSES))
    for name in classes:
        family, _, kind = name.partition("_")
        assert kind not in detection and name not in detection
        assert not any(colour in name for colour in synthetic_lvis._COLOURS)
    assert len(cls_data.GLYPH_CHARS) + len(cls_data.SHAPES) + len(cls_data.TEXTURES) == len(classes)


def test_split_is_deterministic_balanced_and_train_val_differ():
    n = 2 * len(cls_data.CLASSIFICATION_CLASSES)
    images, labels = cls_data.generate_classification_split(n, 48, seed=3, split="val",
                                                            progress=False)
    again, labels_again = cls_data.generate_classification_split(n, 48, seed=3, split="val",
                                                                 progress=False)
    assert images.shape == (n, 48, 48, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and np.array_equal(np.bincount(labels), np.full(n // 2, 2))
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    train, _ = cls_data.generate_classification_split(n, 48, seed=3, split="train", progress=False)
    other_seed, _ = cls_data.generate_classification_split(n, 48, seed=4, split="val",
                                                           progress=False)
    assert not np.array_equal(images, train) and not np.array_equal(images, other_seed)
    assert all(img.std() > 5 for img in images)  # an object on a background, never blank
    with pytest.raises(ValueError, match="split"):
        cls_data.generate_classification_split(4, 48, split="test")


# ------------------------------------------------------------------ pretraining
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    cfg = load_cfg(os.path.join(SYNTHETIC, "Base-RS-Synthetic-R18-FPN.yaml"))
    checkpoint = pretraining.pretrain_small_resnet(cfg, TINY, progress=False)
    path = str(tmp_path_factory.mktemp("pretrained") / NAME)
    pretraining.save_checkpoint(checkpoint, path)
    return path


def load_into(config, weights):
    """Build ``config``'s model, load ``weights`` with DetectionCheckpointer; return the
    model and what the checkpointer reported (missing, unexpected, wrong-shape keys)."""
    cfg = load_cfg(config)
    cfg.MODEL.WEIGHTS = weights
    model = build_model(cfg)
    checkpointer = DetectionCheckpointer(model)
    reports = []
    checkpointer._log_incompatible_keys = reports.append  # what it would log
    checkpointer.load(cfg.MODEL.WEIGHTS)
    (incompatible,) = reports
    return model, incompatible


def assert_backbone_loaded(model, incompatible, path):
    state = torch.load(path, weights_only=True)["model"]
    assert incompatible.unexpected_keys == [] and incompatible.incorrect_shapes == []
    assert incompatible.missing_keys, "the FPN and the heads are not pretrained"
    assert not [k for k in incompatible.missing_keys if k.startswith(pretraining.BACKBONE_PREFIX)]
    model_state = model.state_dict()
    bottom_up = {k for k in model_state if k.startswith(pretraining.BACKBONE_PREFIX)
                 and not k.endswith("num_batches_tracked")}
    assert bottom_up == set(state)
    for k in bottom_up:
        assert torch.equal(model_state[k], state[k]), k


def test_tiny_pretraining_checkpoint(tiny_checkpoint):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)  # plain types only
    info = checkpoint["rs_pretraining"]
    assert info["version"] == pretraining.PRETRAINING_VERSION and 0.0 <= info["top1"] <= 1.0
    assert info["recipe"] == dataclasses.asdict(TINY)
    assert (info["backbone"]["depth"], info["backbone"]["res2_out_channels"],
            info["backbone"]["stem_out_channels"]) == (18, 32, 16)
    assert info["input"] == dict(pixel_mean=[103.53, 116.28, 123.675],
                                 pixel_std=[1.0, 1.0, 1.0], format="BGR")
    keys = set(checkpoint["model"])
    assert {"backbone.bottom_up.stem.conv1.weight",
            "backbone.bottom_up.res2.0.conv1.norm.running_mean",
            "backbone.bottom_up.res5.1.conv2.norm.running_var"} <= keys
    assert all(k.startswith(pretraining.BACKBONE_PREFIX) for k in keys)
    assert not [k for k in keys if "num_batches_tracked" in k or "linear" in k]
    assert not [f for f in os.listdir(os.path.dirname(tiny_checkpoint)) if ".tmp" in f]


@pytest.mark.parametrize("config", ["pretrained/rs_mask_rcnn_R_18_FPN.yaml",
                                    "pretrained/rs_atss_R_18_FPN.yaml",
                                    "rs_mask_rcnn_R_18_FPN.yaml"],  # from scratch: BatchNorm
                         ids=["rs_mask_rcnn_frozen_bn", "rs_atss_frozen_bn", "rs_mask_rcnn_bn"])
def test_checkpoint_loads_into_detectors(tiny_checkpoint, config):
    model, incompatible = load_into(os.path.join(SYNTHETIC, config), tiny_checkpoint)
    assert_backbone_loaded(model, incompatible, tiny_checkpoint)


def test_pretraining_needs_a_small_resnet_with_batchnorm():
    cfg = load_cfg(os.path.join(ROOT, "configs", "COCO-Detection",
                                "rs_faster_rcnn_R_50_FPN_1x.yaml"))
    with pytest.raises(ValueError, match="MODEL.BACKBONE.NAME"):
        pretraining.pretrain_small_resnet(cfg, TINY, progress=False)
    cfg = load_cfg(os.path.join(SYNTHETIC, "Base-RS-Synthetic-R18-FPN.yaml"))
    cfg.MODEL.RESNETS.NORM = "GN"
    with pytest.raises(ValueError, match="NORM"):
        pretraining.pretrain_small_resnet(cfg, TINY, progress=False)


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "x.pth")

    def killed(obj, f):
        with open(f, "wb") as out:
            out.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        pretraining.save_checkpoint({"model": {}}, path)
    assert os.listdir(tmp_path) == []


def test_tool_writes_the_checkpoint(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "pretrain_backbone", os.path.join(ROOT, "tools", "pretrain_backbone.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(pretraining, "DEFAULT_RECIPE", TINY)
    out = str(tmp_path / "w16.pth")
    assert tool.main(["--config-file", os.path.join(SYNTHETIC, "rs_atss_R_18_FPN.yaml"),
                      "--output", out, "MODEL.RESNETS.RES2_OUT_CHANNELS", "16"]) == out
    state = torch.load(out, weights_only=True)["model"]
    assert state["backbone.bottom_up.res2.0.conv1.weight"].shape == (16, 16, 3, 3)


# ------------------------------------------------------------------ rs_pretrained://
@pytest.fixture
def tiny_cache(tmp_path, monkeypatch):
    """rs_pretrained:// with a TINY recipe, cached under tmp_path; counts pretrainings."""
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    monkeypatch.setattr(pretraining, "DEFAULT_RECIPE", TINY)
    calls = []
    real = pretraining.pretrain_small_resnet

    def counted(cfg, recipe=None, progress=True):
        calls.append(pretrained_name(cfg))
        return real(cfg, recipe, progress=False)

    monkeypatch.setattr(pretraining, "pretrain_small_resnet", counted)
    return tmp_path, calls


def test_handler_pretrains_once_then_reuses(tiny_cache):
    root, calls = tiny_cache
    path = PathManager.get_local_path(PRETRAINED_PREFIX + NAME)
    assert path == pretrained_weights.pretrained_cache_path(NAME, str(root), TINY)
    assert path.startswith(str(root / "rs_pretrained" / "v")) and os.path.isfile(path)
    assert calls == [NAME]
    # Later uses (also through DetectionCheckpointer, from the pretrained config) reuse it.
    assert PathManager.get_local_path(PRETRAINED_PREFIX + NAME) == path
    model, incompatible = load_into(
        os.path.join(SYNTHETIC, "pretrained", "rs_mask_rcnn_R_18_FPN.yaml"),
        PRETRAINED_PREFIX + NAME)
    assert calls == [NAME]
    assert_backbone_loaded(model, incompatible, path)
    assert sorted(f for f in os.listdir(os.path.dirname(path)) if not f.endswith(".lock")) == [NAME]


def test_handler_builds_the_widths_it_names(tiny_cache):
    path = PathManager.get_local_path(PRETRAINED_PREFIX + "small_resnet18_w16_s8.pth")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["model"]["backbone.bottom_up.stem.conv1.weight"].shape == (8, 3, 7, 7)
    assert checkpoint["model"]["backbone.bottom_up.res5.0.conv1.weight"].shape == (128, 64, 3, 3)
    assert checkpoint["rs_pretraining"]["backbone"]["res2_out_channels"] == 16


@pytest.mark.parametrize("name", ["resnet50.pth", "small_resnet50_w32_s16.pth",
                                  "small_resnet18_w32.pth", "small_resnet18_w0_s16.pth"])
def test_handler_rejects_what_it_cannot_build(tiny_cache, name):
    with pytest.raises(ValueError, match=r"no such pretrained backbone.*tools/pretrain_backbone"):
        PathManager.get_local_path(PRETRAINED_PREFIX + name)
    assert tiny_cache[1] == []


# ------------------------------------------------------------------ pretrained configs
def test_pretrained_configs_are_the_scratch_ones_with_the_pretrained_backbone():
    folder = os.path.join(SYNTHETIC, "pretrained")
    shipped = sorted(f for f in os.listdir(folder) if f.endswith(".yaml"))
    assert set(PRETRAINED_CONFIGS) <= set(shipped)
    for name in shipped:
        with open(os.path.join(folder, name)) as f:
            assert f'_BASE_: "../{name}"' in f.read(), name
        scratch = load_cfg(os.path.join(SYNTHETIC, name))
        cfg = load_cfg(os.path.join(folder, name))
        a, b = flat(scratch), flat(cfg)
        assert {k for k in a if a[k] != b[k]} <= PRETRAINED_KEYS, name
        assert cfg.OUTPUT_DIR != scratch.OUTPUT_DIR, name
        assert (cfg.MODEL.RESNETS.NORM, cfg.MODEL.BACKBONE.FREEZE_AT) == ("FrozenBN", 2), name
        # The weights' name is the backbone the config builds, normalised the same way.
        assert cfg.MODEL.WEIGHTS == PRETRAINED_PREFIX + pretrained_name(cfg), name
        made = pretrained_weights.pretrained_cfg(pretrained_name(cfg))
        assert (cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD, cfg.INPUT.FORMAT) == \
            (made.MODEL.PIXEL_MEAN, made.MODEL.PIXEL_STD, made.INPUT.FORMAT), name
