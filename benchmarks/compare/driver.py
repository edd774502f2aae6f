"""Runs the plan: dataset by dataset, pair by pair, model by model, one subprocess a job.

Per model: the learning-rate grid (first seed), then the chosen grid run's learning curve,
then the further seeds at the chosen rate. A result JSON means "done" (after checking it is
comparable); a run folder without one is a killed run, deleted and started again. So a kill
loses at most one run. After every job the report is written again.
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import List

from .estimate import estimate_seconds, hms, measured_rates
from .layout import MASK_PAIRS, MODEL_NAMES, SCRIPT, checkpoint_for, lr_tag, pair_sides
from .planner import Planner, side_lrs
from .report import fmt, write_report
from .results import load_results, read_json, select_lr, val_metric, write_json
from .resume import comparable
from .worker import LAUNCH_ENV, delete_curve_checkpoints


class Driver:
    """Runs the jobs of a :class:`Planner` that have no result yet."""

    def __init__(self, args: argparse.Namespace, planner: Planner):
        self.args = args
        self.planner = planner
        self.started = time.perf_counter()
        self.done_jobs = 0

    # ---- one subprocess ----
    def _subprocess(self, argv: List[str], log_path: str, label: str) -> None:
        """Run ``argv`` with its console in ``log_path``; a failure stops the invocation
        with the end of that console."""
        print(f"  $ {shlex.join(argv)}\n    (console: {log_path})", flush=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{LAUNCH_ENV: repr(time.time())})
        with open(log_path, "a") as log:
            proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            with open(log_path) as f:
                tail = f.read()[-4000:]
            raise SystemExit(f"compare_to_detectron2: {label} failed (exit {proc.returncode}); "
                             f"last output:\n{tail}")

    def ensure_run(self, spec: dict) -> dict:
        """The result of ``spec``: its existing JSON, or run it now."""
        existing = read_json(spec["result"])
        if existing is not None:
            why = comparable(existing, spec)
            if why is not None:
                raise SystemExit(
                    f"compare_to_detectron2: {spec['result']} was made with other settings "
                    f"({why}); use another --output-dir or delete that file.")
            print(f"skip (done): {spec['name']}", flush=True)
            return existing
        if self.args.dry_run:
            command = [sys.executable, SCRIPT, "--run-one", os.path.join(spec["run_dir"], "spec.json")]
            print(f"run: {spec['name']}\n  $ {shlex.join(command)}"
                  f"\n  = train_net.py --config-file {spec['config']} "
                  f"{shlex.join(spec['opts'])}\n    (+ registers {spec['fit_dataset']}, "
                  f"{spec['holdout_dataset']}; curve on val: {spec['curve_in_run']})", flush=True)
            return {}
        if os.path.isdir(spec["run_dir"]):
            print(f"removing the partial run {spec['run_dir']} (killed earlier)", flush=True)
            shutil.rmtree(spec["run_dir"])
        os.makedirs(spec["run_dir"])
        spec_path = os.path.join(spec["run_dir"], "spec.json")
        write_json(spec_path, spec)
        print(f"[{time.strftime('%H:%M:%S')}] run {spec['name']} ({spec['role']}, "
              f"{spec['max_iter']} iterations)", flush=True)
        self._subprocess([sys.executable, SCRIPT, "--run-one", spec_path],
                         os.path.join(spec["run_dir"], "console.log"), spec["name"])
        result = read_json(spec["result"])
        if result is None:
            raise SystemExit(f"compare_to_detectron2: {spec['name']} wrote no result JSON")
        self._after_job(result)
        return result

    def ensure_curve(self, result: dict) -> dict:
        """``result`` with its learning curve: evaluated now if it has none yet (trained
        again if its curve checkpoints are gone)."""
        if result.get("curve_complete") or self.args.dry_run:
            if self.args.dry_run and not result.get("curve_complete") and result:
                print(f"curve: {result['name']} (intermediate checkpoints on val)\n  $ "
                      f"{shlex.join([sys.executable, SCRIPT, '--curve-one', result['result']])}")
            return result
        iters = result["curve_iters"][:-1]
        if not all(os.path.exists(checkpoint_for(result["run_dir"], it)) for it in iters):
            print(f"{result['name']}: its curve checkpoints were deleted; training it again "
                  f"with its curve", flush=True)
            os.remove(result["result"])
            return self.ensure_run(self.planner.spec(result["dataset"], result["pair"],
                                                     result["side"], result["lr"],
                                                     result["seed"], result["role"], True))
        print(f"[{time.strftime('%H:%M:%S')}] curve {result['name']} "
              f"({len(iters)} checkpoints on val)", flush=True)
        self._subprocess([sys.executable, SCRIPT, "--curve-one", result["result"]],
                         os.path.join(result["run_dir"], "console.log"), f"curve of {result['name']}")
        result = read_json(result["result"])
        self._after_job(result)
        return result

    def _after_job(self, result: dict) -> None:
        self.done_jobs += 1
        holdout = result.get("holdout_box_AP")
        print(f"  -> {result['name']}: {result['status']}, holdout box AP {fmt(holdout)}, "
              f"val box AP {fmt(val_metric(result, 'bbox', 'AP'))}"
              + (f", val mask AP {fmt(val_metric(result, 'segm', 'AP'))}" if result["pair"] in MASK_PAIRS else "")
              + f", {fmt(result.get('seconds_per_iter'), 3)} s/iter, "
              f"whole run {fmt(result.get('wall_seconds'), 0)} s", flush=True)
        write_report(self.planner.out, quiet=True)
        remaining = estimate_seconds(self.planner.remaining_jobs(),
                                     measured_rates(load_results(self.planner.out)))
        print(f"  elapsed {hms(time.perf_counter() - self.started)}, "
              f"remaining about {hms(remaining)}", flush=True)

    # ---- the plan ----
    def run(self) -> None:
        """Every model of the invocation, in order."""
        args = self.args
        for dataset in args.datasets:
            for pair in args.pairs:
                for side in pair_sides(dataset, pair):
                    self.run_model(dataset, pair, side)

    def run_model(self, dataset: str, pair: str, side: str) -> None:
        """One model's grid, the chosen run's curve, and its further seeds."""
        args = self.args
        lrs = side_lrs(args, side)
        first = args.seeds[0]
        grid = [self.ensure_run(self.planner.spec(dataset, pair, side, lr, first, "grid", False))
                for lr in lrs]
        if args.dry_run and not all(grid):
            print(f"curve: the chosen grid run of {dataset}/{pair}/{side} "
                  f"(--curve-one, intermediate checkpoints on val)")
            for seed in args.seeds[1:]:
                print(f"run: {args.regime}-{dataset}-{pair}-{side}-lr<chosen>-seed{seed} (at the learning "
                      f"rate of the best holdout box AP above, with its curve)")
            return
        chosen = select_lr(grid)
        if chosen is None:
            print(f"{dataset}/{pair}/{side}: no learning rate of {list(lrs)} gave a holdout AP "
                  f"(all diverged?): no seed runs", flush=True)
            return
        print(f"{dataset}/{pair}/{MODEL_NAMES[(pair, side)]}: chosen learning rate "
              f"{lr_tag(chosen['lr'])} (holdout box AP {fmt(chosen['holdout_box_AP'])}; grid: "
              + ", ".join(f"{lr_tag(g['lr'])} -> {fmt(g.get('holdout_box_AP'))}" for g in grid) + ")",
              flush=True)
        if not args.keep_checkpoints and not args.dry_run:
            for g in grid:
                if g["name"] != chosen["name"]:
                    delete_curve_checkpoints(g["run_dir"], g["curve_iters"][:-1])
        self.ensure_curve(chosen)
        for seed in args.seeds[1:]:
            self.ensure_run(self.planner.spec(dataset, pair, side, chosen["lr"], seed, "seed", True))
