"""SOLOv2 targets against a per-gt, per-cell transcription of the published
``RankBasedSOLOv2Head.solov2_target_single``, a hand-worked case and the published pairing."""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch

from rs_detectron2.modeling.meta_arch.solov2_targets import (
    PUBLISHED_NUM_GRIDS, PUBLISHED_SCALE_RANGES, mask_centres_of_mass, rescale_masks_cv2_linear,
    solov2_targets)

K = 80
COARSE = dict(num_grids=(6, 4, 3), scale_ranges=((1, 64), (32, 256), (128, 4096)), sigma=0.5)


# ----------------------------------------------------------------------------- reference
def ref_centre(mask: np.ndarray) -> Tuple[float, float]:
    """Mass centre in Python floats (exact integer sums, one correctly rounded division)."""
    ys, xs = np.nonzero(mask)
    n = len(ys)
    return int(ys.sum()) / n, int(xs.sum()) / n


def ref_rescale_quarter(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """mmcv.imrescale(mask, 0.25) for sides divisible by 4 (cv2 bilinear samples the 2 x 2
    centre of each 4 x 4 block, weights 1/2 each, rounds half up), pasted into (h, w)."""
    assert mask.shape[0] % 4 == 0 and mask.shape[1] % 4 == 0
    m = mask.astype(np.int64)
    votes = m[1::4, 1::4] + m[1::4, 2::4] + m[2::4, 1::4] + m[2::4, 2::4]
    out = np.zeros((h, w), np.uint8)
    out[:votes.shape[0], :votes.shape[1]] = votes >= 2
    return out


def reference(boxes: np.ndarray, labels: Sequence[int], masks: np.ndarray,
              feat: Tuple[int, int], num_grids=PUBLISHED_NUM_GRIDS,
              scale_ranges=PUBLISHED_SCALE_RANGES, sigma=0.2) -> List[Dict]:
    """The published loop (lines 332-410): gts in index order, per gt its centre region row
    by row, a cell goes to the first gt claiming it; mmdet labels are 1-based, 0 = bg."""
    h, w = feat
    up = (h * 4, w * 4)
    gt_bboxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    gt_areas = torch.sqrt((gt_bboxes[:, 2] - gt_bboxes[:, 0]) * (gt_bboxes[:, 3] - gt_bboxes[:, 1]))
    levels = []
    for (lo, hi), s in zip(scale_ranges, num_grids):
        hits = ((gt_areas >= lo) & (gt_areas <= hi)).nonzero().flatten().tolist()
        cate = [[0] * s for _ in range(s)]
        ins, order, owner_gt, collisions = [], [], [], 0
        for g in hits:
            # 0-dim float32 tensors, as the published half_hs / half_ws
            half_w = 0.5 * (gt_bboxes[g, 2] - gt_bboxes[g, 0]) * sigma
            half_h = 0.5 * (gt_bboxes[g, 3] - gt_bboxes[g, 1]) * sigma
            seg = masks[g]
            if seg.sum() == 0:
                continue
            center_h, center_w = ref_centre(seg)
            coord_w = int((center_w / up[1]) // (1. / s))
            coord_h = int((center_h / up[0]) // (1. / s))
            top_box = max(0, int(((center_h - half_h) / up[0]) // (1. / s)))
            down_box = min(s - 1, int(((center_h + half_h) / up[0]) // (1. / s)))
            left_box = max(0, int(((center_w - half_w) / up[1]) // (1. / s)))
            right_box = min(s - 1, int(((center_w + half_w) / up[1]) // (1. / s)))
            top, down = max(top_box, coord_h - 1), min(down_box, coord_h + 1)
            left, right = max(coord_w - 1, left_box), min(right_box, coord_w + 1)
            target = ref_rescale_quarter(seg, h, w)
            for i in range(top, down + 1):
                for j in range(left, right + 1):
                    if cate[i][j] != 0:
                        collisions += 1
                        continue
                    cate[i][j] = int(labels[g]) + 1
                    ins.append(target)
                    order.append(i * s + j)
                    owner_gt.append(g)
        levels.append(dict(cate=[c for row in cate for c in row], ins=ins, order=order,
                           gt=owner_gt, collisions=collisions, hits=hits))
    return levels


def check_against_reference(boxes, labels, masks, feat, **cfg) -> List[Dict]:
    ref = reference(boxes, labels, masks, feat, **cfg)
    got = solov2_targets(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                         torch.tensor(labels, dtype=torch.int64), torch.from_numpy(masks),
                         feat, K, **cfg)
    assert len(got) == len(ref)
    for lvl, (r, g) in enumerate(zip(ref, got)):
        s2 = len(r["cate"])
        want_labels = [K if c == 0 else c - 1 for c in r["cate"]]
        assert g.labels.tolist() == want_labels, lvl
        assert g.positive.tolist() == [c != 0 for c in r["cate"]], lvl
        assert g.cell_index.tolist() == r["order"], lvl
        assert g.gt_index.tolist() == r["gt"], lvl
        assert g.ins_masks.dtype == torch.uint8 and g.labels.shape == (s2,)
        assert g.ins_masks.shape == (len(r["order"]), feat[0], feat[1]), lvl
        for k, t in enumerate(r["ins"]):
            assert np.array_equal(g.ins_masks[k].numpy(), t), (lvl, k)
        assert g.cell_index[g.raster_order].tolist() == g.positive.nonzero()[:, 0].tolist()
    return ref


# ----------------------------------------------------------------------------- random cases
def random_case(seed: int):
    """Padded image (multiple of 32, sometimes smaller than the batch's features), 0-9 gts
    clustered around a few centres, log-uniform sizes (sub-pixel to larger than the image),
    rectangle / ellipse / noisy / offset / empty masks, some sides on range boundaries."""
    rng = np.random.default_rng(seed)
    hh, ww = 32 * int(rng.integers(2, 21)), 32 * int(rng.integers(2, 21))
    n = 0 if seed == 0 else int(rng.integers(1, 10))
    anchors = rng.uniform([0, 0], [ww, hh], size=(max(1, int(rng.integers(1, 4))), 2))
    boxes, masks = [], []
    for _ in range(n):
        cx, cy = anchors[rng.integers(len(anchors))] + rng.normal(0, 0.05 * max(hh, ww), 2)
        if rng.random() < 0.15:
            side = float(rng.choice([1, 32, 48, 64, 96, 128, 192, 256]))
            bw = bh = side
        else:
            size = float(np.exp(rng.uniform(np.log(0.5), np.log(1.3 * max(hh, ww)))))
            ar = float(np.exp(rng.uniform(-1, 1)))
            bw, bh = size * np.sqrt(ar), size / np.sqrt(ar)
        x1 = float(np.clip(cx - bw / 2, 0, ww - 1))
        y1 = float(np.clip(cy - bh / 2, 0, hh - 1))
        x2, y2 = min(float(ww), x1 + bw), min(float(hh), y1 + bh)
        boxes.append([x1, y1, x2, y2])
        m = np.zeros((hh, ww), np.uint8)
        r0, r1 = int(np.floor(y1)), max(int(np.floor(y1)) + 1, int(np.ceil(y2)))
        c0, c1 = int(np.floor(x1)), max(int(np.floor(x1)) + 1, int(np.ceil(x2)))
        kind = rng.random()
        if kind < 0.35:
            m[r0:r1, c0:c1] = 1
        elif kind < 0.6:
            yy, xx = np.mgrid[r0:r1, c0:c1]
            ry, rx = max((r1 - r0) / 2, 0.5), max((c1 - c0) / 2, 0.5)
            m[r0:r1, c0:c1] = (((yy + 0.5 - (r0 + r1) / 2) / ry) ** 2
                               + ((xx + 0.5 - (c0 + c1) / 2) / rx) ** 2) <= 1
        elif kind < 0.8:
            m[r0:r1, c0:c1] = rng.random((r1 - r0, c1 - c0)) < rng.uniform(0.1, 0.9)
        elif kind < 0.95:  # mass centre far from the box centre
            m[r0:r1, c0:c0 + max(1, (c1 - c0) // 4)] = 1
        masks.append(m)  # else: empty mask, skipped by the published loop
    labels = rng.integers(0, K, size=n).tolist()
    masks_arr = np.stack(masks) if masks else np.zeros((0, hh, ww), np.uint8)
    feat = (hh // 4, ww // 4)
    if rng.random() < 0.3:  # a larger image in the batch: features beyond this image's pad
        feat = (feat[0] + 8 * int(rng.integers(0, 4)), feat[1] + 8 * int(rng.integers(1, 4)))
    return np.array(boxes, np.float32).reshape(-1, 4), labels, masks_arr, feat


def test_random_cases_match_published_loop():
    stats = dict(collisions=0, two_levels=0, unordered=0, multi_gt_levels=0, empty=0)
    for seed in range(40):
        boxes, labels, masks, feat = random_case(seed)
        cfg = COARSE if seed % 4 == 3 else {}
        ref = check_against_reference(boxes, labels, masks, feat, **cfg)
        stats["empty"] += len(boxes) == 0
        stats["collisions"] += sum(r["collisions"] for r in ref)
        per_gt = np.zeros(len(boxes), int)
        for r in ref:
            per_gt[r["hits"]] += 1
            stats["multi_gt_levels"] += len(set(r["gt"])) >= 2
            stats["unordered"] += r["order"] != sorted(r["order"])
        stats["two_levels"] += int((per_gt >= 2).sum())
    assert all(v > 0 for v in stats.values()), stats


def test_boundary_and_extreme_sizes():
    """sqrt(area) on the ends of the ranges (inclusive: 48 is in levels 0-1, 96 in levels
    0-2, 2048 in level 4), below 1 and above 2048 (no level)."""
    hh = ww = 2560
    boxes, masks = [], []
    for side in (48.0, 96.0, 0.5, 2100.0, 1.0, 2048.0):
        x1 = y1 = 100.0
        boxes.append([x1, y1, x1 + side, y1 + side])
        m = np.zeros((hh, ww), np.uint8)
        m[100:100 + max(1, int(side)), 100:100 + max(1, int(side))] = 1
        masks.append(m)
    ref = check_against_reference(np.array(boxes, np.float32), [1, 2, 3, 4, 5, 6],
                                  np.stack(masks), (hh // 4, ww // 4))
    assert [r["hits"] for r in ref] == [[0, 1, 4], [0, 1], [1], [], [5]]


def test_empty_gt_list():
    out = solov2_targets(torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64),
                         torch.zeros((0, 64, 96), dtype=torch.bool), (16, 24), K)
    assert len(out) == 5
    for s, t in zip(PUBLISHED_NUM_GRIDS, out):
        assert t.labels.tolist() == [K] * (s * s) and not t.positive.any()
        assert t.ins_masks.shape == (0, 16, 24) and t.cell_index.numel() == 0
        assert t.gt_index.numel() == 0


def test_dtypes_do_not_matter():
    boxes, labels, masks, feat = random_case(5)
    a = solov2_targets(torch.from_numpy(boxes), torch.tensor(labels), torch.from_numpy(masks),
                       feat, K)
    b = solov2_targets(torch.from_numpy(boxes).double(), torch.tensor(labels, dtype=torch.int32),
                       torch.from_numpy(masks).bool(), feat, K)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            assert torch.equal(u, v)


# ----------------------------------------------------------------------------- hand case
def hand_case():
    """128 x 128 input, one 4 x 4 grid, sigma 0.2 (half-extent 3.2 px per 32 px of box):
    gt 0 (class 3) rows 96-127 x cols 64-95: centre (111.5, 79.5) -> cell (3, 2) = 14 only;
    gt 1 (class 5) rows 0-31 x cols 32-63: centre (15.5, 47.5) -> cell (0, 1) = 1 only;
    gt 2 (class 7) rows 0-63 x cols 0-63: centre (31.5, 31.5) -> cell (0, 0), half-extent
    6.4 -> region rows 0-1 x cols 0-1 = cells 0, 1, 4, 5; cell 1 already belongs to gt 1."""
    masks = np.zeros((3, 128, 128), np.uint8)
    masks[0, 96:128, 64:96] = 1
    masks[1, 0:32, 32:64] = 1
    masks[2, 0:64, 0:64] = 1
    boxes = np.array([[64, 96, 96, 128], [32, 0, 64, 32], [0, 0, 64, 64]], np.float32)
    cfg = dict(num_grids=(4,), scale_ranges=((1, 2048),), sigma=0.2)
    return boxes, [3, 5, 7], masks, (32, 32), cfg


def test_hand_worked_case():
    boxes, labels, masks, feat, cfg = hand_case()
    (t,) = solov2_targets(torch.from_numpy(boxes), torch.tensor(labels),
                          torch.from_numpy(masks), feat, 10, **cfg)
    want = [10] * 16
    want[14], want[1], want[0], want[4], want[5] = 3, 5, 7, 7, 7
    assert t.labels.tolist() == want
    assert t.cell_index.tolist() == [14, 1, 0, 4, 5]   # published grid order
    assert t.gt_index.tolist() == [0, 1, 2, 2, 2]
    assert t.positive.nonzero()[:, 0].tolist() == [0, 1, 4, 5, 14]
    assert t.raster_order.tolist() == [2, 1, 3, 4, 0]
    expect = np.zeros((3, 32, 32), np.uint8)
    expect[0, 24:32, 16:24] = 1
    expect[1, 0:8, 8:16] = 1
    expect[2, 0:16, 0:16] = 1
    for k, g in enumerate([0, 1, 2, 2, 2]):
        assert np.array_equal(t.ins_masks[k].numpy(), expect[g])
    check_against_reference(boxes, labels, masks, feat, **cfg)


def test_float32_region_bounds():
    """The published half-extents are float32 box tensors, so the region bound is float32:
    centre row 10.0, box height 4 -> (10 - 0.4f) / 128 // (1 / 40) is 3 in float32 (2 in
    float64), top = max(3, coord_h - 1 = 2) = 3: row 3 only, not rows 2-3. Columns: centre
    64, 0.5 // 0.025 == 19.0 in IEEE floor division, region cols 19-20."""
    masks = np.zeros((1, 128, 128), np.uint8)
    masks[0, 9:12, 60:69] = 1
    boxes = np.array([[62, 8, 66, 12]], np.float32)
    t = solov2_targets(torch.from_numpy(boxes), torch.tensor([4]), torch.from_numpy(masks),
                       (32, 32), K)
    assert t[0].cell_index.tolist() == [3 * 40 + 19, 3 * 40 + 20]
    assert int(((10.0 - 0.4) / 128) // (1. / 40)) == 2   # what float64 would give
    check_against_reference(boxes, [4], masks, (32, 32))


# ----------------------------------------------------------------------------- pairing
def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Published ``dice_loss`` (lines 28-36)."""
    p, t = pred.flatten(1), target.flatten(1).float()
    return 1 - 2 * (p * t).sum(1) / ((p * p).sum(1) + 0.001 + (t * t).sum(1) + 0.001)


def test_published_pairing_mismatch_and_ours():
    """Hand case: gt 0's cell 14 is predicted perfectly, gt 1's cell 1 predicts nothing,
    gt 2's cells predict half of their mask. The published loss gathers predictions by
    grid_order (Dice itself is right) but writes ``1 - Dice`` onto the positives in raster
    order (line 274) and weights Dice with raster-ordered scores (lines 271, 304)."""
    boxes, labels, masks, feat, cfg = hand_case()
    (t,) = solov2_targets(torch.from_numpy(boxes), torch.tensor(labels),
                          torch.from_numpy(masks), feat, 10, **cfg)
    owner = torch.full((16,), -1, dtype=torch.int64)
    owner[t.cell_index] = t.gt_index
    gt_small = torch.stack([t.ins_masks[(t.gt_index == g).nonzero()[0, 0]] for g in range(3)])
    pred = torch.zeros((16, 32, 32))                    # per-cell predicted masks, raster
    top_half = (torch.arange(32)[:, None] < 8).float()
    for c in range(16):
        g = int(owner[c])
        if g == 0:
            pred[c] = gt_small[0].float()
        elif g == 2:
            pred[c] = gt_small[2].float() * top_half     # gt 1's cell stays empty
    scores = torch.arange(16, dtype=torch.float32) / 16  # per-cell classification score

    # published: predictions by grid_order vs ins_label (grid order)
    grid_order = t.cell_index
    loss_instances = dice_loss(pred[grid_order], t.ins_masks)
    true_dice = {int(c): float(dice_loss(pred[c:c + 1], gt_small[owner[c]][None]))
                 for c in grid_order}
    assert loss_instances.tolist() == pytest.approx([true_dice[int(c)] for c in grid_order])
    assert true_dice[14] < 1e-3 and true_dice[1] > 0.99        # gt 0 perfect, gt 1 missed
    # published line 274: the k-th raster positive gets 1 - loss_instances[k]
    raster_pos = t.positive.nonzero()[:, 0]
    published_sort_target = torch.zeros(16)
    published_sort_target[raster_pos] = 1 - loss_instances
    ours_sort_target = torch.zeros(16)
    ours_sort_target[t.cell_index] = 1 - loss_instances
    for c in raster_pos.tolist():
        assert float(ours_sort_target[c]) == pytest.approx(1 - true_dice[c])
    # cell 0 (gt 2) is given gt 0's perfect Dice, cell 14 (gt 0, perfect) gt 2's value
    assert float(published_sort_target[0]) == pytest.approx(1 - true_dice[14])
    assert float(published_sort_target[14]) == pytest.approx(1 - true_dice[5])
    assert float(published_sort_target[14]) < 0.9 < float(ours_sort_target[14])
    # published lines 271/304: raster-ordered scores weight grid-ordered Dice losses
    published_weighted = scores[raster_pos] * loss_instances
    ours_weighted = scores[t.cell_index] * loss_instances
    assert not torch.allclose(published_weighted, ours_weighted)
    # raster_order turns targets into the published positive order: then both agree
    ro = t.raster_order
    assert torch.equal(t.cell_index[ro], raster_pos)
    assert torch.allclose(dice_loss(pred[raster_pos], t.ins_masks[ro]), loss_instances[ro])


def test_single_gt_grid_order_is_raster_order():
    """With one gt per level the published orders coincide (rows then columns of one
    rectangle): the mismatch needs several gts on one level of one image."""
    for seed in range(1, 40):
        boxes, labels, masks, feat = random_case(seed)
        for t in solov2_targets(torch.from_numpy(boxes), torch.tensor(labels),
                                torch.from_numpy(masks), feat, K, **COARSE):
            if t.gt_index.unique().numel() <= 1:
                assert t.cell_index.tolist() == sorted(t.cell_index.tolist())


# ----------------------------------------------------------------------------- helpers
def test_rescale_matches_cv2():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    for it in range(300):
        hh, ww = int(rng.integers(1, 200)), int(rng.integers(1, 120))
        if it % 2 == 0:
            hh, ww = 4 * max(1, hh // 4), 4 * max(1, ww // 4)
        m = (rng.random((hh, ww)) < rng.random()).astype(np.uint8)
        if rng.random() < 0.5:
            m[:] = 0
            y0, x0 = int(rng.integers(0, hh)), int(rng.integers(0, ww))
            m[y0:y0 + int(rng.integers(1, hh + 1)), x0:x0 + int(rng.integers(1, ww + 1))] = 1
        nh, nw = int(hh * 0.25 + 0.5), int(ww * 0.25 + 0.5)
        got = rescale_masks_cv2_linear(torch.from_numpy(m)[None])[0].numpy()
        assert got.shape == (nh, nw)
        if nh and nw:
            assert np.array_equal(got, cv2.resize(m, (nw, nh), interpolation=cv2.INTER_LINEAR)), it
        if it % 2 == 0:
            assert np.array_equal(got, ref_rescale_quarter(m, nh, nw))


def test_centres_match_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(1)
    masks = (rng.random((20, 57, 83)) < rng.random((20, 1, 1))).astype(np.uint8)
    masks[3] = 0
    masks[4, 10, 20] = 1
    cy, cx = mask_centres_of_mass(torch.from_numpy(masks))
    for g in range(20):
        if masks[g].sum() == 0:
            assert torch.isnan(cy[g]) and torch.isnan(cx[g])
            continue
        want = ndimage.center_of_mass(masks[g])
        assert (float(cy[g]), float(cx[g])) == (float(want[0]), float(want[1]))


def test_mask_larger_than_features_is_rejected():
    with pytest.raises(ValueError):
        solov2_targets(torch.tensor([[0., 0., 10., 10.]]), torch.tensor([0]),
                       torch.ones((1, 64, 64), dtype=torch.bool), (8, 8), K)
