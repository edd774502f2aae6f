"""oLRP (optimal Localisation-Recall-Precision error) evaluation as a detectron2 evaluator.

The RS Loss papers report box and mask oLRP next to AP (lower is better). For one class
and one score threshold ``s`` (detections with score >= s kept, TPs matched at IoU >= 0.5)::

    LRP = (sum_TP (1 - IoU) / (1 - 0.5) + N_FP + N_FN) / (N_TP + N_FP + N_FN)

and oLRP is its minimum over thresholds (keeping nothing gives LRP = 1). Unlike AP it
comes with an operating point: the class's optimal score threshold, and the error's
localisation / FP / FN components there, which is what one needs to deploy a detector.

Matching is COCO's at one IoU threshold, area "all" (crowd gts are ignore regions), with
at most ``max_dets_per_image`` detections per image over all classes (LVIS's rule), and the
LVIS federated rules for datasets whose records carry ``neg_category_ids`` /
``not_exhaustive_category_ids``. The IoUs of an image come from one pycocotools call; the
LRP curve of a class over all its thresholds is computed with cumulative sums; only the
predicted masks that can match a gt (top-scored, of a class present in the image) are
encoded. Altogether it adds ~15% to the time of detectron2's COCOEvaluator (see
benchmarks/bench_olrp_eval.py).
"""
import copy
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np
import pycocotools.mask as mask_util
import torch
from tabulate import tabulate

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import create_small_table

from .olrp_core import FP, IGNORED, TP, ClassLRP, Geometry, ImageMatches, match_image, optimal_lrp

__all__ = [
    "OLRPEvaluator",
    "ClassLRP",
    "ImageMatches",
    "match_image",
    "optimal_lrp",
    "TP",
    "FP",
    "IGNORED",
]

logger = logging.getLogger(__name__)

_TASKS = ("bbox", "segm")


class _ImageGT(NamedTuple):
    """The ground truth of one image for one task."""

    classes: np.ndarray  # (G,) contiguous ids
    crowd: np.ndarray  # (G,) bool
    geoms: Geometry  # XYWH boxes (G, 4) float64 or G RLEs
    eval_classes: Optional[Set[int]]  # federated: gt classes + neg classes; None: all
    not_exhaustive: Optional[Set[int]]


def _segm_to_rle(segm: Any, height: int, width: int, box_xywh: np.ndarray) -> dict:
    """A detectron2 ``segmentation`` (polygons, RLE dict with compressed or uncompressed
    counts, or a bool mask) as a compressed RLE; the box when there is none."""
    if isinstance(segm, list) and len(segm) > 0:
        return mask_util.merge(mask_util.frPyObjects(segm, height, width))
    if isinstance(segm, dict):
        if isinstance(segm["counts"], list):
            return mask_util.frPyObjects(segm, *segm["size"])
        counts = segm["counts"]
        return {"size": list(segm["size"]),
                "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    if isinstance(segm, np.ndarray):
        return mask_util.encode(np.asfortranarray(segm, dtype=np.uint8))
    return mask_util.frPyObjects([list(map(float, box_xywh))], height, width)[0]


def _boxes_xywh(annos: List[dict]) -> np.ndarray:
    """The ``bbox`` of annotations as XYWH_ABS float64 (N, 4), converted per ``bbox_mode``
    in float64 (``BoxMode.convert`` on a list would round to float32)."""
    boxes = np.array([a["bbox"] for a in annos], dtype=np.float64).reshape(-1, 4)
    modes = [a["bbox_mode"] for a in annos]
    for mode in set(modes):
        if mode != BoxMode.XYWH_ABS:
            sel = np.array([m == mode for m in modes])
            boxes[sel] = BoxMode.convert(boxes[sel], mode, BoxMode.XYWH_ABS)
    return boxes


class OLRPEvaluator(DatasetEvaluator):
    """oLRP of instance detection ("bbox") and segmentation ("segm") on a registered
    dataset in detectron2's standard format.

    Used like :class:`~detectron2.evaluation.COCOEvaluator` (e.g. inside a
    ``DatasetEvaluators``). :meth:`evaluate` returns ``{"bbox_oLRP": {...}, "segm_oLRP":
    {...}}`` with "oLRP", "oLRP_loc", "oLRP_FP", "oLRP_FN" (means over classes, x 100,
    lower is better) and "oLRP-<class>" per class. With ``output_dir``, the per-class
    results and optimal score thresholds go to ``olrp_thresholds_<task>.json``.

    All images of the dataset are evaluated, as COCOeval does: gts of images without
    predictions count as FNs.
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Sequence[str] = ("bbox",),
        distributed: bool = True,
        output_dir: Optional[str] = None,
        max_dets_per_image: Optional[int] = None,
        iou_threshold: float = 0.5,
    ):
        """
        Args:
            dataset_name: a dataset registered in ``DatasetCatalog`` whose metadata has
                ``thing_classes`` (or gets them when loaded).
            tasks: a non-empty subset of ("bbox", "segm").
            distributed: gather the predictions of all ranks and evaluate on the main one.
            output_dir: where to write ``olrp_thresholds_<task>.json``; None: nowhere.
            max_dets_per_image: detections kept per image (top scores over all classes);
                None: 300 for ``evaluator_type == "lvis"`` datasets, else 100.
            iou_threshold: IoU of a true positive, in (0, 1).
        """
        if isinstance(tasks, str):
            tasks = (tasks,)
        tasks = tuple(tasks)
        bad = [t for t in tasks if t not in _TASKS]
        if not tasks or bad:
            raise ValueError(f"OLRPEvaluator tasks must be a non-empty subset of {_TASKS}, "
                             f"got {tasks!r}")
        if not 0.0 < iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1), got {iou_threshold}")
        self._dataset_name = dataset_name
        self._tasks = tuple(t for t in _TASKS if t in tasks)
        self._distributed = distributed
        self._output_dir = output_dir
        self._iou_threshold = float(iou_threshold)
        self._metadata = MetadataCatalog.get(dataset_name)
        if not self._metadata.get("thing_classes", None):
            # Datasets registered with register_coco_instances get their thing_classes
            # when first loaded (as COCOEvaluator loads them).
            DatasetCatalog.get(dataset_name)
        self._class_names = list(self._metadata.get("thing_classes", []))
        if not self._class_names:
            raise ValueError(f"Dataset '{dataset_name}' has no thing_classes in its metadata.")
        if max_dets_per_image is None:
            lvis = self._metadata.get("evaluator_type", None) == "lvis"
            max_dets_per_image = 300 if lvis else 100
        self._max_dets = int(max_dets_per_image)
        # Like COCOEvaluator (which loads the COCO json), every rank reads the ground truth:
        # process() encodes only the masks that can match, of classes present in the image.
        self._gt, self._num_gt = self._load_ground_truth()
        self._gt_segm_t: Optional[Dict[Any, _ImageGT]] = None
        self._cpu_device = torch.device("cpu")
        self.reset()

    def reset(self) -> None:
        self._predictions: List[Dict[str, Any]] = []

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        """Keep per image its id, XYXY boxes, scores, classes and (for "segm") the masks
        that can match a gt, as RLEs of the transposed (W x H) masks.

        Args:
            inputs: the model's inputs (dicts with "image_id").
            outputs: the model's outputs (dicts with "instances").
        """
        for inp, out in zip(inputs, outputs):
            if "instances" not in out:
                continue
            instances = out["instances"].to(self._cpu_device)
            prediction = {
                "image_id": inp["image_id"],
                "boxes": instances.pred_boxes.tensor.numpy().astype(np.float64),
                "scores": instances.scores.numpy().astype(np.float64),
                "classes": instances.pred_classes.numpy().astype(np.int64),
            }
            if "segm" in self._tasks:
                if not instances.has("pred_masks"):
                    raise ValueError("OLRPEvaluator task 'segm' needs 'pred_masks' in the "
                                     "predicted instances.")
                prediction["masks"] = self._encode_masks(
                    inp["image_id"], instances.pred_masks, prediction["scores"],
                    prediction["classes"])
            self._predictions.append(prediction)

    def _encode_masks(self, image_id: Any, pred_masks: torch.Tensor, scores: np.ndarray,
                      classes: np.ndarray) -> List[Optional[dict]]:
        """RLEs of the masks that can match a gt: among the top ``max_dets`` scores, of a
        class with a gt (crowd included) in the image; None for the others, which are never
        compared with a gt (as in :func:`match_image`)."""
        gt = self._gt["segm"].get(image_id)
        if gt is None:
            raise ValueError(f"Prediction for image_id {image_id}, which is not in "
                             f"'{self._dataset_name}'.")
        top = np.argsort(-scores, kind="mergesort")[:self._max_dets]
        needed = np.sort(top[np.isin(classes[top], gt.classes)])
        rles: List[Optional[dict]] = [None] * len(scores)
        if len(needed) == 0:
            return rles
        masks = pred_masks.numpy()  # (numpy's indexing is much faster than torch's here)
        masks = masks.view(np.uint8) if masks.dtype == np.bool_ else (
            masks >= 0.5).view(np.uint8)
        # pycocotools encodes (H, W, N) arrays in Fortran order; the C-order (N, H, W) masks
        # viewed as (W, H, N) are that without a copy: the RLEs of the transposed masks.
        # The gt masks are transposed too (_transposed_gt), and IoUs do not change.
        masks = np.ascontiguousarray(masks[needed]).T
        for i, rle in zip(needed, mask_util.encode(masks)):
            rles[i] = rle
        return rles

    def evaluate(self) -> Dict[str, Dict[str, float]]:
        """oLRP of the processed predictions (main process; other ranks return {})."""
        if self._distributed:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if len(predictions) == 0:
            logger.warning("[OLRPEvaluator] Did not receive valid predictions.")
            return {}
        results = OrderedDict()
        for task in self._tasks:
            per_image = self.match_predictions(predictions, task)
            results[f"{task}_oLRP"] = self._summarize(task, per_image)
        return copy.deepcopy(results)

    # ----------------------------------------------------------------- ground truth
    def _lvis_to_contiguous(self, ids: Sequence[int]) -> Set[int]:
        """LVIS (dataset) category ids -> contiguous ids."""
        mapping = self._metadata.get("thing_dataset_id_to_contiguous_id", None)
        if mapping is None:
            return {int(i) - 1 for i in ids}
        return {mapping[i] for i in ids if i in mapping}

    def _transposed_gt(self) -> Dict[Any, _ImageGT]:
        """The "segm" gts with the RLEs of the transposed masks, as the predictions'."""
        if self._gt_segm_t is None:
            self._gt_segm_t = {}
            for image_id, gt in self._gt["segm"].items():
                if gt.geoms:
                    masks = mask_util.decode(gt.geoms)  # (H, W, G), Fortran order
                    gt = gt._replace(geoms=mask_util.encode(
                        np.asfortranarray(masks.transpose(1, 0, 2))))
                self._gt_segm_t[image_id] = gt
        return self._gt_segm_t

    def _load_ground_truth(self) -> Tuple[Dict[str, Dict[Any, _ImageGT]], np.ndarray]:
        """Per task, per image id, its gts; and the number of non-crowd gts per class."""
        num_classes = len(self._class_names)
        num_gt = np.zeros(num_classes, dtype=np.int64)
        images: Dict[str, Dict[Any, _ImageGT]] = {task: {} for task in self._tasks}
        for record in DatasetCatalog.get(self._dataset_name):
            image_id = record["image_id"]
            if image_id in images[self._tasks[0]]:
                raise ValueError(f"Duplicate image_id {image_id} in '{self._dataset_name}'.")
            annos = record.get("annotations", [])
            classes = np.array([a["category_id"] for a in annos], dtype=np.int64)
            crowd = np.array([bool(a.get("iscrowd", 0)) for a in annos], dtype=bool)
            if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
                raise ValueError(f"Image {image_id} of '{self._dataset_name}' has a "
                                 f"category_id outside [0, {num_classes}).")
            boxes = _boxes_xywh(annos)
            eval_classes = not_exhaustive = None
            if "neg_category_ids" in record or "not_exhaustive_category_ids" in record:
                eval_classes = set(classes.tolist()) | self._lvis_to_contiguous(
                    record.get("neg_category_ids", []))
                not_exhaustive = self._lvis_to_contiguous(
                    record.get("not_exhaustive_category_ids", []))
            for task in self._tasks:
                if task == "segm":
                    geoms = [_segm_to_rle(a.get("segmentation"), record["height"],
                                          record["width"], boxes[i])
                             for i, a in enumerate(annos)]
                else:
                    geoms = boxes
                images[task][image_id] = _ImageGT(classes, crowd, geoms, eval_classes,
                                                  not_exhaustive)
            num_gt += np.bincount(classes[~crowd], minlength=num_classes)
        return images, num_gt

    # ----------------------------------------------------------------- matching
    def match_predictions(
        self, predictions: Optional[List[Dict[str, Any]]] = None, task: str = "bbox"
    ) -> Dict[Any, ImageMatches]:
        """Match predictions (default: those processed here, this rank) to the gts of every
        image of the dataset; returns the :class:`ImageMatches` per image id."""
        if task not in self._tasks:
            raise ValueError(f"Task {task!r} is not one of this evaluator's {self._tasks}.")
        if predictions is None:
            predictions = self._predictions
        gts = self._transposed_gt() if task == "segm" else self._gt[task]
        by_image: Dict[Any, List[Dict[str, Any]]] = {}
        for p in predictions:
            if p["image_id"] not in gts:
                raise ValueError(f"Prediction for image_id {p['image_id']}, which is not in "
                                 f"'{self._dataset_name}'.")
            by_image.setdefault(p["image_id"], []).append(p)
        num_classes = len(self._class_names)
        empty = np.zeros((0, 4))
        matches = {}
        for image_id, gt in gts.items():
            preds = by_image.get(image_id, [])
            if len(preds) == 1:
                p = preds[0]
                boxes, scores, classes = p["boxes"], p["scores"], p["classes"]
                masks = p.get("masks")
            elif preds:  # the same image processed more than once: all its detections
                boxes = np.concatenate([p["boxes"] for p in preds])
                scores = np.concatenate([p["scores"] for p in preds])
                classes = np.concatenate([p["classes"] for p in preds])
                masks = [m for p in preds for m in p.get("masks", [])]
            else:
                boxes, scores, classes, masks = empty, np.zeros(0), np.zeros(0, np.int64), []
            if len(classes) and (classes.min() < 0 or classes.max() >= num_classes):
                raise ValueError(f"A prediction of image {image_id} has a class outside "
                                 f"[0, {num_classes}).")
            if task == "segm":
                det_geoms = masks
            else:
                det_geoms = BoxMode.convert(boxes, BoxMode.XYXY_ABS, BoxMode.XYWH_ABS)
            matches[image_id] = match_image(
                det_geoms, scores, classes, gt.geoms, gt.classes, gt.crowd,
                iou_threshold=self._iou_threshold, max_dets=self._max_dets,
                eval_classes=gt.eval_classes, not_exhaustive=gt.not_exhaustive)
        return matches

    # ----------------------------------------------------------------- results
    def per_class_lrp(self, task: str, matches: Dict[Any, ImageMatches]) -> Dict[int, ClassLRP]:
        """:class:`ClassLRP` of every class with ground truth (class id -> result)."""
        num_gt = self._num_gt
        parts = [m for m in matches.values() if len(m.status)]
        if parts:
            classes = np.concatenate([m.classes for m in parts])
            scores = np.concatenate([m.scores for m in parts])
            status = np.concatenate([m.status for m in parts])
            ious = np.concatenate([m.ious for m in parts])
            keep = status != IGNORED
            classes, scores, status, ious = classes[keep], scores[keep], status[keep], ious[keep]
        else:
            classes, scores = np.zeros(0, np.int64), np.zeros(0)
            status, ious = np.zeros(0, np.int8), np.zeros(0)
        # Group the detections by class once, then one vectorised curve per class.
        order = np.argsort(classes, kind="mergesort")
        bounds = np.searchsorted(classes[order], np.arange(len(num_gt) + 1))
        results = {}
        for c in np.flatnonzero(num_gt > 0):
            idx = order[bounds[c]:bounds[c + 1]]
            results[int(c)] = optimal_lrp(scores[idx], status[idx] == TP, ious[idx],
                                          int(num_gt[c]), self._iou_threshold)
        return results

    def _summarize(self, task: str, matches: Dict[Any, ImageMatches]) -> Dict[str, float]:
        """The result dict of ``task``; logs the tables and writes the thresholds file."""
        per_class = self.per_class_lrp(task, matches)
        if not per_class:
            logger.warning(f"[OLRPEvaluator] '{self._dataset_name}' has no ground truth: "
                           f"{task} oLRP cannot be computed.")
        defined = [r for r in per_class.values() if r.threshold is not None]

        def mean(values: List[float]) -> float:
            return float(np.mean(values) * 100) if values else float("nan")

        results = {
            "oLRP": mean([r.olrp for r in per_class.values()]),
            "oLRP_loc": mean([r.loc for r in defined]),
            "oLRP_FP": mean([r.fp for r in defined]),
            "oLRP_FN": mean([r.fn for r in defined]),
        }
        logger.info(f"Evaluation results for {task} oLRP (lower is better): \n"
                    + create_small_table(results))
        rows = []
        for c, r in per_class.items():
            name = self._class_names[c]
            results[f"oLRP-{name}"] = r.olrp * 100
            rows.append((name, r.olrp * 100, r.loc * 100, r.fp * 100, r.fn * 100,
                         "-" if r.threshold is None else f"{r.threshold:.4f}"))
        if rows:
            table = tabulate(rows, tablefmt="pipe", floatfmt=".3f", numalign="left",
                             headers=["category", "oLRP", "loc", "FP", "FN", "threshold"])
            logger.info(f"Per-category {task} oLRP (lower is better; components and optimal "
                        f"score threshold at the optimum): \n" + table)
        skipped = [n for c, n in enumerate(self._class_names) if c not in per_class]
        if skipped:
            logger.info(f"{task} oLRP: {len(skipped)} classes without ground truth skipped.")
        if self._output_dir:
            self._write_thresholds(task, results, per_class, skipped)
        return results

    def _write_thresholds(self, task: str, summary: Dict[str, float],
                          per_class: Dict[int, ClassLRP], skipped: List[str]) -> None:
        """``<output_dir>/olrp_thresholds_<task>.json``: per-class oLRP, components (x 100;
        null where undefined), optimal score threshold and counts at the optimum."""

        def num(x: float) -> Optional[float]:
            return None if x != x else float(x) * 100

        classes = []
        for c, r in per_class.items():
            classes.append({
                "class_id": c, "name": self._class_names[c], "oLRP": num(r.olrp),
                "loc": num(r.loc), "FP": num(r.fp), "FN": num(r.fn),
                "threshold": r.threshold, "num_gt": r.num_gt, "num_tp": r.num_tp,
                "num_fp": r.num_fp, "num_fn": r.num_fn,
            })
        data = {
            "dataset": self._dataset_name,
            "task": task,
            "iou_threshold": self._iou_threshold,
            "max_dets_per_image": self._max_dets,
            "summary": {k: (None if v != v else v) for k, v in summary.items()
                        if not k.startswith("oLRP-")},
            "thresholds": {self._class_names[c]: r.threshold for c, r in per_class.items()},
            "classes": classes,
            "skipped_classes": skipped,
        }
        PathManager.mkdirs(self._output_dir)
        path = os.path.join(self._output_dir, f"olrp_thresholds_{task}.json")
        with PathManager.open(path, "w") as f:
            json.dump(data, f, indent=2)
        logger.info(f"Saved per-class {task} oLRP and optimal thresholds to {path}")
