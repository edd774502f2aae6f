"""Benchmark: R-50 CARAFE FPN (the RS "+" neck) against detectron2's R-50 FPN, CPU inference.

Both backbones are built from detectron2's default config (R-50, FrozenBN, FREEZE_AT 2,
256-channel FPN on res2-res5, P2-P6), with random weights, in eval mode under
``torch.no_grad``. The input is one random image, zero padded to the FPN's
``size_divisibility`` (32) as detectron2's ``ImageList`` does (800x1333 -> 800x1344).

Time: both models live in this process; after ``--warmup`` forwards each, ``--rounds``
rounds run one forward of each, alternating which goes first, and the median per model
is reported with the ratio CARAFE / plain.

Peak memory: ``tracemalloc`` does not see torch's allocations, so each model runs in a
fresh subprocess (no caches shared with the other model or the timing loop) that builds
the model and the input, resets the kernel's peak-RSS counter (``echo 5 >
/proc/self/clear_refs``), runs one forward, and reports the rise of the peak resident
memory (VmHWM) over the resident memory just before the call (VmRSS). That is what the
forward needs on top of weights and input: activations, CARAFE's gathered
neighbourhoods, and first-call allocator/oneDNN caches. Where clear_refs is not writable
it falls back to the rise of ``ru_maxrss``, which under-reports if the build had a higher
transient peak.

    python benchmarks/bench_carafe_fpn.py                          # 800x1333, 10 rounds
    python benchmarks/bench_carafe_fpn.py --rounds 20 --json out.json
    python benchmarks/bench_carafe_fpn.py --height 64 --width 96 --rounds 1   # smoke test

``--train-step`` instead times whole training iterations of RS-Mask R-CNN R-50-FPN
(configs/COCO-InstanceSegmentation/rs_mask_rcnn_R_50_FPN_1x.yaml) against the same model
with the CARAFE FPN (rs_mask_rcnn_R_50_FPN_carafe_1x.yaml): batch 2 of ``--height`` x
``--width``, random weights, the fixed batch, FrozenBN calibration and the iteration of
benchmarks/bench_train_step.py, alternated in this process after warm-up::

    python benchmarks/bench_carafe_fpn.py --train-step --height 800 --width 1067 --rounds 5
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from detectron2.config import get_cfg  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import build_backbone  # noqa: E402

from rs_detectron2.config import add_rs_config  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import compact_report  # noqa: E402  (benchmarks/machine.py)

MODELS = {"plain": "build_resnet_fpn_backbone", "carafe": "build_resnet_carafe_fpn_backbone"}


def build_model(name: str) -> torch.nn.Module:
    """detectron2's default R-50 FPN config with the backbone ``MODELS[name]``, eval mode."""
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = MODELS[name]
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    return build_backbone(cfg, ShapeSpec(channels=3)).eval()


def make_input(height: int, width: int, seed: int, divisibility: int = 32) -> torch.Tensor:
    """One random image, zero padded at the bottom/right to a multiple of ``divisibility``."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, height, width, generator=generator)
    pad_h = math.ceil(height / divisibility) * divisibility - height
    pad_w = math.ceil(width / divisibility) * divisibility - width
    return F.pad(image, (0, pad_w, 0, pad_h))


def _status_kib(field: str) -> Optional[int]:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def memory_child(name: str, height: int, width: int, seed: int) -> Dict[str, object]:
    """In a fresh process: peak resident memory added by one forward of model ``name``."""
    torch.manual_seed(seed)
    model = build_model(name)
    x = make_input(height, width, seed)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method, before = "VmHWM - VmRSS", _status_kib("VmRSS")
    except OSError:
        method, before = "ru_maxrss rise", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        model(x)
    after = _status_kib("VmHWM") if method.startswith("VmHWM") else resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss
    return {"peak_forward_mib": (after - before) / 1024, "method": method}


def measure_memory(name: str, args: argparse.Namespace) -> Dict[str, object]:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", name,
           "--height", str(args.height), "--width", str(args.width), "--seed", str(args.seed)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


TRAIN_STEP_CONFIGS = {
    "plain": "configs/COCO-InstanceSegmentation/rs_mask_rcnn_R_50_FPN_1x.yaml",
    "carafe": "configs/COCO-InstanceSegmentation/rs_mask_rcnn_R_50_FPN_carafe_1x.yaml",
}


def train_step_benchmark(args: argparse.Namespace) -> Dict[str, object]:
    """Seconds per training iteration of RS-Mask R-CNN R-50-FPN with the plain and the
    CARAFE FPN, alternated (bench_train_step.py's batch, calibration and iteration)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_train_step as bts
    from detectron2.utils.events import EventStorage

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    batch = bts.make_batch(args.seed, 2, args.height, args.width, 7, "polygon")
    steps = {name: bts.TrainStep(bts.build_cfg(os.path.join(repo, path), "cpu", None), batch,
                                 args.seed)
             for name, path in TRAIN_STEP_CONFIGS.items()}
    times = {name: [] for name in steps}
    with EventStorage(0) as storage:
        for _ in range(args.warmup):
            for step in steps.values():
                step()
            storage.step()
        for r in range(args.rounds):
            order = list(steps) if r % 2 == 0 else list(steps)[::-1]
            for name in order:
                times[name].append(steps[name]())
            storage.step()
    ratios = [c / p for c, p in zip(times["carafe"], times["plain"])]
    result = {
        "machine": compact_report(),
        "batch": [2, args.height, args.width],
        "configs": TRAIN_STEP_CONFIGS,
        "seed": args.seed, "rounds": args.rounds, "warmup": args.warmup,
        "train_step_s_median": {name: statistics.median(t) for name, t in times.items()},
        "train_step_s_all": times,
        "ratio_carafe_over_plain_median": statistics.median(ratios),
        "ratios": ratios,
    }
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} with "
          f"{m['torch_threads']} threads")
    print(f"training iteration, batch 2 of {args.height}x{args.width}, random weights, seed "
          f"{args.seed}, {args.warmup} warm-up + {args.rounds} alternated rounds")
    for name in steps:
        print(f"{name:>7} ({TRAIN_STEP_CONFIGS[name]}): median "
              f"{result['train_step_s_median'][name]:.2f} s/iter")
    print(f"ratio carafe / plain (median of rounds): "
          f"{result['ratio_carafe_over_plain_median']:.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


def main(argv=None) -> Dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--rounds", type=int, default=10, help="timed forwards per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed forwards per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--train-step", action="store_true",
                        help="time training iterations of RS-Mask R-CNN R-50-FPN with and "
                        "without CARAFE (batch 2) instead of backbone forwards")
    parser.add_argument("--memory-child", choices=sorted(MODELS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_step:
        return train_step_benchmark(args)
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, args.height, args.width, args.seed)))
        return {}

    torch.manual_seed(args.seed)
    models = {name: build_model(name) for name in MODELS}
    x = make_input(args.height, args.width, args.seed)
    times = {name: [] for name in MODELS}
    with torch.no_grad():
        outputs = {name: model(x) for name, model in models.items()}
        assert {k: v.shape for k, v in outputs["plain"].items()} == {
            k: v.shape for k, v in outputs["carafe"].items()}
        del outputs
        for name, model in models.items():
            for _ in range(args.warmup):
                model(x)
        for r in range(args.rounds):
            order = list(MODELS) if r % 2 == 0 else list(MODELS)[::-1]
            for name in order:
                start = time.perf_counter()
                models[name](x)
                times[name].append(time.perf_counter() - start)

    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "machine": compact_report(),
        "input": [args.height, args.width],
        "padded_input": list(x.shape[-2:]),
        "seed": args.seed,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "params": {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()},
        "forward_s_median": median,
        "forward_s_all": times,
        "ratio_carafe_over_plain": median["carafe"] / median["plain"],
    }
    if not args.no_memory:
        del models
        result["memory"] = {name: measure_memory(name, args) for name in MODELS}

    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, "
          f"torch {m['torch']} with {m['torch_threads']} threads")
    print(f"input 1x3x{args.height}x{args.width} (padded to {x.shape[-2]}x{x.shape[-1]}), "
          f"seed {args.seed}, {args.warmup} warm-up + {args.rounds} alternated rounds")
    for name in MODELS:
        line = (f"{name:>7} ({MODELS[name]}, {result['params'][name] / 1e6:.2f} M params): "
                f"median forward {median[name] * 1000:.1f} ms")
        if "memory" in result:
            line += f", peak forward memory {result['memory'][name]['peak_forward_mib']:.1f} MiB"
        print(line)
    print(f"ratio carafe / plain: {result['ratio_carafe_over_plain']:.3f}")
    if "memory" in result:
        print(f"memory method: {result['memory']['plain']['method']} (fresh subprocess per model)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
