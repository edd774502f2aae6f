"""Test-only launcher of ``train_net.main`` on a tiny COCO-format dataset.

``python tests/tiny_launch.py --tiny-data DIR [train_net.py arguments]`` writes (if needed)
and registers the tiny dataset "rs_tiny_train"/"rs_tiny_val" in DIR, in *every* process
that detectron2's ``launch`` starts (the worker function below does it before calling
``train_net.main``), so ``--num-gpus 2`` sees the dataset in both spawned workers.
``--stock-trainer`` runs detectron2's own ``DefaultTrainer`` instead of ``train_net.main``
(to show what RSTrainer fixes).
"""
import argparse
import json
import os
import sys
from typing import Any, Dict, List

import cv2
import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

TINY_CONFIG = os.path.join(_REPO, "tests", "configs", "tiny_stock_rcnn.yaml")
TINY_CLASSES = ("red", "green")
_COLORS = {"red": (0, 0, 255), "green": (0, 255, 0)}  # BGR


def write_tiny_coco(root: str, num_images: int = 6, seed: int = 0) -> Dict[str, str]:
    """Write ``num_images`` PNGs (64-96 px, 1-2 coloured rectangles each) and the COCO
    JSONs of a train split (all images) and a val split (the first half) under ``root``.
    Returns the paths: {"image_root", "train_json", "val_json"}."""
    rng = np.random.default_rng(seed)
    image_root = os.path.join(root, "images")
    os.makedirs(image_root, exist_ok=True)
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for image_id in range(1, num_images + 1):
        h, w = (int(s) for s in rng.integers(64, 97, size=2))
        img = np.full((h, w, 3), 40, dtype=np.uint8)
        for _ in range(int(rng.integers(1, 3))):
            category_id = int(rng.integers(1, len(TINY_CLASSES) + 1))
            bw, bh = (int(s) for s in rng.integers(16, 33, size=2))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            img[y0 : y0 + bh, x0 : x0 + bw] = _COLORS[TINY_CLASSES[category_id - 1]]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x0, y0, bw, bh],
                    "area": bw * bh,
                    "iscrowd": 0,
                    "segmentation": [[x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]],
                }
            )
        file_name = f"{image_id:03d}.png"
        cv2.imwrite(os.path.join(image_root, file_name), img)
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(TINY_CLASSES)]
    paths = {"image_root": image_root}
    val_ids = {im["id"] for im in images[: max(1, num_images // 2)]}
    for split, keep in (("train", lambda i: True), ("val", lambda i: i in val_ids)):
        coco = {
            "images": [im for im in images if keep(im["id"])],
            "annotations": [a for a in annotations if keep(a["image_id"])],
            "categories": categories,
        }
        paths[f"{split}_json"] = os.path.join(root, f"{split}.json")
        with open(paths[f"{split}_json"], "w") as f:
            json.dump(coco, f)
    return paths


def register_tiny_coco(root: str, prefix: str = "rs_tiny") -> None:
    """Register ``{prefix}_train``/``{prefix}_val`` (COCO format, evaluator_type "coco")
    from ``root``, writing the files first if they are missing; no-op if registered."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    if f"{prefix}_train" in DatasetCatalog.list():
        return
    if not os.path.exists(os.path.join(root, "val.json")):
        write_tiny_coco(root)
    image_root = os.path.join(root, "images")
    for split in ("train", "val"):
        json_file = os.path.join(root, f"{split}.json")
        register_coco_instances(f"{prefix}_{split}", {}, json_file, image_root)


def _worker(args: argparse.Namespace) -> Any:
    """Runs in each process started by ``launch``: register, then train/evaluate."""
    register_tiny_coco(args.tiny_data)
    if args.stock_trainer:
        from detectron2.engine import DefaultTrainer

        from rs_detectron2.engine import default_rs_setup

        trainer = DefaultTrainer(default_rs_setup(args))
        trainer.resume_or_load(resume=False)
        return trainer.train()
    import train_net

    return train_net.main(args)


def _parser() -> argparse.ArgumentParser:
    from detectron2.engine import default_argument_parser

    parser = default_argument_parser()
    parser.add_argument("--tiny-data", required=True, help="folder of the tiny dataset")
    parser.add_argument("--stock-trainer", action="store_true", help="use DefaultTrainer")
    return parser


if __name__ == "__main__":
    from rs_detectron2.engine import launch_from_args

    args = _parser().parse_args()
    if not args.config_file:
        args.config_file = TINY_CONFIG
    register_tiny_coco(args.tiny_data)  # writes the files once, before the workers start
    launch_from_args(_worker, args)
