"""Benchmark: ATSS assignment (rs_detectron2.modeling.meta_arch.atss_match) on a COCO-size
input, the work RS-ATSS does for every image of every training iteration.

All anchors of an 800x1333 input (P3-P7, strides 8-128, 3 anchors per location as in
configs/COCO-Detection/rs_atss_R_50_FPN_1x.yaml), ``--images`` images of ``--num-gt``
random ground-truth boxes each (sides 8-400 px), seed ``--seed``; the median over
``--rounds`` timed rounds (after one warm-up) of the time to assign all images.

    python benchmarks/bench_atss_assign.py
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling.anchor_generator import build_anchor_generator  # noqa: E402
from detectron2.structures import Boxes  # noqa: E402

from benchmarks.machine import machine_line  # noqa: E402
from rs_detectron2.config import add_rs_config  # noqa: E402
from rs_detectron2.modeling.meta_arch import atss_match  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                      "COCO-Detection", "rs_atss_R_50_FPN_1x.yaml")


def random_boxes(n: int, height: int, width: int, generator: torch.Generator) -> Boxes:
    wh = torch.empty(n, 2).uniform_(8, 400, generator=generator)
    xy = torch.rand(n, 2, generator=generator) * (torch.tensor([width, height]) - wh).clamp(min=1)
    return Boxes(torch.cat([xy, xy + wh], dim=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--num-gt", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(CONFIG)
    height, width = 800, 1344  # 1333 padded to the FPN's size divisibility (32)
    strides = (8, 16, 32, 64, 128)
    shapes = [ShapeSpec(channels=256, height=-(-height // s), width=-(-width // s), stride=s)
              for s in strides]
    generator = build_anchor_generator(cfg, shapes)
    features = [torch.zeros(1, 1, sh.height, sh.width) for sh in shapes]
    anchors = generator(features)
    g = torch.Generator().manual_seed(args.seed)
    gts = [random_boxes(args.num_gt, 800, 1333, g) for _ in range(args.images)]

    def assign():
        return [atss_match(anchors, gt, cfg.MODEL.RS_RETINANET.ATSS_TOPK, generator.num_cell_anchors[0])
                for gt in gts]

    assign()
    times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        results = assign()
        times.append(time.perf_counter() - start)
    num_anchors = sum(len(a) for a in anchors)
    positives = [int(pos.sum()) for _, pos in results]
    print(f"machine: {machine_line()}")
    print(f"input 800x1333, {num_anchors} anchors (P3-P7, 3 per location), {args.images} images "
          f"x {args.num_gt} gts, seed {args.seed}; positives per image {positives}")
    print(f"ATSS assignment of all images: median {1000 * statistics.median(times):.1f} ms "
          f"(min {1000 * min(times):.1f}, max {1000 * max(times):.1f}; {args.rounds} rounds)")


if __name__ == "__main__":
    main()
