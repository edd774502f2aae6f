"""Deterministic generator of the built-in synthetic CLASSIFICATION set (backbone pretraining).

One object per image; its class is one of :data:`CLASSIFICATION_CLASSES`, three families
that share NO class with the detection datasets (:mod:`.synthetic_shapes`,
:mod:`.synthetic_glyphs`, :mod:`.synthetic_lvis`), so that a backbone pretrained here has
never seen a detection class:

* glyphs (:data:`GLYPH_CHARS`): characters that are neither classes nor distractors of the
  hard glyph dataset, drawn with its stroke drawer (:mod:`.synthetic_strokes`: faces,
  thickness, slant, rotation);
* shapes (:data:`SHAPES`): none of the detection shapes (circle, square, triangle, star,
  hexagon, cross), filled or outlined, any rotation and a mild stretch;
* textures (:data:`TEXTURES`): stripes at four orientations and two frequencies, checkers,
  dots, grids, rings, zigzags and waves, on a region of random outline; the class is the
  texture (kind, frequency, orientation), never the region's outline.

Colours are random (chosen to contrast with what the object covers), so no class is a colour.
Backgrounds are coloured (a gradient, smooth colour noise, grain) with clutter that is no
object: lines, curves and blobs.  Objects have a random position, scale and rotation.

Images are small (64 px by default) and generated in memory: image ``i`` of a split is a
function of ``(seed, split, i, image_size)`` only, about a millisecond each::

    images, labels = generate_classification_split(num_images=2000, image_size=64, seed=0,
                                                   split="val")
"""
import math
from typing import List, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from .synthetic_core import (
    blend,
    check_split_args,
    finish_image,
    line_cover,
    linear_ramp,
    pixel_grid,
    smooth_noise,
    uniform_canvas,
)
from .synthetic_strokes import (
    face_strokes,
    glyph_matrix,
    random_face,
    render_strokes,
    stroke_builders,
)

__all__ = [
    "CLASSIFICATION_CLASSES",
    "CLASSIFICATION_GENERATOR_VERSION",
    "GLYPH_CHARS",
    "SHAPES",
    "TEXTURES",
    "generate_classification_image",
    "generate_classification_split",
]

# Bump whenever the generated images change: it is part of the pretrained weights' cache path.
CLASSIFICATION_GENERATOR_VERSION = 1

GLYPH_CHARS = ("A", "J", "L", "M", "N", "P", "R", "W", "Y", "1", "2", "5", "6", "9")
SHAPES = ("pentagon", "octagon", "heart", "crescent", "arrow", "trapezoid", "semicircle",
          "cog", "lightning", "teardrop", "parallelogram", "l_shape", "pacman", "kite",
          "shield")
# Texture -> (kind, period in px at 64 px, orientation in degrees).
_TEXTURE_SPECS = {
    **{f"stripes_{a}_{f}": ("stripes", p, a)
       for a in (0, 45, 90, 135) for f, p in (("fine", 4.5), ("coarse", 10.0))},
    "checker_fine": ("checker", 5.0, 0), "checker_coarse": ("checker", 11.0, 0),
    "checker_diagonal": ("checker", 8.0, 45),
    "dots_fine": ("dots", 5.5, 0), "dots_coarse": ("dots", 11.0, 0),
    "grid_fine": ("grid", 5.5, 0), "grid_coarse": ("grid", 11.0, 0),
    "rings": ("rings", 7.0, 0), "zigzag": ("zigzag", 8.0, 0), "waves": ("waves", 8.0, 0),
}
TEXTURES = tuple(_TEXTURE_SPECS)
CLASSIFICATION_CLASSES = (tuple(f"glyph_{c}" for c in GLYPH_CHARS)
                          + tuple(f"shape_{s}" for s in SHAPES)
                          + tuple(f"texture_{t}" for t in TEXTURES))

_REF_SIZE = 64.0
_MIN_IMAGE_SIZE = 32
_SPLIT_IDS = {"train": 0, "val": 1}
_SUPERSAMPLE = 4
_MIN_CONTRAST = 90.0  # Euclidean RGB distance of an object's colour to what it covers
_TEXTURE_ROTATION_JITTER = 8.0  # degrees: orientations 45 degrees apart stay apart


# --------------------------------------------------------------------------- glyphs
def _glyph_outline(ch: str, per_turn: int) -> List[np.ndarray]:
    """Strokes of ``ch`` on the unit grid of :mod:`.synthetic_strokes` (y 0 top, 1 baseline)."""
    arc, line, join = stroke_builders(per_turn)

    bowl_p = join((0.06, 1.0), (0.06, 0.0), (0.36, 0.0), arc(0.36, 0.25, 0.28, 0.25, -90, 90),
                  (0.06, 0.5))
    outlines = {
        "A": lambda: [line((0.0, 1.0), (0.35, 0.0), (0.70, 1.0)), line((0.14, 0.62), (0.56, 0.62))],
        "J": lambda: [join((0.62, 0.0), (0.62, 0.70), arc(0.35, 0.70, 0.27, 0.30, 0, 180))],
        "L": lambda: [line((0.06, 0.0), (0.06, 1.0), (0.62, 1.0))],
        "M": lambda: [line((0.02, 1.0), (0.06, 0.0), (0.36, 0.68), (0.66, 0.0), (0.70, 1.0))],
        "N": lambda: [line((0.06, 1.0), (0.06, 0.0), (0.64, 1.0), (0.64, 0.0))],
        "P": lambda: [bowl_p],
        "R": lambda: [bowl_p, line((0.34, 0.5), (0.66, 1.0))],
        "W": lambda: [line((0.0, 0.0), (0.17, 1.0), (0.35, 0.35), (0.53, 1.0), (0.70, 0.0))],
        "Y": lambda: [line((0.02, 0.0), (0.36, 0.5), (0.70, 0.0)), line((0.36, 0.5), (0.36, 1.0))],
        "1": lambda: [line((0.14, 0.22), (0.40, 0.0), (0.40, 1.0))],
        "2": lambda: [join(arc(0.35, 0.28, 0.30, 0.28, -165, 35), (0.04, 1.0), (0.68, 1.0))],
        "5": lambda: [join((0.62, 0.0), (0.12, 0.0), (0.10, 0.44),
                           arc(0.34, 0.67, 0.30, 0.33, -130, 150))],
        "6": lambda: [arc(0.35, 0.70, 0.30, 0.30, 0, 360), arc(0.60, 0.62, 0.55, 0.62, 180, 278)],
        "9": lambda: [arc(0.35, 0.30, 0.30, 0.30, 0, 360), arc(0.10, 0.38, 0.55, 0.62, 0, 98)],
    }
    return outlines[ch]()


def _glyph_patch(rng: np.random.Generator, ch: str, size: int) -> np.ndarray:
    """Coverage patch of one random rendering of glyph ``ch`` (face, thickness, transform)."""
    face = random_face(rng)
    height = size * rng.uniform(0.40, 0.85)
    thickness = max(1.0, height * rng.uniform(0.06, 0.14))
    return render_strokes(face_strokes(_glyph_outline, ch, face), face,
                          glyph_matrix(rng, height), thickness, rng)


# --------------------------------------------------------------------------- shapes
def _circle(n: int, a0: float = 0.0, a1: float = 360.0, cx: float = 0.0, cy: float = 0.0,
            r: float = 1.0) -> np.ndarray:
    t = np.deg2rad(np.linspace(a0, a1, n))
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _regular(n: int) -> np.ndarray:
    return _circle(n + 1, -90.0, 270.0)[:-1]


def _shape_polygons(name: str,
                    rng: np.random.Generator) -> Tuple[List[np.ndarray], List[np.ndarray]]:
    """(filled polygons, polygons cut out of them) of shape ``name``, roughly in [-1, 1]^2."""
    t = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)
    if name == "pentagon":
        return [_regular(5)], []
    if name == "octagon":
        return [_regular(8)], []
    if name == "heart":
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return [np.stack([x, y], axis=1) / 16.0], []
    if name == "crescent":
        r = rng.uniform(0.75, 0.9)
        return [_circle(48)], [_circle(48, cx=rng.uniform(0.4, 0.6), cy=-0.1, r=r)]
    if name == "arrow":
        w, head = rng.uniform(0.18, 0.3), rng.uniform(0.1, 0.4)
        return [np.array([[-1, -w], [head, -w], [head, -0.7], [1, 0], [head, 0.7], [head, w],
                          [-1, w]], dtype=np.float64)], []
    if name == "trapezoid":
        top = rng.uniform(0.3, 0.6)
        return [np.array([[-top, -0.7], [top, -0.7], [1, 0.7], [-1, 0.7]], dtype=np.float64)], []
    if name == "semicircle":
        return [_circle(25, 180.0, 360.0, cy=0.5)], []
    if name == "cog":
        n, depth = int(rng.integers(6, 10)), rng.uniform(0.2, 0.3)
        a = np.arange(4 * n) * (2 * np.pi / (4 * n))
        r = np.where(np.arange(4 * n) % 4 < 2, 1.0, 1.0 - depth)
        return [np.stack([r * np.cos(a), r * np.sin(a)], axis=1)], []
    if name == "lightning":
        return [np.array([[0.15, -1], [-0.6, 0.15], [-0.05, 0.1], [-0.35, 1], [0.6, -0.25],
                          [0.05, -0.2], [0.45, -1]], dtype=np.float64)], []
    if name == "teardrop":
        return [np.stack([np.cos(t), np.sin(t) * np.abs(np.sin(t / 2)) ** 1.3], axis=1)], []
    if name == "parallelogram":
        s = rng.uniform(0.35, 0.6)
        return [np.array([[-1 + s, -0.6], [1, -0.6], [1 - s, 0.6], [-1, 0.6]],
                         dtype=np.float64)], []
    if name == "l_shape":
        w = rng.uniform(0.35, 0.5)
        return [np.array([[-0.6, -1], [-0.6 + w * 1.4, -1], [-0.6 + w * 1.4, 1 - w * 1.4],
                          [0.7, 1 - w * 1.4], [0.7, 1], [-0.6, 1]], dtype=np.float64)], []
    if name == "pacman":
        mouth = rng.uniform(25, 45)
        return [np.concatenate([[[0.0, 0.0]], _circle(40, mouth, 360 - mouth)])], []
    if name == "kite":
        return [np.array([[0, -1], [0.6, -0.35], [0, 1], [-0.6, -0.35]], dtype=np.float64)], []
    if name == "shield":
        u = np.linspace(0.0, 1.0, 16)[:, None]  # each side: a quadratic curve down to the tip
        right = (1 - u) ** 2 * [0.8, -0.2] + 2 * u * (1 - u) * [0.8, 0.6] + u ** 2 * [0.0, 1.0]
        left = right[::-1] * [-1.0, 1.0]
        return [np.concatenate([[[-0.8, -1.0], [0.8, -1.0]], right, left])], []
    raise ValueError(f"no shape {name!r}")  # pragma: no cover - guarded by SHAPES


def _shape_patch(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """Coverage patch of one random instance of shape ``name``: filled or outlined, any
    rotation, a mild stretch, its longer side 45-90% of the image side."""
    polys, holes = _shape_polygons(name, rng)
    aspect = math.exp(rng.uniform(-0.2, 0.2))
    a = math.radians(rng.uniform(0.0, 360.0))
    m = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) \
        @ np.diag([aspect, 1.0 / aspect])
    polys, holes = [p @ m.T for p in polys], [h @ m.T for h in holes]
    side = size * rng.uniform(0.45, 0.9)
    allp = np.concatenate(polys)
    scale = side / float((allp.max(0) - allp.min(0)).max())
    polys, holes = [p * scale for p in polys], [h * scale for h in holes]
    origin = allp.min(0) * scale - 2.0
    w, h = (int(v) for v in np.ceil(allp.max(0) * scale + 2.0 - origin))
    s = _SUPERSAMPLE
    big = np.zeros((h * s, w * s), dtype=np.uint8)

    def pts(p):
        return [np.round((q - origin) * s * 16).astype(np.int32).reshape(-1, 1, 2) for q in p]

    cv2.fillPoly(big, pts(polys), 255, cv2.LINE_8, 4)
    if holes:
        cv2.fillPoly(big, pts(holes), 0, cv2.LINE_8, 4)
    if rng.random() < 0.35:  # outlined: the rim of the filled shape
        k = max(2, int(round(side * rng.uniform(0.07, 0.13) * s)))
        big = cv2.subtract(big, cv2.erode(big, np.ones((k, k), np.uint8)))
    return cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


# ------------------------------------------------------------------------- textures
def _texture_cover(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """Coverage (size, size) of texture ``name`` on a random region (30-80% of the image)."""
    kind, period, angle = _TEXTURE_SPECS[name]
    period *= size / _REF_SIZE * math.exp(rng.uniform(-0.15, 0.15))
    a = math.radians(angle + rng.uniform(-_TEXTURE_ROTATION_JITTER, _TEXTURE_ROTATION_JITTER))
    yy, xx = pixel_grid(size)
    u = (xx * math.cos(a) + yy * math.sin(a)) / period + rng.uniform(0, 1)
    v = (-xx * math.sin(a) + yy * math.cos(a)) / period + rng.uniform(0, 1)
    duty = rng.uniform(0.35, 0.6)
    if kind == "stripes":
        tex = (u % 1.0) < duty
    elif kind == "checker":
        tex = (np.floor(u) + np.floor(v)) % 2 == 0
    elif kind == "dots":
        tex = np.hypot(u % 1.0 - 0.5, v % 1.0 - 0.5) < 0.2 + 0.15 * duty
    elif kind == "grid":
        tex = ((u % 1.0) < 0.3) | ((v % 1.0) < 0.3)
    elif kind == "rings":
        cx, cy = rng.uniform(0.3, 0.7, size=2) * size
        tex = (np.hypot(xx - cx, yy - cy) / period) % 1.0 < duty
    elif kind == "zigzag":
        tex = ((v + 0.5 * np.abs((u % 1.0) - 0.5) * 2) % 1.0) < duty
    else:  # waves
        tex = ((v + 0.35 * np.sin(2 * np.pi * u / 2.0)) % 1.0) < duty
    # The region: a random soft polygon, so that its outline carries no class.
    region = np.zeros((size, size), dtype=np.uint8)
    n = int(rng.integers(5, 10))
    ang = np.sort(rng.uniform(0, 2 * np.pi, size=n))
    rad = rng.uniform(0.3, 0.5, size=n) * size
    c = rng.uniform(0.4, 0.6, size=2) * size
    poly = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], axis=1)
    cv2.fillPoly(region, [np.round(poly).astype(np.int32).reshape(-1, 1, 2)], 255, cv2.LINE_AA)
    return tex.astype(np.float32) * (region.astype(np.float32) / 255.0)


# ----------------------------------------------------------------------- background
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float32 (size, size, 3) coloured background with clutter (lines, curves, blobs)."""
    img = uniform_canvas(rng, size, 20, 235)
    ramp = linear_ramp(rng, size, 0.5)
    img += ramp[..., None] * rng.uniform(-70, 70, size=3).astype(np.float32)
    img += smooth_noise(rng, size, (2, 6), (5, 20))
    for _ in range(int(rng.integers(0, 3))):  # blobs
        layer = np.zeros((size, size), dtype=np.uint8)
        centre = tuple(int(v) for v in rng.integers(0, size, size=2))
        axes = tuple(int(v) for v in rng.uniform(0.04, 0.15, size=2) * size + 1)
        cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1,
                    cv2.LINE_AA)
        blend(img, layer.astype(np.float32) / 255.0 * float(rng.uniform(0.4, 0.9)), 0, 0,
              rng.uniform(0, 255, size=3))
    for _ in range(int(rng.integers(0, 4))):  # lines and curves
        cov = line_cover(rng, size, rng.uniform(0.8, 2.0), curved=rng.random() < 0.5)
        blend(img, cov * float(rng.uniform(0.5, 1.0)), 0, 0, rng.uniform(0, 255, size=3))
    return img


def _contrasting_colour(rng: np.random.Generator, covered_mean: np.ndarray) -> np.ndarray:
    """A random colour at least _MIN_CONTRAST from ``covered_mean`` (the best of 20 tries)."""
    cols = rng.uniform(0, 255, size=(20, 3))
    d = np.linalg.norm(cols - covered_mean, axis=1)
    ok = np.flatnonzero(d >= _MIN_CONTRAST)
    return cols[ok[0]] if len(ok) else cols[int(np.argmax(d))]


# -------------------------------------------------------------------------- images
def generate_classification_image(rng: np.random.Generator, label: int,
                                  image_size: int = 64) -> np.ndarray:
    """One uint8 (H, W, 3) BGR image of class ``CLASSIFICATION_CLASSES[label]`` drawn with
    the random stream ``rng``."""
    size = int(image_size)
    name = CLASSIFICATION_CLASSES[int(label)]
    family, _, kind = name.partition("_")
    canvas = _background(rng, size)
    if family == "texture":
        cov = _texture_cover(rng, kind, size)
        x0 = y0 = 0
    else:
        cov = _glyph_patch(rng, kind, size) if family == "glyph" else _shape_patch(rng, kind, size)
        cov = cov[:size, :size]
        ph, pw = cov.shape
        # Random position, at most a tenth of the object outside the image.
        x0 = int(rng.integers(-pw // 10, size - pw + pw // 10 + 1))
        y0 = int(rng.integers(-ph // 10, size - ph + ph // 10 + 1))
    ys, xs = np.nonzero(cov > 0.5)
    ys, xs = np.clip(ys + y0, 0, size - 1), np.clip(xs + x0, 0, size - 1)
    covered_mean = canvas[ys, xs].mean(axis=0) if len(ys) else canvas.reshape(-1, 3).mean(0)
    blend(canvas, cov, x0, y0, _contrasting_colour(rng, covered_mean))
    return finish_image(rng, canvas, 8.0, min_sigma=1.0)  # sensor noise


def generate_classification_split(
    num_images: int,
    image_size: int = 64,
    seed: int = 0,
    split: str = "train",
    progress: bool = True,
) -> Tuple[np.ndarray, np.ndarray]:
    """Generate one split in memory: ``(images, labels)``, uint8 (N, H, W, 3) BGR images and
    int64 (N,) indices into :data:`CLASSIFICATION_CLASSES`.

    Classes are balanced (image ``i`` has label ``i % num_classes``) and image ``i`` is
    ``generate_classification_image(np.random.default_rng([seed, split id, i]), ...)``:
    the same arguments give identical arrays, and "train" and "val" never share an image.
    """
    num_images, image_size = check_split_args(num_images, image_size, _MIN_IMAGE_SIZE)
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {sorted(_SPLIT_IDS)}, got {split!r}")
    labels = np.arange(num_images, dtype=np.int64) % len(CLASSIFICATION_CLASSES)
    images = np.empty((num_images, image_size, image_size, 3), dtype=np.uint8)
    for i in tqdm(range(num_images), desc=f"Generating rs_synthetic_classification {split}",
                  unit="img", dynamic_ncols=True, disable=not progress):
        rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], i])
        images[i] = generate_classification_image(rng, int(labels[i]), image_size)
    return images, labels
