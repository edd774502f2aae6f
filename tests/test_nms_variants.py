"""Fast NMS, Matrix NMS and score voting against loops written from their definitions
(float64), on random cases and the edge cases."""
import math

import pytest
import torch

from rs_detectron2.layers import fast_nms, matrix_nms, score_voting


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _boxes(g, n, spread=60.0):
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * spread
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 30 + 5
    return torch.cat([xy, xy + wh], 1)


def _fast_nms_loop(boxes, scores, thr, top_k):
    out = []
    for c in range(scores.shape[1]):
        order = sorted(range(len(boxes)), key=lambda i: (-float(scores[i, c]), i))[:top_k]
        for pos, i in enumerate(order):
            # dropped if any higher-scored candidate of the class overlaps too much,
            # suppressed itself or not (Fast NMS)
            if all(_iou(boxes[j].tolist(), boxes[i].tolist()) <= thr for j in order[:pos]):
                out.append((i, c, float(scores[i, c])))
    return out


@pytest.mark.parametrize("seed", range(15))
def test_fast_nms_matches_the_loop(seed):
    g = torch.Generator().manual_seed(seed)
    n, c = int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g))
    boxes = _boxes(g, n)
    scores = torch.rand(n, c, generator=g, dtype=torch.float64)
    top_k = [5, 200][seed % 2]
    idx, cls, sc = fast_nms(boxes, scores, 0.5, top_k)
    got = sorted(zip(idx.tolist(), cls.tolist(), sc.tolist()))
    assert got == sorted(_fast_nms_loop(boxes, scores, 0.5, top_k))


def test_fast_nms_suppressed_boxes_still_suppress_and_edge_cases():
    # a > b > c in score; a-b overlap, b-c overlap, a-c do not: sequential NMS keeps a, c;
    # Fast NMS drops c too (its suppressor b was itself suppressed).
    boxes = torch.tensor([[0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10.0]])
    scores = torch.tensor([[0.9], [0.8], [0.7]])
    idx, cls, _ = fast_nms(boxes, scores, 0.3)
    assert idx.tolist() == [0] and cls.tolist() == [0]
    idx, _, _ = fast_nms(boxes[:0], scores[:0], 0.5)
    assert idx.numel() == 0
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        fast_nms(boxes, scores[:2], 0.5)


def _matrix_nms_loop(masks, labels, scores, kernel, sigma):
    n = len(labels)
    flat = masks.reshape(n, -1).double()

    def iou(i, j):
        inter = float((flat[i] * flat[j]).sum())
        union = float(flat[i].sum() + flat[j].sum()) - inter
        return inter / union if union > 0 else 0.0

    f = (lambda x: math.exp(-sigma * x * x)) if kernel == "gaussian" else (lambda x: 1 - x)
    out = []
    for j in range(n):
        coefficient = 1.0
        for i in range(j):
            if labels[i] != labels[j]:
                continue
            comp = max([iou(k, i) for k in range(i) if labels[k] == labels[i]] or [0.0])
            coefficient = min(coefficient, f(iou(i, j)) / f(comp))
        out.append(float(scores[j]) * coefficient)
    return out


@pytest.mark.parametrize("kernel", ["gaussian", "linear"])
@pytest.mark.parametrize("seed", range(8))
def test_matrix_nms_matches_the_loop(seed, kernel):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 15, (1,), generator=g))
    masks = torch.zeros(n, 24, 24, dtype=torch.bool)
    for k in range(n):
        x0, y0 = (int(v) for v in torch.randint(0, 14, (2,), generator=g))
        masks[k, y0: y0 + 10, x0: x0 + 10] = True
    labels = torch.randint(0, 2, (n,), generator=g)
    scores = torch.rand(n, generator=g, dtype=torch.float64).sort(descending=True).values
    got = matrix_nms(masks, labels, scores, kernel, 2.0)
    assert got.tolist() == pytest.approx(_matrix_nms_loop(masks, labels, scores, kernel, 2.0), abs=1e-12)
    assert bool((got <= scores + 1e-15).all())


def test_matrix_nms_edge_cases():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[:, :2, :2] = True  # identical masks, same class: the second decays by f(1)
    out = matrix_nms(masks, torch.tensor([0, 0]), torch.tensor([0.9, 0.8], dtype=torch.float64))
    assert out.tolist() == pytest.approx([0.9, 0.8 * math.exp(-2.0)])
    out = matrix_nms(masks, torch.tensor([0, 1]), torch.tensor([0.9, 0.8], dtype=torch.float64))
    assert out.tolist() == pytest.approx([0.9, 0.8])  # other class: no decay
    assert matrix_nms(masks[:0], torch.tensor([], dtype=torch.long), torch.tensor([])).numel() == 0
    with pytest.raises(ValueError, match="sorted"):
        matrix_nms(masks, torch.tensor([0, 0]), torch.tensor([0.1, 0.8]))
    with pytest.raises(ValueError, match="kernel"):
        matrix_nms(masks, torch.tensor([0, 0]), torch.tensor([0.9, 0.8]), kernel="hard")


def _voting_loop(det_boxes, det_classes, cand_boxes, cand_classes, cand_scores):
    out = []
    for d, c in zip(det_boxes.tolist(), det_classes.tolist()):
        num, den = [0.0] * 4, 0.0
        for b, k, s in zip(cand_boxes.tolist(), cand_classes.tolist(), cand_scores.tolist()):
            v = _iou(d, b)
            if k != c or v <= 0.01:
                continue
            p = math.exp(-(1 - v) ** 2 / 0.025) * s
            num = [a + p * x for a, x in zip(num, b)]
            den += p
        out.append([a / den for a in num] if den > 0 else d)
    return out


@pytest.mark.parametrize("seed", range(10))
def test_score_voting_matches_the_loop(seed):
    g = torch.Generator().manual_seed(seed)
    m = int(torch.randint(1, 50, (1,), generator=g))
    cand = _boxes(g, m)
    cand_classes = torch.randint(0, 3, (m,), generator=g)
    cand_scores = torch.rand(m, generator=g, dtype=torch.float64)
    pick = torch.randperm(m, generator=g)[: max(1, m // 4)]
    det, det_classes = cand[pick].clone(), cand_classes[pick].clone()
    det[0] += 100.0  # a detection that no candidate overlaps keeps its box
    got = score_voting(det, det_classes, cand, cand_classes, cand_scores)
    torch.testing.assert_close(got, torch.tensor(_voting_loop(det, det_classes, cand, cand_classes,
                                                              cand_scores), dtype=torch.float64),
                               atol=1e-9, rtol=0)
    assert torch.equal(got[0], det[0])
    assert score_voting(det[:0], det_classes[:0], cand, cand_classes, cand_scores).shape == (0, 4)
