"""YOLACT's training augmentations (the published RS-YOLACT's) as detectron2 augmentations.

The published train pipeline (mmdetection, ``ranksort_yolact_r50_55e_coco.py``), in order:
FilterAnnotations (gt boxes of width or height <= 4 px dropped), PhotoMetricDistortion, Expand (mean
canvas, ratio 1..4), MinIoURandomCrop (min IoUs 0.1 .. 0.9, crop side >= 0.3), Resize to
550 x 550 without keeping the ratio, Normalize (the model's PIXEL_MEAN / PIXEL_STD here),
RandomFlip 0.5; at test time the resize alone. :func:`build_yolact_augmentations` gives that
list and :class:`YOLACTDatasetMapper` the loader's mapper (``INPUT.AUGMENTATIONS "yolact"``,
read by ``RSTrainer``). As in mmdetection (``LoadImageFromFile(to_float32=True)``) the
mapper works on float32 images, so the photometric steps are not clipped and resizing is
bilinear without antialiasing (``cv2.INTER_LINEAR``'s, not PIL's).

Random draws use numpy's global generator in mmdetection's order (detectron2's
augmentations do the same; the loader seeds it per worker).
"""
import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

from detectron2.config import CfgNode
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, BoxMode, PolygonMasks

__all__ = [
    "INPUT_AUGMENTATIONS",
    "Expand",
    "ExpandTransform",
    "MinIoUCropTransform",
    "MinIoURandomCrop",
    "PhotometricDistortion",
    "PhotometricDistortionTransform",
    "YOLACTDatasetMapper",
    "build_yolact_augmentations",
    "centers_inside",
    "clip_polygon_to_box",
    "crop_iou",
    "input_augmentations",
]

# Values of cfg.INPUT.AUGMENTATIONS: detectron2's DatasetMapper (default) and YOLACT's.
INPUT_AUGMENTATIONS = ("detectron2", "yolact")


def input_augmentations(cfg: CfgNode) -> str:
    """``cfg.INPUT.AUGMENTATIONS``, checked: a value outside :data:`INPUT_AUGMENTATIONS`
    raises ``ValueError``. A config without the key (no ``add_rs_config``) is "detectron2"."""
    value = cfg.INPUT.get("AUGMENTATIONS", "detectron2")
    if value not in INPUT_AUGMENTATIONS:
        raise ValueError(f"INPUT.AUGMENTATIONS must be one of {INPUT_AUGMENTATIONS}, "
                         f"got {value!r}")
    return value


# ----------------------------------------------------------------------------- photometric
class PhotometricDistortionTransform(T.Transform):
    """mmdetection's PhotoMetricDistortion with its draws fixed (``None`` = step skipped).

    On float32 BGR values in [0, 255]: add ``brightness``; multiply by ``contrast`` here if
    ``contrast_first``; to HSV (OpenCV's float HSV: hue in degrees); multiply saturation by
    ``saturation``; add ``hue`` (wrapped into [0, 360]); back to BGR; multiply by
    ``contrast`` here if not ``contrast_first``; reorder the channels by ``permutation``. The
    HSV round trip always runs, as published (it is not the identity on values pushed below
    0). An RGB image (``image_format``) is reversed to BGR and back around the steps, so the
    result is mmdetection's on the same picture. Float images come back unclipped (as
    published), uint8 ones rounded and clipped. Geometry is unchanged.
    """

    def __init__(self, brightness: Optional[float] = None, contrast: Optional[float] = None,
                 contrast_first: bool = False, saturation: Optional[float] = None,
                 hue: Optional[float] = None, permutation: Optional[Sequence[int]] = None,
                 image_format: str = "BGR"):
        super().__init__()
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"PhotometricDistortion needs a BGR or RGB image (INPUT.FORMAT), "
                             f"got {image_format!r}")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        dtype = img.dtype
        x = img.astype(np.float32)  # a copy: the steps below work in place
        if self.image_format == "RGB":
            x = x[..., ::-1]
        x = np.ascontiguousarray(x)
        if self.brightness is not None:
            x += self.brightness
        if self.contrast is not None and self.contrast_first:
            x *= self.contrast
        x = cv2.cvtColor(x, cv2.COLOR_BGR2HSV)
        if self.saturation is not None:
            x[..., 1] *= self.saturation
        if self.hue is not None:
            x[..., 0] += self.hue
            x[..., 0][x[..., 0] > 360] -= 360
            x[..., 0][x[..., 0] < 0] += 360
        x = cv2.cvtColor(x, cv2.COLOR_HSV2BGR)
        if self.contrast is not None and not self.contrast_first:
            x *= self.contrast
        if self.permutation is not None:
            x = x[..., list(self.permutation)]
        if self.image_format == "RGB":
            x = x[..., ::-1]
        if dtype == np.uint8:
            return np.clip(np.rint(x), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(x, dtype=dtype)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> T.Transform:
        return T.NoOpTransform()


class PhotometricDistortion(T.Augmentation):
    """mmdetection's PhotoMetricDistortion: each step with probability 0.5, brightness delta
    in [-32, 32], contrast and saturation factors in [0.5, 1.5], hue shift in [-18, 18]
    degrees, contrast before or after the HSV steps by a coin flip, then a random channel
    order; the draws are mmdetection's, in its order (see
    :class:`PhotometricDistortionTransform`)."""

    def __init__(self, brightness_delta: float = 32,
                 contrast_range: Tuple[float, float] = (0.5, 1.5),
                 saturation_range: Tuple[float, float] = (0.5, 1.5), hue_delta: float = 18,
                 image_format: str = "BGR"):
        super().__init__()
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"PhotometricDistortion needs a BGR or RGB image (INPUT.FORMAT), "
                             f"got {image_format!r}")
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> PhotometricDistortionTransform:
        rand = np.random
        brightness = contrast = saturation = hue = permutation = None
        if rand.randint(2):
            brightness = rand.uniform(-self.brightness_delta, self.brightness_delta)
        contrast_first = bool(rand.randint(2) == 1)  # mmdetection's mode 1
        if contrast_first and rand.randint(2):
            contrast = rand.uniform(*self.contrast_range)
        if rand.randint(2):
            saturation = rand.uniform(*self.saturation_range)
        if rand.randint(2):
            hue = rand.uniform(-self.hue_delta, self.hue_delta)
        if not contrast_first and rand.randint(2):
            contrast = rand.uniform(*self.contrast_range)
        if rand.randint(2):
            permutation = tuple(int(i) for i in rand.permutation(3))
        return PhotometricDistortionTransform(brightness, contrast, contrast_first, saturation,
                                              hue, permutation, self.image_format)


# ----------------------------------------------------------------------------- expand
class ExpandTransform(T.Transform):
    """Place the ``orig_w`` x ``orig_h`` image with its top-left corner at (``left``,
    ``top``) of a ``canvas_w`` x ``canvas_h`` canvas filled with ``fill`` (one value per
    channel, the image's channel order). Coordinates move by (left, top); segmentations
    (masks, semantic labels) are padded with ``seg_fill``."""

    def __init__(self, left: int, top: int, canvas_w: int, canvas_h: int, orig_w: int,
                 orig_h: int, fill: Sequence[float] = (0.0,), seg_fill: int = 0):
        super().__init__()
        if left < 0 or top < 0 or left + orig_w > canvas_w or top + orig_h > canvas_h:
            raise ValueError(f"a {orig_w} x {orig_h} image at ({left}, {top}) does not fit a "
                             f"{canvas_w} x {canvas_h} canvas")
        fill = tuple(float(v) for v in np.atleast_1d(fill))
        self._set_attributes(locals())

    def _paste(self, img: np.ndarray, fill: Any) -> np.ndarray:
        if img.shape[:2] != (self.orig_h, self.orig_w):
            raise ValueError(f"ExpandTransform of a {self.orig_w} x {self.orig_h} image got "
                             f"one of {img.shape[1]} x {img.shape[0]}")
        canvas = np.empty((self.canvas_h, self.canvas_w) + img.shape[2:], dtype=img.dtype)
        canvas[...] = fill
        canvas[self.top:self.top + self.orig_h, self.left:self.left + self.orig_w] = img
        return canvas

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        fill = np.asarray(self.fill if img.ndim == 3 else self.fill[:1], dtype=np.float64)
        if np.issubdtype(img.dtype, np.integer):
            fill = np.rint(fill)
        return self._paste(img, fill.astype(img.dtype))

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return self._paste(segmentation, self.seg_fill)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords[:, 0] += self.left
        coords[:, 1] += self.top
        return coords

    def inverse(self) -> T.Transform:
        return T.CropTransform(self.left, self.top, self.orig_w, self.orig_h,
                               self.canvas_w, self.canvas_h)


class Expand(T.Augmentation):
    """mmdetection's Expand: with probability ``prob`` draw a ratio r in ``ratio_range``
    and put the image at a random position of an int(r w) x int(r h) canvas filled with
    ``mean`` (per channel, in the image's channel order: the model's PIXEL_MEAN)."""

    def __init__(self, mean: Sequence[float], ratio_range: Tuple[float, float] = (1, 4),
                 prob: float = 0.5):
        super().__init__()
        mean = tuple(float(v) for v in mean)
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> T.Transform:
        rand = np.random
        if rand.uniform(0, 1) > self.prob:
            return T.NoOpTransform()
        h, w = image.shape[:2]
        ratio = rand.uniform(*self.ratio_range)
        canvas_w, canvas_h = int(w * ratio), int(h * ratio)
        left = min(int(rand.uniform(0, w * ratio - w)), canvas_w - w)
        top = min(int(rand.uniform(0, h * ratio - h)), canvas_h - h)
        return ExpandTransform(left, top, canvas_w, canvas_h, w, h, self.mean)


# ----------------------------------------------------------------------------- min-IoU crop
def crop_iou(patch: Sequence[float], boxes: np.ndarray) -> np.ndarray:
    """IoU of the XYXY box ``patch`` with each of the N x 4 XYXY ``boxes`` (mmdetection's
    ``bbox_overlaps``: no +1, union at least 1e-6)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0, x1, y1 = (float(v) for v in patch)
    iw = (np.minimum(boxes[:, 2], x1) - np.maximum(boxes[:, 0], x0)).clip(min=0)
    ih = (np.minimum(boxes[:, 3], y1) - np.maximum(boxes[:, 1], y0)).clip(min=0)
    overlap = iw * ih
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = np.maximum((x1 - x0) * (y1 - y0) + areas - overlap, 1e-6)
    return overlap / union


def centers_inside(boxes: np.ndarray, patch: Sequence[float]) -> np.ndarray:
    """Whether the centre of each N x 4 XYXY box lies strictly inside the XYXY ``patch``
    (the published rule of which boxes a crop keeps)."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return (cx > patch[0]) & (cy > patch[1]) & (cx < patch[2]) & (cy < patch[3])


def _clip_half_plane(points: np.ndarray, axis: int, bound: float, keep_above: bool) -> np.ndarray:
    """One Sutherland-Hodgman step: the polygon's part where ``points[:, axis]`` is >=
    (``keep_above``) or <= ``bound``."""
    if len(points) == 0:
        return points
    v = points[:, axis] - bound if keep_above else bound - points[:, axis]
    inside = v >= 0
    nxt, v_next = np.roll(points, -1, axis=0), np.roll(v, -1)
    crossing = inside != np.roll(inside, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(crossing, v / (v - v_next), 0.0)
    cut = points + t[:, None] * (nxt - points)
    cut[:, axis] = bound
    # Edge i -> i + 1 gives its start if inside, then its crossing point if it crosses.
    out = np.stack([points, cut], axis=1).reshape(-1, 2)
    return out[np.stack([inside, crossing], axis=1).reshape(-1)]


def clip_polygon_to_box(polygon: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The part of the N x 2 ``polygon`` inside the XYXY ``box`` (Sutherland-Hodgman:
    exact for convex polygons; a concave one may get zero-width bridges along the box's
    edges, which cover no area)."""
    points = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
    x0, y0, x1, y1 = box
    for axis, bound, keep_above in ((0, x0, True), (0, x1, False), (1, y0, True), (1, y1, False)):
        points = _clip_half_plane(points, axis, bound, keep_above)
    return points


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


class MinIoUCropTransform(T.CropTransform):
    """The crop :class:`MinIoURandomCrop` chose: detectron2's ``CropTransform`` with polygons
    clipped to the crop in numpy (:func:`clip_polygon_to_box`; detectron2's needs shapely);
    polygons left with no area are dropped. :class:`YOLACTDatasetMapper` drops the
    instances whose box centre is outside this crop (the published rule)."""

    def apply_polygons(self, polygons: list) -> list:
        box = (self.x0, self.y0, self.x0 + self.w, self.y0 + self.h)
        clipped = [clip_polygon_to_box(p, box) for p in polygons]
        return [self.apply_coords(p) for p in clipped if len(p) >= 3 and _polygon_area(p) > 0]


class MinIoURandomCrop(T.Augmentation):
    """mmdetection's MinIoURandomCrop, needing the boxes (``AugInput(image, boxes=...)``).

    Draw a mode among (1, *min_ious, 0); 1 returns the image unchanged. Otherwise up to
    ``max_tries`` times: draw a crop of width and height in [min_crop_size, 1] of the
    image's, height / width in [0.5, 2], at a random position, its corners truncated to
    integers; accept it when every box's IoU with it is >= the mode and some box's centre is
    strictly inside it (any crop when there are no boxes); after ``max_tries`` failures draw
    a new mode. As published, the left (top) edge is drawn by numpy's ``uniform(w - new_w)``,
    whose other end defaults to 1: it lies between 1 and w - new_w.
    """

    def __init__(self, min_ious: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9),
                 min_crop_size: float = 0.3, max_tries: int = 50):
        super().__init__()
        sample_mode = (1, *min_ious, 0)
        self._init(locals())

    def get_transform(self, image: np.ndarray, boxes: Optional[np.ndarray]) -> T.Transform:
        rand = np.random
        h, w = image.shape[:2]
        boxes = np.zeros((0, 4), np.float32) if boxes is None else np.asarray(boxes).reshape(-1, 4)
        while True:
            mode = rand.choice(self.sample_mode)
            if mode == 1:
                return T.NoOpTransform()
            for _ in range(self.max_tries):
                new_w = rand.uniform(self.min_crop_size * w, w)
                new_h = rand.uniform(self.min_crop_size * h, h)
                if new_h / new_w < 0.5 or new_h / new_w > 2:
                    continue
                left = rand.uniform(w - new_w)  # (sic) the upper end is numpy's default 1.0
                top = rand.uniform(h - new_h)
                x0, y0 = int(left), int(top)
                x1, y1 = int(left + new_w), int(top + new_h)
                if x1 == x0 or y1 == y0:
                    continue
                patch = (x0, y0, x1, y1)
                if len(boxes) and (crop_iou(patch, boxes).min() < mode
                                   or not centers_inside(boxes, patch).any()):
                    continue
                return MinIoUCropTransform(x0, y0, x1 - x0, y1 - y0, w, h)


# ----------------------------------------------------------------------------- the list
def build_yolact_augmentations(cfg: CfgNode, is_train: bool) -> List[T.Augmentation]:
    """The published RS-YOLACT augmentations. Training: :class:`PhotometricDistortion`,
    :class:`Expand` (canvas filled with ``cfg.MODEL.PIXEL_MEAN``, which is in
    ``cfg.INPUT.FORMAT``'s channel order, as the image), :class:`MinIoURandomCrop`, resize to
    S x S (the ratio not kept), horizontal flip with probability 0.5; test: the resize alone.
    S is ``cfg.INPUT.MIN_SIZE_TEST`` (YOLACT's 550) in both, the one size key detectron2 has
    for a single test size."""
    size = int(cfg.INPUT.MIN_SIZE_TEST)
    resize = T.Resize((size, size))
    if not is_train:
        return [resize]
    return [
        PhotometricDistortion(image_format=cfg.INPUT.FORMAT),
        Expand(mean=cfg.MODEL.PIXEL_MEAN, ratio_range=(1, 4)),
        MinIoURandomCrop(min_ious=(0.1, 0.3, 0.5, 0.7, 0.9), min_crop_size=0.3),
        resize,
        T.RandomFlip(prob=0.5, horizontal=True, vertical=False),
    ]


def _xyxy_boxes(annotations: List[Dict[str, Any]]) -> np.ndarray:
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annotations]
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


def _kept_by_crops(boxes: np.ndarray, transforms: T.TransformList) -> np.ndarray:
    """Whether each box (before ``transforms``) keeps its centre strictly inside every
    :class:`MinIoUCropTransform` of ``transforms``, in that crop's own frame."""
    keep = np.ones(len(boxes), dtype=bool)
    boxes = boxes.copy()
    for tfm in transforms.transforms:
        if isinstance(tfm, MinIoUCropTransform):
            keep &= centers_inside(boxes, (tfm.x0, tfm.y0, tfm.x0 + tfm.w, tfm.y0 + tfm.h))
        if len(boxes):
            boxes = tfm.apply_box(boxes)
    return keep


class YOLACTDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` with the published RS-YOLACT pipeline
    (:func:`build_yolact_augmentations`).

    In training it first drops the non-crowd annotations whose box's width or height is at
    most ``min_gt_box_wh`` (4, 4) px (mmdetection's FilterAnnotations; an image left without one
    maps to ``None``, and detectron2's ``MapDataset`` draws another image, as mmdetection
    does), passes all boxes (crowd ones too: mmdetection's ignored boxes also constrain the
    crop) to the augmentations, and drops the annotations whose box centre falls outside the
    min-IoU crop before detectron2 clips the rest. Boxes are not recomputed from the masks
    (as published). Images are float32 (mmdetection's ``to_float32``), in train and test.
    """

    min_gt_box_wh: Tuple[float, float] = (4.0, 4.0)

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> Dict[str, Any]:
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_yolact_augmentations(cfg, is_train)
        ret["recompute_boxes"] = False
        return ret

    def __call__(self, dataset_dict: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        dataset_dict = copy.deepcopy(dataset_dict)
        image = utils.read_image(dataset_dict["file_name"], format=self.image_format)
        image = image.astype(np.float32)
        utils.check_image_size(dataset_dict, image)
        sem_seg = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)

        annos = boxes = None
        if self.is_train and "annotations" in dataset_dict:
            min_w, min_h = self.min_gt_box_wh
            annos = []
            for anno, box in zip(dataset_dict["annotations"],
                                 _xyxy_boxes(dataset_dict["annotations"])):
                large = box[2] - box[0] > min_w and box[3] - box[1] > min_h
                if anno.get("iscrowd", 0) or large:
                    # As floats: detectron2 transforms integer boxes and polygons in integer
                    # arrays (truncating each step's result).
                    anno["bbox"], anno["bbox_mode"] = box.tolist(), BoxMode.XYXY_ABS
                    if isinstance(anno.get("segmentation"), list):
                        anno["segmentation"] = [np.asarray(p, dtype=np.float64)
                                                for p in anno["segmentation"]]
                    annos.append(anno)
            if not any(a.get("iscrowd", 0) == 0 for a in annos):
                return None
            boxes = _xyxy_boxes(annos)

        aug_input = T.AugInput(image, boxes=boxes, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms,
                                      proposal_topk=self.proposal_topk)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if annos is not None:
            keep = _kept_by_crops(boxes, transforms)
            dataset_dict["annotations"] = [a for a, k in zip(annos, keep) if k]
            self._transform_annotations(dataset_dict, transforms, image_shape)
            instances = dataset_dict["instances"]
            if self.use_instance_mask and not instances.has("gt_masks"):
                # The crop may keep only crowd boxes (they count, as published): no
                # instances, but still a (empty) mask field for the mask losses.
                instances.gt_masks = (
                    BitMasks(torch.zeros((0, *image_shape), dtype=torch.bool))
                    if self.instance_mask_format == "bitmask" else PolygonMasks([]))
        return dataset_dict
