"""Deterministic generator of the HARD built-in synthetic dataset: look-alike glyphs.

Each object is one character out of ten that differ only in fine detail (:data:`GLYPH_CLASSES`:
``O`` / ``Q`` (a tail), ``C`` / ``G`` (a bar), ``O`` / ``C`` (a gap), ``O`` / ``D`` (a straight
side), ``B`` / ``8`` / ``3`` (a stem, an open side), ``E`` / ``F`` (a bottom bar)), drawn as
single-line strokes in the manner of the Hershey vector fonts:

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
import functools
import math
import os
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from .synthetic_shapes import coco_categories, write_coco_split

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

# Faces: points per full turn of an arc, serifs, strokes drawn twice side by side.
_FACES = {
    "simplex": (48, False, False),
    "plain": (10, False, False),
    "duplex": (48, False, True),
    "complex": (40, True, False),
    "triplex": (40, True, True),
}
_FACE_NAMES = tuple(_FACES)
_SERIF_LENGTH = 0.13  # of the glyph height

# Geometry of a 192 px image; object heights scale with the image size.
_REF_SIZE = 192.0
_MIN_HEIGHT, _MAX_HEIGHT = 20.0, 72.0  # glyph height, px at 192 (log-uniform)
_MIN_ABS_HEIGHT = 12.0
_MIN_OBJECTS, _MAX_OBJECTS = 2, 6
_MIN_IMAGE_SIZE = 48

# Mask of a glyph: pixels its stroke covers at least this much; painted opacity is
# min(1, _ALPHA_GAIN * coverage).
_MASK_COVERAGE = 0.25
_ALPHA_GAIN = 1.5
_SUPERSAMPLE = 4  # strokes are drawn at 4x and area-averaged: fractional thickness, smooth rims
_SHIFT = 4  # sub-pixel bits of the OpenCV drawing calls

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
def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float,
         per_turn: int) -> np.ndarray:
    """Points of an elliptic arc from angle ``a0`` to ``a1`` (degrees; y points down, so
    90 is the bottom), ``per_turn`` points per full turn."""
    n = max(2, int(math.ceil(abs(a1 - a0) / 360.0 * per_turn)) + 1)
    t = np.deg2rad(np.linspace(a0, a1, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _stroke_builders(per_turn: int):
    """``arc(cx, cy, rx, ry, a0, a1)``, ``line(*points)`` and ``join(*parts)`` (polylines as
    float64 (N, 2) arrays, arcs with ``per_turn`` points a full turn) for a glyph's outline."""
    def arc(*a):
        return _arc(*a, per_turn)

    def line(*pts):
        return np.array(pts, dtype=np.float64)

    def join(*parts):
        return np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in parts])

    return arc, line, join


def _outline(ch: str, per_turn: int) -> List[np.ndarray]:
    """The strokes (polylines, (N, 2) arrays) of character ``ch`` on the unit grid: y from 0
    (top) to 1 (baseline), x from 0 to about 0.7."""
    arc, line, join = _stroke_builders(per_turn)

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


def _distance_to_polyline(p: np.ndarray, line: np.ndarray) -> float:
    a, b = line[:-1], line[1:]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
    return float(np.hypot(*(a + t[:, None] * ab - p).T).min())


def _serifs(strokes: Sequence[np.ndarray]) -> List[np.ndarray]:
    """A short tick across each free stroke end (perpendicular to the end segment); ends
    that join another stroke get none."""
    ticks = []
    for i, s in enumerate(strokes):
        if np.allclose(s[0], s[-1]):
            continue  # closed stroke: no ends
        others = [o for j, o in enumerate(strokes) if j != i]
        for end, prev in ((s[0], s[1]), (s[-1], s[-2])):
            if any(_distance_to_polyline(end, o) < 0.04 for o in others):
                continue
            d = end - prev
            d = d / max(float(np.hypot(*d)), 1e-9)
            n = np.array([-d[1], d[0]]) * (_SERIF_LENGTH / 2)
            ticks.append(np.stack([end - n, end + n]))
    return ticks


def _dress_strokes(strokes: List[np.ndarray], face: str) -> Tuple[np.ndarray, ...]:
    """A glyph's outline ``strokes`` in ``face`` (serifs added where the face has them),
    centred on the origin (read-only arrays)."""
    if _FACES[face][1]:
        strokes = strokes + _serifs(strokes)
    pts = np.concatenate(strokes)
    centre = (pts.min(0) + pts.max(0)) / 2
    out = tuple(s - centre for s in strokes)
    for s in out:
        s.flags.writeable = False
    return out


@functools.lru_cache(maxsize=None)
def _glyph_strokes(ch: str, face: str) -> Tuple[np.ndarray, ...]:
    """The strokes of ``ch`` in ``face``, centred on the origin (read-only arrays)."""
    return _dress_strokes(_outline(ch, _FACES[face][0]), face)


def _render_strokes(strokes: Sequence[np.ndarray], matrix: np.ndarray, thickness: float,
                    doubled: bool, rng: np.random.Generator) -> np.ndarray:
    """Coverage (float32 in [0, 1]) of ``strokes`` mapped by the 2x2 ``matrix`` (unit grid
    -> pixels) and drawn ``thickness`` px wide, on the smallest patch holding it.  A doubled
    stroke is two thinner strokes side by side."""
    pts = [s @ matrix.T for s in strokes]
    if doubled:
        width = max(0.6, 0.55 * thickness)
        shift = np.array([0.9 * thickness, 0.0])
        pts = pts + [p + shift for p in pts]
        thickness = width
    allp = np.concatenate(pts)
    pad = thickness / 2 + 2.0
    origin = np.floor(allp.min(0) - pad) - rng.uniform(0.0, 1.0, size=2)
    w, h = (int(v) for v in np.ceil(allp.max(0) + pad - origin))
    s = _SUPERSAMPLE
    big = np.zeros((h * s, w * s), dtype=np.uint8)
    scale = s * (1 << _SHIFT)
    polys = [np.round((p - origin) * scale).astype(np.int32).reshape(-1, 1, 2) for p in pts]
    cv2.polylines(big, polys, False, 255, max(1, int(round(thickness * s))), cv2.LINE_8, _SHIFT)
    cov = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    ys = np.flatnonzero(cov.any(axis=1))
    xs = np.flatnonzero(cov.any(axis=0))
    return cov[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]


def _glyph_matrix(rng: np.random.Generator, height: float) -> np.ndarray:
    """Unit grid -> pixels: height, aspect ratio, slant and a small rotation."""
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    slant = rng.uniform(-0.12, 0.35) if rng.random() < 0.6 else 0.0  # italic leans right
    t = math.radians(rng.uniform(-12.0, 12.0))
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return height * rot @ np.array([[aspect, -slant], [0.0, 1.0]])


def _render_glyph(rng: np.random.Generator, ch: str, height: float,
                  fraction: Tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Coverage patch of one random rendering of ``ch`` (face, thickness, transform)."""
    face = _FACE_NAMES[int(rng.integers(len(_FACE_NAMES)))]
    strokes = _glyph_strokes(ch, face)
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
    return _render_strokes(strokes, _glyph_matrix(rng, height), thickness,
                           _FACES[face][2], rng)


# ----------------------------------------------------------------------- background
@functools.lru_cache(maxsize=8)
def _grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 (size, size, 3) coloured background (before distractors), roughly 0-255."""
    yy, xx = _grid(size)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = rng.uniform(25, 230, size=3)
    t = rng.uniform(0, 2 * np.pi)
    ramp = (xx * math.cos(t) + yy * math.sin(t)) / size
    ramp -= ramp.mean()
    img += ramp[..., None] * rng.uniform(-80, 80, size=3).astype(np.float32)
    g = int(rng.integers(3, 9))
    smooth = cv2.resize(rng.normal(0, 1, size=(g, g, 3)).astype(np.float32), (size, size),
                        interpolation=cv2.INTER_CUBIC)
    img += smooth * float(rng.uniform(8, 25))
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
        g = int(rng.integers(12, 28))
        mid = cv2.resize(rng.normal(0, 1, size=(g, g, 3)).astype(np.float32), (size, size),
                         interpolation=cv2.INTER_LINEAR)
        img += mid * float(rng.uniform(8, 18))
    return img


def _blend(canvas: np.ndarray, cov: np.ndarray, x0: int, y0: int,
           colour: np.ndarray) -> None:
    """Paint ``colour`` through coverage patch ``cov`` with its top-left at (x0, y0),
    clipped to the canvas."""
    size_y, size_x = canvas.shape[:2]
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + cov.shape[1], size_x), min(y0 + cov.shape[0], size_y)
    if ix1 <= ix0 or iy1 <= iy0:
        return
    a = np.minimum(cov[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] * _ALPHA_GAIN, 1.0)[..., None]
    region = canvas[iy0:iy1, ix0:ix1]
    region += a * (colour.astype(np.float32) - region)


def _line_cover(rng: np.random.Generator, size: int, thickness: float,
                curved: bool) -> np.ndarray:
    """Coverage (size, size) of a random long line or curve across the image."""
    p = rng.uniform(-0.1 * size, 1.1 * size, size=(3, 2))
    if curved:  # quadratic Bezier
        t = np.linspace(0.0, 1.0, 24)[:, None]
        pts = (1 - t) ** 2 * p[0] + 2 * t * (1 - t) * p[1] + t ** 2 * p[2]
    else:
        pts = p[:2]
    layer = np.zeros((size, size), dtype=np.uint8)
    ipts = np.round(pts * (1 << _SHIFT)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(layer, [ipts], False, 255, max(1, int(round(thickness))), cv2.LINE_AA,
                  _SHIFT)
    return layer.astype(np.float32) / 255.0


def _pick_colour(rng: np.random.Generator, covered: np.ndarray,
                 neighbours: Sequence[np.ndarray], min_mean: float) -> np.ndarray:
    """A random colour far from the mean of the ``covered`` pixels (N, 3), from nearly all
    of them and from ``neighbours``; the best of some tries otherwise."""
    mean = covered.mean(axis=0)
    best, best_score = None, -np.inf
    for _ in range(40):
        col = rng.uniform(0, 255, size=3)
        d_mean = float(np.linalg.norm(col - mean))
        d_low = float(np.quantile(np.linalg.norm(covered - col, axis=1), _LOW_QUANTILE))
        d_obj = min((float(np.linalg.norm(col - c)) for c in neighbours), default=1e9)
        score = min(d_mean / min_mean, d_low / _MIN_LOW_CONTRAST, d_obj / _MIN_OBJ_CONTRAST)
        if score >= 1.0:
            return col
        if score > best_score:
            best, best_score = col, score
    return best


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
        _blend(canvas, cov, 0, 0, rng.uniform(0, 255, size=3))
    for _ in range(int(rng.integers(1, 5))):  # lines and curves
        cov = _line_cover(rng, size, rng.uniform(1.0, 3.0) * max(scale, 0.5),
                          curved=rng.random() < 0.45)
        _blend(canvas, cov, 0, 0, rng.uniform(0, 255, size=3))
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
        _blend(canvas, cov, x0, y0, _pick_colour(rng, covered, (), 80.0))


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
        _blend(canvas, cov, x0, y0, colour)
        for o in objs:
            o["vis"][y0:y0 + ph, x0:x0 + pw] &= ~sub
            o["vis_count"] = int(np.count_nonzero(o["vis"]))
        vis = np.zeros((size, size), dtype=bool)
        vis[y0:y0 + ph, x0:x0 + pw] = sub
        objs.append(dict(cls=cls, vis=vis, vis_count=full, full=full, colour=colour, box=box))

    # Thin lines over everything (they occlude objects too).
    if rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 3))):
            cov = _line_cover(rng, size, 1.0, curved=rng.random() < 0.3)
            _blend(canvas, cov, 0, 0, rng.uniform(0, 255, size=3))
            hidden = cov >= _MASK_COVERAGE
            for o in objs:
                o["vis"] &= ~hidden
                o["vis_count"] = int(np.count_nonzero(o["vis"]))

    sigma = rng.uniform(0.0, 6.0)  # sensor noise
    if sigma > 0.5:
        canvas += rng.normal(0.0, sigma, size=canvas.shape).astype(np.float32)
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    annotations = [
        dict(category_id=o["cls"] + 1, mask=o["vis"], full_area=o["full"])
        for o in objs
        if o["vis_count"] >= max(_MIN_AREA, _MIN_VISIBLE_FRAC * o["full"])
    ]
    return image, annotations


def generate_glyph_split(
    out_dir: str,
    num_images: int,
    image_size: int = 192,
    seed: int = 0,
    split_name: str = "train",
) -> str:
    """Generate one split: ``out_dir/images/<split_name>_<index>.png`` and
    ``out_dir/annotations.json`` (COCO instances format); returns the JSON path.

    Deterministic: image ``i`` is ``generate_glyph_image(np.random.default_rng([seed, i]),
    image_size)``, so the same arguments give identical pixels and a byte-identical JSON.
    The JSON is written last and atomically: if it is there (and the images too), nothing is
    generated and the cache is reused (a log line says so); an interrupted run is
    regenerated.
    """
    num_images, image_size = int(num_images), int(image_size)
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if image_size < _MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {_MIN_IMAGE_SIZE}, got {image_size}")
    return write_coco_split(
        out_dir, num_images, image_size, seed, split_name,
        make_image=lambda index: (
            *generate_glyph_image(np.random.default_rng([int(seed), index]), image_size), {}),
        dataset_name="rs_synthetic_hard", description="rs_detectron2 synthetic glyphs (hard)",
        version=GLYPH_GENERATOR_VERSION,
        categories=lambda images, annotations: coco_categories(GLYPH_CLASSES, "glyph"),
    )
