"""Stock YOLACT losses against slow float64 loop references (and mmdet transcriptions)."""
import math

import pytest
import torch
import torch.nn.functional as F

from rs_detectron2.layers import assemble_masks, crop_masks, mask_targets
from rs_detectron2.modeling.meta_arch.yolact_losses import (
    ohem_num_total_samples, ohem_softmax_cross_entropy, select_training_masks, yolact_box_loss,
    yolact_mask_bce_loss)

SEEDS = list(range(25))


# ----------------------------------------------------------------------------- references
def ref_ce(row, label):
    """Softmax cross entropy of one anchor, plain Python floats."""
    mx = max(row)
    lse = mx + math.log(sum(math.exp(v - mx) for v in row))
    return lse - row[label]


def ref_ohem(logits, labels, ratio=3.0):
    """Per-anchor loop: positives + hardest min(int(ratio*pos), neg) negatives (all if no
    positive), over sum_i max(pos_i, 1)."""
    n, r, c = logits.shape
    k_cls = c - 1
    total, denom = 0.0, 0
    for i in range(n):
        pos, negs = [], []
        for a in range(r):
            lab = int(labels[i, a])
            row = [float(v) for v in logits[i, a]]
            if 0 <= lab < k_cls:
                pos.append(ref_ce(row, lab))
            elif lab == k_cls:
                negs.append(ref_ce(row, lab))
        negs.sort(reverse=True)
        k = len(negs) if not pos else min(int(math.floor(ratio * len(pos))), len(negs))
        total += sum(pos) + sum(negs[:k])
        denom += max(len(pos), 1)
    return total / max(denom, 1)


def mmdet_ohem(logits, labels, ratio=3):
    """Transcription of mmdet's loss_single_OHEM: ignored anchors are label K, weight 0."""
    n, r, c = logits.shape
    k_cls = c - 1
    lab = labels.clone()
    w = (lab >= 0).to(logits.dtype)
    lab[lab < 0] = k_cls
    num_total = sum(max(int(((lab[i] >= 0) & (lab[i] < k_cls)).sum()), 1) for i in range(n))
    out = 0.0
    for i in range(n):
        loss_all = F.cross_entropy(logits[i], lab[i], reduction="none") * w[i]
        pos_inds = ((lab[i] >= 0) & (lab[i] < k_cls)).nonzero().reshape(-1)
        neg_inds = (lab[i] == k_cls).nonzero().view(-1)
        npos = pos_inds.numel()
        nneg = neg_inds.numel() if npos == 0 else min(ratio * npos, neg_inds.numel())
        topk, _ = loss_all[neg_inds].topk(nneg)
        out = out + (loss_all[pos_inds].sum() + topk.sum()) / num_total
    return out


def ref_smooth_l1(pred, target, n_pos, beta=1.0, weight=1.5):
    s = 0.0
    for p in range(pred.shape[0]):
        for j in range(4):
            d = abs(float(pred[p, j]) - float(target[p, j]))
            s += 0.5 * d * d / beta if d < beta else d - 0.5 * beta
    return s / max(n_pos, 1) * weight


def ref_crop(masks, boxes, padding=1):
    m, h, w = masks.shape
    out = torch.zeros_like(masks, dtype=torch.float64)
    for k in range(m):
        bx1, by1, bx2, by2 = (float(v) for v in boxes[k])
        x1 = min(bx1, bx2)
        x2 = max(x1, bx2)  # mmdet's sanitize_coordinates uses the updated x1
        y1 = min(by1, by2)
        y2 = max(y1, by2)
        x1, x2 = max(x1 - padding, 0.0), min(x2 + padding, float(w))
        y1, y2 = max(y1 - padding, 0.0), min(y2 + padding, float(h))
        for i in range(h):
            for j in range(w):
                if x1 <= j < x2 and y1 <= i < y2:
                    out[k, i, j] = float(masks[k, i, j])
    return out


def mmdet_crop(masks_hwn, boxes_norm, padding=1):
    """Transcription of YOLACTProtonet.crop / sanitize_coordinates (cast=False)."""
    def sanitize(x1, x2, size):
        x1 = x1 * size
        x2 = x2 * size
        x1 = torch.min(x1, x2)
        x2 = torch.max(x1, x2)
        return torch.clamp(x1 - padding, min=0), torch.clamp(x2 + padding, max=size)

    h, w, n = masks_hwn.size()
    x1, x2 = sanitize(boxes_norm[:, 0], boxes_norm[:, 2], w)
    y1, y2 = sanitize(boxes_norm[:, 1], boxes_norm[:, 3], h)
    rows = torch.arange(w, dtype=x1.dtype).view(1, -1, 1).expand(h, w, n)
    cols = torch.arange(h, dtype=x1.dtype).view(-1, 1, 1).expand(h, w, n)
    crop = (rows >= x1.view(1, 1, -1)) * (rows < x2.view(1, 1, -1)) * \
        (cols >= y1.view(1, 1, -1)) * (cols < y2.view(1, 1, -1))
    return masks_hwn * crop.float()


def ref_bilinear(img, oh, ow):
    """PyTorch bilinear, align_corners=False, one (H, W) map, per output pixel."""
    ih, iw = img.shape
    out = torch.zeros(oh, ow, dtype=torch.float64)

    def src(d, in_size, out_size):
        s = max((d + 0.5) * (in_size / out_size) - 0.5, 0.0)
        i0 = int(math.floor(s))
        i0 = min(i0, in_size - 1)
        i1 = min(i0 + 1, in_size - 1)
        return i0, i1, s - i0

    for y in range(oh):
        y0, y1, ly = src(y, ih, oh)
        for x in range(ow):
            x0, x1, lx = src(x, iw, ow)
            v = ((1 - ly) * ((1 - lx) * float(img[y0, x0]) + lx * float(img[y0, x1]))
                 + ly * ((1 - lx) * float(img[y1, x0]) + lx * float(img[y1, x1])))
            out[y, x] = v
    return out


def ref_bce_loss(probs, targets, boxes, weight=6.125, min_area=1.0):
    m, h, w = probs.shape
    if m == 0:
        return 0.0
    total = 0.0
    for k in range(m):
        s = 0.0
        for i in range(h):
            for j in range(w):
                p = min(max(float(probs[k, i, j]), 0.0), 1.0)
                t = float(targets[k, i, j])
                lp = max(math.log(p), -100.0) if p > 0 else -100.0
                l1p = max(math.log(1 - p), -100.0) if p < 1 else -100.0
                s += -(t * lp + (1 - t) * l1p) * weight
        bx1, by1, bx2, by2 = (float(v) for v in boxes[k])
        total += s / max((bx2 - bx1) * (by2 - by1), min_area)
    return total / m


def mmdet_mask_loss(mask_pred_list, gt_masks_list, gt_bboxes_list, img_shapes, weight=6.125):
    """Transcription of the stock YOLACTProtonet.loss (pos_assigned_gt_inds = arange)."""
    losses, total_pos = [], 0
    for pred, tgt, gtb, (h, w) in zip(mask_pred_list, gt_masks_list, gt_bboxes_list, img_shapes):
        num_pos = pred.shape[0]
        total_pos += num_pos
        if num_pos == 0:
            losses.append(pred.sum() * 0.)
            continue
        loss = F.binary_cross_entropy(pred.clamp(0, 1), tgt, reduction="none") * weight
        gw = (gtb[:, 2] - gtb[:, 0]) / w
        gh = (gtb[:, 3] - gtb[:, 1]) / h
        losses.append(torch.sum(loss.mean(dim=(1, 2)) / gw / gh))
    total_pos = max(total_pos, 1)
    return sum(x / total_pos for x in losses)


def random_labels(g, n, r, k, p_pos=0.15, p_ign=0.15):
    u = torch.rand(n, r, generator=g)
    labels = torch.full((n, r), k, dtype=torch.long)
    pos = u < p_pos
    labels[pos] = torch.randint(0, k, (int(pos.sum()),), generator=g)
    labels[(u >= p_pos) & (u < p_pos + p_ign)] = -1
    return labels


# ----------------------------------------------------------------------------- OHEM
@pytest.mark.parametrize("seed", SEEDS)
def test_ohem_random(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 4, (1,), generator=g))
    r = int(torch.randint(1, 50, (1,), generator=g))
    k = int(torch.randint(1, 6, (1,), generator=g))
    p_pos = float(torch.rand(1, generator=g)) * 0.5
    logits = torch.randn(n, r, k + 1, generator=g, dtype=torch.float64) * 3
    labels = random_labels(g, n, r, k, p_pos=p_pos)
    got = ohem_softmax_cross_entropy(logits, labels, 3.0)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(ref_ohem(logits, labels), rel=1e-10, abs=1e-12)
    assert got.item() == pytest.approx(float(mmdet_ohem(logits, labels)), rel=1e-10, abs=1e-12)
    # float32 path agrees too
    got32 = ohem_softmax_cross_entropy(logits.float(), labels)
    assert got32.item() == pytest.approx(got.item(), rel=1e-5, abs=1e-6)


def test_ohem_edge_cases():
    g = torch.Generator().manual_seed(0)
    k = 3
    logits = torch.randn(2, 10, k + 1, generator=g, dtype=torch.float64)
    # no positives at all: every negative, divided by N (mmdet clamps #pos to 1 per image)
    labels = torch.full((2, 10), k)
    labels[0, :3] = -1
    got = ohem_softmax_cross_entropy(logits, labels)
    ce = F.cross_entropy(logits.view(-1, k + 1), labels.clamp(min=0).view(-1), reduction="none")
    expect = ce[labels.view(-1) == k].sum() / 2
    assert got.item() == pytest.approx(expect.item(), rel=1e-12)
    assert got.item() == pytest.approx(ref_ohem(logits, labels), rel=1e-12)
    # fewer negatives than 3x positives: all negatives taken
    labels = torch.tensor([[0, 1, 2, 0, k, k, -1, -1, 1, 2]] * 2)
    got = ohem_softmax_cross_entropy(logits, labels)
    ce = F.cross_entropy(logits.view(-1, k + 1), labels.clamp(min=0).view(-1), reduction="none")
    expect = ce[labels.view(-1) >= 0].sum() / 12
    assert got.item() == pytest.approx(expect.item(), rel=1e-12)
    # exactly 3x: 1 positive, hardest 3 of 6 negatives; ignored anchors never counted
    labels = torch.tensor([[1, k, k, k, k, k, k, -1, -1, -1]])
    lg = logits[:1].clone()
    lg[0, 7:, :] = 0.0
    lg[0, 7:, k] = -50.0  # ignored anchors would be the hardest negatives
    got = ohem_softmax_cross_entropy(lg, labels)
    ce = F.cross_entropy(lg[0], labels[0].clamp(min=0), reduction="none")
    expect = ce[0] + ce[1:7].sort(descending=True).values[:3].sum()
    assert got.item() == pytest.approx(expect.item(), rel=1e-12)
    # all-background image next to an image with positives: its negatives all count, denom +1
    labels = torch.tensor([[0, k, k, k, k, k, k, k, k, k], [k] * 10])
    got = ohem_softmax_cross_entropy(logits, labels)
    assert got.item() == pytest.approx(ref_ohem(logits, labels), rel=1e-12)
    ce1 = F.cross_entropy(logits[1], labels[1], reduction="none").sum()
    ce0 = F.cross_entropy(logits[0], labels[0], reduction="none")
    expect = (ce0[0] + ce0[1:].sort(descending=True).values[:3].sum() + ce1) / 2
    assert got.item() == pytest.approx(expect.item(), rel=1e-12)
    # non-integer ratio floors: 2 positives * 2.5 -> 5 negatives
    labels = torch.tensor([[0, 2, k, k, k, k, k, k, k, -1]])
    got = ohem_softmax_cross_entropy(logits[:1], labels, neg_pos_ratio=2.5)
    assert got.item() == pytest.approx(ref_ohem(logits[:1], labels, 2.5), rel=1e-12)
    # everything ignored: a zero attached to the graph
    lg = logits.clone().requires_grad_()
    got = ohem_softmax_cross_entropy(lg, torch.full((2, 10), -1))
    assert got.item() == 0.0 and got.requires_grad
    got.backward()
    assert torch.all(lg.grad == 0)


def test_ohem_num_total_samples():
    k = 3
    labels = torch.tensor([[0, 1, k, -1], [k, k, -1, -1], [2, 2, 2, k]])
    assert ohem_num_total_samples(labels, k) == 2 + 1 + 3
    assert ohem_num_total_samples(torch.full((4, 5), k), k) == 4


@pytest.mark.parametrize("seed", range(5))
def test_ohem_gradcheck(seed):
    g = torch.Generator().manual_seed(100 + seed)
    k = 3
    logits = (torch.randn(2, 8, k + 1, generator=g, dtype=torch.float64) * 2).requires_grad_()
    labels = random_labels(g, 2, 8, k, p_pos=0.25)
    labels[0, 0] = 1  # at least one positive, so some negatives are dropped
    assert torch.autograd.gradcheck(lambda x: ohem_softmax_cross_entropy(x, labels), (logits,))
    # analytic gradient equals autograd through the mmdet transcription
    a = torch.autograd.grad(ohem_softmax_cross_entropy(logits, labels), logits)[0]
    b = torch.autograd.grad(mmdet_ohem(logits, labels), logits)[0]
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- box loss
@pytest.mark.parametrize("seed", SEEDS)
def test_box_loss_random(seed):
    g = torch.Generator().manual_seed(seed)
    p = int(torch.randint(0, 30, (1,), generator=g))
    pred = torch.randn(p, 4, generator=g, dtype=torch.float64) * 1.5
    tgt = torch.randn(p, 4, generator=g, dtype=torch.float64)
    n_pos = p + int(torch.randint(0, 3, (1,), generator=g))
    beta = [1.0, 0.5, 0.11][seed % 3]
    got = yolact_box_loss(pred, tgt, n_pos, beta=beta)
    assert got.item() == pytest.approx(ref_smooth_l1(pred, tgt, n_pos, beta), rel=1e-12, abs=1e-15)
    if p:
        # mmdet's SmoothL1Loss(beta, loss_weight=1.5)(pred, tgt, avg_factor=n) equivalent
        expect = F.smooth_l1_loss(pred, tgt, beta=beta, reduction="sum") / max(n_pos, 1) * 1.5
        assert got.item() == pytest.approx(expect.item(), rel=1e-12)


def test_box_loss_empty_and_grad():
    pred = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    got = yolact_box_loss(pred, torch.zeros(0, 4, dtype=torch.float64), 0)
    assert got.item() == 0.0 and got.requires_grad
    got.backward()
    pred = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    tgt = torch.randn(5, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: yolact_box_loss(x, tgt, 7), (pred,))


# ----------------------------------------------------------------------------- crop
def _random_boxes(g, m, h, w):
    b = torch.rand(m, 4, generator=g, dtype=torch.float64)
    b[:, [0, 2]] = b[:, [0, 2]] * (w + 4) - 2
    b[:, [1, 3]] = b[:, [1, 3]] * (h + 4) - 2
    x1 = torch.minimum(b[:, 0], b[:, 2])
    x2 = torch.maximum(b[:, 0], b[:, 2])
    y1 = torch.minimum(b[:, 1], b[:, 3])
    y2 = torch.maximum(b[:, 1], b[:, 3])
    return torch.stack([x1, y1, x2, y2], 1)


@pytest.mark.parametrize("seed", SEEDS)
def test_crop_random(seed):
    g = torch.Generator().manual_seed(seed)
    m = int(torch.randint(0, 6, (1,), generator=g))
    h = int(torch.randint(1, 14, (1,), generator=g))
    w = int(torch.randint(1, 14, (1,), generator=g))
    masks = torch.rand(m, h, w, generator=g, dtype=torch.float64)
    boxes = _random_boxes(g, m, h, w)
    if seed % 4 == 0:
        boxes = boxes.round()  # integer edges: the >= / < boundaries matter
    padding = [1, 0, 2][seed % 3]
    got = crop_masks(masks, boxes, padding)
    assert torch.equal(got, ref_crop(masks, boxes, padding))


@pytest.mark.parametrize("seed", range(20))
def test_crop_matches_mmdet_normalised(seed):
    """mmdet normalises image-pixel boxes by the image size and the crop multiplies by the
    mask size; boxes * mask_size / img_size in mask pixels give the same crop."""
    g = torch.Generator().manual_seed(seed)
    img_h, img_w = 550, 550
    h, w = 17, 23
    m = 6
    masks = torch.rand(m, h, w, generator=g)
    boxes_img = _random_boxes(g, m, img_h, img_w).float() + 0.0173  # off the integer grid
    norm = boxes_img / torch.tensor([img_w, img_h, img_w, img_h])
    expect = mmdet_crop(masks.permute(1, 2, 0), norm).permute(2, 0, 1)
    boxes_px = boxes_img * torch.tensor([w / img_w, h / img_h, w / img_w, h / img_h])
    got = crop_masks(masks, boxes_px)
    # float rounding may flip a pixel exactly at a boundary; allow none here (off-grid boxes)
    assert torch.equal(got, expect)


def test_crop_edge_cases():
    h, w = 6, 8
    ones = torch.ones(5, h, w, dtype=torch.float64)
    boxes = torch.tensor([
        [0.0, 0.0, w, h],          # whole mask / touching all borders
        [-5.0, -3.0, 20.0, 30.0],  # past the border: clipped
        [3.0, 2.0, 3.0, 2.0],      # zero area: padding window [2, 4) x [1, 3)
        [5.0, 4.0, 2.0, 1.0],      # inverted: mmdet keeps x2 -> [1, 3) x [0, 2)
        [7.5, 5.5, 8.0, 6.0],      # bottom-right corner: float bounds [6.5, 8) keep col 7
    ], dtype=torch.float64)
    got = crop_masks(ones, boxes)
    assert torch.equal(got, ref_crop(ones, boxes))
    assert got[0].sum() == h * w and got[1].sum() == h * w
    assert torch.equal(got[2].nonzero()[:, 0].unique(), torch.tensor([1, 2]))
    assert torch.equal(got[2].nonzero()[:, 1].unique(), torch.tensor([2, 3]))
    assert got[3].sum() == 4 and got[3][0:2, 1:3].sum() == 4
    assert got[4].sum() == 1 and got[4][5, 7] == 1
    mmdet = mmdet_crop(ones.permute(1, 2, 0),
                       boxes / torch.tensor([w, h, w, h], dtype=torch.float64)).permute(2, 0, 1)
    assert torch.equal(got, mmdet)
    # padding 0 and a zero-area box: nothing kept
    assert crop_masks(ones[:1], torch.tensor([[3.0, 2.0, 3.0, 2.0]], dtype=torch.float64),
                      0).sum() == 0
    # M = 0
    assert crop_masks(torch.zeros(0, h, w), torch.zeros(0, 4)).shape == (0, h, w)


# ----------------------------------------------------------------------------- assemble
@pytest.mark.parametrize("seed", SEEDS)
def test_assemble_random(seed):
    g = torch.Generator().manual_seed(seed)
    p = int(torch.randint(1, 6, (1,), generator=g))
    h = int(torch.randint(1, 7, (1,), generator=g))
    w = int(torch.randint(1, 7, (1,), generator=g))
    m = int(torch.randint(0, 5, (1,), generator=g))
    protos = torch.randn(p, h, w, generator=g, dtype=torch.float64)
    coeffs = torch.randn(m, p, generator=g, dtype=torch.float64).tanh()
    got = assemble_masks(protos, coeffs)
    ref = torch.zeros(m, h, w, dtype=torch.float64)
    for k in range(m):
        for i in range(h):
            for j in range(w):
                s = sum(float(protos[q, i, j]) * float(coeffs[k, q]) for q in range(p))
                ref[k, i, j] = 1.0 / (1.0 + math.exp(-s))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
    # mmdet's layout: (H, W, P) @ coeff^T, sigmoid, permute(2, 0, 1)
    mm = torch.sigmoid(protos.permute(1, 2, 0) @ coeffs.t()).permute(2, 0, 1)
    torch.testing.assert_close(got, mm, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- targets
@pytest.mark.parametrize("seed", SEEDS)
def test_mask_targets_random(seed):
    g = torch.Generator().manual_seed(seed)
    gn = int(torch.randint(0, 4, (1,), generator=g))
    hi = int(torch.randint(1, 20, (1,), generator=g))
    wi = int(torch.randint(1, 20, (1,), generator=g))
    h = int(torch.randint(1, 12, (1,), generator=g))
    w = int(torch.randint(1, 12, (1,), generator=g))
    gt = torch.rand(gn, hi, wi, generator=g) > 0.5
    got = mask_targets(gt if seed % 2 else gt.double(), (h, w))
    assert got.shape == (gn, h, w)
    assert set(got.unique().tolist()) <= {0.0, 1.0}
    for k in range(gn):
        up = ref_bilinear(gt[k].double(), h, w)
        ref = (up > 0.5).double()
        # the 0.5 threshold can only differ where the interpolated value is ~0.5
        diff = (got[k].double() != ref)
        assert torch.all((up[diff] - 0.5).abs() < 1e-6)
    # same as mmdet's get_targets
    if gn:
        mm = F.interpolate(gt.float().unsqueeze(0), (h, w), mode="bilinear",
                           align_corners=False).squeeze(0).gt(0.5).float()
        assert torch.equal(mask_targets(gt, (h, w)), mm)


# ----------------------------------------------------------------------------- mask loss
@pytest.mark.parametrize("seed", SEEDS)
def test_mask_bce_random(seed):
    g = torch.Generator().manual_seed(seed)
    m = int(torch.randint(0, 5, (1,), generator=g))
    h = int(torch.randint(1, 8, (1,), generator=g))
    w = int(torch.randint(1, 8, (1,), generator=g))
    probs = torch.rand(m, h, w, generator=g, dtype=torch.float64)
    boxes = _random_boxes(g, m, h, w)
    probs = crop_masks(probs, boxes)  # cropped: exact zeros outside
    if seed % 5 == 0 and m:
        probs[0, 0, 0] = 1.0  # saturated pixel: log clamp at -100
    targets = (torch.rand(m, h, w, generator=g) > 0.5).double()
    got = yolact_mask_bce_loss(probs, targets, boxes)
    assert got.item() == pytest.approx(ref_bce_loss(probs, targets, boxes), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_mask_bce_matches_mmdet_batch(seed):
    """Per-image sums over the batch's total positives, box area from image-normalised
    widths, equal the concatenated mean with boxes in mask pixels."""
    g = torch.Generator().manual_seed(seed)
    h, w = 9, 11
    shapes = [(550, 550), (480, 640)]
    preds, tgts, gtbs, boxes_px = [], [], [], []
    for img_h, img_w in shapes:
        m = int(torch.randint(0, 4, (1,), generator=g))
        b = _random_boxes(g, m, img_h, img_w).clamp(min=0)
        b[:, 2] = torch.maximum(b[:, 2], b[:, 0] + 100)
        b[:, 3] = torch.maximum(b[:, 3], b[:, 1] + 100)
        bpx = b * torch.tensor([w / img_w, h / img_h, w / img_w, h / img_h], dtype=torch.float64)
        preds.append(crop_masks(torch.rand(m, h, w, generator=g, dtype=torch.float64), bpx))
        tgts.append((torch.rand(m, h, w, generator=g) > 0.6).double())
        gtbs.append(b)
        boxes_px.append(bpx)
    expect = mmdet_mask_loss(preds, tgts, gtbs, shapes)
    got = yolact_mask_bce_loss(torch.cat(preds), torch.cat(tgts), torch.cat(boxes_px))
    assert got.item() == pytest.approx(float(expect), rel=1e-10, abs=1e-12)


def test_mask_bce_edge_cases():
    # M = 0: zero attached to the graph
    probs = torch.zeros(0, 4, 5, dtype=torch.float64, requires_grad=True)
    got = yolact_mask_bce_loss(probs, torch.zeros(0, 4, 5, dtype=torch.float64),
                               torch.zeros(0, 4, dtype=torch.float64))
    assert got.item() == 0.0 and got.requires_grad
    got.backward()
    # zero-area / sub-pixel box: area clamped to min_area (finite); min_area=0 is mmdet's inf
    probs = torch.full((1, 4, 5), 0.3, dtype=torch.float64)
    tgt = torch.zeros(1, 4, 5, dtype=torch.float64)
    tgt[0, 1, 1] = 1
    box = torch.tensor([[1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    got = yolact_mask_bce_loss(probs, tgt, box)
    assert math.isfinite(got.item())
    assert got.item() == pytest.approx(ref_bce_loss(probs, tgt, box), rel=1e-12)
    assert math.isinf(yolact_mask_bce_loss(probs, tgt, box, min_area=0.0).item())
    box2 = torch.tensor([[0.0, 0.0, 0.5, 0.5]], dtype=torch.float64)
    assert yolact_mask_bce_loss(probs, tgt, box2).item() == pytest.approx(got.item())
    # RankSortLoss-repo variant: per-pixel mean, no area term
    b = torch.tensor([[0.0, 0.0, 2.0, 3.0]], dtype=torch.float64)
    v = yolact_mask_bce_loss(probs, tgt, b, normalize_by_box_area=False)
    expect = (F.binary_cross_entropy(probs, tgt, reduction="none") * 6.125).mean()
    assert v.item() == pytest.approx(expect.item(), rel=1e-12)
    # weight scales linearly
    assert yolact_mask_bce_loss(probs, tgt, b, weight=1.0).item() * 6.125 == pytest.approx(
        yolact_mask_bce_loss(probs, tgt, b).item(), rel=1e-12)


def test_mask_bce_gradcheck():
    """BCE of sigmoid(protos . coeffs) cropped by gt boxes, w.r.t. prototypes and coeffs."""
    g = torch.Generator().manual_seed(7)
    p, h, w, m = 3, 5, 6, 3
    protos = (torch.randn(p, h, w, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    coeffs = torch.randn(m, p, generator=g, dtype=torch.float64).tanh().requires_grad_()
    boxes = torch.tensor([[0.5, 0.5, 3.2, 4.1], [2.0, 1.0, 6.0, 5.0], [1.0, 1.0, 1.5, 1.2]],
                         dtype=torch.float64)
    tgt = (torch.rand(m, h, w, generator=g) > 0.5).double()

    def f(pr, co):
        return yolact_mask_bce_loss(crop_masks(assemble_masks(pr, co), boxes), tgt, boxes)

    assert torch.autograd.gradcheck(f, (protos, coeffs))
    probs = torch.rand(m, h, w, generator=g, dtype=torch.float64).mul(0.9).add(0.05)
    probs.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: yolact_mask_bce_loss(x, tgt, boxes), (probs,))


# ----------------------------------------------------------------------------- selection
def test_select_training_masks():
    assert torch.equal(select_training_masks(0), torch.zeros(0, dtype=torch.long))
    assert torch.equal(select_training_masks(7, 100), torch.arange(7))
    assert torch.equal(select_training_masks(100, 100), torch.arange(100))
    for seed in range(20):
        n = 101 + seed * 13
        sel = select_training_masks(n, 100, generator=torch.Generator().manual_seed(seed))
        assert sel.dtype == torch.long and sel.shape == (100,)
        assert sel.unique().numel() == 100 and int(sel.min()) >= 0 and int(sel.max()) < n
        expect = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:100]
        assert torch.equal(sel, expect)
    assert select_training_masks(50, 10).shape == (10,)
