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


# One-stage configs (RSRetinaNet): config -> (assigner, head, P6/P7, anchors per location,
# paper's box AP or None where the paper has no such row).
ONE_STAGE = {
    "COCO-Detection/rs_atss_R_50_FPN_1x.yaml": ("atss", "RSATSSHead", "P5_NO_RELU", 3, "39.9"),
    "COCO-Detection/rs_atss_R_50_FPN_1x_torchvision.yaml":
        ("atss", "RSATSSHead", "P5_NO_RELU", 3, "39.9"),
    "COCO-Detection/rs_retinanet_R_50_FPN_1x.yaml": ("iou", "RetinaNetHead", "RES5_RELU", 9, None),
    # RS-PAA: RS-ATSS's model with PAA's assignment (the ATSS keys stay at their defaults)
    "COCO-Detection/rs_paa_R_50_FPN_1x.yaml": ("atss", "RSATSSHead", "P5_NO_RELU", 3, "41.0"),
    "COCO-Detection/rs_paa_R_50_FPN_1x_torchvision.yaml":
        ("atss", "RSATSSHead", "P5_NO_RELU", 3, "41.0"),
}
META_ARCHITECTURES = {"COCO-Detection/rs_paa_R_50_FPN_1x.yaml": "RSPAA",
                      "COCO-Detection/rs_paa_R_50_FPN_1x_torchvision.yaml": "RSPAA"}


@pytest.mark.parametrize("name", sorted(ONE_STAGE))
def test_one_stage_model(name):
    """RS-ATSS as published (docs/heads.md, section 6): ATSS, GN towers with per-level
    scales, P6 from P5 without ReLU, ratio 1 x 3 scales, deltas (10, 10, 5, 5), lr 0.008 at
    batch 16, weight decay on GroupNorm, the 1x schedule; RS-RetinaNet: detectron2's anchors
    and matcher."""
    assigner, head, top_block, per_location, box_ap = ONE_STAGE[name]
    cfg = load(name)
    assert cfg.MODEL.META_ARCHITECTURE == META_ARCHITECTURES.get(name, "RSRetinaNet")
    assert (cfg.MODEL.RS_RETINANET.ASSIGNER, cfg.MODEL.RS_RETINANET.HEAD_NAME,
            cfg.MODEL.FPN.P6P7_TOP_BLOCK) == (assigner, head, top_block)
    sizes, ratios = cfg.MODEL.ANCHOR_GENERATOR.SIZES, cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS
    assert len(sizes[0]) * len(ratios[0]) == per_location
    for level, stride in enumerate((8, 16, 32, 64, 128)):  # 3 scales per octave, base 4
        assert [round(s / stride, 3) for s in sizes[level]] == [4.0, 5.04, 6.35]
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.RETINANET.IN_FEATURES == \
        ["p3", "p4", "p5", "p6", "p7"]
    assert (cfg.MODEL.RETINANET.SCORE_THRESH_TEST, cfg.MODEL.RETINANET.TOPK_CANDIDATES_TEST,
            cfg.MODEL.RETINANET.NMS_THRESH_TEST, cfg.TEST.DETECTIONS_PER_IMAGE) == \
        (0.05, 1000, 0.6, 100)
    if assigner == "atss":
        assert cfg.MODEL.RETINANET.NORM == "GN" and cfg.MODEL.RS_RETINANET.ATSS_TOPK == 9
        assert tuple(cfg.MODEL.RETINANET.BBOX_REG_WEIGHTS) == (10.0, 10.0, 5.0, 5.0)
    assert cfg.SOLVER.IMS_PER_BATCH == 16 and cfg.SOLVER.BASE_LR == 0.008
    assert cfg.SOLVER.WEIGHT_DECAY_NORM == 0.0001
    assert (cfg.SOLVER.WARMUP_METHOD, cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR) == \
        ("linear", 500, 0.001)
    assert abs(cfg.SOLVER.MAX_ITER - 12 * EPOCH) < 1
    with open(os.path.join(ROOT, "configs", name)) as f:
        header = "".join(line for line in f if line.startswith("#"))
    if box_ap is not None:
        assert re.search(r"paper[^)]*\b" + re.escape(box_ap) + r" box AP", header), header
    else:
        assert "no paper number" in header


# One-stage instance segmentation: config -> (meta-architecture, paper's box AP, mask AP).
INSTANCE_ONE_STAGE = {
    "COCO-InstanceSegmentation/rs_yolact_R_50_FPN_55e.yaml": ("RSYOLACT", "33.8", "29.9"),
    "COCO-InstanceSegmentation/rs_solov2_R_101_FPN_3x.yaml": ("RSSOLOv2", None, "39.7"),
    "COCO-InstanceSegmentation/rs_solov2_light_R_34_FPN_3x.yaml": ("RSSOLOv2", None, "32.6"),
}


@pytest.mark.parametrize("name,depth,width,convs,e,batch,lr", [
    ("COCO-InstanceSegmentation/rs_solov2_R_101_FPN_3x.yaml", 101, 512, 4, 256, 16, 0.006),
    ("COCO-InstanceSegmentation/rs_solov2_light_R_34_FPN_3x.yaml", 34, 256, 2, 128, 32, 0.012)])
def test_rs_solov2_is_the_published_model(name, depth, width, convs, e, batch, lr):
    """RS-SOLOv2 as published (4 GPUs): torchvision ResNet with frozen-statistics BN, FPN
    P2-P6, grids 40-12, scale ranges, sigma 0.2, Matrix NMS test settings, 36 epochs with
    steps after 27 and 33, the paper's mask AP quoted in the header."""
    cfg = load(name)
    arch, _, mask_ap = INSTANCE_ONE_STAGE[name]
    node = cfg.MODEL.SOLOV2
    assert cfg.MODEL.META_ARCHITECTURE == arch and cfg.MODEL.RESNETS.DEPTH == depth
    assert cfg.MODEL.BACKBONE.NAME == "build_torchvision_resnet_fpn_backbone"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2 and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert (node.SEG_FEAT_CHANNELS, node.STACKED_CONVS, node.INS_OUT_CHANNELS) == (width, convs, e)
    assert node.NUM_GRIDS == [40, 36, 24, 16, 12] and node.SIGMA == 0.2
    assert node.SCALE_RANGES == [[1, 96], [48, 192], [96, 384], [192, 768], [384, 2048]]
    assert (node.SCORE_THRESH_TEST, node.MASK_THRESH_TEST, node.NMS_PRE_TEST, node.NMS_KERNEL,
            node.NMS_SIGMA, node.UPDATE_THRESH_TEST) == (0.2, 0.5, 500, "gaussian", 2.0, 0.05)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR) == (batch, lr)
    epoch = 117266 / batch
    assert abs(cfg.SOLVER.MAX_ITER - 36 * epoch) < 1
    assert [round(s / epoch) for s in cfg.SOLVER.STEPS] == [27, 33]
    with open(os.path.join(ROOT, "configs", name)) as f:
        header = f.readline()
    assert re.search(rf"paper: {mask_ap} mask AP", header), header


def test_rs_yolact_is_the_published_model():
    """RS-YOLACT as published: torchvision R-50 (RGB, BN trained, nothing frozen), YOLACT's
    FPN and anchors (24 x 2^l, 3 ratios, strides 550 / map side), IoU 0.4 / 0.5, 550 x 550
    with YOLACT's augmentations, batch 8, lr 0.006, weight decay 5e-4, cosine, 55 epochs."""
    name = "COCO-InstanceSegmentation/rs_yolact_R_50_FPN_55e.yaml"
    arch, box_ap, mask_ap = INSTANCE_ONE_STAGE[name]
    cfg = load(name)
    assert cfg.MODEL.META_ARCHITECTURE == arch and cfg.MODEL.MASK_ON
    assert cfg.MODEL.BACKBONE.NAME == "build_yolact_resnet_fpn_backbone"
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.MODEL.RESNETS.NORM == "BN"
    assert not cfg.MODEL.RESNETS.STRIDE_IN_1X1 and cfg.INPUT.FORMAT == "RGB"
    assert cfg.MODEL.ANCHOR_GENERATOR.NAME == "FractionalStrideAnchorGenerator"
    assert cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[24 * 2 ** i] for i in range(5)]
    assert cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS == [[0.5, 1.0, 2.0]]
    assert cfg.MODEL.ANCHOR_GENERATOR.OFFSET == 0.5
    assert list(cfg.MODEL.RETINANET.IOU_THRESHOLDS) == [0.4, 0.5]
    assert (cfg.MODEL.YOLACT.NUM_PROTOS, cfg.MODEL.YOLACT.NUM_HEAD_CONVS,
            cfg.MODEL.YOLACT.NMS_TOP_K) == (32, 1, 200)
    assert (cfg.MODEL.RETINANET.SCORE_THRESH_TEST, cfg.MODEL.RETINANET.NMS_THRESH_TEST,
            cfg.TEST.DETECTIONS_PER_IMAGE) == (0.05, 0.5, 100)
    assert cfg.INPUT.AUGMENTATIONS == "yolact" and cfg.INPUT.MIN_SIZE_TEST == 550
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.WEIGHT_DECAY) == \
        (8, 0.006, 0.0005)
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR"
    assert (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR) == (500, 0.1)
    assert abs(cfg.SOLVER.MAX_ITER - 55 * 117266 / 8) < 1
    with open(os.path.join(ROOT, "configs", name)) as f:
        header = f.readline()
    assert re.search(rf"paper: {box_ap} box AP, {mask_ap} mask AP", header), header


def test_every_coco_config_is_a_paper_row():
    shipped = set()
    for folder in ("COCO-Detection", "COCO-InstanceSegmentation"):
        for f in os.listdir(os.path.join(ROOT, "configs", folder)):
            if f.endswith(".yaml") and not f.startswith("Base-"):
                shipped.add(f"{folder}/{f}")
    assert shipped == set(ZOO) | set(ONE_STAGE) | set(INSTANCE_ONE_STAGE)


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
    # Published rounding, ceil(r_i); 12 epochs of 100,323 ... 127,402 repeated images (the
    # bounds from per-class image counts, see the config's comment).
    assert cfg.DATALOADER.REPEAT_ROUNDING == "ceil"
    assert 12 * 100323 / 16 <= cfg.SOLVER.MAX_ITER <= 12 * 127402 / 16 + 1
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


# ----------------------------------------------------- one synthetic RS recipe
SYNTHETIC = os.path.join(ROOT, "configs", "Synthetic")
# What a dataset may change: its data, classes, learning rate and output folder, and for
# the LVIS-format dataset its data protocol (RFS sampler, polygon masks, LVIS's 300
# detections per image and score threshold).
_PER_DATASET = ("DATASETS", "OUTPUT_DIR", "MODEL.ROI_HEADS.NUM_CLASSES",
                "MODEL.RETINANET.NUM_CLASSES", "SOLVER.BASE_LR")
_LVIS_PROTOCOL = ("DATALOADER.SAMPLER_TRAIN", "DATALOADER.REPEAT_THRESHOLD", "INPUT.MASK_FORMAT",
                  "TEST.DETECTIONS_PER_IMAGE", "MODEL.ROI_HEADS.SCORE_THRESH_TEST")


def _flat(node, prefix=""):
    out = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if hasattr(v, "items") else {key: v})
    return out


def _recipe(path):
    flat = _flat(load(os.path.relpath(path, os.path.join(ROOT, "configs"))))
    return {k: v for k, v in flat.items()
            if not k.startswith(_PER_DATASET) and not k.startswith(_LVIS_PROTOCOL)}


@pytest.mark.parametrize("folder", ["", "pretrained"])
@pytest.mark.parametrize("model", ["rs_mask_rcnn_R_18_FPN", "rs_faster_rcnn_R_18_FPN",
                                   "rs_atss_R_18_FPN"])
def test_one_synthetic_rs_recipe(folder, model):
    """Every built-in dataset's RS config of a model has the same RS settings: only the
    dataset, its classes and the learning rate differ (issue: one recipe, no per-dataset
    loss options such as the mask-loss balancing)."""
    base = os.path.join(SYNTHETIC, folder)
    names = sorted(f for f in os.listdir(base)
                   if f.startswith(model) and f.endswith(".yaml"))
    if folder and not names:
        pytest.skip("no pretrained configs")
    assert len(names) >= 2, names
    reference = _recipe(os.path.join(base, names[0]))
    for name in names[1:]:
        other = _recipe(os.path.join(base, name))
        diff = {k: (reference.get(k), other.get(k)) for k in set(reference) | set(other)
                if reference.get(k) != other.get(k)}
        assert not diff, f"{name} differs from {names[0]} in RS settings: {diff}"


def test_synthetic_rs_box_head_is_the_layernorm_head_and_stock_keeps_detectron2s():
    for name in os.listdir(SYNTHETIC):
        if (not name.endswith(".yaml") or name.startswith("Base")
                or any(one_stage in name
                       for one_stage in ("retinanet", "atss", "paa", "yolact", "solov2"))):
            continue
        cfg = load(os.path.join("Synthetic", name))
        expected = "FastRCNNConvLNFCHead" if name.startswith("rs_") else "FastRCNNConvFCHead"
        assert cfg.MODEL.ROI_BOX_HEAD.NAME == expected, name
    for name in sorted(ZOO):  # the published models keep detectron2's head
        assert load(name).MODEL.ROI_BOX_HEAD.NAME == "FastRCNNConvFCHead", name
