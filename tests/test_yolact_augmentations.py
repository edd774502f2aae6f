"""INPUT.AUGMENTATIONS "yolact": the published RS-YOLACT augmentations (photometric
distortion, expand, min-IoU crop, square resize, flip), their mapper and the trainer's use."""
import uuid

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest

import detectron2.engine.defaults as d2_defaults
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog, DatasetMapper
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

import rs_detectron2.engine.trainer as trainer_module
from rs_detectron2.config import add_rs_config
from rs_detectron2.data.yolact_augmentations import (
    Expand,
    ExpandTransform,
    MinIoUCropTransform,
    MinIoURandomCrop,
    PhotometricDistortion,
    PhotometricDistortionTransform,
    YOLACTDatasetMapper,
    build_yolact_augmentations,
    centers_inside,
    clip_polygon_to_box,
    crop_iou,
    input_augmentations,
)
from rs_detectron2.engine import RSTrainer

MEAN = (103.94, 116.78, 123.68)  # the published mean in BGR order


def _iou_loop(patch, box):
    """IoU of two XYXY boxes, written out."""
    iw = max(0.0, min(patch[2], box[2]) - max(patch[0], box[0]))
    ih = max(0.0, min(patch[3], box[3]) - max(patch[1], box[1]))
    inter = iw * ih
    union = (patch[2] - patch[0]) * (patch[3] - patch[1]) + (box[2] - box[0]) * (box[3] - box[1])
    return inter / max(union - inter, 1e-6)


# ------------------------------------------------------------------- (a) expand
def test_expand_transform_moves_everything_with_the_image():
    rng = np.random.default_rng(0)
    h, w, left, top, cw, ch = 9, 12, 5, 7, 30, 25
    img = rng.uniform(0, 255, (h, w, 3)).astype(np.float32)
    tfm = ExpandTransform(left, top, cw, ch, w, h, MEAN)
    out = tfm.apply_image(img)
    assert out.shape == (ch, cw, 3) and out.dtype == np.float32
    for y in range(ch):
        for x in range(cw):
            if top <= y < top + h and left <= x < left + w:
                assert (out[y, x] == img[y - top, x - left]).all()
            else:
                assert np.allclose(out[y, x], MEAN)
    # uint8 images get the rounded mean; grayscale ones the first channel's.
    out8 = tfm.apply_image(img.astype(np.uint8))
    assert out8.dtype == np.uint8 and tuple(out8[0, 0]) == (104, 117, 124)
    assert tfm.apply_image(img[..., 0]).shape == (ch, cw)

    boxes = np.array([[0, 0, 12, 9], [2.5, 1, 4, 8.5]], dtype=np.float32)
    assert np.allclose(tfm.apply_box(boxes), boxes + [left, top, left, top])
    poly = np.array([[0, 0], [12, 0], [6, 9]], dtype=np.float64)
    (moved,) = tfm.apply_polygons([poly.copy()])
    assert np.allclose(moved, poly + [left, top])

    mask = (rng.uniform(size=(h, w)) > 0.5).astype(np.uint8)
    padded = tfm.apply_segmentation(mask)
    assert padded.shape == (ch, cw) and padded.sum() == mask.sum()
    for y in range(ch):
        for x in range(cw):
            inside = top <= y < top + h and left <= x < left + w
            assert padded[y, x] == (mask[y - top, x - left] if inside else 0)
    # The mask moved as the image: the mask's pixels are the image's pixels moved.
    assert (out[padded.astype(bool)] == img[mask.astype(bool)]).all()
    assert isinstance(tfm.inverse(), T.CropTransform)
    assert (tfm.inverse().apply_image(out) == img).all()
    with pytest.raises(ValueError, match="does not fit"):
        ExpandTransform(20, 0, 30, 25, w, h, MEAN)


def _reference_expand(h, w, prob=0.5, ratio_range=(1, 4)):
    """mmdetection's Expand draws, in its order: None (skipped) or (left, top, cw, ch)."""
    if np.random.uniform(0, 1) > prob:
        return None
    ratio = np.random.uniform(*ratio_range)
    left = int(np.random.uniform(0, w * ratio - w))
    top = int(np.random.uniform(0, h * ratio - h))
    return left, top, int(w * ratio), int(h * ratio)


def test_expand_augmentation_draws_as_published():
    img = np.zeros((17, 23, 3), np.float32)
    aug = Expand(MEAN)
    applied = 0
    for seed in range(200):
        np.random.seed(seed)
        expected = _reference_expand(17, 23)
        np.random.seed(seed)
        tfm = aug.get_transform(img)
        if expected is None:
            assert isinstance(tfm, T.NoOpTransform)
            continue
        applied += 1
        assert isinstance(tfm, ExpandTransform)
        assert (tfm.left, tfm.top, tfm.canvas_w, tfm.canvas_h) == expected
        assert 23 <= tfm.canvas_w <= 4 * 23 and 17 <= tfm.canvas_h <= 4 * 17
        assert tfm.left + 23 <= tfm.canvas_w and tfm.top + 17 <= tfm.canvas_h
        assert tfm.fill == MEAN
    assert 60 < applied < 140  # probability 0.5


# ------------------------------------------------------------------- (b) min-IoU crop
def _reference_crop(h, w, boxes, min_ious=(0.1, 0.3, 0.5, 0.7, 0.9), min_crop_size=0.3):
    """mmdetection's MinIoURandomCrop draws, written out as loops: the XYXY patch or None."""
    modes = (1, *min_ious, 0)
    while True:
        mode = np.random.choice(modes)
        if mode == 1:
            return None
        for _ in range(50):
            new_w = np.random.uniform(min_crop_size * w, w)
            new_h = np.random.uniform(min_crop_size * h, h)
            if new_h / new_w < 0.5 or new_h / new_w > 2:
                continue
            left = np.random.uniform(w - new_w)
            top = np.random.uniform(h - new_h)
            patch = (int(left), int(top), int(left + new_w), int(top + new_h))
            if patch[2] == patch[0] or patch[3] == patch[1]:
                continue
            if len(boxes):
                if min(_iou_loop(patch, b) for b in boxes) < mode:
                    continue
                centres = [((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for b in boxes]
                if not any(patch[0] < cx < patch[2] and patch[1] < cy < patch[3]
                           for cx, cy in centres):
                    continue
            return patch


def _crop_cases():
    rng = np.random.default_rng(1)
    h, w = 60, 80
    cases = {
        "no box": np.zeros((0, 4), np.float32),
        "single tiny box": np.array([[40, 30, 42, 31]], np.float32),
        "boxes at the borders": np.array([[0, 0, 20, 15], [60, 45, 80, 60], [0, 40, 10, 60],
                                          [70, 0, 80, 12]], np.float32),
        "a box the size of the image": np.array([[0, 0, 80, 60]], np.float32),
    }
    for k in range(4):
        xy = rng.uniform(0, [w - 5, h - 5], size=(k + 2, 2))
        wh = rng.uniform(3, 40, size=(k + 2, 2))
        cases[f"random {k}"] = np.concatenate(
            [xy, np.minimum(xy + wh, [w, h])], axis=1).astype(np.float32)
    return h, w, cases


def test_min_iou_crop_matches_the_published_draws_and_rules(monkeypatch):
    h, w, cases = _crop_cases()
    img = np.zeros((h, w, 3), np.float32)
    aug = MinIoURandomCrop()
    real_choice = np.random.choice
    chosen = []
    def recording_choice(a):
        chosen.append(real_choice(a))
        return chosen[-1]

    monkeypatch.setattr(np.random, "choice", recording_choice)
    for name, boxes in cases.items():
        crops = 0
        for seed in range(60):
            np.random.seed(seed)
            expected = _reference_crop(h, w, boxes)
            np.random.seed(seed)
            chosen.clear()
            tfm = aug.get_transform(img, boxes.copy())
            if expected is None:
                assert isinstance(tfm, T.NoOpTransform) and chosen[-1] == 1, name
                continue
            crops += 1
            assert isinstance(tfm, MinIoUCropTransform), name
            patch = (tfm.x0, tfm.y0, tfm.x0 + tfm.w, tfm.y0 + tfm.h)
            assert patch == expected, (name, seed)
            # Bounds: inside the image, each side >= 0.3 of the image's (up to the integer
            # corners), height / width in [0.5, 2] up to the same rounding.
            assert 0 <= patch[0] < patch[2] <= w and 0 <= patch[1] < patch[3] <= h
            assert 0.3 * w - 1 <= tfm.w <= w and 0.3 * h - 1 <= tfm.h <= h
            assert 0.5 * (tfm.w + 1) - 1 <= tfm.h <= 2 * (tfm.w + 1) + 1
            min_iou = chosen[-1]
            for box in boxes:
                assert _iou_loop(patch, box) >= min_iou - 1e-9, (name, seed)
            if len(boxes):
                assert centers_inside(boxes, patch).any()
        assert crops > 20, name
    # crop_iou is the loop's.
    boxes = cases["random 3"]
    expected = [_iou_loop((3, 4, 50, 41), b) for b in boxes]
    assert np.allclose(crop_iou((3, 4, 50, 41), boxes), expected)


def test_min_iou_crop_mode_one_is_the_identity(monkeypatch):
    monkeypatch.setattr(np.random, "choice", lambda a: 1)
    boxes = np.array([[1, 1, 5, 5]], np.float32)
    tfm = MinIoURandomCrop().get_transform(np.zeros((20, 30, 3), np.float32), boxes)
    assert isinstance(tfm, T.NoOpTransform)


def test_min_iou_crop_with_aug_input_and_without_boxes():
    np.random.seed(3)
    inp = T.AugInput(np.zeros((40, 50, 3), np.float32))  # no boxes: any crop
    for _ in range(20):
        tfm = MinIoURandomCrop()(inp)
        assert isinstance(tfm, (T.NoOpTransform, MinIoUCropTransform))
    assert MinIoURandomCrop().input_args is None  # its arguments: image, boxes


def test_polygons_are_clipped_to_the_crop():
    tfm = MinIoUCropTransform(5, 2, 10, 6, 30, 30)  # crop x in [5, 15], y in [2, 8]
    square = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], np.float64)
    (out,) = tfm.apply_polygons([square.copy()])
    xs, ys = out[:, 0], out[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (0, 5, 0, 6)
    # A triangle cut by the crop's left edge: the exact intersection (a trapezoid).
    tri = clip_polygon_to_box(np.array([[0, 4], [10, 4], [10, 8]]), (5, 2, 15, 8))
    x, y = tri[:, 0], tri[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    assert np.isclose(area, 0.5 * 10 * 4 - 0.5 * 5 * 2)
    # Outside the crop: dropped; inside: only moved.
    assert tfm.apply_polygons([square + 100]) == []
    inner = np.array([[6, 3], [9, 3], [9, 7]], np.float64)
    (moved,) = tfm.apply_polygons([inner.copy()])
    assert np.allclose(moved, inner - [5, 2])


# ------------------------------------------------------------------- (c) photometric
def _flat_image():
    rng = np.random.default_rng(5)
    return rng.uniform(40, 170, (11, 13, 3)).astype(np.float32)


def test_photometric_keeps_shape_and_dtype():
    img = _flat_image()
    for seed in range(20):
        np.random.seed(seed)
        tfm = PhotometricDistortion().get_transform(img)
        out = tfm.apply_image(img)
        assert out.shape == img.shape and out.dtype == np.float32 and np.isfinite(out).all()
        out8 = tfm.apply_image(img.astype(np.uint8))
        assert out8.shape == img.shape and out8.dtype == np.uint8
        # Geometry untouched.
        boxes = np.array([[1, 2, 3, 4]], np.float32)
        assert (tfm.apply_box(boxes) == boxes).all()
        mask = np.eye(11, 13, dtype=np.uint8)
        assert (tfm.apply_segmentation(mask) == mask).all()
    assert (PhotometricDistortionTransform(brightness=32).apply_image(
        np.full((2, 2, 3), 250, np.uint8)) == 255).all()


def test_photometric_all_flips_off_is_the_identity(monkeypatch):
    monkeypatch.setattr(np.random, "randint", lambda n: 0)
    img = _flat_image()
    tfm = PhotometricDistortion().get_transform(img)
    assert (tfm.brightness, tfm.contrast, tfm.saturation, tfm.hue, tfm.permutation) == (None,) * 5
    # The HSV round trip (always run, as published) is exact up to float rounding.
    assert np.allclose(tfm.apply_image(img), img, atol=1e-3)
    img8 = img.astype(np.uint8)
    assert (tfm.apply_image(img8) == img8).all()


def _reference_draws():
    """mmdetection's PhotoMetricDistortion draws, in its order."""
    r = np.random
    d = dict(brightness=None, contrast=None, saturation=None, hue=None, permutation=None)
    if r.randint(2):
        d["brightness"] = r.uniform(-32, 32)
    d["contrast_first"] = r.randint(2) == 1
    if d["contrast_first"] and r.randint(2):
        d["contrast"] = r.uniform(0.5, 1.5)
    if r.randint(2):
        d["saturation"] = r.uniform(0.5, 1.5)
    if r.randint(2):
        d["hue"] = r.uniform(-18, 18)
    if not d["contrast_first"] and r.randint(2):
        d["contrast"] = r.uniform(0.5, 1.5)
    if r.randint(2):
        d["permutation"] = tuple(r.permutation(3))
    return d


def test_photometric_reference_brightness_and_contrast():
    img = _flat_image()
    found = 0
    for seed in range(200):
        np.random.seed(seed)
        expected = _reference_draws()
        np.random.seed(seed)
        tfm = PhotometricDistortion().get_transform(img)
        for key, value in expected.items():
            assert getattr(tfm, key) == value, (seed, key)
        if (expected["saturation"] is None and expected["hue"] is None
                and expected["brightness"] is not None and expected["contrast"] is not None):
            found += 1
            ref = (img + np.float32(expected["brightness"])) * np.float32(expected["contrast"])
            if expected["permutation"] is not None:
                ref = ref[..., list(expected["permutation"])]
            assert np.allclose(tfm.apply_image(img), ref, atol=1e-2), seed
    assert found >= 3
    # By hand: (100 + 20) x 1.25 = 150, either side of the HSV steps.
    for first in (True, False):
        tfm = PhotometricDistortionTransform(brightness=20.0, contrast=1.25, contrast_first=first)
        assert np.allclose(tfm.apply_image(np.full((2, 3, 3), 100, np.float32)), 150, atol=1e-3)


def test_photometric_rgb_is_the_bgr_result_reversed():
    img = _flat_image()
    for seed in range(10):
        np.random.seed(seed)
        bgr = PhotometricDistortion(image_format="BGR").get_transform(img)
        np.random.seed(seed)
        rgb = PhotometricDistortion(image_format="RGB").get_transform(img)
        assert np.allclose(rgb.apply_image(img[..., ::-1]), bgr.apply_image(img)[..., ::-1])
    with pytest.raises(ValueError, match="BGR or RGB"):
        PhotometricDistortion(image_format="L")


def test_photometric_hue_wraps_and_saturation_scales():
    hsv = np.array([[[350.0, 0.5, 200.0]]], np.float32)
    img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    out = PhotometricDistortionTransform(hue=18.0, saturation=1.5).apply_image(img)
    back = cv2.cvtColor(out, cv2.COLOR_BGR2HSV)
    assert np.allclose(back[0, 0], [8.0, 0.75, 200.0], atol=1e-2)


# ------------------------------------------------------------------- (d) the mapper
S = 96


def _cfg(mask_format="polygon", augmentations="yolact"):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.INPUT.AUGMENTATIONS = augmentations
    cfg.INPUT.MIN_SIZE_TEST = S
    cfg.INPUT.MASK_FORMAT = mask_format
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.PIXEL_MEAN = list(MEAN)
    return cfg


def _rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle


def _dataset_dict(tmp_path, with_rle=True):
    h, w = 48, 64
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 1] = 60
    blob = np.zeros((h, w), bool)
    blob[20:40, 30:55] = True
    blob[25:35, 40:45] = False  # a hole: not a polygon
    img[blob, 0] = 255
    file_name = str(tmp_path / f"img_{uuid.uuid4().hex[:6]}.png")
    cv2.imwrite(file_name, img)
    annos = [
        {"bbox": [2, 3, 20, 25], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0,
         "segmentation": _rect(2, 3, 20, 25)},
        {"bbox": [5, 30, 14, 18], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1,
         "segmentation": [[5, 30, 19, 30, 12, 48]]},
        # At most 4 x 4 px: dropped before augmenting (published FilterAnnotations).
        {"bbox": [50, 5, 54, 9], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 3,
         "segmentation": _rect(50, 5, 54, 9)},
        {"bbox": [0, 0, 64, 48], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 3,
         "iscrowd": 1, "segmentation": _rect(0, 0, 64, 48)},
    ]
    if with_rle:
        annos.append({"bbox": [30, 20, 55, 40], "bbox_mode": BoxMode.XYXY_ABS,
                      "category_id": 2, "segmentation": _rle(blob)})
    return {"file_name": file_name, "image_id": 0, "height": h, "width": w,
            "annotations": annos}


def _check_masks_in_boxes(instances, mask_format):
    boxes = instances.gt_boxes.tensor.numpy()
    assert ((boxes >= 0) & (boxes <= S)).all()
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    if mask_format == "bitmask":
        masks = instances.gt_masks.tensor.numpy()
        assert masks.shape[1:] == (S, S)
        for mask, box in zip(masks, boxes):
            ys, xs = np.nonzero(mask)
            for y, x in zip(ys, xs):  # each mask pixel lies within its box (1 px of rounding)
                assert box[0] - 1 <= x <= box[2] and box[1] - 1 <= y <= box[3]
    else:
        for polygons, box in zip(instances.gt_masks.polygons, boxes):
            for p in polygons:
                xy = p.reshape(-1, 2)
                assert (xy >= box[:2] - 1e-3).all() and (xy <= box[2:] + 1e-3).all()


@pytest.mark.parametrize("mask_format", ["polygon", "bitmask"])
def test_mapper_gives_square_images_and_aligned_instances(tmp_path, mask_format):
    mapper = YOLACTDatasetMapper(_cfg(mask_format), True)
    assert mapper.recompute_boxes is False
    with_rle = mask_format == "bitmask"  # RLE segmentations need the bitmask format
    d = _dataset_dict(tmp_path, with_rle=with_rle)
    seen, empty = set(), 0
    for seed in range(25):
        np.random.seed(seed)
        out = mapper(d)
        assert out["image"].shape == (3, S, S) and out["image"].dtype.is_floating_point
        inst = out["instances"]
        assert inst.image_size == (S, S)
        if not len(inst):  # the crop kept only the crowd box's centre (it counts, as published)
            empty += 1
            assert len(inst.gt_masks) == 0 and inst.gt_boxes.tensor.shape == (0, 4)
            continue
        classes = inst.gt_classes.tolist()
        assert 3 not in classes  # the tiny box and the crowd one
        seen.update(classes)
        _check_masks_in_boxes(inst, mask_format)
        if mask_format == "polygon":
            # The rectangle's polygon is clipped exactly as its box.
            for c, polys, box in zip(classes, inst.gt_masks.polygons, inst.gt_boxes.tensor.numpy()):
                if c == 0:
                    xy = np.concatenate([p.reshape(-1, 2) for p in polys])
                    assert np.allclose([*xy.min(0), *xy.max(0)], box, atol=1e-3)
    assert seen == ({0, 1, 2} if with_rle else {0, 1})
    assert empty < 25
    assert "annotations" not in out
    # Test mode: the resize alone, float image, no annotations.
    test_out = YOLACTDatasetMapper(_cfg(mask_format), False)(d)
    assert test_out["image"].shape == (3, S, S) and "annotations" not in test_out


def test_mapper_masks_follow_the_pixels(tmp_path):
    """Without the photometric steps and the resize, every geometric step is exact: the
    RLE object's mask is where its red pixels went."""
    cfg = _cfg("bitmask")
    d = _dataset_dict(tmp_path)
    for seed in range(15):
        augs = [Expand(MEAN, prob=1.0), MinIoURandomCrop(), T.RandomFlip(0.5)]
        mapper = YOLACTDatasetMapper(cfg, True, augmentations=augs)
        np.random.seed(seed)
        out = mapper(d)
        image = out["image"].numpy()
        inst = out["instances"]
        (k,) = [i for i, c in enumerate(inst.gt_classes.tolist()) if c == 2] or [None]
        red = image[0] > 200
        if k is None:
            continue
        assert (inst.gt_masks.tensor[k].numpy() == red).all(), seed


def test_mapper_drops_instances_whose_centre_leaves_the_crop(tmp_path):
    d = _dataset_dict(tmp_path, with_rle=False)
    d["annotations"] = [
        {"bbox": [2, 3, 20, 25], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},  # centre 11, 14
        {"bbox": [10, 20, 40, 30], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},  # 25, 25: in
        {"bbox": [40, 0, 64, 48], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2},  # 52: out
    ]
    crop = MinIoUCropTransform(12, 0, 38, 48, 64, 48)  # x in [12, 50]
    cfg = _cfg()
    cfg.MODEL.MASK_ON = False
    mapper = YOLACTDatasetMapper(cfg, True, augmentations=[crop])
    out = mapper(d)
    # Class 0 (centre x 11 < 12) and class 2 (52 > 50) overlap the crop but are dropped;
    # class 1 is kept, clipped.
    assert out["instances"].gt_classes.tolist() == [1]
    assert np.allclose(out["instances"].gt_boxes.tensor.numpy(), [[0, 20, 28, 30]])
    # detectron2's own mapper keeps the two boxes partly inside.
    d2 = DatasetMapper(cfg, True, augmentations=[crop])(d)
    assert sorted(d2["instances"].gt_classes.tolist()) == [0, 1, 2]


def test_mapper_filters_small_boxes_first(tmp_path):
    d = _dataset_dict(tmp_path, with_rle=False)
    d["annotations"] = [
        {"bbox": [2, 3, 6, 7], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0},  # 4 x 4
        {"bbox": [2, 3, 30, 6], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 1},  # h 3
        {"bbox": [0, 0, 64, 48], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 2, "iscrowd": 1},
    ]
    cfg = _cfg()
    cfg.MODEL.MASK_ON = False
    mapper = YOLACTDatasetMapper(cfg, True)
    assert mapper(d) is None  # none left: detectron2's MapDataset draws another image
    d["annotations"].append({"bbox": [10, 10, 14.5, 15], "bbox_mode": BoxMode.XYXY_ABS,
                             "category_id": 1})
    kept = YOLACTDatasetMapper(cfg, True, augmentations=[])(d)
    assert kept["instances"].gt_classes.tolist() == [1]
    assert np.allclose(kept["instances"].gt_boxes.tensor.numpy(), [[10, 10, 14.5, 15]])


def test_build_yolact_augmentations_is_the_published_list():
    cfg = _cfg()
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [123.68, 116.78, 103.94]
    train = build_yolact_augmentations(cfg, True)
    assert [type(a) for a in train] == [PhotometricDistortion, Expand, MinIoURandomCrop,
                                        T.Resize, T.RandomFlip]
    assert train[0].image_format == "RGB" and train[0].hue_delta == 18
    assert train[1].mean == (123.68, 116.78, 103.94) and train[1].ratio_range == (1, 4)
    assert train[2].sample_mode == (1, 0.1, 0.3, 0.5, 0.7, 0.9, 0) and train[2].min_crop_size == 0.3
    assert train[3].shape == (S, S) and train[4].prob == 0.5 and train[4].horizontal
    (test,) = build_yolact_augmentations(cfg, False)
    assert isinstance(test, T.Resize) and test.shape == (S, S)
    cfg.INPUT.FORMAT = "L"
    with pytest.raises(ValueError, match="BGR or RGB"):
        build_yolact_augmentations(cfg, True)


# ------------------------------------------------------------------- (e) the config key
def test_config_key_default_and_errors(tiny_dataset):
    cfg = get_cfg()
    add_rs_config(cfg)
    assert cfg.INPUT.AUGMENTATIONS == "detectron2" == input_augmentations(cfg)
    cfg.INPUT.AUGMENTATIONS = "mmdet"
    pattern = r"INPUT\.AUGMENTATIONS.*detectron2.*yolact.*mmdet"
    with pytest.raises(ValueError, match=pattern):
        input_augmentations(cfg)
    bad = _loader_cfg(tiny_dataset, "mmdet")
    with pytest.raises(ValueError, match=pattern):
        RSTrainer.build_train_loader(bad)
    bad.DATALOADER.REPEAT_ROUNDING = "ceil"
    bad.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
    with pytest.raises(ValueError, match=pattern):
        RSTrainer.build_train_loader(bad)
    with pytest.raises(ValueError, match=pattern):
        RSTrainer.build_test_loader(bad, tiny_dataset)


# ------------------------------------------------------------------- (f) the trainer
@pytest.fixture
def tiny_dataset(tmp_path):
    name = f"rs_test_yolact_aug_{uuid.uuid4().hex[:8]}"
    dicts = []
    for i in range(4):
        file_name = str(tmp_path / f"{i}.png")
        cv2.imwrite(file_name, np.full((32, 40, 3), 30 * (i + 1), dtype=np.uint8))
        dicts.append({"file_name": file_name, "image_id": i, "height": 32, "width": 40,
                      "annotations": [{"bbox": [2 + 3 * c, 2, 22 + 3 * c, 20],
                                       "bbox_mode": BoxMode.XYXY_ABS, "category_id": c,
                                       "segmentation": _rect(2 + 3 * c, 2, 22 + 3 * c, 20)}
                                      for c in range(i % 3 + 1)]})
    DatasetCatalog.register(name, lambda: [dict(d) for d in dicts])
    MetadataCatalog.get(name).thing_classes = ["a", "b", "c"]
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _loader_cfg(dataset, augmentations="yolact", rounding="stochastic"):
    cfg = _cfg(augmentations=augmentations)
    cfg.DATASETS.TRAIN = (dataset,)
    cfg.DATASETS.TEST = (dataset,)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.DATALOADER.REPEAT_ROUNDING = rounding
    if rounding == "ceil":
        cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
        cfg.DATALOADER.REPEAT_THRESHOLD = 0.5
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SEED = 3
    return cfg


@pytest.mark.parametrize("rounding", ["stochastic", "ceil"])
def test_trainer_train_loader_with_yolact(tiny_dataset, monkeypatch, rounding):
    calls = []
    real = trainer_module.build_detection_train_loader

    def spy(cfg, **kwargs):
        calls.append(kwargs)
        return real(cfg, **kwargs)

    monkeypatch.setattr(trainer_module, "build_detection_train_loader", spy)
    loader = RSTrainer.build_train_loader(_loader_cfg(tiny_dataset, rounding=rounding))
    (kwargs,) = calls
    assert type(kwargs["mapper"]) is YOLACTDatasetMapper and kwargs["mapper"].is_train
    it = iter(loader)
    for _ in range(3):
        batch = next(it)
        assert len(batch) == 2
        for d in batch:
            assert d["image"].shape == (3, S, S) and d["instances"].image_size == (S, S)


def test_trainer_test_loader(tiny_dataset, monkeypatch):
    (d,) = next(iter(RSTrainer.build_test_loader(_loader_cfg(tiny_dataset), tiny_dataset)))
    assert d["image"].shape == (3, S, S) and (d["height"], d["width"]) == (32, 40)
    # "detectron2": detectron2's own test loader, unchanged.
    calls = []
    monkeypatch.setattr(d2_defaults, "build_detection_test_loader",
                        lambda cfg, name: calls.append((cfg, name)))
    cfg = _loader_cfg(tiny_dataset, augmentations="detectron2")
    RSTrainer.build_test_loader(cfg, tiny_dataset)
    assert calls == [(cfg, tiny_dataset)]
