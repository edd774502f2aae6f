"""Deterministic generator of the built-in synthetic "shapes" detection dataset.

Each image is a textured background (a random mix of noise, gradients, stripes,
checkerboards and soft blotches) with 1-7 instances of geometric shapes drawn on
it.  The class of an instance is given by its SHAPE only: colours are random per
instance, chosen to stand out clearly from the background they cover.  Instances
are filled or outlined, of varied size, aspect ratio and rotation; later instances
occlude earlier ones (moderately: an instance keeps most of its area visible) and
about 6% of them are tiny (8-12 px); the others are at least 16 px, whatever the
image size (a smaller shape cannot be told apart by its outline).

Annotations are COCO instances JSON: the mask of an instance is its VISIBLE region
(after occlusion), as compressed RLE; the box is the tight box of that mask and the
area its pixel count.

Only numpy, OpenCV, pycocotools and tqdm are used here (no detectron2), so the
generator can be used on its own::

    json_file = generate_synthetic_split("out/train", num_images=1000, image_size=256,
                                         seed=0, split_name="train")
"""
import json
import logging
import math
import os
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_util
from tqdm import tqdm

__all__ = [
    "SYNTHETIC_CLASSES",
    "GENERATOR_VERSION",
    "generate_synthetic_image",
    "generate_synthetic_split",
]

logger = logging.getLogger(__name__)

# Bump whenever the generated images or annotations change: it is part of the cache path.
GENERATOR_VERSION = 2

SYNTHETIC_CLASSES = ("circle", "square", "triangle", "star", "hexagon", "cross")

# Geometry of a 256 px image; object sizes scale with the image size.
_REF_SIZE = 256.0
_MIN_SIZE, _MAX_SIZE = 16.0, 110.0  # usual objects (longest side, px at 256; uniform)
_TINY_MIN, _TINY_MAX = 8.0, 12.0  # tiny objects (absolute px, not scaled)
_TINY_PROB = 0.06
_OUTLINE_PROB = 0.25
_MAX_INSTANCES = 7

# Keep an instance only if this much of its full area stays visible (and >= _MIN_AREA px).
_MIN_VISIBLE_FRAC = 0.40
_MIN_AREA = 12
# Placement rejects positions that would leave an earlier instance less visible than this
# (stricter than _MIN_VISIBLE_FRAC: occlusion is moderate and almost nothing is dropped).
_PLACE_VISIBLE_FRAC = 0.55
_PLACE_TRIES = 15

# Colour contrast (Euclidean RGB distance): object vs. the mean of what it covers, and
# vs. the colour of touching/overlapping instances.  Background textures vary by
# a few tens around their mean, well below these margins.
_MIN_BG_CONTRAST = 100.0
_MIN_TINY_BG_CONTRAST = 120.0
_MIN_OBJ_CONTRAST = 70.0

# Sub-pixel precision of the OpenCV drawing calls.
_SHIFT = 4
_ONE = 1 << _SHIFT

# Aspect-ratio range (log-uniform) of each class: a "square" is any rectangle, a
# "circle" any ellipse, the others are only mildly stretched.
_ASPECT_RANGE = {
    "circle": (0.7, 1.43),
    "square": (0.5, 2.0),
    "triangle": (0.75, 1.33),
    "star": (0.85, 1.18),
    "hexagon": (0.8, 1.25),
    "cross": (0.8, 1.25),
}


# --------------------------------------------------------------------------- shapes
def _unit_polygon(name: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N, 2) of a shape inscribed in [-1, 1]^2, centred at the origin."""
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if name == "triangle":
        ang = np.deg2rad([-90.0, 30.0, 150.0])
        pts = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    elif name == "hexagon":
        ang = np.deg2rad(np.arange(6) * 60.0)
        pts = np.stack([np.cos(ang), np.sin(ang)], axis=1)
    elif name == "star":
        inner = rng.uniform(0.38, 0.5)
        ang = np.deg2rad(-90.0 + np.arange(10) * 36.0)
        rad = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    elif name == "cross":
        w = rng.uniform(0.28, 0.42)
        pts = np.array(
            [[-w, -1], [w, -1], [w, -w], [1, -w], [1, w], [w, w],
             [w, 1], [-w, 1], [-w, w], [-1, w], [-1, -w], [-w, -w]],
            dtype=np.float64,
        )
    else:  # pragma: no cover - guarded by SYNTHETIC_CLASSES
        raise ValueError(name)
    # Centre the bounding box and stretch it to [-1, 1]^2.
    lo, hi = pts.min(0), pts.max(0)
    return (pts - (lo + hi) / 2) / ((hi - lo) / 2)


def _shape_patch(
    name: str, size: float, thickness: int, rng: np.random.Generator
) -> Tuple[np.ndarray, int]:
    """Draw one random instance of class ``name`` (longest side ``size`` px, filled if
    ``thickness`` <= 0, else outlined with that thickness) into a small uint8 patch.

    Returns the square patch (0/1 values) and its half side ``radius``: the shape's
    centre lies within half a pixel of ``(radius, radius)``.
    """
    lo, hi = _ASPECT_RANGE[name]
    aspect = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    sx, sy = math.sqrt(aspect), 1.0 / math.sqrt(aspect)
    m = max(sx, sy)
    half_x, half_y = size / 2 * sx / m, size / 2 * sy / m
    angle = rng.uniform(0.0, 360.0)
    radius = int(math.ceil(math.hypot(half_x, half_y))) + thickness + 2
    patch = np.zeros((2 * radius + 1, 2 * radius + 1), dtype=np.uint8)
    c = radius + rng.uniform(-0.5, 0.5, size=2)  # sub-pixel centre (x, y)
    filled = thickness <= 0
    if name == "circle":
        center = (int(round(c[0] * _ONE)), int(round(c[1] * _ONE)))
        axes = (int(round(half_x * _ONE)), int(round(half_y * _ONE)))
        cv2.ellipse(patch, center, axes, angle, 0, 360, 1,
                    -1 if filled else thickness, cv2.LINE_8, _SHIFT)
    else:
        pts = _unit_polygon(name, rng) * np.array([half_x, half_y])
        t = np.deg2rad(angle)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        pts = pts @ rot.T + c
        ipts = np.round(pts * _ONE).astype(np.int32).reshape(-1, 1, 2)
        if filled:
            cv2.fillPoly(patch, [ipts], 1, cv2.LINE_8, _SHIFT)
        else:
            cv2.polylines(patch, [ipts], True, 1, thickness, cv2.LINE_8, _SHIFT)
    return patch, radius


# ----------------------------------------------------------------------- background
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 (size, size, 3) textured background, values roughly in [0, 255]."""
    base = rng.uniform(20, 235, size=3)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = base
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kinds = ("noise", "gradient", "stripes", "checker", "blotches")
    chosen = rng.choice(len(kinds), size=int(rng.integers(1, 4)), replace=False)
    for k in sorted(chosen.tolist()):
        kind = kinds[k]
        if kind == "gradient":
            t = rng.uniform(0, 2 * np.pi)
            proj = xx * math.cos(t) + yy * math.sin(t)
            proj = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0) - 0.5
            img += proj[..., None] * rng.uniform(-60, 60, size=3).astype(np.float32)
        elif kind == "noise":
            if rng.random() < 0.5:  # fine grain
                img += rng.normal(0, rng.uniform(4, 12), size=img.shape).astype(np.float32)
            else:  # smooth low-frequency colour noise
                g = int(rng.integers(3, 12))
                small = rng.normal(0, 1, size=(g, g, 3)).astype(np.float32)
                img += cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC) * float(
                    rng.uniform(8, 20)
                )
        elif kind == "stripes":
            t = rng.uniform(0, np.pi)
            period = rng.uniform(6, 40) * size / _REF_SIZE
            phase = (xx * math.cos(t) + yy * math.sin(t)) * (2 * np.pi / period)
            wave = np.sin(phase + rng.uniform(0, 2 * np.pi))
            if rng.random() < 0.5:
                wave = np.sign(wave)
            img += wave[..., None] * rng.uniform(-22, 22, size=3).astype(np.float32)
        elif kind == "checker":
            cell = max(3.0, rng.uniform(6, 32) * size / _REF_SIZE)
            ox, oy = rng.uniform(0, cell, size=2)
            board = ((np.floor((xx + ox) / cell) + np.floor((yy + oy) / cell)) % 2) * 2 - 1
            img += board[..., None] * rng.uniform(-20, 20, size=3).astype(np.float32)
        else:  # blotches: soft blurred ellipses of nearby colours
            layer = np.zeros_like(img)
            for _ in range(int(rng.integers(3, 11))):
                cx, cy = (int(v) for v in rng.integers(0, size, size=2))
                ax = tuple(int(v) for v in rng.uniform(0.05, 0.25, size=2) * size)
                col = tuple(float(v) for v in rng.uniform(-30, 30, size=3))
                cv2.ellipse(layer, (cx, cy), ax, float(rng.uniform(0, 180)), 0, 360,
                            col, -1)
            sigma = rng.uniform(5, 12) * size / _REF_SIZE
            img += cv2.GaussianBlur(layer, (0, 0), sigma)
    return np.clip(img, 0, 255)


# -------------------------------------------------------------------------- images
def _pick_colour(rng, covered_mean, neighbour_colours, min_bg) -> np.ndarray:
    """A random colour far from the mean of what the instance covers and from the
    colours of the instances it touches; the best of a few tries if none is far enough."""
    best, best_score = None, -np.inf
    for _ in range(40):
        col = rng.uniform(0, 255, size=3)
        d_bg = float(np.linalg.norm(col - covered_mean))
        d_obj = min((float(np.linalg.norm(col - c)) for c in neighbour_colours), default=1e9)
        if d_bg >= min_bg and d_obj >= _MIN_OBJ_CONTRAST:
            return col
        score = min(d_bg / min_bg, d_obj / _MIN_OBJ_CONTRAST)
        if score > best_score:
            best, best_score = col, score
    return best


def generate_synthetic_image(image_size: int, seed: int, index: int):
    """Generate image ``index`` of the stream given by ``seed``.

    Depends only on ``(image_size, seed, index)``.  Returns ``(image, instances)``:
    a uint8 (H, W, 3) image and a list of dicts with ``category_id`` (1-based),
    ``mask`` (bool (H, W) visible region) and ``full_area`` (pixels of the unoccluded
    instance, including any part outside the image).  Instances too occluded are
    already dropped (see the module doc).
    """
    rng = np.random.default_rng([int(seed), int(index)])
    size = int(image_size)
    scale = size / _REF_SIZE
    lo_size = max(_MIN_SIZE, _MIN_SIZE * scale)  # never below 16 px, also on small images
    hi_size = max(lo_size + 8.0, _MAX_SIZE * scale)
    canvas = _background(rng, size)

    inst: List[Dict] = []  # dicts: cls, vis (bool HxW), full, colour, box (x0,y0,x1,y1)
    for _ in range(int(rng.integers(1, _MAX_INSTANCES + 1))):
        cls = int(rng.integers(len(SYNTHETIC_CLASSES)))
        tiny = rng.random() < _TINY_PROB
        if tiny:
            obj_size = rng.uniform(_TINY_MIN, _TINY_MAX)
        else:
            obj_size = rng.uniform(lo_size, hi_size)
        thickness = 0
        if not tiny and obj_size >= 24 and rng.random() < _OUTLINE_PROB:
            thickness = int(min(rng.integers(2, 6), max(2, int(obj_size * 0.12))))
        patch, radius = _shape_patch(SYNTHETIC_CLASSES[cls], obj_size, thickness, rng)
        full = int(patch.sum())
        if full < _MIN_AREA:
            continue
        margin = 0.42 * obj_size
        placed = None
        for _try in range(_PLACE_TRIES):
            cx, cy = (int(round(v)) for v in rng.uniform(margin, size - margin, size=2))
            x0, y0 = cx - radius, cy - radius
            # Intersection of the patch with the image.
            ix0, iy0 = max(x0, 0), max(y0, 0)
            ix1, iy1 = min(x0 + patch.shape[1], size), min(y0 + patch.shape[0], size)
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            sub = patch[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0].astype(bool)
            if sub.sum() < 0.8 * full:  # mostly inside the image
                continue
            ok = True
            for o in inst:
                ov = np.count_nonzero(o["vis"][iy0:iy1, ix0:ix1] & sub)
                if ov and o["vis_count"] - ov < _PLACE_VISIBLE_FRAC * o["full"]:
                    ok = False
                    break
            if ok:
                placed = (ix0, iy0, ix1, iy1, sub)
                break
        if placed is None:
            continue
        ix0, iy0, ix1, iy1, sub = placed
        region = canvas[iy0:iy1, ix0:ix1]
        covered_mean = region[sub].mean(axis=0)
        # Instances touching (boxes within 3 px) or overlapping the new one.
        neighbours = [
            o["colour"] for o in inst
            if o["box"][0] <= ix1 + 3 and o["box"][2] >= ix0 - 3
            and o["box"][1] <= iy1 + 3 and o["box"][3] >= iy0 - 3
        ]
        colour = _pick_colour(rng, covered_mean, neighbours,
                              _MIN_TINY_BG_CONTRAST if tiny else _MIN_BG_CONTRAST)
        region[sub] = colour
        for o in inst:
            o["vis"][iy0:iy1, ix0:ix1] &= ~sub
            o["vis_count"] = int(np.count_nonzero(o["vis"]))
        vis = np.zeros((size, size), dtype=bool)
        vis[iy0:iy1, ix0:ix1] = sub
        inst.append(dict(cls=cls, vis=vis, vis_count=int(sub.sum()), full=full,
                         colour=colour, box=(ix0, iy0, ix1, iy1)))

    # Mild global sensor noise, then quantise.
    sigma = rng.uniform(0.0, 6.0)
    if sigma > 0.5:
        canvas += rng.normal(0.0, sigma, size=canvas.shape).astype(np.float32)
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)

    instances = [
        dict(category_id=o["cls"] + 1, mask=o["vis"], full_area=o["full"])
        for o in inst
        if o["vis_count"] >= max(_MIN_AREA, _MIN_VISIBLE_FRAC * o["full"])
    ]
    return image, instances


def _annotation(mask: np.ndarray) -> Dict:
    """COCO fields (bbox, area, segmentation) of a visible bool mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = int(xs[0]), int(xs[-1]), int(ys[0]), int(ys[-1])
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return dict(
        bbox=[float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
        area=int(np.count_nonzero(mask)),
        segmentation=dict(size=[int(v) for v in rle["size"]], counts=rle["counts"]),
    )


def _say(msg: str) -> None:
    if logger.hasHandlers() and logger.isEnabledFor(logging.INFO):
        logger.info(msg)
    else:
        print(msg, flush=True)


def _cache_complete(json_file: str, image_dir: str, num_images: int) -> bool:
    if not os.path.isfile(json_file):
        return False
    try:
        n = sum(1 for e in os.scandir(image_dir)
                if e.name.endswith(".png") and ".tmp" not in e.name)
    except FileNotFoundError:
        return False
    return n >= num_images


def generate_synthetic_split(
    out_dir: str,
    num_images: int,
    image_size: int = 256,
    seed: int = 0,
    split_name: str = "train",
) -> str:
    """Generate one split: ``out_dir/images/<split_name>_<index>.png`` and
    ``out_dir/annotations.json`` (COCO instances format); returns the JSON path.

    Deterministic: image ``i`` depends only on ``(image_size, seed, i)``, so the same
    arguments give identical pixels and a byte-identical JSON.  The JSON is written
    last and atomically, so it exists only for a complete split: if it is already
    there (and the images too) nothing is generated and the cache is reused; an
    interrupted run is regenerated from scratch.
    """
    num_images, image_size = int(num_images), int(image_size)
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    return write_coco_split(
        out_dir, num_images, image_size, seed, split_name,
        make_image=lambda index: (*generate_synthetic_image(image_size, seed, index), {}),
        dataset_name="rs_synthetic", description="rs_detectron2 synthetic shapes",
        version=GENERATOR_VERSION,
        categories=lambda images, annotations: coco_categories(SYNTHETIC_CLASSES, "shape"),
    )


def coco_categories(classes: Sequence[str], supercategory: str) -> List[Dict]:
    """COCO categories of ``classes`` (ids from 1)."""
    return [dict(id=i + 1, name=n, supercategory=supercategory) for i, n in enumerate(classes)]


def coco_annotation_fields(instance: Dict) -> Dict:
    """COCO fields of a generated instance: ``iscrowd`` and those of its visible mask."""
    return dict(iscrowd=0, **_annotation(instance["mask"]))


def split_file_name(split_name: str, index: int) -> str:
    """File name of image ``index`` of a split, under the split's ``images/``."""
    return f"{split_name}_{index:06d}.png"


def write_coco_split(
    out_dir: str,
    num_images: int,
    image_size: int,
    seed: int,
    split_name: str,
    *,
    make_image: Callable[[int], Tuple[np.ndarray, List[Dict], Dict]],
    dataset_name: str,
    description: str,
    version: int,
    categories: Callable[[List[Dict], List[Dict]], List[Dict]],
    annotation_fields: Callable[[Dict], Dict] = coco_annotation_fields,
) -> str:
    """Write ``out_dir/images/<split_name>_<index>.png`` and ``out_dir/annotations.json``
    (COCO or LVIS instances), or reuse them when a complete split is cached (logged).
    Shared by the built-in generators:

    * ``make_image(index) -> (BGR image, instances, extra image fields)``, each instance a
      dict with ``category_id`` and what ``annotation_fields`` reads;
    * ``annotation_fields(instance)``: its fields besides ids (default: COCO, from a mask);
    * ``categories(images, annotations)``: the JSON's categories, given the split's records.

    The JSON is written last and atomically, images by write-then-rename, so an
    interrupted run leaves no JSON and is regenerated."""
    out_dir = os.fspath(out_dir)
    image_dir = os.path.join(out_dir, "images")
    json_file = os.path.join(out_dir, "annotations.json")
    if _cache_complete(json_file, image_dir, num_images):
        _say(f"{dataset_name}: reusing cached split '{split_name}' ({num_images} images) "
             f"at {out_dir}")
        return json_file

    os.makedirs(image_dir, exist_ok=True)
    images, annotations = [], []
    for index in tqdm(range(num_images), desc=f"Generating {dataset_name} {split_name}",
                      unit="img", dynamic_ncols=True):
        image, instances, image_fields = make_image(index)
        file_name = split_file_name(split_name, index)
        # Write-then-rename: concurrent generators never expose a half-written image.
        tmp = os.path.join(image_dir, f"{file_name[:-4]}.tmp{os.getpid()}.png")
        if not cv2.imwrite(tmp, image):
            raise OSError(f"could not write {tmp}")
        os.replace(tmp, os.path.join(image_dir, file_name))
        image_id = index + 1
        images.append(dict(id=image_id, file_name=file_name, height=image_size,
                           width=image_size, **image_fields))
        for ins in instances:
            ann = dict(id=len(annotations) + 1, image_id=image_id,
                       category_id=ins["category_id"])
            ann.update(annotation_fields(ins))
            annotations.append(ann)

    dataset = dict(
        info=dict(description=f"{description}, split {split_name}",
                  version=str(version),
                  generator=dict(num_images=num_images, image_size=image_size, seed=int(seed))),
        licenses=[],
        images=images,
        annotations=annotations,
        categories=categories(images, annotations),
    )
    tmp_json = f"{json_file}.tmp{os.getpid()}"
    with open(tmp_json, "w") as f:
        json.dump(dataset, f, separators=(",", ":"))
    os.replace(tmp_json, json_file)
    return json_file
