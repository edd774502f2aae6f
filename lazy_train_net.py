#!/usr/bin/env python
"""Train or evaluate an RS Loss detector from a LazyConfig (a Python config, ``*.py``).

Like detectron2's ``tools/lazyconfig_train_net.py``; overrides are ``key=value``::

    python lazy_train_net.py --config-file configs/Synthetic/pretrained/rs_mask_rcnn_R_18_FPN.py
    python lazy_train_net.py --config-file configs/X.py --num-gpus 8 train.output_dir=out/
    python lazy_train_net.py --config-file configs/X.py --eval-only train.init_checkpoint=out/model_final.pth
    python lazy_train_net.py --config-file configs/X.py --resume

See rs_detectron2.engine.lazy_training for what it adds to detectron2's script (the dataset
check, the ranking-stall warning, CPU fall-back and multi-process CPU training); the YAML
configs train with train_net.py.
"""
import argparse
from typing import Any, Dict


import rs_detectron2.config  # noqa: F401  (registers the RS heads, datasets and weights)
from rs_detectron2.engine import (
    default_rs_lazy_setup,
    do_train,
    evaluate_checkpoint,
    launch_from_args,
    register_datasets_from_args,
    rs_argument_parser,
)


def main(args: argparse.Namespace) -> Dict[str, Any]:
    """Evaluate (``--eval-only``) or train; returns the evaluation results."""
    register_datasets_from_args(args)  # in every process that launch starts
    cfg = default_rs_lazy_setup(args)
    if args.eval_only:
        return evaluate_checkpoint(cfg)
    return do_train(args, cfg)


_EPILOG = """
Your own dataset (COCO JSON + image folder), e.g.:
  python lazy_train_net.py --config-file configs/Synthetic/pretrained/rs_mask_rcnn_R_18_FPN.py \\
    --coco-dataset my_train train.json images/ --coco-dataset my_val val.json images/ \\
    dataloader.train.dataset.names=my_train dataloader.test.dataset.names=my_val \\
    model.roi_heads.num_classes=2
"""


def invoke_main() -> None:
    args = rs_argument_parser(epilog=_EPILOG).parse_args()
    print("Command Line Args:", args)
    launch_from_args(main, args)


if __name__ == "__main__":
    invoke_main()  # pragma: no cover
