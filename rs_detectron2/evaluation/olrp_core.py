"""The numpy core of oLRP: match one image's detections, and a class's optimal LRP.

Free of detectron2 (and of pycocotools until :func:`match_image` runs), so it can score
detections from any framework; :class:`~rs_detectron2.evaluation.olrp.OLRPEvaluator` is the
detectron2 evaluator built on it. For one class and one score threshold ``s`` (detections
with score >= s kept, TPs matched at IoU >= 0.5)::

    LRP = (sum_TP (1 - IoU) / (1 - 0.5) + N_FP + N_FN) / (N_TP + N_FP + N_FN)

and oLRP is its minimum over thresholds (keeping nothing gives LRP = 1).
"""
from typing import List, NamedTuple, Optional, Set, Union

import numpy as np

__all__ = ["ClassLRP", "ImageMatches", "match_image", "optimal_lrp", "TP", "FP", "IGNORED",
           "Geometry"]

# Status of a detection after matching.
TP, FP, IGNORED = 1, 0, -1

# Geometry of an image's detections or gts: XYWH boxes (N, 4) float64, or a list of RLEs.
Geometry = Union[np.ndarray, List[dict]]


class ImageMatches(NamedTuple):
    """The detections of one image after matching, in score order (highest first), the
    ``max_dets`` kept ones only."""

    det_index: np.ndarray  # (D,) index of each detection in the image's predictions
    classes: np.ndarray  # (D,) contiguous class ids
    scores: np.ndarray  # (D,) float64
    status: np.ndarray  # (D,) int8: TP, FP or IGNORED
    ious: np.ndarray  # (D,) float64 IoU with the matched gt (0 where not a TP)
    gt_index: np.ndarray  # (D,) index of the matched gt in the image's gts (crowd too), or -1


class ClassLRP(NamedTuple):
    """oLRP of one class and its components at the optimum, as fractions (not x 100).

    ``threshold`` is the lowest score kept at the optimum, None when the optimum keeps
    nothing; ``loc`` and ``fp`` are then NaN and ``fn`` is 1.
    """

    olrp: float
    loc: float
    fp: float
    fn: float
    threshold: Optional[float]
    num_gt: int
    num_tp: int
    num_fp: int
    num_fn: int


def match_image(
    det_geoms: Geometry,
    det_scores: np.ndarray,
    det_classes: np.ndarray,
    gt_geoms: Geometry,
    gt_classes: np.ndarray,
    gt_crowd: np.ndarray,
    *,
    iou_threshold: float = 0.5,
    max_dets: int = 100,
    eval_classes: Optional[Set[int]] = None,
    not_exhaustive: Optional[Set[int]] = None,
) -> ImageMatches:
    """Match the detections of one image to its gts as ``COCOeval.evaluateImg`` does at one
    IoU threshold, area range "all".

    Detections are sorted by score (stable) and the top ``max_dets`` over all classes kept.
    Per class, each detection in score order takes the unmatched non-crowd gt of highest
    IoU >= ``iou_threshold`` (ties: the later gt, as COCO); failing that, a crowd gt with
    IoU >= ``iou_threshold`` (IoU with a crowd gt is intersection / detection area) makes
    it IGNORED; otherwise it is a FP.

    Args:
        det_geoms, gt_geoms: XYWH boxes (N, 4) or lists of RLEs (same kind for both).
        det_scores, det_classes: (D,) arrays.
        gt_classes, gt_crowd: (G,) arrays.
        iou_threshold: IoU for a TP.
        max_dets: detections kept per image.
        eval_classes: LVIS federated rule: detections of classes not in this set are
            IGNORED (None: all classes are evaluated).
        not_exhaustive: LVIS: unmatched detections of these classes are IGNORED.
    """
    det_scores = np.asarray(det_scores, dtype=np.float64).reshape(-1)
    det_classes = np.asarray(det_classes, dtype=np.int64).reshape(-1)
    gt_classes = np.asarray(gt_classes, dtype=np.int64).reshape(-1)
    gt_crowd = np.asarray(gt_crowd, dtype=bool).reshape(-1)
    order = np.argsort(-det_scores, kind="mergesort")[:max_dets]
    classes, scores = det_classes[order], det_scores[order]
    num_dets = len(order)
    status = np.full(num_dets, FP, dtype=np.int8)
    ious_out = np.zeros(num_dets, dtype=np.float64)
    gt_index = np.full(num_dets, -1, dtype=np.int64)

    if eval_classes is not None:
        evaluated = np.isin(classes, np.fromiter(eval_classes, np.int64, len(eval_classes)))
        status[~evaluated] = IGNORED
    else:
        evaluated = np.ones(num_dets, dtype=bool)
    # Only detections of a class with gts in this image can match: one IoU call for them.
    candidates = np.flatnonzero(evaluated & np.isin(classes, gt_classes))
    if len(candidates):
        sel = order[candidates]
        if isinstance(det_geoms, np.ndarray):
            dts = det_geoms[sel]
        else:
            dts = [det_geoms[i] for i in sel]
        import pycocotools.mask as mask_util  # here: importing the core loads only numpy

        ious = np.asarray(mask_util.iou(dts, gt_geoms, gt_crowd.astype(np.uint8)),
                          dtype=np.float64).reshape(len(candidates), len(gt_classes))
        # COCO starts its best-so-far IoU at min(t, 1 - 1e-10) and takes IoU >= it.
        thr = min(iou_threshold, 1 - 1e-10)
        cand_classes = classes[candidates]
        for c in np.unique(cand_classes):
            rows = np.flatnonzero(cand_classes == c)
            gts = np.flatnonzero(gt_classes == c)
            regular, crowd = gts[~gt_crowd[gts]], gts[gt_crowd[gts]]
            sub = ious[rows]
            reg_iou, crowd_iou = sub[:, regular], sub[:, crowd]
            on_crowd = (crowd_iou >= thr).any(axis=1)
            may_match = (reg_iou >= thr).any(axis=1)
            taken = np.zeros(len(regular), dtype=bool)
            for r in np.flatnonzero(may_match):
                v = np.where(taken, -1.0, reg_iou[r])
                j = len(v) - 1 - int(np.argmax(v[::-1]))  # the last of the maxima
                if v[j] >= thr:
                    taken[j] = True
                    d = candidates[rows[r]]
                    status[d], ious_out[d], gt_index[d] = TP, v[j], regular[j]
                else:
                    may_match[r] = False
            ignore = ~may_match & on_crowd
            for r in np.flatnonzero(ignore):
                d = candidates[rows[r]]
                k = len(crowd) - 1 - int(np.argmax(crowd_iou[r][::-1]))
                status[d], gt_index[d] = IGNORED, crowd[k]
    if not_exhaustive:
        unmatched = (status == FP) & np.isin(
            classes, np.fromiter(not_exhaustive, np.int64, len(not_exhaustive)))
        status[unmatched] = IGNORED
    return ImageMatches(order, classes, scores, status, ious_out, gt_index)


def optimal_lrp(
    scores: np.ndarray, is_tp: np.ndarray, ious: np.ndarray, num_gt: int,
    iou_threshold: float = 0.5,
) -> ClassLRP:
    """oLRP of one class from its (non-ignored) detections over the whole dataset.

    The LRP of every threshold comes from cumulative sums over the detections sorted by
    score; a threshold keeps all detections of score >= it, so only the ends of groups of
    equal scores are cut points. Among equal minima the highest threshold (fewest
    detections, "keep nothing" first) wins.

    Args:
        scores, is_tp, ious: (N,) per detection; ``ious`` is used where ``is_tp``.
        num_gt: number of (non-crowd) gts of the class, > 0.
        iou_threshold: the IoU threshold of the matching (normalises the localisation).
    """
    if num_gt <= 0:
        raise ValueError(f"optimal_lrp needs a class with ground truth, got num_gt={num_gt}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="mergesort")
    scores = scores[order]
    tp = np.asarray(is_tp, dtype=bool).reshape(-1)[order]
    loc_err = np.where(tp, 1.0 - np.asarray(ious, dtype=np.float64).reshape(-1)[order], 0.0)
    num_tp = np.cumsum(tp)
    num_fp = np.arange(1, len(scores) + 1) - num_tp
    loc_sum = np.cumsum(loc_err)
    lrp = (loc_sum / (1.0 - iou_threshold) + num_fp + (num_gt - num_tp)) / (num_gt + num_fp)
    cut = np.ones(len(scores), dtype=bool)
    cut[:-1] = scores[:-1] != scores[1:]
    lrp = np.where(cut, lrp, np.inf)
    k = int(np.argmin(lrp)) if len(lrp) else -1
    if k < 0 or not lrp[k] < 1.0:
        return ClassLRP(1.0, float("nan"), float("nan"), 1.0, None, int(num_gt), 0, 0,
                        int(num_gt))
    n_tp, n_fp = int(num_tp[k]), int(num_fp[k])
    return ClassLRP(
        olrp=float(lrp[k]),
        loc=float(loc_sum[k] / n_tp) if n_tp else float("nan"),
        fp=n_fp / (n_tp + n_fp),
        fn=(num_gt - n_tp) / num_gt,
        threshold=float(scores[k]),
        num_gt=int(num_gt),
        num_tp=n_tp,
        num_fp=n_fp,
        num_fn=int(num_gt - n_tp),
    )
