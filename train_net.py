#!/usr/bin/env python
"""Train or evaluate an RS Loss detector (or any detectron2 config) with :class:`RSTrainer`.

Like detectron2's ``tools/train_net.py``::

    python train_net.py --config-file configs/X.yaml --num-gpus 2
    python train_net.py --config-file configs/X.yaml --eval-only MODEL.WEIGHTS out/model_final.pth
    python train_net.py --config-file configs/X.yaml --resume
    python train_net.py --config-file configs/X.yaml --coco-dataset my_train train.json images/ \
        DATASETS.TRAIN '("my_train",)' MODEL.ROI_HEADS.NUM_CLASSES 2

``--num-gpus N`` starts N processes; without GPUs they use the gloo backend on the CPU.
"""
import argparse
from typing import Any, Dict, Optional

import detectron2.utils.comm as comm
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.evaluation import verify_results

import rs_detectron2.config  # noqa: F401  (registers the RS heads, datasets and weights)
from rs_detectron2.engine import (
    RSTrainer,
    check_dataset_classes,
    default_rs_setup,
    launch_from_args,
    register_datasets_from_args,
    rs_argument_parser,
)


def main(args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """Evaluate (``--eval-only``) or train; returns the evaluation results, if any."""
    register_datasets_from_args(args)  # in every process that launch starts
    cfg = default_rs_setup(args)

    if args.eval_only:
        check_dataset_classes(cfg, cfg.DATASETS.TEST, evaluated=True)  # before building anything
        model = RSTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        # RSTrainer.test logs the AP tables and their "copypaste:" csv lines.
        res = RSTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res

    trainer = RSTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def invoke_main() -> None:
    args = rs_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch_from_args(main, args)


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
