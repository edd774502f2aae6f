#!/usr/bin/env python
"""Does an RS config train at every learning rate of a grid? The stall table.

For each config and learning rate it trains the config's whole shipped schedule with
``train_net.py`` (one subprocess per run, ``SOLVER.BASE_LR`` the only change besides
``OUTPUT_DIR``) and records, from the run's ``metrics.json`` and log: the last value of
each RS ranking loss (median of the last 20 logged iterations; ``loss_rpn_rank`` divided
by the RPN head weight, so every number reads as a ranking error, 1 = random), whether
:class:`~rs_detectron2.engine.RankingStallCheck` warned, and the final box / mask AP on
the config's test set. One JSON per run in ``<output-dir>/results/``; a run whose JSON
exists is skipped, so a killed grid resumes where it stopped; ``results.md`` (a table) is
rewritten after every run.

    python benchmarks/lr_robustness.py                                    # the default grid
    python benchmarks/lr_robustness.py --configs configs/Synthetic/rs_mask_rcnn_R_18_FPN_hard.yaml \\
        --lrs 0.06                                                        # one more cell
    python benchmarks/lr_robustness.py --configs configs/Synthetic/rs_mask_rcnn_R_18_FPN_hard.yaml \
        --lrs 0.06 -- MODEL.ROI_BOX_HEAD.NAME FastRCNNConvFCHead          # overrides after --
    python benchmarks/lr_robustness.py --report-only

The default grid is the acceptance table of the "no stall" requirement: RS-Mask R-CNN from
scratch on the three built-in datasets at 0.01 / 0.02 / 0.03, plus 0.06 on
rs_synthetic_hard (stock Mask R-CNN's best rate there).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_name  # noqa: E402  (benchmarks/machine.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from rs_detectron2.engine.ranking_check import ranking_loss_names  # noqa: E402
SYN = "configs/Synthetic/"
DEFAULT_GRID: List[Tuple[str, float]] = [
    (SYN + name, lr)
    for name in ("rs_mask_rcnn_R_18_FPN.yaml", "rs_mask_rcnn_R_18_FPN_hard.yaml",
                 "rs_mask_rcnn_R_18_FPN_lvis.yaml")
    for lr in (0.01, 0.02, 0.03)
] + [(SYN + "rs_mask_rcnn_R_18_FPN_hard.yaml", 0.06)]


def run_name(config: str, lr: float) -> str:
    return f"{os.path.splitext(os.path.basename(config))[0]}-lr{lr:g}"


def ranking_errors(metrics_path: str, rpn_weight: float, window: int = 20) -> Dict[str, float]:
    """Median of the last ``window`` logged values of each ranking loss (as an error)."""
    series: Dict[str, List[float]] = {}
    with open(metrics_path) as f:
        for line in f:
            row = json.loads(line)
            for k in ranking_loss_names(row):
                series.setdefault(k, []).append(float(row[k]))
    return {k: statistics.median(v[-window:]) / (rpn_weight if k == "loss_rpn_rank" else 1.0)
            for k, v in series.items()}


def final_ap(log_text: str) -> Dict[str, Optional[float]]:
    """The AP of the "bbox" and "segm" tasks in the log's "copypaste" lines (COCO or LVIS
    AP; the oLRP tasks are skipped), the last table of each task."""
    lines = [line.split("copypaste: ", 1)[1].strip() for line in log_text.splitlines()
             if "copypaste: " in line]
    aps: Dict[str, Optional[float]] = {}
    for i, line in enumerate(lines):
        if line.startswith("Task: ") and i + 2 < len(lines):
            task = line[len("Task: "):]
            if task in ("bbox", "segm"):
                first = lines[i + 2].split(",")[0]
                aps[task] = None if first == "nan" else float(first)
    return aps


def run_tag(config: str, lr: float, extra: Sequence[str]) -> str:
    """The run's name, with its overrides (so that runs with other overrides never share
    a folder or a result)."""
    return run_name(config, lr) + ("-" + "-".join(extra).replace("/", "_") if extra else "")


def run_one(config: str, lr: float, out: str, extra: Sequence[str]) -> dict:
    name = run_tag(config, lr, extra)
    run_dir = os.path.join(out, "runs", name)
    os.makedirs(run_dir, exist_ok=True)
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", config,
           "SOLVER.BASE_LR", str(lr), "OUTPUT_DIR", run_dir, "SOLVER.CHECKPOINT_PERIOD", "100000",
           *extra]
    start = time.time()
    with open(os.path.join(run_dir, "console.log"), "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.time() - start
    text = open(os.path.join(run_dir, "console.log")).read()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}); see {run_dir}/console.log")
    from detectron2.config import get_cfg
    from rs_detectron2.config import add_rs_config
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    errors = ranking_errors(os.path.join(run_dir, "metrics.json"), cfg.MODEL.RPN.LOSS_WEIGHT)
    aps = final_ap(text)
    for f in os.listdir(run_dir):
        if f.endswith(".pth"):
            os.remove(os.path.join(run_dir, f))
    return {
        "name": name, "config": config, "lr": lr, "extra": list(extra),
        "max_iter": cfg.SOLVER.MAX_ITER, "ranking_errors": errors,
        "stall_warned": "has not started to rank" in text,
        "box_ap": aps.get("bbox"), "mask_ap": aps.get("segm"),
        "seconds": seconds, "machine": cpu_name(),
    }


def write_report(out: str) -> str:
    rows = []
    results_dir = os.path.join(out, "results")
    for f in sorted(os.listdir(results_dir)) if os.path.isdir(results_dir) else []:
        rows.append(json.load(open(os.path.join(results_dir, f))))
    lines = ["# RS learning-rate robustness (whole shipped schedule, from the config)", "",
             "Last ranking error = median of the last 20 logged iterations (RPN divided by its "
             "head weight); 1.0 = random ranking. Produced by `benchmarks/lr_robustness.py`.", "",
             "| config | extra | lr | iterations | loss_roi_rank | RPN ranking error | stall warning "
             "| box AP | mask AP | minutes | machine |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    fmt = lambda x: "–" if x is None else f"{x:.1f}"  # noqa: E731
    for r in rows:
        e = r["ranking_errors"]
        lines.append(
            f"| {os.path.basename(r['config'])} | {' '.join(r['extra']) or '–'} | {r['lr']:g} "
            f"| {r['max_iter']} | {e.get('loss_roi_rank', float('nan')):.3f} "
            f"| {e.get('loss_rpn_rank', float('nan')):.3f} | {'yes' if r['stall_warned'] else 'no'} "
            f"| {fmt(r['box_ap'])} | {fmt(r['mask_ap'])} | {r['seconds'] / 60:.1f} | {r['machine']} |")
    path = os.path.join(out, "results.md")
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", help="configs (default: the acceptance grid)")
    p.add_argument("--lrs", type=float, nargs="+", help="learning rates for --configs")
    p.add_argument("--output-dir", default=os.path.join(REPO, "benchmarks", "results", "lr_robustness"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = p.parse_args(argv)
    if args.configs:
        grid = [(c, lr) for c in args.configs for lr in (args.lrs or [0.01, 0.02, 0.03])]
    else:
        grid = DEFAULT_GRID
    extra = [o for o in args.opts if o != "--"]
    if not args.report_only:
        os.makedirs(os.path.join(args.output_dir, "results"), exist_ok=True)
        for config, lr in grid:
            tag = run_tag(config, lr, extra)
            path = os.path.join(args.output_dir, "results", tag + ".json")
            if os.path.exists(path):
                continue
            print(f"[lr_robustness] {tag} ...", flush=True)
            result = run_one(config, lr, args.output_dir, extra)
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(result, f, indent=1)
            os.replace(tmp, path)
            print(f"[lr_robustness] {tag}: {result['ranking_errors']} box AP {result['box_ap']}",
                  flush=True)
            write_report(args.output_dir)
    print(open(write_report(args.output_dir)).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
