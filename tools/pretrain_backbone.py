#!/usr/bin/env python
"""Pretrain a config's small ResNet on the built-in classification set; write its checkpoint.

    python tools/pretrain_backbone.py \
        --config-file configs/Synthetic/Base-RS-Synthetic-R18-FPN.yaml \
        --output out/small_resnet18_w32_s16.pth [KEY VALUE ...]

The backbone is the config's (``build_small_resnet`` with its MODEL.RESNETS widths), the
recipe :data:`rs_detectron2.pretraining.DEFAULT_RECIPE`, as for the ``rs_pretrained://``
weights (which this script does not need: they are made on first use). Set a detector's
``MODEL.WEIGHTS`` to the output file.
"""
import argparse
import time

from detectron2.config import get_cfg

from rs_detectron2.config import add_rs_config
from rs_detectron2.pretraining import describe, pretrain_small_resnet, save_checkpoint


def main(argv=None) -> str:
    """Pretrain, write the checkpoint, return its path."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, help="a small-ResNet detector config")
    parser.add_argument("--output", required=True, help="the checkpoint to write (.pth)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    start = time.perf_counter()
    checkpoint = pretrain_small_resnet(cfg)
    path = save_checkpoint(checkpoint, args.output)
    print(f"pretrained in {time.perf_counter() - start:.0f} s, {describe(checkpoint)}; "
          f"written to {path}", flush=True)
    return path


if __name__ == "__main__":
    main()
