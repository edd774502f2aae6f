"""Benchmark: the cost of OLRPEvaluator next to detectron2's COCOEvaluator (bbox + segm).

The dataset is the built-in ``rs_synthetic_val`` (``--num-images`` images of
``--image-size`` px, generated into ``--root`` or a temporary folder, ~20 s for 200). The
predictions, made once before timing, are per image a perturbed copy of each gt (box
jitter, mask shifted by a few pixels, sometimes a wrong class) plus random false positives
(rectangle masks) up to ``--dets-per-image``, as detectron2 ``Instances`` with boxes,
scores, classes and bool masks of the image size.

Time: a round runs each evaluator in full on all predictions (construction, ``reset``,
``process`` per image, ``evaluate``), alternating which goes first; the medians per
evaluator and the median of the per-round ratios OLRP / COCO are reported. The target is
a ratio <= 0.20 (oLRP adds at most 20% to COCO evaluation).

    python benchmarks/bench_olrp_eval.py                       # 200 images, 3 rounds
    python benchmarks/bench_olrp_eval.py --num-images 20 --rounds 1   # smoke test
"""
import argparse
import contextlib
import io
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Dict, List

import numpy as np
import pycocotools.mask as mask_util
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.evaluation import COCOEvaluator  # noqa: E402
from detectron2.structures import Boxes, BoxMode, Instances  # noqa: E402

from benchmarks.machine import compact_report, machine_line  # noqa: E402
from rs_detectron2.data import register_rs_synthetic  # noqa: E402
from rs_detectron2.evaluation.olrp import OLRPEvaluator  # noqa: E402

DATASET = "rs_synthetic_val"
TASKS = ("bbox", "segm")


def make_predictions(records: List[dict], num_classes: int, dets_per_image: int,
                     seed: int) -> List[Instances]:
    """Perturbed copies of the gts plus random false positives, per image."""
    rng = np.random.default_rng(seed)
    predictions = []
    for r in records:
        h, w = r["height"], r["width"]
        boxes, scores, classes, masks = [], [], [], []
        for a in r["annotations"][:dets_per_image]:
            box = BoxMode.convert(np.asarray(a["bbox"], np.float64)[None], a["bbox_mode"],
                                  BoxMode.XYXY_ABS)[0]
            boxes.append(box + rng.normal(0, 0.05 * max(box[2] - box[0], 1), 4))
            seg = dict(a["segmentation"])
            if isinstance(seg["counts"], str):
                seg["counts"] = seg["counts"].encode()
            m = mask_util.decode(seg).astype(bool)
            masks.append(np.roll(m, tuple(rng.integers(-2, 3, 2)), axis=(0, 1)))
            classes.append(a["category_id"] if rng.random() < 0.9
                           else int(rng.integers(num_classes)))
            scores.append(rng.uniform(0.3, 1.0))
        for _ in range(dets_per_image - len(boxes)):
            x0, y0 = rng.uniform(0, w - 8), rng.uniform(0, h - 8)
            x1, y1 = min(x0 + rng.uniform(8, w / 2), w), min(y0 + rng.uniform(8, h / 2), h)
            boxes.append(np.array([x0, y0, x1, y1]))
            m = np.zeros((h, w), dtype=bool)
            m[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
            masks.append(m)
            classes.append(int(rng.integers(num_classes)))
            scores.append(rng.uniform(0.0, 0.8))
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor(np.array(boxes), dtype=torch.float32))
        inst.scores = torch.tensor(scores, dtype=torch.float32)
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        inst.pred_masks = torch.from_numpy(np.stack(masks))
        predictions.append(inst)
    return predictions


def run_evaluator(kind: str, records: List[dict], predictions: List[Instances]):
    """Build evaluator ``kind`` ("coco" / "olrp"), feed all predictions, evaluate:
    (seconds, results)."""
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its summaries
        if kind == "coco":
            evaluator = COCOEvaluator(DATASET, tasks=TASKS, distributed=False)
        else:
            evaluator = OLRPEvaluator(DATASET, tasks=TASKS, distributed=False)
        evaluator.reset()
        for r, inst in zip(records, predictions):
            evaluator.process([{"image_id": r["image_id"]}], [{"instances": inst}])
        results = evaluator.evaluate()
    return time.perf_counter() - start, results


def main(argv=None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per evaluator")
    parser.add_argument("--seed", type=int, default=0, help="seed of the predictions")
    parser.add_argument("--root", help="dataset cache root (default: a temporary folder)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    logging.getLogger("detectron2").setLevel(logging.WARNING)
    logging.getLogger("rs_detectron2").setLevel(logging.WARNING)

    root = args.root or tempfile.mkdtemp(prefix="bench_olrp_")
    try:
        register_rs_synthetic(root=root, num_train=1, num_val=args.num_images,
                              image_size=args.image_size)
        records = DatasetCatalog.get(DATASET)
        num_classes = len(MetadataCatalog.get(DATASET).thing_classes)
        predictions = make_predictions(records, num_classes, args.dets_per_image, args.seed)
        num_gt = sum(len(r["annotations"]) for r in records)
        num_dets = sum(len(p) for p in predictions)

        times = {"coco": [], "olrp": []}
        results = {}
        for i in range(args.rounds):
            for kind in (["coco", "olrp"] if i % 2 == 0 else ["olrp", "coco"]):
                seconds, results[kind] = run_evaluator(kind, records, predictions)
                times[kind].append(seconds)
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)

    ratios = [o / c for o, c in zip(times["olrp"], times["coco"])]
    out = {
        "machine": compact_report(),
        "dataset": {"name": DATASET, "images": len(records), "image_size": args.image_size,
                    "gts": num_gt, "detections": num_dets},
        "seed": args.seed, "rounds": args.rounds, "tasks": list(TASKS),
        "seconds_median": {k: statistics.median(v) for k, v in times.items()},
        "seconds_all": times,
        "ratio_olrp_over_coco_median": statistics.median(ratios),
        "ratios": ratios,
        "metrics": {"coco_AP": {t: results["coco"][t]["AP"] for t in TASKS},
                    "oLRP": {t: results["olrp"][f"{t}_oLRP"]["oLRP"] for t in TASKS}},
    }
    d = out["dataset"]
    print(f"machine: {machine_line()}")
    print(f"{DATASET}: {d['images']} images of {args.image_size} px, {d['gts']} gts, "
          f"{d['detections']} detections (<= {args.dets_per_image} per image), "
          f"seed {args.seed}, {args.rounds} alternated rounds, tasks bbox+segm")
    for kind, label in (("coco", "COCOEvaluator"), ("olrp", "OLRPEvaluator")):
        print(f"{label:>14}: median {out['seconds_median'][kind]:.3f} s "
              f"(all: {', '.join(f'{s:.3f}' for s in times[kind])})")
    print(f"ratio OLRP / COCO (median of rounds): {out['ratio_olrp_over_coco_median']:.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}; target <= 0.20)")
    print("metrics: " + ", ".join(f"{t} AP {out['metrics']['coco_AP'][t]:.1f} / oLRP "
                                  f"{out['metrics']['oLRP'][t]:.1f}" for t in TASKS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
