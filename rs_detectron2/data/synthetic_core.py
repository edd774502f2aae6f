"""What the built-in synthetic generators share: split files and pixel helpers.

* **Split files**: argument checks, :func:`write_coco_split` (PNG images and a COCO or LVIS
  instances JSON, written atomically and reused when a complete split is cached), COCO
  categories and the COCO fields of a mask (compressed RLE).
* **Pixels**: coordinate grids, colour ramps and smooth colour noise, the textured
  background of the shapes and long-tailed families, alpha blending through a coverage
  patch, long lines, contrasting colours, and the final sensor noise and quantisation.

A helper draws from the random stream exactly what the code it replaced drew, in the same
order: the generated images and annotations must not change (``tests/test_synthetic_frozen.py``).
Only numpy, OpenCV, pycocotools and tqdm are used here (no detectron2).
"""
import functools
import json
import logging
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_util
from tqdm import tqdm

logger = logging.getLogger(__name__)

# Sub-pixel bits of the OpenCV drawing calls.
SHIFT = 4
# Painted opacity of a coverage patch: min(1, ALPHA_GAIN * coverage).
ALPHA_GAIN = 1.5


# ---------------------------------------------------------------------- split files
def check_split_args(num_images: int, image_size: int, min_image_size: int) -> Tuple[int, int]:
    """``(num_images, image_size)`` as ints; ValueError if fewer than one image or images
    smaller than ``min_image_size``."""
    num_images, image_size = int(num_images), int(image_size)
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if image_size < min_image_size:
        raise ValueError(f"image_size must be >= {min_image_size}, got {image_size}")
    return num_images, image_size


def split_file_name(split_name: str, index: int) -> str:
    """File name of image ``index`` of a split, under the split's ``images/``."""
    return f"{split_name}_{index:06d}.png"


def coco_categories(classes: Sequence[str], supercategory: str) -> List[Dict]:
    """COCO categories of ``classes`` (ids from 1)."""
    return [dict(id=i + 1, name=n, supercategory=supercategory) for i, n in enumerate(classes)]


def coco_annotation_fields(instance: Dict) -> Dict:
    """COCO fields of a generated instance with a bool ``mask`` (its visible pixels):
    ``iscrowd``, the tight box, the pixel area and the mask as compressed RLE."""
    mask = instance["mask"]
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    x0, x1, y0, y1 = int(xs[0]), int(xs[-1]), int(ys[0]), int(ys[-1])
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(
        iscrowd=0,
        bbox=[float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)],
        area=int(np.count_nonzero(mask)),
        segmentation=dict(size=[int(v) for v in rle["size"]], counts=rle["counts"].decode("ascii")),
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
    (COCO or LVIS instances), or reuse them when a complete split is cached (logged);
    returns the JSON path.

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


# --------------------------------------------------------------------------- pixels
@functools.lru_cache(maxsize=8)
def pixel_grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(yy, xx)``: the float32 (size, size) pixel coordinates (read-only, cached)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def uniform_canvas(rng: np.random.Generator, size: int, low: float, high: float) -> np.ndarray:
    """A float32 (size, size, 3) image of one random colour, channels uniform in [low, high)."""
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = rng.uniform(low, high, size=3)
    return img


def linear_ramp(rng: np.random.Generator, size: int, offset: Optional[float] = None) -> np.ndarray:
    """A float32 (size, size) ramp of random direction rising by about 1 across the image,
    minus its mean (``offset`` None) or minus ``offset``."""
    yy, xx = pixel_grid(size)
    t = rng.uniform(0, 2 * np.pi)
    ramp = (xx * math.cos(t) + yy * math.sin(t)) / size
    ramp -= ramp.mean() if offset is None else offset
    return ramp


def smooth_noise(rng: np.random.Generator, size: int, cells: Tuple[int, int],
                 amplitude: Tuple[float, float],
                 interpolation: int = cv2.INTER_CUBIC) -> np.ndarray:
    """Float32 (size, size, 3) colour noise: a random (g, g) grid of normal values, ``g`` in
    ``cells``, resized to the image and scaled by a random factor in ``amplitude``."""
    g = int(rng.integers(*cells))
    small = rng.normal(0, 1, size=(g, g, 3)).astype(np.float32)
    return cv2.resize(small, (size, size), interpolation=interpolation) * float(
        rng.uniform(*amplitude))


# Object and texture sizes of textured_background are set for 256 px and scale with the image.
_TEXTURE_REF_SIZE = 256.0


def textured_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 (size, size, 3) textured background, values in [0, 255]: a random colour
    plus one to three of noise, a gradient, stripes, a checkerboard and soft blotches (the
    shapes and long-tailed families)."""
    img = uniform_canvas(rng, size, 20, 235)
    yy, xx = pixel_grid(size)
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
                img += smooth_noise(rng, size, (3, 12), (8, 20))
        elif kind == "stripes":
            t = rng.uniform(0, np.pi)
            period = rng.uniform(6, 40) * size / _TEXTURE_REF_SIZE
            phase = (xx * math.cos(t) + yy * math.sin(t)) * (2 * np.pi / period)
            wave = np.sin(phase + rng.uniform(0, 2 * np.pi))
            if rng.random() < 0.5:
                wave = np.sign(wave)
            img += wave[..., None] * rng.uniform(-22, 22, size=3).astype(np.float32)
        elif kind == "checker":
            cell = max(3.0, rng.uniform(6, 32) * size / _TEXTURE_REF_SIZE)
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
            sigma = rng.uniform(5, 12) * size / _TEXTURE_REF_SIZE
            img += cv2.GaussianBlur(layer, (0, 0), sigma)
    return np.clip(img, 0, 255)


def blend(canvas: np.ndarray, cov: np.ndarray, x0: int, y0: int, colour: np.ndarray) -> None:
    """Paint ``colour`` through coverage patch ``cov`` (opacity min(1, ALPHA_GAIN * cov))
    with its top-left at (x0, y0), clipped to the canvas."""
    size_y, size_x = canvas.shape[:2]
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + cov.shape[1], size_x), min(y0 + cov.shape[0], size_y)
    if ix1 <= ix0 or iy1 <= iy0:
        return
    a = np.minimum(cov[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] * ALPHA_GAIN, 1.0)[..., None]
    region = canvas[iy0:iy1, ix0:ix1]
    region += a * (colour.astype(np.float32) - region)


def line_cover(rng: np.random.Generator, size: int, thickness: float,
               curved: bool) -> np.ndarray:
    """Coverage (size, size) of a random long anti-aliased line or curve across the image."""
    p = rng.uniform(-0.1 * size, 1.1 * size, size=(3, 2))
    if curved:  # quadratic Bezier
        t = np.linspace(0.0, 1.0, 24)[:, None]
        pts = (1 - t) ** 2 * p[0] + 2 * t * (1 - t) * p[1] + t ** 2 * p[2]
    else:
        pts = p[:2]
    layer = np.zeros((size, size), dtype=np.uint8)
    ipts = np.round(pts * (1 << SHIFT)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(layer, [ipts], False, 255, max(1, int(round(thickness))), cv2.LINE_AA, SHIFT)
    return layer.astype(np.float32) / 255.0


def pick_colour(rng: np.random.Generator, covered: np.ndarray,
                neighbours: Sequence[np.ndarray], min_contrast: float,
                min_neighbour_contrast: float, min_low_contrast: Optional[float] = None,
                low_quantile: float = 0.02) -> np.ndarray:
    """A random colour (Euclidean RGB distances) at least ``min_contrast`` from the mean of
    the ``covered`` pixels (N, 3), ``min_neighbour_contrast`` from each of ``neighbours`` and,
    if ``min_low_contrast`` is given, that far from nearly all covered pixels (their
    ``low_quantile`` least distant: a fine detail on another colour stays visible); of 40
    tries the first that is, else the one closest to being so."""
    mean = covered.mean(axis=0)
    best, best_score = None, -np.inf
    for _ in range(40):
        col = rng.uniform(0, 255, size=3)
        d_obj = min((float(np.linalg.norm(col - c)) for c in neighbours), default=1e9)
        score = min(float(np.linalg.norm(col - mean)) / min_contrast,
                    d_obj / min_neighbour_contrast)
        if min_low_contrast is not None:
            d_low = float(np.quantile(np.linalg.norm(covered - col, axis=1), low_quantile))
            score = min(score, d_low / min_low_contrast)
        if score >= 1.0:
            return col
        if score > best_score:
            best, best_score = col, score
    return best


def visible_instances(objects: Sequence[Dict], min_area: int,
                      min_visible_frac: float) -> List[Dict]:
    """The generated instances (``category_id`` 1-based, ``mask``, ``full_area``) of the
    placed ``objects`` (dicts with ``cls``, ``vis`` mask, ``vis_count``, ``full`` area) that
    keep at least ``min_area`` pixels and ``min_visible_frac`` of their area visible."""
    return [
        dict(category_id=o["cls"] + 1, mask=o["vis"], full_area=o["full"])
        for o in objects
        if o["vis_count"] >= max(min_area, min_visible_frac * o["full"])
    ]


def finish_image(rng: np.random.Generator, canvas: np.ndarray, max_sigma: float,
                 min_sigma: float = 0.5) -> np.ndarray:
    """The uint8 image of a float canvas: sensor noise of a random sigma in [0, max_sigma)
    (none below ``min_sigma``), added in place, then rounding and clipping to [0, 255]."""
    sigma = rng.uniform(0.0, max_sigma)
    if sigma > min_sigma:
        canvas += rng.normal(0.0, sigma, size=canvas.shape).astype(np.float32)
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8)
