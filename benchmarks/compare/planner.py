"""The plan of one invocation: the spec of every run, and the jobs still to do.

A spec is everything a run subprocess needs (config, overrides, datasets, curve points,
where its folder and result go); it is also what an existing result is compared with
before it is reused. The jobs (grid runs, curves, seed runs) carry their cost for the time
estimate.
"""
import argparse
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .holdout import fit_holdout_names, num_holdout
from .layout import DATASETS, MODEL_NAMES, REPO, config_for, curve_iterations, pair_sides, run_name
from .results import load_results, select_lr


def side_lrs(args: argparse.Namespace, side: str) -> List[float]:
    """The learning-rate grid of a side: --lrs-rs, --lrs-stock or --lrs-stock-gn."""
    return list(args.lrs[side])


def _tuple_opt(names: Sequence[str]) -> str:
    """A tuple of names as a config override value: ("a", "b",)."""
    return "(" + ", ".join(f'"{n}"' for n in names) + ",)"


def _leaf_pairs(key: str, a: Any, b: Any) -> List[Tuple[str, Tuple[Any, Any]]]:
    """(dotted key, (value in a, value in b)) for every leaf of two config nodes."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _leaf_pairs(f"{key}.{k}", a.get(k), b.get(k))
        return out
    return [(key, (a, b))]


class Planner:
    """Builds run specs and knows the settings shared by all runs of one invocation."""

    # Settings every model of a pair must share: only the heads and their losses differ.
    SHARED_KEYS = (
        "SOLVER.IMS_PER_BATCH", "SOLVER.LR_SCHEDULER_NAME", "SOLVER.WARMUP_ITERS",
        "SOLVER.MAX_ITER", "SOLVER.CLIP_GRADIENTS", "SOLVER.MOMENTUM", "SOLVER.WEIGHT_DECAY",
        "SOLVER.WEIGHT_DECAY_NORM", "INPUT", "MODEL.WEIGHTS", "MODEL.PIXEL_MEAN",
        "MODEL.PIXEL_STD", "MODEL.BACKBONE", "MODEL.RESNETS", "MODEL.FPN", "MODEL.MASK_ON",
        "DATASETS.TRAIN", "DATASETS.TEST", "SEED", "MODEL.ROI_HEADS.NUM_CLASSES",
        "MODEL.RETINANET.NUM_CLASSES", "MODEL.ANCHOR_GENERATOR.SIZES", "DATALOADER",
    )
    # Leaves of SHARED_KEYS that are part of a detector's design: where the one-stage FPN
    # takes P6/P7 from (RS-ATSS: P5, as ATSS does; detectron2's RetinaNet: res5).
    DESIGN_KEYS = ("MODEL.FPN.P6P7_TOP_BLOCK",)

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = os.path.abspath(args.output_dir)
        self._cfg_cache: Dict[Any, Any] = {}

    def load_cfg(self, config: str, extra: Sequence[str] = ()):
        """The merged config of ``config`` (relative to the repository, or absolute) with
        the overrides ``extra``; cached."""
        from detectron2.config import get_cfg

        import rs_detectron2  # noqa: F401  (registers the RS models)
        from rs_detectron2.config import add_rs_config

        key = (config, tuple(extra))
        if key not in self._cfg_cache:
            cfg = get_cfg()
            add_rs_config(cfg)
            cfg.merge_from_file(os.path.join(REPO, config))
            cfg.merge_from_list(list(extra))
            self._cfg_cache[key] = cfg
        return self._cfg_cache[key]

    def size_opts(self, dataset: str) -> List[str]:
        """The dataset size overrides of --num-train / --num-val."""
        prefix = DATASETS[dataset]["cfg_key"]
        opts: List[str] = []
        if self.args.num_train is not None:
            opts += [f"{prefix}.NUM_TRAIN", str(self.args.num_train)]
        if self.args.num_val is not None:
            opts += [f"{prefix}.NUM_VAL", str(self.args.num_val)]
        return opts

    def dataset_sizes(self, dataset: str, config: str) -> Tuple[int, int]:
        """(train, val) sizes of ``dataset`` as the runs will have them."""
        cfg = self.load_cfg(config, self.size_opts(dataset) + list(self.args.opts))
        node = cfg
        try:
            for part in DATASETS[dataset]["cfg_key"].split("."):
                node = node[part]
            return int(node.NUM_TRAIN), int(node.NUM_VAL)
        except (KeyError, AttributeError):
            return 1000, 200

    def schedule_opts(self, config: str) -> List[str]:
        """MAX_ITER, scaled warmup (and multi-step steps), checkpoint period, no periodic eval."""
        cfg = self.load_cfg(config)
        max_iter = int(self.args.max_iter)
        scale = max_iter / float(cfg.SOLVER.MAX_ITER)
        warmup = min(int(round(cfg.SOLVER.WARMUP_ITERS * scale)), max_iter)
        period, _ = curve_iterations(max_iter, self.args.curve_points)
        opts = ["SOLVER.MAX_ITER", str(max_iter), "SOLVER.WARMUP_ITERS", str(warmup),
                "SOLVER.CHECKPOINT_PERIOD", str(period), "TEST.EVAL_PERIOD", "0"]
        if cfg.SOLVER.LR_SCHEDULER_NAME != "WarmupCosineLR" and len(cfg.SOLVER.STEPS):
            steps = tuple(int(round(s * scale)) for s in cfg.SOLVER.STEPS)
            opts += ["SOLVER.STEPS", str(steps)]
        return opts

    def config(self, dataset: str, pair: str, side: str) -> str:
        """The config of a model in this invocation's regime."""
        return config_for(self.args.regime, dataset, pair, side)

    def spec(self, dataset: str, pair: str, side: str, lr: float, seed: int,
             role: str, curve: bool) -> dict:
        """The spec of one run (``role`` "grid" or "seed"; ``curve``: evaluate its
        intermediate checkpoints in the run)."""
        d = DATASETS[dataset]
        regime = self.args.regime
        config = self.config(dataset, pair, side)
        rs_config = self.config(dataset, pair, "rs")
        fit, holdout = fit_holdout_names(d["train"])
        eval_holdout = role == "grid"
        tests = (holdout, d["val"]) if eval_holdout else (d["val"],)
        name = run_name(regime, dataset, pair, side, lr, seed)
        run_dir = os.path.join(self.out, "runs", name)
        # The schedule is computed from the RS config, so all sides get the same overrides.
        opts = (["SOLVER.BASE_LR", repr(float(lr)), "SEED", str(seed)]
                + self.schedule_opts(rs_config)
                + ["DATASETS.TRAIN", _tuple_opt((fit,)), "DATASETS.TEST", _tuple_opt(tests)]
                + self.size_opts(dataset) + list(self.args.opts)
                + ["OUTPUT_DIR", run_dir])
        _, iters = curve_iterations(int(self.args.max_iter), self.args.curve_points)
        return dict(
            name=name, regime=regime, backbone=self.backbone_init(config),
            dataset=dataset, pair=pair, side=side, model=MODEL_NAMES[(pair, side)],
            role=role, config=config, config_path=os.path.join(REPO, config), opts=opts,
            lr=float(lr), seed=int(seed), max_iter=int(self.args.max_iter),
            train_dataset=d["train"], val_dataset=d["val"], fit_dataset=fit,
            holdout_dataset=holdout, holdout_fraction=float(self.args.holdout_fraction),
            eval_holdout=eval_holdout, curve_in_run=bool(curve), curve_iters=iters,
            run_dir=run_dir, result=os.path.join(self.out, "results", name + ".json"),
        )

    def backbone_init(self, config: str) -> Dict[str, Any]:
        """How the config initialises its backbone (what the regime changes)."""
        cfg = self.load_cfg(config)
        return dict(weights=cfg.MODEL.WEIGHTS, norm=cfg.MODEL.RESNETS.NORM,
                    freeze_at=int(cfg.MODEL.BACKBONE.FREEZE_AT))

    def check_pair(self, dataset: str, pair: str) -> List[str]:
        """Shared settings (leaf keys of SHARED_KEYS but not DESIGN_KEYS) in which a stock
        config of the pair differs from the RS config, in the current regime."""
        rs = self.load_cfg(self.config(dataset, pair, "rs"))
        diffs = []
        for side in pair_sides(dataset, pair):
            if side == "rs":
                continue
            other = self.load_cfg(self.config(dataset, pair, side))
            for key in self.SHARED_KEYS:
                va, vb = rs, other
                for part in key.split("."):
                    va, vb = va[part], vb[part]
                for leaf, (x, y) in _leaf_pairs(key, va, vb):
                    if x != y and leaf not in self.DESIGN_KEYS:
                        diffs.append(f"{leaf}: RS {x} vs {side} {y}")
        return diffs

    # ---- the jobs ----
    def all_jobs(self) -> List[dict]:
        """Every training run and curve evaluation of the comparison, with its cost."""
        args = self.args
        jobs = []
        _, iters = curve_iterations(args.max_iter, args.curve_points)
        extra_points = len(iters) - 1
        for dataset in args.datasets:
            for pair in args.pairs:
                num_train, num_val = self.dataset_sizes(dataset, self.config(dataset, pair, "rs"))
                held = num_holdout(num_train, args.holdout_fraction)
                for side in pair_sides(dataset, pair):
                    base = dict(dataset=dataset, pair=pair, side=side)
                    for lr in side_lrs(args, side):
                        jobs.append(dict(base, kind="grid", lr=lr, seed=args.seeds[0],
                                         iters=args.max_iter, eval_images=held + num_val))
                    if extra_points:
                        jobs.append(dict(base, kind="curve", iters=0,
                                         eval_images=extra_points * num_val))
                    for seed in args.seeds[1:]:
                        jobs.append(dict(base, kind="seed", seed=seed, iters=args.max_iter,
                                         eval_images=(1 + extra_points) * num_val))
        return jobs

    def remaining_jobs(self) -> List[dict]:
        """The jobs of :meth:`all_jobs` without a finished result in the output folder."""
        results = {r["name"]: r for r in load_results(self.out)}
        chosen: Dict[Tuple[str, str, str, str], Optional[dict]] = {}
        remaining = []
        for job in self.all_jobs():
            key = (self.args.regime, job["dataset"], job["pair"], job["side"])
            if job["kind"] == "grid":
                if run_name(*key, job["lr"], job["seed"]) not in results:
                    remaining.append(job)
                continue
            if key not in chosen:
                grid = [results.get(run_name(*key, lr, self.args.seeds[0]))
                        for lr in side_lrs(self.args, job["side"])]
                chosen[key] = select_lr([g for g in grid if g]) if all(grid) else None
            c = chosen[key]
            if c is None:
                remaining.append(job)
            elif job["kind"] == "curve" and not c.get("curve_complete"):
                remaining.append(job)
            elif job["kind"] == "seed" and run_name(*key, c["lr"], job["seed"]) not in results:
                remaining.append(job)
        return remaining


def plan_text(args: argparse.Namespace, jobs: Sequence[dict]) -> str:
    """The one-line summary of the plan printed at the start."""
    n_train = sum(j["kind"] != "curve" for j in jobs)
    n_curve = sum(j["kind"] == "curve" for j in jobs)
    train_s = sum(j["iters"] for j in jobs)
    _, iters = curve_iterations(args.max_iter, args.curve_points)
    models = [(d, pr, side) for d in args.datasets for pr in args.pairs for side in pair_sides(d, pr)]
    return (f"Plan ({args.regime} regime): {len(args.datasets)} dataset(s) x {len(args.pairs)} "
            f"pair(s), {len(models)} models: "
            f"{n_train} training runs ({sum(j['kind'] == 'grid' for j in jobs)} grid, "
            f"{sum(j['kind'] == 'seed' for j in jobs)} seed) of {args.max_iter} iterations "
            f"({train_s} in all) and {n_curve} curve evaluations (val at iterations {iters}); "
            f"{sum(j['eval_images'] for j in jobs)} evaluated images in all.")
