#!/usr/bin/env python
"""Print the LVIS schedule (MAX_ITER, STEPS) of the published repeat rule, ceil(r_i).

    python tools/lvis_repeat_schedule.py --json datasets/lvis/lvis_v1_train.json   # exact
    python tools/lvis_repeat_schedule.py                                          # bounds

An epoch holds image i ceil(r_i) times (``DATALOADER.REPEAT_ROUNDING "ceil"``), so E epochs
at batch B are ``ceil(E * sum_i ceil(r_i) / B)`` iterations, with the lr steps after 8/12
and 11/12 of them (:func:`rs_detectron2.data.repeat_factor_sampler.lvis_schedule`).

With ``--json``, exact: each image's classes come from its annotations, images without
any are dropped (detectron2's ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``), and the factors are
detectron2's ``repeat_factors_from_category_frequency`` (r_c = max(1, sqrt(t / f_c)), f_c
the fraction of images holding class c, r_i = max over its classes), as ``RSTrainer``
computes them. Without it, the bounds that detectron2's per-class ``LVIS_CATEGORY_IMAGE_COUNT``
(of lvis_v1_train.json) allows for ``--num-images`` images
(:func:`~rs_detectron2.data.repeat_factor_sampler.repeated_epoch_size_bounds`).
"""
import argparse
import json
from collections import defaultdict
from typing import Any, Dict, List

from detectron2.data.samplers import RepeatFactorTrainingSampler

from rs_detectron2.data.repeat_factor_sampler import (
    lvis_schedule,
    repeated_epoch_size,
    repeated_epoch_size_bounds,
)

LVIS_V1_TRAIN_IMAGES = 100170  # images of lvis_v1_train.json, each with annotations


def lvis_image_dicts(json_path: str) -> List[Dict[str, Any]]:
    """Minimal detectron2 dataset dicts of an LVIS json (only the category ids of each
    image's annotations), without the images that have none."""
    with open(json_path) as f:
        data = json.load(f)
    anns = defaultdict(list)
    for ann in data["annotations"]:
        anns[ann["image_id"]].append({"category_id": ann["category_id"]})
    return [{"image_id": img["id"], "annotations": anns[img["id"]]}
            for img in data["images"] if anns[img["id"]]]


def main(argv=None) -> Dict[str, Any]:
    """Print the schedule (exact with --json, else bounds); return the numbers printed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="an LVIS training json (e.g. lvis_v1_train.json)")
    parser.add_argument("--threshold", type=float, default=0.001,
                        help="DATALOADER.REPEAT_THRESHOLD t (default: 0.001, published)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--ims-per-batch", type=int, default=16)
    parser.add_argument("--num-images", type=int, default=LVIS_V1_TRAIN_IMAGES,
                        help="training images, for the bounds without --json")
    args = parser.parse_args(argv)
    per = f"{args.epochs} epochs at batch {args.ims_per_batch}"
    if args.json:
        dicts = lvis_image_dicts(args.json)
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dicts, args.threshold)
        size = repeated_epoch_size(factors)
        max_iter, steps = lvis_schedule(size, epochs=args.epochs, ims_per_batch=args.ims_per_batch)
        print(f"{len(dicts)} images with annotations; one epoch sum_i ceil(r_i) = {size} "
              f"(detectron2's stochastic rule: {float(factors.double().sum()):.1f} on average)")
        print(f"{per}: MAX_ITER {max_iter}, STEPS {steps}")
        return {"num_images": len(dicts), "epoch_size": size, "max_iter": max_iter,
                "steps": steps}

    from detectron2.data.datasets.lvis_v1_category_image_count import (
        LVIS_CATEGORY_IMAGE_COUNT,
    )
    counts = [c["image_count"] for c in LVIS_CATEGORY_IMAGE_COUNT]
    bounds = repeated_epoch_size_bounds(counts, args.num_images, args.threshold)
    schedules = [lvis_schedule(s, epochs=args.epochs, ims_per_batch=args.ims_per_batch)
                 for s in bounds]
    print(f"{args.num_images} images (no per-image classes without --json: bounds from "
          f"LVIS_CATEGORY_IMAGE_COUNT); one epoch sum_i ceil(r_i) in {bounds[0]}..{bounds[1]}")
    for name, (max_iter, steps) in zip(("lower", "upper"), schedules):
        print(f"{per}, {name} bound: MAX_ITER {max_iter}, STEPS {steps}")
    return {"num_images": args.num_images, "epoch_size": bounds,
            "max_iter": tuple(s[0] for s in schedules), "steps": tuple(s[1] for s in schedules)}


if __name__ == "__main__":
    main()
