"""SOLOv2 training targets as the published RS-SOLOv2 assigns them.

Published: ``RankBasedSOLOv2Head.solov2_target_single`` and ``.loss`` in
kemaloksuz/RankSortLoss-Solov2, ``mmdet/models/anchor_heads/rank_based_solov2_head.py``
(line numbers below refer to that file). Torch only: the published mass centre
(``scipy.ndimage.center_of_mass``) and mask rescale (``mmcv.imrescale``, i.e. cv2
``INTER_LINEAR``) are re-implemented here.

Per image and level l (grid S x S):

* A gt belongs to level l when ``lo <= sqrt(w * h) <= hi`` (box in input pixels, float32,
  both ends inclusive), so a gt can be in two levels (three at exactly 96, 192, 384). Gts
  are visited in ascending gt index (``nonzero()`` of the level's hit mask); a gt whose
  mask is empty is skipped.
* Centre cell: the mask's mass centre (cy, cx) at the padded input resolution (float64),
  ``coord = int((c / U) // (1 / S))`` with U = 4 * mask feature size (h or w).
* Centre region: half-extents ``sigma * box_h / 2``, ``sigma * box_w / 2`` (float32, as the
  published box tensors), ``top = max(0, int(((cy - half_h) / U_h) // (1 / S)))`` etc.
  (``//`` is Python's floor division, float32 here), then clipped to the centre cell +-1.
* The cells of the region are visited row by row; a cell not yet claimed on this level gets
  the gt's class and the gt's mask, rescaled by 1/4 (cv2 bilinear, size
  ``int(W / 4 + 0.5) x int(H / 4 + 0.5)``) and pasted top-left into an (h, w) zero mask.
  A cell already claimed by an earlier gt keeps that gt's label and no mask is appended for
  it (lines 385-386, 393): the FIRST gt wins and each cell has exactly one target. (The stock
  ``solov2_head.py`` instead overwrites the label, later gt wins, and appends a mask for every
  cell of every region, so a shared cell appears twice in its mask list.)

Order and pairing. The published mask targets (``ins_label``) and ``grid_order`` are
appended per gt, then per cell of its region (lines 391-403): "grid order". The predicted
masks are gathered with ``grid_order`` (lines 215-218), so Dice pairs each target with the
prediction of its own cell (lines 251-254). But the positives' classification side is taken
with the boolean positive mask, i.e. in raster order: ``ins_weights`` (line 271, the cells'
max scores), and the ranking/sorting targets ``flat_labels[flat_labels == 1] = 1 - Dice``
(line 274, used by RankSort at line 298 and weighted at line 304; aLRP's ``order`` at
line 281 likewise). Whenever one level of one image holds several gts whose cells are not
in raster order when listed gt by gt, the k-th raster positive receives the Dice value (as
sorting target) and the Dice loss (weighted by its score) of the k-th grid-order cell,
another cell's, often another object's.

Worked example (S = 4): gt 0 claims cell 14 (row 3, col 2), gt 1 claims cell 1 (row 0,
col 1). Published ``grid_order = [14, 1]``, Dice values ``[d(14), d(1)]``; the positive mask
lists cells ``[1, 14]``, so cell 1's sorting target becomes ``1 - d(14)`` and cell 14's
``1 - d(1)``, and ``ins_weights = [score(1), score(14)]`` weight ``[d(14), d(1)]``.

What is built here: the targets in the published grid order (``ins_masks``) with, aligned,
``cell_index`` (the raster index of the cell each target belongs to) and ``gt_index``. Pair
anything per positive (mask prediction, score, sorting target) through ``cell_index``,
never through ``positive`` alone; ``raster_order`` permutes the targets into the order of
``positive.nonzero()`` when a raster-ordered pairing is wanted.

Numerics: the published ``//`` on float32 tensors is reproduced with torch's floor division
(torch >= 1.13, Python semantics); torch < 1.13 truncated ``a / b`` instead, which can only
differ when the quotient lies within a float32 rounding of an integer. The rescale is cv2's
fixed-point INTER_LINEAR for uint8 (11-bit weights, the SIMD vertical pass's truncations),
bit-identical to cv2 on all sizes tested; for sizes divisible by 4 (the published Pad
``size_divisor=32`` pipeline) it reduces to: a target pixel is 1 when at least 2 of the 4
centre pixels of its 4 x 4 block are set (so a gt of a pixel or two can get an empty target).
"""
from typing import List, NamedTuple, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["SOLOv2LevelTargets", "solov2_targets", "rescale_masks_cv2_linear",
           "mask_centres_of_mass", "PUBLISHED_NUM_GRIDS", "PUBLISHED_SCALE_RANGES",
           "PUBLISHED_SIGMA", "OUTPUT_STRIDE"]

# ranksort_solov2_r101_fpn_3x.py
PUBLISHED_NUM_GRIDS = (40, 36, 24, 16, 12)
PUBLISHED_SCALE_RANGES = ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
PUBLISHED_SIGMA = 0.2
# The unified mask feature map is at 1/4 of the input (hard-coded in the published head).
OUTPUT_STRIDE = 4

_COEF_BITS = 11  # cv2 INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS


class SOLOv2LevelTargets(NamedTuple):
    """One level's targets of one image (S = the level's grid, P = its positives)."""
    labels: Tensor      # (S*S,) int64, class in [0, K), K (num_classes) = background; raster
    positive: Tensor    # (S*S,) bool, raster order
    ins_masks: Tensor   # (P, h, w) uint8, published grid order (per gt, then cell row by row)
    gt_index: Tensor    # (P,) int64, the gt (index into the inputs) of each target
    cell_index: Tensor  # (P,) int64, raster index (row * S + col) of each target's cell

    @property
    def raster_order(self) -> Tensor:
        """Permutation p with ``cell_index[p] == positive.nonzero()[:, 0]``."""
        return torch.argsort(self.cell_index)


def mask_centres_of_mass(masks: Tensor) -> Tuple[Tensor, Tensor]:
    """(cy, cx) float64 of each (G, H, W) mask, as ``scipy.ndimage.center_of_mass``
    (exact integer sums over the pixel count, so bit-identical); NaN for an empty mask."""
    m = masks.to(torch.int64)
    count = m.sum(dim=(1, 2)).to(torch.float64)
    rows = torch.arange(m.shape[1], device=m.device, dtype=torch.int64)
    cols = torch.arange(m.shape[2], device=m.device, dtype=torch.int64)
    sum_y = (m.sum(dim=2) * rows).sum(dim=1).to(torch.float64)
    sum_x = (m.sum(dim=1) * cols).sum(dim=1).to(torch.float64)
    return sum_y / count, sum_x / count


def _cv2_linear_taps(src: int, dst: int, device: torch.device
                     ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per output pixel along one axis: the two source indices and cv2's fixed-point
    weights (``resize`` INTER_LINEAR: half-pixel centres, edge clamped)."""
    scale = 1.0 / (dst / src)
    d = torch.arange(dst, dtype=torch.float64)
    f = ((d + 0.5) * scale - 0.5).to(torch.float32)
    s = torch.floor(f)
    f = f - s
    s = s.to(torch.int64)
    low = s < 0
    f[low], s[low] = 0.0, 0
    high = s >= src - 1
    f[high], s[high] = 0.0, src - 1
    w0 = torch.round((1.0 - f) * _COEF_SCALE).to(torch.int32)
    w1 = torch.round(f * _COEF_SCALE).to(torch.int32)
    s1 = torch.clamp(s + 1, max=src - 1)
    return s.to(device), s1.to(device), w0.to(device), w1.to(device)


def rescale_masks_cv2_linear(masks: Tensor, scale: float = 1.0 / OUTPUT_STRIDE) -> Tensor:
    """(G, H, W) 0/1 masks rescaled as ``mmcv.imrescale(mask, scale)`` does (size
    ``(int(H * scale + 0.5), int(W * scale + 0.5))``, cv2 INTER_LINEAR on uint8 with its
    fixed-point arithmetic); returns uint8."""
    g, h, w = masks.shape
    oh, ow = int(h * float(scale) + 0.5), int(w * float(scale) + 0.5)
    m = masks.to(torch.int32)
    if g == 0 or oh == 0 or ow == 0:
        return torch.zeros((g, oh, ow), dtype=torch.uint8, device=masks.device)
    x0, x1, a0, a1 = _cv2_linear_taps(w, ow, masks.device)
    y0, y1, b0, b1 = _cv2_linear_taps(h, oh, masks.device)
    horiz = (m[:, :, x0] * a0 + m[:, :, x1] * a1) >> 4                 # (G, H, ow)
    out = ((horiz[:, y0, :] * b0[:, None]) >> 16) + ((horiz[:, y1, :] * b1[:, None]) >> 16)
    return ((out + 2) >> 2).clamp(0, 255).to(torch.uint8)


def _grid(values: Tensor, extent: int, num_grid: int) -> Tensor:
    """The published ``int((values / extent) // (1. / num_grid))`` in the values' dtype."""
    return torch.floor_divide(values / extent, 1.0 / num_grid).to(torch.int64)


def solov2_targets(gt_boxes: Tensor, gt_labels: Tensor, gt_masks: Tensor,
                   mask_feat_size: Tuple[int, int], num_classes: int,
                   num_grids: Sequence[int] = PUBLISHED_NUM_GRIDS,
                   scale_ranges: Sequence[Tuple[float, float]] = PUBLISHED_SCALE_RANGES,
                   sigma: float = PUBLISHED_SIGMA) -> List[SOLOv2LevelTargets]:
    """One image's SOLOv2 targets per level, as the published RS-SOLOv2 (see the module
    docstring for the rules, the order and the pairing).

    gt_boxes: (G, 4) XYXY input pixels; gt_labels: (G,) int64 in [0, num_classes);
    gt_masks: (G, H, W) bool/0-1 uint8 at the image's padded size (published: its own
    ``pad_shape``, a multiple of 32, which may be smaller than the batch: the rescaled mask
    is pasted top-left); mask_feat_size: (h, w) of the batch's mask feature map (1/4 of the
    batched input; the grid spans 4h x 4w pixels). An empty gt list gives all-background
    levels (the published code would fail on it).
    """
    device = gt_masks.device
    h, w = int(mask_feat_size[0]), int(mask_feat_size[1])
    up_h, up_w = h * OUTPUT_STRIDE, w * OUTPUT_STRIDE
    if len(num_grids) != len(scale_ranges):
        raise ValueError("solov2_targets: num_grids and scale_ranges need one entry per level")
    num_gt = gt_masks.shape[0]
    if gt_boxes.shape[0] != num_gt or gt_labels.shape[0] != num_gt:
        raise ValueError("solov2_targets: gt_boxes, gt_labels and gt_masks disagree on G")

    masks = gt_masks != 0
    boxes = gt_boxes.to(device=device, dtype=torch.float32)
    labels_in = gt_labels.to(device=device, dtype=torch.int64)
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    areas = torch.sqrt(bw * bh)
    half_w, half_h = 0.5 * bw * sigma, 0.5 * bh * sigma
    nonempty = masks.flatten(1).any(dim=1)
    cy, cx = mask_centres_of_mass(masks)
    cy, cx = torch.where(nonempty, cy, 0.0), torch.where(nonempty, cx, 0.0)
    cy32, cx32 = cy.to(torch.float32), cx.to(torch.float32)
    small = rescale_masks_cv2_linear(masks)
    if small.shape[1] > h or small.shape[2] > w:
        raise ValueError(f"solov2_targets: masks of {tuple(masks.shape[1:])} rescale to "
                         f"{tuple(small.shape[1:])}, larger than the mask features {(h, w)}")
    targets_all = torch.zeros((num_gt, h, w), dtype=torch.uint8, device=device)
    targets_all[:, :small.shape[1], :small.shape[2]] = small

    out: List[SOLOv2LevelTargets] = []
    for num_grid, (lo, hi) in zip(num_grids, scale_ranges):
        s = int(num_grid)
        coord_h, coord_w = _grid(cy, up_h, s), _grid(cx, up_w, s)
        top = torch.maximum(_grid(cy32 - half_h, up_h, s).clamp(min=0), coord_h - 1)
        down = torch.minimum(_grid(cy32 + half_h, up_h, s).clamp(max=s - 1), coord_h + 1)
        left = torch.maximum(_grid(cx32 - half_w, up_w, s).clamp(min=0), coord_w - 1)
        right = torch.minimum(_grid(cx32 + half_w, up_w, s).clamp(max=s - 1), coord_w + 1)
        hit = (areas >= lo) & (areas <= hi) & nonempty
        hit_idx = hit.nonzero().flatten().tolist()
        bounds = torch.stack([top, down, left, right], dim=1)[hit_idx].tolist() if hit_idx else []

        owner = [-1] * (s * s)
        cells: List[int] = []
        gts: List[int] = []
        for g, (t, d, le, r) in zip(hit_idx, bounds):
            for i in range(t, d + 1):
                for j in range(le, r + 1):
                    c = i * s + j
                    if owner[c] < 0:
                        owner[c] = g
                        cells.append(c)
                        gts.append(g)
        cell_index = torch.tensor(cells, dtype=torch.int64, device=device)
        gt_index = torch.tensor(gts, dtype=torch.int64, device=device)
        level_labels = torch.full((s * s,), num_classes, dtype=torch.int64, device=device)
        level_labels[cell_index] = labels_in[gt_index]
        positive = torch.zeros((s * s,), dtype=torch.bool, device=device)
        positive[cell_index] = True
        out.append(SOLOv2LevelTargets(level_labels, positive, targets_all[gt_index],
                                      gt_index, cell_index))
    return out
