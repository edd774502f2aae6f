"""The COCO configs are the published models: one per row of the paper's R-CNN tables, each
with the published warm-up, scales, schedule and backbone, and the paper's number quoted."""
import os
import re

import pytest

from detectron2.config import get_cfg

from rs_detectron2.config import add_rs_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MS_480_960 = (480, 560, 640, 720, 800, 880, 960)
MS_640_800 = (640, 672, 704, 736, 768, 800)
EPOCH = 117266 / 16  # COCO train2017 images with annotations, batch 16

# config -> (backbone builder, depth, DCN, mask, training scales, epochs, paper's box AP)
ZOO = {
    "COCO-Detection/rs_faster_rcnn_R_50_FPN_1x.yaml":
        ("build_resnet_fpn_backbone", 50, False, False, (800,), 12, "39.6"),
    "COCO-Detection/rs_faster_rcnn_R_50_FPN_carafe_1x.yaml":
        ("build_resnet_carafe_fpn_backbone", 50, False, False, (800,), 12, "40.8"),
    "COCO-Detection/rs_faster_rcnn_R_101_DCN_FPN_3x.yaml":
        ("build_resnet_deform_fpn_backbone", 101, True, False, MS_480_960, 36, "47.6"),
    "COCO-Detection/rs_faster_rcnn_R_101_DCN_FPN_carafe_3x.yaml":
        ("build_resnet_deform_carafe_fpn_backbone", 101, True, False, MS_480_960, 36, "47.7"),
    "COCO-Detection/rs_cascade_rcnn_R_50_FPN_1x.yaml":
        ("build_resnet_fpn_backbone", 50, False, False, (800,), 12, "41.3"),
    "COCO-InstanceSegmentation/rs_mask_rcnn_R_50_FPN_1x.yaml":
        ("build_resnet_fpn_backbone", 50, False, True, (800,), 12, "40.0"),
    "COCO-InstanceSegmentation/rs_mask_rcnn_R_50_FPN_carafe_1x.yaml":
        ("build_resnet_carafe_fpn_backbone", 50, False, True, (800,), 12, "41.1"),
    "COCO-InstanceSegmentation/rs_mask_rcnn_R_101_FPN_3x.yaml":
        ("build_resnet_fpn_backbone", 101, False, True, MS_640_800, 36, "44.7"),
    "COCO-InstanceSegmentation/rs_mask_rcnn_R_101_FPN_carafe_3x.yaml":
        ("build_resnet_carafe_fpn_backbone", 101, False, True, MS_480_960, 36, "46.2"),
    "COCO-InstanceSegmentation/rs_mask_rcnn_R_101_DCN_FPN_carafe_3x.yaml":
        ("build_resnet_deform_carafe_fpn_backbone", 101, True, True, MS_480_960, 36, "48.8"),
    "COCO-InstanceSegmentation/rs_mask_rcnn_X_101_64x4d_DCN_FPN_carafe_3x.yaml":
        ("build_resnet_deform_carafe_fpn_backbone", 101, True, True, MS_480_960, 36, "49.9"),
}


def load(name):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", name))
    return cfg


@pytest.mark.parametrize("name", sorted(ZOO))
def test_published_model(name):
    backbone, depth, dcn, mask, scales, epochs, box_ap = ZOO[name]
    cfg = load(name)
    assert cfg.MODEL.BACKBONE.NAME == backbone
    assert cfg.MODEL.RESNETS.DEPTH == depth
    assert cfg.MODEL.MASK_ON == mask
    if dcn:
        assert list(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE) == [False, True, True, True]
        assert cfg.MODEL.RESNETS.DEFORM_MODULATED and cfg.MODEL.RESNETS.DEFORM_NUM_GROUPS == 4
    else:
        assert not any(cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == scales and cfg.INPUT.MAX_SIZE_TRAIN == 1333
    assert cfg.INPUT.MIN_SIZE_TEST == 800 and cfg.INPUT.MAX_SIZE_TEST == 1333
    # Published schedule: warm-up 500 iterations from 0.001, x0.1 after 8/11 of 12 epochs
    # or 27/33 of 36, batch 16, learning rate 0.012.
    assert (cfg.SOLVER.WARMUP_METHOD, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR) == \
        ("linear", 500, 0.001)
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.BASE_LR == 0.012
    assert abs(cfg.SOLVER.MAX_ITER - epochs * EPOCH) < 1
    steps = (8, 11) if epochs == 12 else (27, 33)
    assert all(abs(s - e * EPOCH) < 1 for s, e in zip(cfg.SOLVER.STEPS, steps))
    # The header quotes the paper's box AP of exactly this model.
    with open(os.path.join(ROOT, "configs", name)) as f:
        header = "".join(line for line in f if line.startswith("#"))
    assert re.search(r"paper[^)]*\b" + re.escape(box_ap) + r" box AP", header), header


def test_resnext_is_64x4d():
    cfg = load("COCO-InstanceSegmentation/rs_mask_rcnn_X_101_64x4d_DCN_FPN_carafe_3x.yaml")
    assert (cfg.MODEL.RESNETS.NUM_GROUPS, cfg.MODEL.RESNETS.WIDTH_PER_GROUP) == (64, 4)
    assert not cfg.MODEL.RESNETS.STRIDE_IN_1X1 and cfg.INPUT.FORMAT == "RGB"


def test_every_coco_config_is_a_paper_row():
    shipped = set()
    for folder in ("COCO-Detection", "COCO-InstanceSegmentation"):
        for f in os.listdir(os.path.join(ROOT, "configs", folder)):
            if f.endswith(".yaml") and not f.startswith("Base-"):
                shipped.add(f"{folder}/{f}")
    assert shipped == set(ZOO)


def test_lvis_config():
    """LVIS v1 RS-Mask R-CNN: repeat factor sampling at 0.001, multi-scale 640-800, 300
    detections at score >= 0.60, lr 0.012 at batch 16, 12 epochs of the repeated dataset."""
    cfg = load("LVISv1-InstanceSegmentation/rs_mask_rcnn_R_50_FPN_1x.yaml")
    assert cfg.DATASETS.TRAIN == ("lvis_v1_train",) and cfg.DATASETS.TEST == ("lvis_v1_val",)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1203 and cfg.MODEL.MASK_ON
    assert cfg.MODEL.ROI_HEADS.NAME == "RSStandardROIHeads"
    assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
    assert cfg.DATALOADER.REPEAT_THRESHOLD == 0.001
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == MS_640_800
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice"
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300 and cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.60
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.BASE_LR == 0.012
    assert (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR) == (500, 0.001)
    # 12 epochs of 100,170 ... 114,868 repeated images (see the config's comment).
    assert 12 * 100170 / 16 <= cfg.SOLVER.MAX_ITER <= 12 * 114868 / 16 + 1
    assert [round(s / cfg.SOLVER.MAX_ITER * 12, 2) for s in cfg.SOLVER.STEPS] == [8, 11]


def test_synthetic_lvis_config():
    """The built-in long-tailed data with LVIS's repeat threshold scaled to its size: classes
    in fewer than 100 training images are repeated, as t = 0.001 does on LVIS's ~100k."""
    cfg = load("Synthetic/rs_mask_rcnn_R_18_FPN_lvis.yaml")
    assert cfg.DATASETS.TRAIN == ("rs_synthetic_lvis_train",)
    assert cfg.DATASETS.TEST == ("rs_synthetic_lvis_val",)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 36 and cfg.MODEL.MASK_ON
    assert cfg.DATALOADER.SAMPLER_TRAIN == "RepeatFactorTrainingSampler"
    assert cfg.DATALOADER.REPEAT_THRESHOLD == 100 / cfg.DATASETS.RS_SYNTHETIC_LVIS.NUM_TRAIN
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 300 and cfg.INPUT.MASK_FORMAT == "polygon"
