"""Deterministic generator of the HARD built-in synthetic dataset: look-alike glyphs.

Each object is one character out of ten that differ only in fine detail (:data:`GLYPH_CLASSES`:
``O`` / ``Q`` (a tail), ``C`` / ``G`` (a bar), ``O`` / ``C`` (a gap), ``O`` / ``D`` (a straight
side), ``B`` / ``8`` / ``3`` (a stem, an open side), ``E`` / ``F`` (a bottom bar)), drawn as
single-line strokes in the manner of the Hershey vector fonts (:mod:`.synthetic_strokes`):

* faces: "simplex" (smooth strokes), "plain" (coarse polygonal curves), "duplex" (each
  stroke drawn twice, side by side), "complex" (serifs: short ticks at the open stroke ends)
  and "triplex" (serifs and doubled strokes);
* random stroke thickness, height, aspect ratio, slant (shear) and a small rotation;
* a random colour that contrasts with what the glyph covers.

The glyph outlines are defined here (strokes on a unit grid), not taken from
``cv2.putText``: OpenCV 5 draws its ``FONT_HERSHEY_*`` faces with a built-in TrueType font
(one typeface, regular/bold/italic, the thickness argument mostly ignored), so
``cv2.putText`` would neither give the stroke and face variety wanted here nor the same images
under OpenCV 4 and 5.

Backgrounds are coloured and cluttered: a base colour, a gradient, smooth colour noise and
one texture (grain, stripes, a grid or mottling), then distractors that are NOT objects:
blobs, lines, curves, partial strokes (fragments of single strokes of any glyph, never a whole
class glyph) and whole characters outside the classes (``H K X 7 4 T U S V Z``).  An image
has 2-6 objects of height 20-72 px at 192 px (scaled with the image size, never below 12 px;
log-uniform, so many are small).  Later objects occlude earlier ones, and some thin lines are
drawn over everything; an object is kept only if at least 70% of its mask stays visible
(placement avoids hiding more than 20% of an earlier object).

Annotations are COCO instances JSON.  The mask of an object is the set of its VISIBLE pixels
that its anti-aliased stroke covers at least 25% (the painted stroke, slightly dilated by its
anti-aliased rim: such a pixel is painted at least 37.5% opaque), as compressed RLE; the box
is the tight box of that mask and the area its pixel count.  Objects lie wholly inside the
image.

Only numpy, OpenCV, pycocotools and tqdm are used here (no detectron2)::

    json_file = generate_glyph_split("out/train", num_images=1000, image_size=192,
                                     seed=0, split_name="train")
"""
import math
from typing import Dict, List, Tuple

import cv2
import numpy as np

from .synthetic_core import (
    blend,
    check_split_args,
    coco_categories,
    finish_image,
    line_cover,
    linear_ramp,
    pick_colour,
    pixel_grid,
    smooth_noise,
    uniform_canvas,
    visible_instances,
    write_coco_split,
)
from .synthetic_strokes import (
    face_strokes,
    glyph_matrix,
    random_face,
    render_strokes,
    stroke_builders,
)

__all__ = [
    "GLYPH_CLASSES",
    "GLYPH_GENERATOR_VERSION",
    "generate_glyph_image",
    "generate_glyph_split",
]


# Bump whenever the generated images or annotations change: it is part of the cache path.
GLYPH_GENERATOR_VERSION = 1

# The classes, named by their glyph: groups of look-alikes.
GLYPH_CLASSES = ("O", "Q", "C", "G", "D", "B", "8", "3", "E", "F")
# Characters drawn as distractors (never objects): none is a class glyph.
_DISTRACTOR_GLYPHS = ("H", "K", "X", "7", "4", "T", "U", "S", "V", "Z")

# Geometry of a 192 px image; object heights scale with the image size.
_REF_SIZE = 192.0
_MIN_HEIGHT, _MAX_HEIGHT = 20.0, 72.0  # glyph height, px at 192 (log-uniform)
_MIN_ABS_HEIGHT = 12.0
_MIN_OBJECTS, _MAX_OBJECTS = 2, 6
_MIN_IMAGE_SIZE = 48

# Mask of a glyph: pixels its stroke covers at least this much (painted opacity is
# min(1, synthetic_core.ALPHA_GAIN * coverage)).
_MASK_COVERAGE = 0.25

# Keep an object only if this much of its mask stays visible (and >= _MIN_AREA px);
# placement rejects positions that would leave an earlier object less visible than
# _PLACE_VISIBLE_FRAC.
_MIN_VISIBLE_FRAC = 0.70
_PLACE_VISIBLE_FRAC = 0.80
_MIN_AREA = 12
_PLACE_TRIES = 15

# Colour contrast (Euclidean RGB distance) of an object: to the mean of the pixels it
# covers, to nearly all of them (their 2% least distant: a fine detail lying on another
# colour of the background stays visible) and to touching/overlapping objects.
_MIN_MEAN_CONTRAST = 110.0
_MIN_LOW_CONTRAST = 55.0
_LOW_QUANTILE = 0.02
_MIN_OBJ_CONTRAST = 70.0


# --------------------------------------------------------------------------- glyphs
def _outline(ch: str, per_turn: int) -> List[np.ndarray]:
    """The strokes (polylines, (N, 2) arrays) of character ``ch`` on the unit grid: y from 0
    (top) to 1 (baseline), x from 0 to about 0.7."""
    arc, line, join = stroke_builders(per_turn)

    if ch == "O":
        return [arc(0.35, 0.5, 0.35, 0.5, 0, 360)]
    if ch == "Q":
        return [arc(0.35, 0.5, 0.35, 0.5, 0, 360), line((0.42, 0.70), (0.74, 1.04))]
    if ch == "C":
        return [arc(0.36, 0.5, 0.36, 0.5, -48, -312)]
    if ch == "G":
        bowl = arc(0.36, 0.5, 0.36, 0.5, -48, -330)
        ex, ey = bowl[-1]
        return [bowl, line((0.44, 0.58), (ex, 0.58), (ex, ey))]
    if ch == "D":
        return [join((0.06, 1.0), (0.06, 0.0), (0.30, 0.0),
                     arc(0.30, 0.5, 0.38, 0.5, -90, 90), (0.06, 1.0))]
    if ch == "B":
        return [join((0.06, 0.48), (0.06, 0.0), (0.36, 0.0),
                     arc(0.36, 0.24, 0.26, 0.24, -90, 90), (0.06, 0.48), (0.40, 0.48),
                     arc(0.40, 0.74, 0.29, 0.26, -90, 90), (0.06, 1.0), (0.06, 0.48))]
    if ch == "8":
        return [arc(0.35, 0.25, 0.26, 0.25, 90, 450), arc(0.35, 0.745, 0.32, 0.255, -90, 270)]
    if ch == "3":
        return [arc(0.33, 0.25, 0.29, 0.25, -165, 90), arc(0.33, 0.745, 0.34, 0.255, -90, 165)]
    if ch == "E":
        return [line((0.62, 0.0), (0.06, 0.0), (0.06, 1.0), (0.62, 1.0)),
                line((0.06, 0.5), (0.50, 0.5))]
    if ch == "F":
        return [line((0.62, 0.0), (0.06, 0.0), (0.06, 1.0)), line((0.06, 0.5), (0.50, 0.5))]
    # Distractor characters.
    if ch == "H":
        return [line((0.06, 0), (0.06, 1)), line((0.64, 0), (0.64, 1)),
                line((0.06, 0.5), (0.64, 0.5))]
    if ch == "K":
        return [line((0.06, 0), (0.06, 1)), line((0.64, 0), (0.06, 0.62)),
                line((0.28, 0.42), (0.66, 1))]
    if ch == "X":
        return [line((0.04, 0), (0.66, 1)), line((0.66, 0), (0.04, 1))]
    if ch == "7":
        return [line((0.04, 0), (0.64, 0), (0.24, 1))]
    if ch == "4":
        return [line((0.50, 1), (0.50, 0), (0.02, 0.7), (0.70, 0.7))]
    if ch == "T":
        return [line((0.02, 0), (0.70, 0)), line((0.36, 0), (0.36, 1))]
    if ch == "U":
        return [join((0.06, 0), (0.06, 0.68), arc(0.35, 0.68, 0.29, 0.32, 180, 0), (0.64, 0))]
    if ch == "S":
        return [arc(0.35, 0.26, 0.30, 0.245, -30, -270), arc(0.35, 0.75, 0.32, 0.25, -90, 160)]
    if ch == "V":
        return [line((0.0, 0), (0.35, 1), (0.70, 0))]
    if ch == "Z":
        return [line((0.04, 0), (0.66, 0), (0.04, 1), (0.66, 1))]
    raise ValueError(f"no outline for {ch!r}")


def _render_glyph(rng: np.random.Generator, ch: str, height: float,
                  fraction: Tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Coverage patch of one random rendering of ``ch`` (face, thickness, transform)."""
    face = random_face(rng)
    strokes = face_strokes(_outline, ch, face)
    if fraction != (0.0, 1.0):  # a partial stroke: one piece of one stroke
        s = strokes[int(rng.integers(len(strokes)))]
        n = len(s)
        if n == 2:
            a, b = sorted(rng.uniform(*fraction, size=2))
            strokes = [np.stack([s[0] + a * (s[1] - s[0]), s[0] + b * (s[1] - s[0])])]
        else:
            k = max(2, int(round(n * rng.uniform(*fraction))))
            i = int(rng.integers(0, n - k + 1))
            strokes = [s[i:i + k]]
    thickness = max(1.0, height * rng.uniform(0.05, 0.12))
    return render_strokes(strokes, face, glyph_matrix(rng, height), thickness, rng)


# ----------------------------------------------------------------------- background
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 (size, size, 3) coloured background (before distractors), roughly 0-255."""
    yy, xx = pixel_grid(size)
    img = uniform_canvas(rng, size, 25, 230)
    img += linear_ramp(rng, size)[..., None] * rng.uniform(-80, 80, size=3).astype(np.float32)
    img += smooth_noise(rng, size, (3, 9), (8, 25))
    kind = int(rng.integers(4))
    if kind == 0:  # grain
        img += rng.normal(0, rng.uniform(5, 14), size=img.shape).astype(np.float32)
    elif kind == 1:  # stripes / waves
        t = rng.uniform(0, np.pi)
        period = rng.uniform(5, 30) * size / _REF_SIZE
        wave = np.sin((xx * math.cos(t) + yy * math.sin(t)) * (2 * np.pi / period)
                      + rng.uniform(0, 2 * np.pi))
        img += wave[..., None] * rng.uniform(-20, 20, size=3).astype(np.float32)
    elif kind == 2:  # grid of thin lines, like ruled paper
        period = rng.uniform(8, 24) * size / _REF_SIZE
        ox, oy = rng.uniform(0, period, size=2)
        on = (((xx + ox) % period) < 1.0) | (((yy + oy) % period) < 1.0)
        img += on[..., None] * rng.uniform(-35, 35, size=3).astype(np.float32)
    else:  # mottling: mid-frequency noise
        img += smooth_noise(rng, size, (12, 28), (8, 18), cv2.INTER_LINEAR)
    return img


def _pick_colour(rng: np.random.Generator, covered: np.ndarray, neighbours,
                 min_mean: float) -> np.ndarray:
    """A colour contrasting with the ``covered`` pixels, nearly all of them included, and
    with ``neighbours`` (see the constants above)."""
    return pick_colour(rng, covered, neighbours, min_mean, _MIN_OBJ_CONTRAST,
                       _MIN_LOW_CONTRAST, _LOW_QUANTILE)


def _covered_pixels(rng, canvas, x0, y0, mask) -> np.ndarray:
    """Up to 1024 canvas pixels (N, 3) under ``mask`` placed at (x0, y0), clipped."""
    size_y, size_x = canvas.shape[:2]
    ys, xs = np.nonzero(mask)
    ys, xs = ys + y0, xs + x0
    keep = (ys >= 0) & (ys < size_y) & (xs >= 0) & (xs < size_x)
    ys, xs = ys[keep], xs[keep]
    if len(ys) == 0:
        return canvas.reshape(-1, 3)[:1]
    if len(ys) > 1024:
        pick = rng.choice(len(ys), size=1024, replace=False)
        ys, xs = ys[pick], xs[pick]
    return canvas[ys, xs]


def _add_distractors(rng: np.random.Generator, canvas: np.ndarray, lo_h: float,
                     hi_h: float) -> None:
    """Blobs, lines, curves, partial strokes and non-class characters (not objects)."""
    size = canvas.shape[0]
    scale = size / _REF_SIZE
    for _ in range(int(rng.integers(1, 5))):  # blobs: soft-edged filled ellipses
        layer = np.zeros((size, size), dtype=np.uint8)
        c = tuple(int(v) for v in rng.integers(0, size, size=2))
        axes = tuple(int(v) for v in rng.uniform(0.03, 0.15, size=2) * size + 2)
        cv2.ellipse(layer, c, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1, cv2.LINE_AA)
        cov = layer.astype(np.float32) / 255.0 * float(rng.uniform(0.5, 1.0))
        blend(canvas, cov, 0, 0, rng.uniform(0, 255, size=3))
    for _ in range(int(rng.integers(1, 5))):  # lines and curves
        cov = line_cover(rng, size, rng.uniform(1.0, 3.0) * max(scale, 0.5),
                         curved=rng.random() < 0.45)
        blend(canvas, cov, 0, 0, rng.uniform(0, 255, size=3))
    pieces = [("partial", GLYPH_CLASSES + _DISTRACTOR_GLYPHS)] * int(rng.integers(1, 4))
    pieces += [("glyph", _DISTRACTOR_GLYPHS)] * int(rng.integers(0, 3))
    for kind, chars in pieces:
        ch = chars[int(rng.integers(len(chars)))]
        height = math.exp(rng.uniform(math.log(lo_h), math.log(hi_h)))
        # A partial stroke is at most 45% of one stroke (an arc of "O" never becomes a "C").
        fraction = (0.2, 0.45) if kind == "partial" else (0.0, 1.0)
        cov = _render_glyph(rng, ch, height, fraction)
        x0 = int(rng.integers(-cov.shape[1] // 3, size - 2 * cov.shape[1] // 3 + 1))
        y0 = int(rng.integers(-cov.shape[0] // 3, size - 2 * cov.shape[0] // 3 + 1))
        covered = _covered_pixels(rng, canvas, x0, y0, cov >= _MASK_COVERAGE)
        blend(canvas, cov, x0, y0, _pick_colour(rng, covered, (), 80.0))


# -------------------------------------------------------------------------- images
def generate_glyph_image(rng: np.random.Generator, image_size: int):
    """Generate one image with the random stream ``rng``.

    Returns ``(image, annotations)``: a uint8 (H, W, 3) BGR image and a list of dicts with
    ``category_id`` (1-based index into :data:`GLYPH_CLASSES`), ``mask`` (bool (H, W), the
    visible pixels of the glyph) and ``full_area`` (pixels of the unoccluded glyph mask).
    Objects that stay too occluded are already dropped (see the module doc).
    """
    size = int(image_size)
    scale = size / _REF_SIZE
    lo_h = max(_MIN_ABS_HEIGHT, _MIN_HEIGHT * scale)
    hi_h = max(lo_h + 8.0, _MAX_HEIGHT * scale)
    canvas = _background(rng, size)
    _add_distractors(rng, canvas, lo_h, hi_h)

    objs: List[Dict] = []  # cls, vis (bool HxW), vis_count, full, colour, box
    for _ in range(int(rng.integers(_MIN_OBJECTS, _MAX_OBJECTS + 1))):
        cls = int(rng.integers(len(GLYPH_CLASSES)))
        height = math.exp(rng.uniform(math.log(lo_h), math.log(hi_h)))
        cov = _render_glyph(rng, GLYPH_CLASSES[cls], height)
        ph, pw = cov.shape
        if ph > size or pw > size:
            continue
        sub = cov >= _MASK_COVERAGE
        full = int(np.count_nonzero(sub))
        if full < _MIN_AREA:
            continue
        placed = None
        for _try in range(_PLACE_TRIES):  # wholly inside, earlier objects mostly visible
            x0, y0 = int(rng.integers(0, size - pw + 1)), int(rng.integers(0, size - ph + 1))
            if all(
                o["vis_count"]
                - np.count_nonzero(o["vis"][y0:y0 + ph, x0:x0 + pw] & sub)
                >= _PLACE_VISIBLE_FRAC * o["full"]
                for o in objs
            ):
                placed = (x0, y0)
                break
        if placed is None:
            continue
        x0, y0 = placed
        box = (x0, y0, x0 + pw, y0 + ph)
        neighbours = [o["colour"] for o in objs
                      if o["box"][0] <= box[2] + 3 and o["box"][2] >= box[0] - 3
                      and o["box"][1] <= box[3] + 3 and o["box"][3] >= box[1] - 3]
        covered = _covered_pixels(rng, canvas, x0, y0, sub)
        colour = _pick_colour(rng, covered, neighbours, _MIN_MEAN_CONTRAST)
        blend(canvas, cov, x0, y0, colour)
        for o in objs:
            o["vis"][y0:y0 + ph, x0:x0 + pw] &= ~sub
            o["vis_count"] = int(np.count_nonzero(o["vis"]))
        vis = np.zeros((size, size), dtype=bool)
        vis[y0:y0 + ph, x0:x0 + pw] = sub
        objs.append(dict(cls=cls, vis=vis, vis_count=full, full=full, colour=colour, box=box))

    # Thin lines over everything (they occlude objects too).
    if rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 3))):
            cov = line_cover(rng, size, 1.0, curved=rng.random() < 0.3)
            blend(canvas, cov, 0, 0, rng.uniform(0, 255, size=3))
            hidden = cov >= _MASK_COVERAGE
            for o in objs:
                o["vis"] &= ~hidden
                o["vis_count"] = int(np.count_nonzero(o["vis"]))

    image = finish_image(rng, canvas, 6.0)  # sensor noise
    return image, visible_instances(objs, _MIN_AREA, _MIN_VISIBLE_FRAC)


def generate_glyph_split(
    out_dir: str,
    num_images: int,
    image_size: int,
    seed: int = 0,
    split_name: str = "train",
) -> str:
    """Generate one split, or reuse it if cached (:func:`.synthetic_core.write_coco_split`):
    ``out_dir/images/<split_name>_<index>.png`` and ``out_dir/annotations.json`` (COCO
    instances); returns the JSON path.  Image ``i`` is drawn by :func:`generate_glyph_image`
    with the stream ``np.random.default_rng([seed, i])``: the same arguments give identical
    pixels and a byte-identical JSON."""
    num_images, image_size = check_split_args(num_images, image_size, _MIN_IMAGE_SIZE)
    return write_coco_split(
        out_dir, num_images, image_size, seed, split_name,
        make_image=lambda index: (
            *generate_glyph_image(np.random.default_rng([int(seed), index]), image_size), {}),
        dataset_name="rs_synthetic_hard", description="rs_detectron2 synthetic glyphs (hard)",
        version=GLYPH_GENERATOR_VERSION,
        categories=lambda images, annotations: coco_categories(GLYPH_CLASSES, "glyph"),
    )
