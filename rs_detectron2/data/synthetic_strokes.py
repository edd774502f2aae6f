"""Characters drawn as single-line strokes, in the manner of the Hershey vector fonts.

Shared by the hard glyph dataset (:mod:`.synthetic_glyphs`) and the classification set
(:mod:`.synthetic_classification`), which each define the outlines of their characters
on a unit grid (y from 0 at the top to 1 at the baseline) with :func:`stroke_builders`.
This module gives them faces (:data:`FACES`: smooth or coarse curves, serifs, doubled
strokes), the random transform of a glyph and its rendering to a coverage patch.
"""
import functools
import math
from typing import Callable, List, Sequence, Tuple

import cv2
import numpy as np

from .synthetic_core import SHIFT

# Faces: points per full turn of an arc, serifs, strokes drawn twice side by side.
FACES = {
    "simplex": (48, False, False),
    "plain": (10, False, False),
    "duplex": (48, False, True),
    "complex": (40, True, False),
    "triplex": (40, True, True),
}
_FACE_NAMES = tuple(FACES)
_SERIF_LENGTH = 0.13  # of the glyph height
_SUPERSAMPLE = 4  # strokes are drawn at 4x and area-averaged: fractional thickness, smooth rims

# An outline: ``outline(ch, per_turn)`` -> the strokes ((N, 2) polylines) of ``ch``.
Outline = Callable[[str, int], List[np.ndarray]]


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float,
         per_turn: int) -> np.ndarray:
    """Points of an elliptic arc from angle ``a0`` to ``a1`` (degrees; y points down, so
    90 is the bottom), ``per_turn`` points per full turn."""
    n = max(2, int(math.ceil(abs(a1 - a0) / 360.0 * per_turn)) + 1)
    t = np.deg2rad(np.linspace(a0, a1, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def stroke_builders(per_turn: int):
    """``arc(cx, cy, rx, ry, a0, a1)``, ``line(*points)`` and ``join(*parts)`` (polylines as
    float64 (N, 2) arrays, arcs with ``per_turn`` points a full turn) for a glyph's outline."""
    def arc(*a):
        return _arc(*a, per_turn)

    def line(*pts):
        return np.array(pts, dtype=np.float64)

    def join(*parts):
        return np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in parts])

    return arc, line, join


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


@functools.lru_cache(maxsize=None)
def face_strokes(outline: Outline, ch: str, face: str) -> Tuple[np.ndarray, ...]:
    """The strokes of ``ch`` in ``face`` (serifs added where the face has them), centred on
    the origin (read-only arrays, cached)."""
    per_turn, serifs, _ = FACES[face]
    strokes = outline(ch, per_turn)
    if serifs:
        strokes = strokes + _serifs(strokes)
    pts = np.concatenate(strokes)
    centre = (pts.min(0) + pts.max(0)) / 2
    out = tuple(s - centre for s in strokes)
    for s in out:
        s.flags.writeable = False
    return out


def random_face(rng: np.random.Generator) -> str:
    """One of :data:`FACES`, uniformly."""
    return _FACE_NAMES[int(rng.integers(len(_FACE_NAMES)))]


def glyph_matrix(rng: np.random.Generator, height: float) -> np.ndarray:
    """Unit grid -> pixels: height, aspect ratio, slant and a small rotation."""
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    slant = rng.uniform(-0.12, 0.35) if rng.random() < 0.6 else 0.0  # italic leans right
    t = math.radians(rng.uniform(-12.0, 12.0))
    rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
    return height * rot @ np.array([[aspect, -slant], [0.0, 1.0]])


def render_strokes(strokes: Sequence[np.ndarray], face: str, matrix: np.ndarray,
                   thickness: float, rng: np.random.Generator) -> np.ndarray:
    """Coverage (float32 in [0, 1]) of ``strokes`` mapped by the 2x2 ``matrix`` (unit grid
    -> pixels) and drawn ``thickness`` px wide, on the smallest patch holding it.  A face
    with doubled strokes draws two thinner strokes side by side."""
    pts = [s @ matrix.T for s in strokes]
    if FACES[face][2]:
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
    scale = s * (1 << SHIFT)
    polys = [np.round((p - origin) * scale).astype(np.int32).reshape(-1, 1, 2) for p in pts]
    cv2.polylines(big, polys, False, 255, max(1, int(round(thickness * s))), cv2.LINE_8, SHIFT)
    cov = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    ys = np.flatnonzero(cov.any(axis=1))
    xs = np.flatnonzero(cov.any(axis=0))
    return cov[ys[0]:ys[-1] + 1, xs[0]:xs[-1] + 1]
