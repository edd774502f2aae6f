#!/usr/bin/env python
"""Benchmark: seconds per training iteration, stock detectron2 R-CNN vs its RS version.

Pairs at R-50-FPN, 80 classes, random weights (MODEL.WEIGHTS "", nothing is loaded):
detectron2's model-zoo Faster R-CNN vs configs/COCO-Detection/rs_faster_rcnn_R_50_FPN_1x.yaml,
Mask R-CNN vs configs/COCO-InstanceSegmentation/rs_mask_rcnn_R_50_FPN_1x.yaml (default), and
RetinaNet vs configs/COCO-Detection/rs_atss_R_50_FPN_1x.yaml (``--pairs atss``), and
RS-PAA (configs/COCO-Detection/rs_paa_R_50_FPN_1x.yaml) vs its stock-loss twin, the same
config with meta-architecture PAA and detectron2's focal + GIoU losses (``--pairs paa``), and
RS-YOLACT (configs/COCO-InstanceSegmentation/rs_yolact_R_50_FPN_55e.yaml) vs the same config
with meta-architecture YOLACT, its stock losses (``--pairs yolact``; YOLACT's input is
550 x 550: ``--min-size 550 --max-size 550``), and RS-SOLOv2
(configs/COCO-InstanceSegmentation/rs_solov2_R_101_FPN_3x.yaml) vs the same config with
meta-architecture SOLOv2, focal loss + Dice (``--pairs solov2``).
One iteration is what detectron2's SimpleTrainer does: zero_grad, forward in training mode
(under an EventStorage), sum of the losses, backward, SGD step (detectron2's
``build_optimizer``). The batch (default 2 random 800x1067 images, 7 random GT boxes each,
with polygon masks for Mask R-CNN) is built once from the seed and fed to the model
directly, so data loading is not timed. The models are run as they are: RS heads keep all
proposals (no sampling), so they do more RoI work than the stock heads; the table shows
how many RoIs each pooled. The random backbone's frozen BatchNorm statistics are set from
the batch (``calibrate_frozen_bn``), as a trained backbone's normalise its activations:
with identity statistics the activations explode and the RPN leaves a few proposals only.
With a random RPN few proposals overlap the GT boxes, so both models have fewer positive
RoIs (and mask-head RoIs) than in real training; the box-head RoI counts are the real ones
(stock: 512 sampled per image; RS: all 1,000 proposals + the GT boxes).

All models are built once; after the warm-up iterations the two models of a pair are timed
alternately (stock, RS, stock, RS, ...) for ``--rounds`` rounds in this one process, and the
ratio RS/stock is taken per round (so slow drifts of the machine cancel out)::

    python benchmarks/bench_train_step.py                    # CPU, 800x1067, 5 rounds
    python benchmarks/bench_train_step.py --device cuda --rounds 20 --json out.json
    python benchmarks/bench_train_step.py --min-size 256 --max-size 320 --warmup 1 --rounds 1
"""
import argparse
import csv
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import cv2
import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import rs_detectron2  # noqa: E402,F401  (registers the RS modules)
from rs_detectron2.config import add_rs_config  # noqa: E402
from rs_detectron2.modeling import use_sparse_cpu_poolers  # noqa: E402

from detectron2 import model_zoo  # noqa: E402
from detectron2.config import CfgNode, get_cfg  # noqa: E402
from detectron2.layers import FrozenBatchNorm2d  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from rs_detectron2.solver import build_rs_optimizer  # noqa: E402  (+ whole-model clipping)
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks  # noqa: E402
from detectron2.utils.env import seed_all_rng  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import gpu_name, machine_info, versions  # noqa: E402  (benchmarks/machine.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The third model of --torchvision-pooling: the RS model with torchvision's ROIAlign.
TORCHVISION_POOLING = ("MODEL.ROI_BOX_HEAD.POOLER_SPARSE_CPU", "False",
                       "MODEL.ROI_MASK_HEAD.POOLER_SPARSE_CPU", "False")

# name -> (label, stock config: detectron2 model zoo, or "configs/..." of this repository,
# RS config in this repository, masks?); STOCK_OPTS: overrides of a stock config.
PAIRS = {
    "faster": ("Faster R-CNN R-50-FPN", "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml",
               "configs/COCO-Detection/rs_faster_rcnn_R_50_FPN_1x.yaml", False),
    "mask": ("Mask R-CNN R-50-FPN", "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml",
             "configs/COCO-InstanceSegmentation/rs_mask_rcnn_R_50_FPN_1x.yaml", True),
    "atss": ("RetinaNet vs RS-ATSS R-50-FPN", "COCO-Detection/retinanet_R_50_FPN_1x.yaml",
             "configs/COCO-Detection/rs_atss_R_50_FPN_1x.yaml", False),
    "paa": ("PAA (focal + GIoU) vs RS-PAA R-50-FPN", "configs/COCO-Detection/rs_paa_R_50_FPN_1x.yaml",
            "configs/COCO-Detection/rs_paa_R_50_FPN_1x.yaml", False),
    "yolact": ("YOLACT (OHEM CE + smooth L1 + BCE) vs RS-YOLACT R-50-FPN",
               "configs/COCO-InstanceSegmentation/rs_yolact_R_50_FPN_55e.yaml",
               "configs/COCO-InstanceSegmentation/rs_yolact_R_50_FPN_55e.yaml", True),
    "solov2": ("SOLOv2 (focal + Dice) vs RS-SOLOv2 R-101-FPN",
               "configs/COCO-InstanceSegmentation/rs_solov2_R_101_FPN_3x.yaml",
               "configs/COCO-InstanceSegmentation/rs_solov2_R_101_FPN_3x.yaml", True),
}
STOCK_OPTS = {"paa": ("MODEL.META_ARCHITECTURE", "PAA", "MODEL.RETINANET.BBOX_REG_LOSS_TYPE", "giou"),
              "yolact": ("MODEL.META_ARCHITECTURE", "YOLACT"),
              "solov2": ("MODEL.META_ARCHITECTURE", "SOLOv2")}
NUM_CLASSES = 80


def build_cfg(config_file: str, device: str, lr: Optional[float],
              opts: Sequence[str] = ()) -> CfgNode:
    """The config of one benchmarked model: random weights, 80 classes, ``device``, then
    the ``opts`` (KEY VALUE list).

    The learning rate is ``lr``, or by default the one detectron2's warm-up starts training
    with (BASE_LR x WARMUP_FACTOR): random weights then stay finite over the timed steps.
    """
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.RETINANET.NUM_CLASSES = NUM_CLASSES
    cfg.SOLVER.BASE_LR = lr if lr is not None else cfg.SOLVER.BASE_LR * cfg.SOLVER.WARMUP_FACTOR
    cfg.merge_from_list(list(opts))
    cfg.freeze()
    return cfg


def _polygon(x0: float, y0: float, x1: float, y1: float, rng: np.random.Generator) -> np.ndarray:
    """A 16-vertex star-convex polygon inscribed in the box (flat x, y list)."""
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    radius = rng.uniform(0.7, 1.0, size=16)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    xs, ys = cx + rx * radius * np.cos(angles), cy + ry * radius * np.sin(angles)
    return np.stack([xs, ys], axis=1).reshape(-1)


def make_batch(
    seed: int,
    batch_size: int,
    height: int,
    width: int,
    num_boxes: int,
    masks: Optional[str] = None,
) -> List[Dict[str, Any]]:
    """``batch_size`` model inputs: a random uint8 BGR image (3, H, W) and ``num_boxes``
    random GT boxes of random classes (sides 5%-50% of the shorter image side), with
    ``masks`` ("polygon" or "bitmask") inscribed in the boxes when given. Same seed, same
    batch."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(batch_size):
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
        short = min(height, width)
        sizes = rng.uniform(0.05, 0.5, size=(num_boxes, 2)) * short
        x0 = rng.uniform(0, width - sizes[:, 0])
        y0 = rng.uniform(0, height - sizes[:, 1])
        boxes = np.stack([x0, y0, x0 + sizes[:, 0], y0 + sizes[:, 1]], axis=1)
        instances = Instances((height, width))
        instances.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
        instances.gt_classes = torch.as_tensor(
            rng.integers(0, NUM_CLASSES, size=num_boxes), dtype=torch.int64
        )
        if masks:
            polygons = [_polygon(*box, rng) for box in boxes]
            if masks == "polygon":
                instances.gt_masks = PolygonMasks([[p] for p in polygons])
            elif masks == "bitmask":
                bitmaps = np.zeros((num_boxes, height, width), dtype=np.uint8)
                for k, p in enumerate(polygons):
                    cv2.fillPoly(bitmaps[k], [np.round(p.reshape(-1, 2)).astype(np.int32)], 1)
                instances.gt_masks = BitMasks(torch.as_tensor(bitmaps, dtype=torch.bool))
            else:
                raise ValueError(f"masks must be 'polygon' or 'bitmask', got {masks!r}")
        batch.append({"image": image, "height": height, "width": width, "instances": instances})
    return batch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def calibrate_frozen_bn(model: torch.nn.Module, batch: List[Dict[str, Any]]) -> int:
    """Set the statistics of every ``FrozenBatchNorm2d`` of ``model.backbone`` to the mean
    and variance of its input on ``batch`` (one forward pass, layer after layer), as a
    trained backbone's frozen statistics normalise its activations. Returns the number of
    layers set.

    Why: a randomly initialised R-50 whose FrozenBN layers are identities (mean 0, var 1)
    has activations that grow by orders of magnitude with depth; the RPN then predicts
    huge box deltas, almost all proposals collapse onto the image border and NMS leaves a
    handful (4 per image instead of 1,000 at 256x320), so the RoI heads, which this
    benchmark compares, would hardly run. Only weight values change; the computation of
    every layer is the same.
    """
    layers = [m for m in model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]

    def set_statistics(module: FrozenBatchNorm2d, inputs: Any) -> None:
        var, mean = torch.var_mean(inputs[0].float(), dim=(0, 2, 3))
        module.running_mean.copy_(mean)
        module.running_var.copy_(var)

    handles = [m.register_forward_pre_hook(set_statistics) for m in layers]
    try:
        model.backbone(model.preprocess_image(batch).tensor)
    finally:
        for handle in handles:
            handle.remove()
    return len(layers)


class TrainStep:
    """One model, its SGD optimizer and its fixed batch; calling it times one iteration.

    It also counts the RoIs its box head (and mask head) pools in each iteration.
    """

    def __init__(
        self, cfg: CfgNode, batch: List[Dict[str, Any]], init_seed: int, calibrate: bool = True
    ):
        torch.manual_seed(init_seed)  # the same initial weights for every run
        self.device = str(cfg.MODEL.DEVICE)
        # As RSTrainer builds it: the poolers whose node sets POOLER_SPARSE_CPU get the
        # sparse CPU ROIAlign.
        self.model = use_sparse_cpu_poolers(build_model(cfg), cfg)
        if calibrate:
            calibrate_frozen_bn(self.model, batch)
        self.model.train()
        self.optimizer = build_rs_optimizer(cfg, self.model)
        self.batch = batch
        self.lr = float(cfg.SOLVER.BASE_LR)
        self.last_losses: Dict[str, float] = {}
        self.rois: Dict[str, List[int]] = {}  # pooler -> RoIs of each iteration
        heads = getattr(self.model, "roi_heads", None)  # none in one-stage models
        for name in ("box_pooler", "mask_pooler"):  # no mask_pooler without MASK_ON
            pooler = getattr(heads, name, None)
            if isinstance(pooler, torch.nn.Module):
                self.rois[name] = []
                pooler.register_forward_pre_hook(self._count(name))

    def _count(self, name: str):
        def hook(module: torch.nn.Module, inputs: Any) -> None:
            self.rois[name].append(sum(len(b) for b in inputs[1]))

        return hook

    def rois_per_image(self, name: str, last: int) -> Optional[float]:
        """Mean RoIs per image that pooler ``name`` pooled over the ``last`` iterations."""
        counts = self.rois.get(name, [])[-last:] if last else []
        return sum(counts) / (len(counts) * len(self.batch)) if counts else None

    def __call__(self) -> float:
        """One training iteration as detectron2's SimpleTrainer runs it; its seconds."""
        _sync(self.device)
        start = time.perf_counter()
        self.optimizer.zero_grad()
        loss_dict = self.model(self.batch)
        losses = sum(loss_dict.values())
        losses.backward()
        self.optimizer.step()
        _sync(self.device)
        seconds = time.perf_counter() - start
        self.last_losses = {k: float(v.detach()) for k, v in loss_dict.items()}
        if not np.isfinite(float(losses.detach())):
            raise FloatingPointError(f"Loss became infinite or NaN: {self.last_losses}")
        return seconds


def _iqr(values: Sequence[float]) -> float:
    q1, q3 = np.percentile(values, [25, 75])
    return float(q3 - q1)


def run_benchmark(
    pairs: Sequence[str] = ("faster", "mask"),
    device: str = "cpu",
    height: int = 800,
    width: int = 1067,
    batch_size: int = 2,
    num_boxes: int = 7,
    masks: str = "polygon",
    warmup: int = 2,
    rounds: int = 5,
    seed: int = 0,
    lr: Optional[float] = None,
    calibrate: bool = True,
    torchvision_pooling: bool = False,
) -> Dict[str, Any]:
    """Time ``pairs`` (keys of :data:`PAIRS`) as the module docstring says; returns
    ``{"settings": ..., "environment": ..., "results": [one dict per pair]}``.

    With ``torchvision_pooling`` a third model per pair is timed in the same rotation: the
    RS model with ``MODEL.ROI_BOX_HEAD.POOLER_SPARSE_CPU False`` and the same key of
    ``ROI_MASK_HEAD`` (torchvision's ROIAlign, as the stock model), so the table also shows
    what the RS heads cost with the same kernel.
    """
    steps = {}
    for name in pairs:
        _, stock_config, rs_config, with_masks = PAIRS[name]
        # The same seed: both models of a pair get the same GT boxes.
        batch = make_batch(seed, batch_size, height, width, num_boxes,
                           masks if with_masks else None)
        stock_file = (os.path.join(REPO, stock_config) if stock_config.startswith("configs/")
                      else model_zoo.get_config_file(stock_config))
        steps[name] = {
            "stock": TrainStep(build_cfg(stock_file, device, lr, STOCK_OPTS.get(name, ())),
                               batch, seed, calibrate),
            "rs": TrainStep(build_cfg(os.path.join(REPO, rs_config), device, lr), batch, seed,
                            calibrate),
        }
        if torchvision_pooling:
            steps[name]["rs_tv"] = TrainStep(
                build_cfg(os.path.join(REPO, rs_config), device, lr,
                          TORCHVISION_POOLING),
                batch, seed, calibrate)
    seed_all_rng(seed)  # samplers and random subsets of the heads
    times: Dict[str, Dict[str, List[float]]] = {n: {k: [] for k in steps[n]} for n in pairs}
    with EventStorage(0) as storage:
        for _ in range(warmup):
            for models in steps.values():
                for step in models.values():
                    step()
                storage.step()
        for _ in range(rounds):
            for name, models in steps.items():
                for key, step in models.items():
                    times[name][key].append(step())
            storage.step()

    results = []
    for name in pairs:
        stock_t, rs_t = times[name]["stock"], times[name]["rs"]
        ratios = [r / s for r, s in zip(rs_t, stock_t)]
        stock_step, rs_step = steps[name]["stock"], steps[name]["rs"]
        extra = {}
        if "rs_tv" in times[name]:
            tv_t = times[name]["rs_tv"]
            tv_ratios = [r / s for r, s in zip(tv_t, stock_t)]
            extra = dict(rs_tv_s_per_iter=statistics.median(tv_t),
                         ratio_tv_median=statistics.median(tv_ratios),
                         ratio_tv_min=min(tv_ratios), ratio_tv_max=max(tv_ratios),
                         rs_tv_times=tv_t, ratios_tv=tv_ratios)
        results.append(dict(
            pair=name,
            label=PAIRS[name][0],
            stock_config=PAIRS[name][1],
            rs_config=PAIRS[name][2],
            stock_s_per_iter=statistics.median(stock_t),
            rs_s_per_iter=statistics.median(rs_t),
            ratio_median=statistics.median(ratios),
            ratio_min=min(ratios),
            ratio_max=max(ratios),
            ratio_iqr=_iqr(ratios),
            stock_box_rois_per_image=stock_step.rois_per_image("box_pooler", rounds),
            rs_box_rois_per_image=rs_step.rois_per_image("box_pooler", rounds),
            stock_mask_rois_per_image=stock_step.rois_per_image("mask_pooler", rounds),
            rs_mask_rois_per_image=rs_step.rois_per_image("mask_pooler", rounds),
            stock_lr=stock_step.lr,
            rs_lr=rs_step.lr,
            stock_times=stock_t,
            rs_times=rs_t,
            ratios=ratios,
            stock_last_losses=stock_step.last_losses,
            rs_last_losses=rs_step.last_losses,
            **extra,
        ))
    settings = dict(
        device=device, batch_size=batch_size, height=height, width=width,
        num_boxes=num_boxes, masks=masks, num_classes=NUM_CLASSES, warmup=warmup,
        rounds=rounds, seed=seed, lr=lr, weights="random (MODEL.WEIGHTS '')",
        frozen_bn="calibrated on the batch" if calibrate else "identity (plain init)",
        torchvision_pooling=torchvision_pooling,
    )
    return dict(settings=settings, environment=environment(device), results=results)


def environment(device: str) -> Dict[str, Any]:
    """Machine and software the benchmark ran on (this benchmark's keys, from
    benchmarks/machine.py's report)."""
    try:
        from detectron2 import _C  # noqa: F401

        compiled_ops = True
    except ImportError:
        compiled_ops = False
    m, v = machine_info(), versions(("torch", "torchvision", "detectron2"))
    env = dict(
        cpu=m["cpu"],
        cpu_cores=m["cpu_count"],
        torch_threads=m["torch_threads"],
        python=v["python"],
        torch=v["torch"],
        torchvision=v["torchvision"],
        detectron2=v["detectron2"],
        detectron2_compiled_ops=compiled_ops,
        device=device,
    )
    if device.startswith("cuda"):
        env["gpu"] = gpu_name(device)
    return env


def format_markdown(report: Dict[str, Any]) -> str:
    """The report as a few header lines and a Markdown table."""
    s, e = report["settings"], report["environment"]
    lines = [
        f"machine: {e['cpu']}, {e['cpu_cores']} cores, torch {e['torch']} "
        f"({e['torch_threads']} threads), torchvision {e['torchvision']}, detectron2 "
        f"{e['detectron2']} (compiled ops "
        f"{'present' if e['detectron2_compiled_ops'] else 'absent'}), "
        f"Python {e['python']}; device {e['device']}" + (f" ({e['gpu']})" if "gpu" in e else ""),
        f"batch {s['batch_size']} images of {s['height']}x{s['width']}, {s['num_boxes']} GT "
        f"boxes each ({s['masks']} masks for Mask R-CNN), {s['num_classes']} classes, random "
        f"weights, backbone FrozenBN {s['frozen_bn']}; seed {s['seed']}; {s['warmup']} "
        f"warm-up + {s['rounds']} timed iterations per model, stock and RS alternately; "
        "s/iter = median; ratio = median of per-round RS/stock; RoIs = box-head (mask-head) "
        "RoIs per image, mean over the timed iterations",
        "",
        "| pair | stock s/iter | RS s/iter | RS/stock | min–max | IQR | stock RoIs | RS RoIs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def rois(r: Dict[str, Any], model: str) -> str:
        box, mask = r[f"{model}_box_rois_per_image"], r[f"{model}_mask_rois_per_image"]
        text = "–" if box is None else f"{box:.0f}"
        return text + ("" if mask is None else f" ({mask:.0f})")

    for r in report["results"]:
        lines.append(
            f"| {r['label']} | {r['stock_s_per_iter']:.3f} | {r['rs_s_per_iter']:.3f} | "
            f"{r['ratio_median']:.2f}x | {r['ratio_min']:.2f}–{r['ratio_max']:.2f} | "
            f"{r['ratio_iqr']:.2f} | {rois(r, 'stock')} | {rois(r, 'rs')} |"
        )
    tv = [r for r in report["results"] if "ratio_tv_median" in r]
    if tv:
        lines += ["", "RS with torchvision's ROIAlign (MODEL.ROI_*_HEAD.POOLER_SPARSE_CPU False), "
                  "timed in the same rotation:", "",
                  "| pair | RS (torchvision ROIAlign) s/iter | its RS/stock | min–max |",
                  "|---|---:|---:|---:|"]
        for r in tv:
            lines.append(f"| {r['label']} | {r['rs_tv_s_per_iter']:.3f} | "
                         f"{r['ratio_tv_median']:.2f}x | {r['ratio_tv_min']:.2f}–"
                         f"{r['ratio_tv_max']:.2f} |")
    return "\n".join(lines)


CSV_FIELDS = (
    "pair", "label", "stock_s_per_iter", "rs_s_per_iter", "ratio_median", "ratio_min",
    "ratio_max", "ratio_iqr", "rs_tv_s_per_iter", "ratio_tv_median", "stock_box_rois_per_image", "rs_box_rois_per_image",
    "stock_mask_rois_per_image", "rs_mask_rois_per_image", "rounds", "device", "batch_size",
    "height", "width", "num_boxes", "seed", "torch_threads", "cpu",
)


def write_csv(report: Dict[str, Any], path: str) -> None:
    """One row per pair, with the settings and machine repeated on each row."""
    flat = dict(report["settings"], **report["environment"])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in report["results"]:
            writer.writerow(dict(flat, **r))


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--pairs", default="faster,mask",
                        help="comma-separated subset of: " + ", ".join(PAIRS))
    parser.add_argument("--min-size", type=int, default=800, help="image height (shorter side)")
    parser.add_argument("--max-size", type=int, default=1067, help="image width (longer side)")
    parser.add_argument("--batch-size", type=int, default=2, help="images per iteration")
    parser.add_argument("--num-boxes", type=int, default=7, help="GT boxes per image")
    parser.add_argument("--masks", choices=("polygon", "bitmask"), default="polygon",
                        help="GT mask format of the Mask R-CNN pair (COCO's is polygon)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per model")
    parser.add_argument("--rounds", type=int, default=5, help="timed iterations per model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, weights, heads")
    parser.add_argument("--lr", type=float, help="SGD learning rate (default: each config's "
                        "BASE_LR x WARMUP_FACTOR, its first-iteration rate)")
    parser.add_argument("--no-calibrate", action="store_true",
                        help="keep the backbone's FrozenBN layers as initialised (identities): "
                        "activations explode and the RPN leaves only a few proposals "
                        "(see calibrate_frozen_bn)")
    parser.add_argument("--torchvision-pooling", action="store_true",
                        help="also time each RS model with torchvision's ROIAlign "
                        "(MODEL.ROI_*_HEAD.POOLER_SPARSE_CPU False) in the same rotation")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", help="also write the full report (per-round times) here")
    parser.add_argument("--csv", help="also write one row per pair here")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = get_parser().parse_args(argv)
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    unknown = [p for p in pairs if p not in PAIRS]
    if unknown or not pairs:
        raise SystemExit(f"--pairs: unknown {unknown}; choose from {list(PAIRS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_benchmark(
        pairs=pairs, device=args.device, height=args.min_size, width=args.max_size,
        batch_size=args.batch_size, num_boxes=args.num_boxes, masks=args.masks,
        warmup=args.warmup, rounds=args.rounds, seed=args.seed, lr=args.lr,
        calibrate=not args.no_calibrate, torchvision_pooling=args.torchvision_pooling,
    )
    print(format_markdown(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.csv:
        write_csv(report, args.csv)
    return report


if __name__ == "__main__":
    main()
