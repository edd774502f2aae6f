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
import math
from typing import Dict, List, Tuple

import cv2
import numpy as np

from .synthetic_core import (
    SHIFT,
    check_split_args,
    coco_categories,
    finish_image,
    pick_colour,
    textured_background,
    visible_instances,
    write_coco_split,
)

__all__ = [
    "SYNTHETIC_CLASSES",
    "GENERATOR_VERSION",
    "generate_synthetic_image",
    "generate_synthetic_split",
    "unit_polygon",
]

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
_MIN_IMAGE_SIZE = 32

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

_ONE = 1 << SHIFT  # sub-pixel unit of the OpenCV drawing calls

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
def unit_polygon(name: str, rng: np.random.Generator) -> np.ndarray:
    """Vertices (N, 2) of shape ``name`` (any class but "circle"; a star's or cross's
    proportions are drawn from ``rng``), inscribed in [-1, 1]^2, centred at the origin."""
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
                    -1 if filled else thickness, cv2.LINE_8, SHIFT)
    else:
        pts = unit_polygon(name, rng) * np.array([half_x, half_y])
        t = np.deg2rad(angle)
        rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        pts = pts @ rot.T + c
        ipts = np.round(pts * _ONE).astype(np.int32).reshape(-1, 1, 2)
        if filled:
            cv2.fillPoly(patch, [ipts], 1, cv2.LINE_8, SHIFT)
        else:
            cv2.polylines(patch, [ipts], True, 1, thickness, cv2.LINE_8, SHIFT)
    return patch, radius


# -------------------------------------------------------------------------- images
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
    canvas = textured_background(rng, size)

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
        # Instances touching (boxes within 3 px) or overlapping the new one.
        neighbours = [
            o["colour"] for o in inst
            if o["box"][0] <= ix1 + 3 and o["box"][2] >= ix0 - 3
            and o["box"][1] <= iy1 + 3 and o["box"][3] >= iy0 - 3
        ]
        colour = pick_colour(rng, region[sub], neighbours,
                             _MIN_TINY_BG_CONTRAST if tiny else _MIN_BG_CONTRAST,
                             _MIN_OBJ_CONTRAST)
        region[sub] = colour
        for o in inst:
            o["vis"][iy0:iy1, ix0:ix1] &= ~sub
            o["vis_count"] = int(np.count_nonzero(o["vis"]))
        vis = np.zeros((size, size), dtype=bool)
        vis[iy0:iy1, ix0:ix1] = sub
        inst.append(dict(cls=cls, vis=vis, vis_count=int(sub.sum()), full=full,
                         colour=colour, box=(ix0, iy0, ix1, iy1)))

    image = finish_image(rng, canvas, 6.0)  # mild global sensor noise, then quantise
    return image, visible_instances(inst, _MIN_AREA, _MIN_VISIBLE_FRAC)


def generate_synthetic_split(
    out_dir: str,
    num_images: int,
    image_size: int,
    seed: int = 0,
    split_name: str = "train",
) -> str:
    """Generate one split, or reuse it if cached (:func:`.synthetic_core.write_coco_split`):
    ``out_dir/images/<split_name>_<index>.png`` and ``out_dir/annotations.json`` (COCO
    instances); returns the JSON path.  Image ``i`` is ``generate_synthetic_image(image_size,
    seed, i)``: the same arguments give identical pixels and a byte-identical JSON."""
    num_images, image_size = check_split_args(num_images, image_size, _MIN_IMAGE_SIZE)
    return write_coco_split(
        out_dir, num_images, image_size, seed, split_name,
        make_image=lambda index: (*generate_synthetic_image(image_size, seed, index), {}),
        dataset_name="rs_synthetic", description="rs_detectron2 synthetic shapes",
        version=GENERATOR_VERSION,
        categories=lambda images, annotations: coco_categories(SYNTHETIC_CLASSES, "shape"),
    )
