"""Deterministic generator of the built-in long-tailed LVIS-format dataset.

LVIS's two difficulties are reproduced on a small scale: a long tail of class frequencies
and federated (partial) labels.

* **Classes**: 36, each a (colour, shape) pair of the shapes family ("red_circle",
  "green_star", ...): the shape as in :mod:`.synthetic_shapes`, the colour a fixed hue per
  class with a small jitter, on the shapes family's textured backgrounds. Instances do not
  overlap, so each mask is exactly its polygon (the annotations are polygons, like LVIS's).
* **Long tail (train)**: class ``k`` of a fixed frequency order is put in about
  ``0.4 * N * (0.005) ** (k / 35)`` of the ``N`` training images (400 ... 2 images for
  N = 1000), so that, by LVIS's rule on the number of training images with the class,
  about 10 classes are *frequent* (> 100), 15 *common* (11-100) and 11 *rare* (1-10). The
  categories carry LVIS's ``frequency`` tag ("f" / "c" / "r"), ``image_count`` and
  ``instance_count``, computed from the training split's final annotations.
* **Val is class-balanced**: every class is equally likely in a val image, so that the
  rare classes' AP (APr) rests on about as many val images as the others (LVIS val follows
  the train tail; a 200-image val set would then hold a rare class in ~1 image).
* **Federated labels** (both splits), as LVIS builds them: a present class is left
  unlabelled in an image with probability 0.05 (neither annotated nor a negative: LVIS
  evaluation ignores detections of it there); a labelled class with several instances is
  marked *not exhaustive* with probability 0.3 and one of its instances is left out
  (``not_exhaustive_category_ids``: unmatched detections of it are not false positives);
  six absent classes per image are verified negatives (``neg_category_ids``).

Only numpy, OpenCV, pycocotools and tqdm are used here (no detectron2)::

    json_file = generate_lvis_split("out/train", num_images=1000, image_size=192,
                                    seed=0, split_name="train")
"""
import json
import math
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_util

from .synthetic_core import (
    check_split_args,
    finish_image,
    split_file_name,
    textured_background,
    write_coco_split,
)
from .synthetic_shapes import SYNTHETIC_CLASSES, unit_polygon

__all__ = [
    "LVIS_CLASSES",
    "LVIS_GENERATOR_VERSION",
    "lvis_frequency",
    "lvis_train_image_targets",
    "generate_lvis_image",
    "generate_lvis_split",
]

# Bump whenever the generated images or annotations change: it is part of the cache path.
LVIS_GENERATOR_VERSION = 2

# Colour name -> BGR (OpenCV order), far apart from each other.
_COLOURS = {
    "red": (40, 40, 220),
    "green": (50, 190, 40),
    "blue": (220, 80, 30),
    "yellow": (30, 220, 230),
    "magenta": (200, 40, 200),
    "white": (245, 245, 245),
}
LVIS_CLASSES = tuple(f"{c}_{s}" for c in _COLOURS for s in SYNTHETIC_CLASSES)

# Frequency order of the classes in the training tail (index 0 = most frequent): a fixed
# shuffle, so that neither a colour nor a shape is all rare.
_TAIL_ORDER = tuple(int(i) for i in np.random.default_rng(20211011).permutation(len(LVIS_CLASSES)))

_TAIL_TOP = 0.4  # fraction of the training images holding the most frequent class
_TAIL_BOTTOM = 0.002  # ... and the rarest (at least one image)
_CLASS_SLOTS = 5  # at most this many classes per training image
_VAL_CLASSES = (1, 4)  # classes per val image (uniform in this range)
_MAX_INSTANCES_PER_CLASS = 2
_UNLABELLED_PROB = 0.05
_NOT_EXHAUSTIVE_PROB = 0.3
_NUM_NEG = 6

_REF_SIZE = 192.0
_MIN_IMAGE_SIZE = 64
_MIN_SIZE, _MAX_SIZE = 16.0, 64.0  # longest side at 192 px (never below 16 px)
_COLOUR_JITTER = 18.0
_MIN_BG_CONTRAST = 90.0  # colour vs. the mean of the background it covers
_PLACE_TRIES = 20
_GAP = 2  # px between instances


def lvis_frequency(image_count: int) -> str:
    """LVIS's frequency tag of a class from its number of training images: "r" (1-10),
    "c" (11-100) or "f" (> 100)."""
    if image_count <= 10:
        return "r"
    return "c" if image_count <= 100 else "f"


def lvis_train_image_targets(num_images: int) -> np.ndarray:
    """Number of training images meant to hold each class (indexed like LVIS_CLASSES),
    before federated labelling drops a few."""
    k = np.arange(len(LVIS_CLASSES), dtype=np.float64) / (len(LVIS_CLASSES) - 1)
    top, bottom = _TAIL_TOP * num_images, max(1.0, _TAIL_BOTTOM * num_images)
    counts = np.rint(top * (bottom / top) ** k).astype(np.int64).clip(1, num_images)
    targets = np.empty(len(LVIS_CLASSES), dtype=np.int64)
    targets[list(_TAIL_ORDER)] = counts
    return targets


def _train_image_classes(num_images: int, seed: int) -> List[List[int]]:
    """The classes of each training image: class k in ``lvis_train_image_targets[k]``
    random images, rarest first, each image holding at most _CLASS_SLOTS classes; an image
    left empty gets one of the ten most frequent classes."""
    rng = np.random.default_rng([int(seed), 0x1F5])
    targets = lvis_train_image_targets(num_images)
    slots = np.full(num_images, _CLASS_SLOTS)
    classes: List[List[int]] = [[] for _ in range(num_images)]
    for cls in np.argsort(targets, kind="stable"):
        free = np.flatnonzero(slots > 0)
        chosen = rng.choice(free, size=min(int(targets[cls]), len(free)), replace=False)
        for i in chosen.tolist():
            classes[i].append(int(cls))
        slots[chosen] -= 1
    frequent = np.argsort(-targets, kind="stable")[:10]
    for i in range(num_images):
        if not classes[i]:
            classes[i].append(int(rng.choice(frequent)))
    return classes


def _val_image_classes(rng: np.random.Generator) -> List[int]:
    n = int(rng.integers(_VAL_CLASSES[0], _VAL_CLASSES[1] + 1))
    return [int(c) for c in rng.choice(len(LVIS_CLASSES), size=n, replace=False)]


def _polygon(shape: str, size: float, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N, 2) of a random instance of ``shape`` (longest side ``size``), centred
    at the origin, randomly stretched and rotated."""
    aspect = math.exp(rng.uniform(math.log(0.75), math.log(1.33)))
    sx, sy = math.sqrt(aspect), 1.0 / math.sqrt(aspect)
    m = max(sx, sy)
    half = np.array([size / 2 * sx / m, size / 2 * sy / m])
    if shape == "circle":
        t = np.linspace(0.0, 2 * np.pi, 32, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
    else:
        pts = unit_polygon(shape, rng)
    t = np.deg2rad(rng.uniform(0.0, 360.0))
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return (pts * half) @ rot.T


def _rasterise(poly: np.ndarray, size: int) -> np.ndarray:
    """The bool mask of a polygon as LVIS evaluation and detectron2 compute it
    (pycocotools), so that painted pixels and annotation agree exactly."""
    rle = mask_util.frPyObjects([poly.reshape(-1).tolist()], size, size)
    return mask_util.decode(mask_util.merge(rle)).astype(bool)


def generate_lvis_image(image_size: int, seed: int, index: int, classes: Sequence[int]):
    """Image ``index`` of the stream given by ``seed``, holding instances of ``classes``.

    Returns ``(image, instances)``: a uint8 (H, W, 3) BGR image and a list of dicts with
    ``category_id`` (1-based), ``polygon`` ((N, 2) float, image coordinates) and ``area``
    (pixels of its mask, what LVIS's area ranges use). A class
    whose instances find no free place is left out (placement rarely fails)."""
    rng = np.random.default_rng([int(seed), int(index)])
    size = int(image_size)
    scale = size / _REF_SIZE
    lo, hi = max(_MIN_SIZE, _MIN_SIZE * scale), max(_MIN_SIZE + 8.0, _MAX_SIZE * scale)
    canvas = textured_background(rng, size)
    occupied = np.zeros((size, size), dtype=bool)
    instances: List[Dict] = []
    for cls in classes:
        colour_name, shape = LVIS_CLASSES[cls].split("_", 1)
        base = np.array(_COLOURS[colour_name], dtype=np.float32)
        for _ in range(int(rng.integers(1, _MAX_INSTANCES_PER_CLASS + 1))):
            obj = _polygon(shape, float(rng.uniform(lo, hi)), rng)
            extent = np.abs(obj).max(0) + 1.0
            colour = np.clip(base + rng.uniform(-_COLOUR_JITTER, _COLOUR_JITTER, 3), 0, 255)
            for _try in range(_PLACE_TRIES):
                centre = rng.uniform(extent, size - extent)
                poly = np.round(obj + centre, 2)  # as written to the JSON
                mask = _rasterise(poly, size)
                if mask.sum() < 12:
                    break
                grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * _GAP + 1,) * 2, np.uint8))
                if (grown.astype(bool) & occupied).any():
                    continue
                if np.linalg.norm(canvas[mask].mean(0) - colour) < _MIN_BG_CONTRAST:
                    continue
                canvas[mask] = colour
                occupied |= mask
                instances.append(dict(category_id=cls + 1, polygon=poly, area=int(mask.sum())))
                break
    return finish_image(rng, canvas, 5.0), instances


def _federate(rng: np.random.Generator, instances: List[Dict]) -> Tuple[List[Dict], List[int],
                                                                          List[int]]:
    """LVIS-style partial labels of one image: (annotated instances, not-exhaustive ids,
    negative ids), category ids 1-based."""
    present = sorted({ins["category_id"] for ins in instances})
    kept, not_exhaustive = [], []
    for cid in present:
        mine = [ins for ins in instances if ins["category_id"] == cid]
        if rng.random() < _UNLABELLED_PROB:
            continue
        if len(mine) > 1 and rng.random() < _NOT_EXHAUSTIVE_PROB:
            mine = mine[:-1]
            not_exhaustive.append(cid)
        kept.extend(mine)
    absent = [c + 1 for c in range(len(LVIS_CLASSES)) if c + 1 not in present]
    neg = sorted(int(c) for c in rng.choice(absent, size=min(_NUM_NEG, len(absent)),
                                            replace=False))
    return kept, not_exhaustive, neg


def _annotation_fields(instance: Dict) -> Dict:
    """LVIS fields of an instance: the polygon's box, its mask's pixel area, the polygon."""
    poly = instance["polygon"]
    x0, y0 = poly.min(0)
    x1, y1 = poly.max(0)
    return dict(
        bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        area=float(instance["area"]),
        segmentation=[[float(v) for v in poly.reshape(-1)]],
    )


def _categories(images: List[Dict], annotations: List[Dict]) -> List[Dict]:
    """LVIS categories with image / instance counts and frequency tags from a training
    split's annotations."""
    image_sets = [set() for _ in LVIS_CLASSES]
    instance_counts = [0] * len(LVIS_CLASSES)
    for ann in annotations:
        image_sets[ann["category_id"] - 1].add(ann["image_id"])
        instance_counts[ann["category_id"] - 1] += 1
    cats = []
    for i, name in enumerate(LVIS_CLASSES):
        count = len(image_sets[i])
        cats.append({"id": i + 1, "name": name, "synonyms": [name],
                     "def": f"a {name.replace('_', ' ')}", "image_count": count,
                     "instance_count": instance_counts[i],
                     "frequency": lvis_frequency(count) if count else "r"})
    return cats


def generate_lvis_split(
    out_dir: str,
    num_images: int,
    image_size: int,
    seed: int = 0,
    split_name: str = "train",
    train_json: str = "",
) -> str:
    """Generate one split, or reuse it if cached (:func:`.synthetic_core.write_coco_split`):
    ``out_dir/images/<split_name>_<index>.png`` and ``out_dir/annotations.json`` (LVIS v1
    format); returns the JSON path.

    The "train" split follows the long tail and defines the categories' ``image_count``,
    ``instance_count`` and ``frequency``; any other split is class-balanced and copies the
    categories of ``train_json`` (required), as LVIS val carries train's tags. Each image's
    ``coco_url`` ends in ``images/<file>``, so that detectron2's ``load_lvis_json`` finds it
    under the image root ``out_dir + "/"``.  Deterministic in its arguments.
    """
    num_images, image_size = check_split_args(num_images, image_size, _MIN_IMAGE_SIZE)
    is_train = split_name == "train"
    if not is_train and not train_json:
        raise ValueError(f"split '{split_name}': the categories come from the training "
                         "split; pass train_json (the train split's annotations.json)")
    train_classes = _train_image_classes(num_images, seed) if is_train else None

    def categories(images: List[Dict], annotations: List[Dict]) -> List[Dict]:
        if is_train:
            return _categories(images, annotations)
        with open(train_json) as f:
            return json.load(f)["categories"]

    def make_image(index: int):
        if is_train:
            classes = train_classes[index]
        else:
            classes = _val_image_classes(np.random.default_rng([int(seed), int(index), 1]))
        image, instances = generate_lvis_image(image_size, seed, index, classes)
        kept, not_exhaustive, neg = _federate(
            np.random.default_rng([int(seed), int(index), 2]), instances)
        file_name = split_file_name(split_name, index)
        return image, kept, dict(coco_url=f"synthetic://rs_synthetic_lvis/images/{file_name}",
                                 not_exhaustive_category_ids=not_exhaustive,
                                 neg_category_ids=neg)

    return write_coco_split(
        out_dir, num_images, image_size, seed, split_name, make_image=make_image,
        dataset_name="rs_synthetic_lvis", description="rs_detectron2 synthetic long-tailed LVIS",
        version=LVIS_GENERATOR_VERSION, categories=categories,
        annotation_fields=_annotation_fields)
