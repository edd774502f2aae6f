#!/usr/bin/env python
"""Compare RS detectors with detectron2's stock ones on the built-in synthetic datasets.

For each dataset (``rs_synthetic``, ``rs_synthetic_hard``) and each pair (``faster``,
``mask``, ``atss``) it trains the RS model and detectron2's stock model(s) of the same
setting; the ``atss`` pair has two stock models, detectron2's RetinaNet as it is
(``stock``) and with its GroupNorm head option, ``MODEL.RETINANET.NORM "GN"``
(``stock_gn``, the normalisation RS-ATSS's head has), each compared with the same RS
runs::

    dataset            pair    side      config (the regime's folder)
    rs_synthetic       faster  stock     faster_rcnn_R_18_FPN.yaml
                               rs        rs_faster_rcnn_R_18_FPN.yaml
    rs_synthetic       mask    stock     mask_rcnn_R_18_FPN.yaml
                               rs        rs_mask_rcnn_R_18_FPN.yaml
    rs_synthetic       atss    stock     retinanet_R_18_FPN.yaml
                               stock_gn  retinanet_gn_R_18_FPN.yaml
                               rs        rs_atss_R_18_FPN.yaml
    rs_synthetic_hard  (the same files with the suffix _hard)

**Regimes** (``--regime``): ``scratch`` (default) uses the configs of ``configs/Synthetic/``
(the whole network trained from scratch); ``pretrained`` uses the files of the same names
in ``configs/Synthetic/pretrained/``, which ``_BASE_`` the scratch ones and set
``MODEL.WEIGHTS`` (a pretrained backbone), ``MODEL.RESNETS.NORM "FrozenBN"`` and
``MODEL.BACKBONE.FREEZE_AT 2``. The regime is part of every run name
(``<regime>-<dataset>-<pair>-<side>-lr<LR>-seed<S>``), result JSON and report title.

The configs of a pair share backbone (its weights, norm and frozen stages included),
input size, schedule (cosine, warmup, gradient clipping), batch and data; only the heads
and their losses differ (the script warns if a shared key differs).

Protocol
--------
1. **Learning rate, chosen on held-out training images.** The dataset's train split is
   cut, deterministically by image id, into a *fit* part and a *holdout* part (the last
   ``--holdout-fraction`` = 20% of the images sorted by ``image_id``), registered as
   ``<train>_fit`` / ``<train>_holdout`` in DatasetCatalog/MetadataCatalog (metadata copied
   from the train split: ``thing_classes``, ``thing_dataset_id_to_contiguous_id``,
   ``evaluator_type``; no ``json_file``, so COCOEvaluator converts the dicts to COCO format
   itself). Every run trains on the fit part only. Each model is trained once per learning
   rate of its side's grid (``--lrs-rs``, default 0.01 0.02 0.03; ``--lrs-stock``, default
   0.01 0.03 0.06; ``--lrs-stock-gn``, default that of ``--lrs-stock``) with the first seed,
   the RS model once per pair whatever its number of stock models; the learning rate with
   the best holdout box AP is
   chosen (ties, and runs without an AP, go to the smaller learning rate; a run whose loss
   became NaN/inf is recorded as "diverged" and never chosen). Mask pairs are chosen by box
   AP too.
2. **Validation AP, two seeds.** Each grid run evaluates its final model on both the
   holdout part and the val split, so nothing is rerun: the grid run at the chosen learning
   rate is the first seed's result, and one more run per further seed (``--seeds``,
   default 1 2) trains at the chosen learning rate and is evaluated on val.
3. **Learning curves.** Every run saves a checkpoint every ``ceil(MAX_ITER /
   --curve-points)`` iterations (``SOLVER.CHECKPOINT_PERIOD``). Only the seed runs at the
   chosen learning rate get their intermediate checkpoints evaluated on val (box AP, and
   mask AP for mask pairs): the chosen grid run in a separate ``--curve-one`` subprocess
   once its grid is done, the other seeds in their own run. The other grid runs' curve
   checkpoints are deleted unevaluated (``--keep-checkpoints`` keeps them). The cost is
   ``(curve-points - 1) x NUM_VAL`` evaluated images per seed run, printed in the time
   estimate and recorded per run (``curve_eval_seconds``).

Every run has the configs' schedule, batch, input size, clipping and data; the only
overrides, identical for all sides of a pair, are: ``SOLVER.BASE_LR``, ``SEED``,
``SOLVER.MAX_ITER`` (``--max-iter``), ``SOLVER.WARMUP_ITERS`` (the config's warmup scaled
by ``--max-iter / config MAX_ITER``; multi-step ``SOLVER.STEPS`` are scaled the same way),
``SOLVER.CHECKPOINT_PERIOD`` (the curve period), ``TEST.EVAL_PERIOD 0``,
``DATASETS.TRAIN`` (the fit part), ``DATASETS.TEST`` (holdout and val, or val), the dataset
sizes of ``--num-train``/``--num-val`` if given, ``OUTPUT_DIR``, and any trailing ``KEY
VALUE`` pairs of the command line (meant for smoke tests: tiny input sizes and the like).

Runs, resume, outputs
---------------------
The default ``--output-dir`` is ``./output/compare_to_detectron2``, with ``_<regime>``
appended unless the regime is scratch and ``_<max-iter>iter`` unless ``--max-iter`` is
1000 (``..._pretrained``, ``..._pretrained_2000iter``): one directory holds one regime and
one schedule, and the script refuses to run in a directory holding results of another
regime or ``--max-iter`` (or made before regimes existed; ``--report-only`` reads any).

Each run is one subprocess, ``python benchmarks/compare_to_detectron2.py --run-one
<run dir>/spec.json``, which registers the fit/holdout datasets itself, builds the config
as ``train_net.py`` does (:func:`~rs_detectron2.engine.default_rs_setup` of the config file
plus the overrides, which ``--dry-run`` prints), trains with :class:`RSTrainer` in its own
``OUTPUT_DIR`` (``<output-dir>/runs/<name>/``, with detectron2's log.txt, metrics.json and
model_final.pth; the console goes to ``console.log`` there) and writes
``<output-dir>/results/<name>.json`` atomically at the end. Before each run, an existing
result JSON means "done, skip" (after checking it was made with the same regime, config,
schedule and overrides); a run directory without a result JSON is a killed run and is
deleted and started again from scratch. The runs go dataset by dataset, pair by pair,
model by model (grid, then curve, then further seeds), so a kill loses at most one run.
The report is regenerated after every run, and from whatever JSONs exist with
``--report-only``:

* ``results/<name>.json``: one per finished run: regime, backbone initialisation (weights,
  norm, frozen stages), config, overrides, seed, LR, holdout AP, val AP dicts (box: AP,
  AP50, AP75, APs, APm, APl; mask: the same), training seconds and seconds per iteration
  (training wall time up to the last iteration / iterations, evaluation excluded),
  evaluation seconds, curve points, split sizes, machine, versions;
* ``results.csv``: one row per run;
* ``results.md``: the regime and ``--max-iter`` (title and first lines); per dataset and
  pair, the chosen learning rate, val box AP (mean of the seeds and each seed), AP50,
  AP75, mask AP, s/iter of every model, RS - stock for each stock model; the grids with the
  holdout AP of every learning rate; the curve points;
* ``curves_<dataset>_<pair>.png``: val box AP over iterations, every model of the pair,
  one line per seed (and mask AP in a second panel for mask pairs).

Time
----
Per model: 3 grid runs + 1 seed run and 1 curve evaluation. The whole comparison (2
datasets x 7 models: faster 2, mask 2, atss 3 = 56 training runs of 1000 iterations, 14
curve evaluations) is estimated at about 2 h 50 min on a 2-core AMD EPYC, mask + atss
(40 runs) at about 2 h, the atss pair alone (24 runs, the GN model's 8 of them about 20
min) at about 1 h, and the mask pair at 2x (16 runs of 2000 iterations) at about 1 h 45
min. On a 2-core machine twice as slow, pass a smaller ``--max-iter`` (its own output
directory). The estimate printed at the start is, per model: ``runs x (start-up +
MAX_ITER x s/iter) + evaluated images x s/image``, with s/iter and s/image measured from
the finished runs of the output directory when there are any, and otherwise assumed (s/iter
at batch 4, 192 px, scratch: stock Faster 0.13, RS-Faster 0.135, stock Mask 0.16, RS-Mask
0.17, RetinaNet 0.11, RetinaNet with GN head 0.115 (forward + backward 1.03x RetinaNet's),
RS-ATSS 0.12; s/image evaluated: 0.03 box-only, 0.07 with masks; 15 s start-up per
subprocess). The pretrained regime's frozen stem and res2 make its iterations cheaper;
its estimate uses these scratch rates until its directory has finished runs.

    python benchmarks/compare_to_detectron2.py                     # everything, scratch
    python benchmarks/compare_to_detectron2.py --dry-run           # the plan and its commands
    python benchmarks/compare_to_detectron2.py --pairs mask atss   # both datasets, scratch
    python benchmarks/compare_to_detectron2.py --regime pretrained --pairs mask atss
    python benchmarks/compare_to_detectron2.py --regime pretrained --pairs mask --max-iter 2000
        # the Mask pair at 2x, in ./output/compare_to_detectron2_pretrained_2000iter
    python benchmarks/compare_to_detectron2.py --datasets rs_synthetic --pairs atss \\
        --lrs-stock-gn 0.01 0.02 0.03                              # a grid per side
    python benchmarks/compare_to_detectron2.py --report-only       # tables and plots again
    python benchmarks/compare_to_detectron2.py --regime pretrained --report-only
    python benchmarks/compare_to_detectron2.py --max-iter 30 --num-train 40 --num-val 20 \\
        --output-dir /tmp/cmp DATALOADER.NUM_WORKERS 0           # a quick smoke run
"""
import argparse
import csv
import functools
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import cpu_name  # noqa: E402  (benchmarks/machine.py)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

SCRIPT = os.path.abspath(__file__)

# Regime -> the folder of its configs (relative to the repository root). The configs of
# both folders have the same file names; the pretrained ones _BASE_ the scratch ones and set
# MODEL.WEIGHTS, MODEL.RESNETS.NORM and MODEL.BACKBONE.FREEZE_AT.
CONFIG_DIRS: Dict[str, str] = OrderedDict(
    scratch="configs/Synthetic",
    pretrained="configs/Synthetic/pretrained",
)
REGIMES = tuple(CONFIG_DIRS)
# Run (and report) order of the models of a pair: the stock models, then RS.
SIDES = ("stock", "stock_gn", "rs")
# pair -> side -> config name stem; a dataset's files add its suffix ("" or "_hard"), in
# the regime's folder of CONFIG_DIRS.
_PAIR_STEMS = OrderedDict(
    faster=OrderedDict(stock="faster_rcnn_R_18_FPN", rs="rs_faster_rcnn_R_18_FPN"),
    mask=OrderedDict(stock="mask_rcnn_R_18_FPN", rs="rs_mask_rcnn_R_18_FPN"),
    atss=OrderedDict(stock="retinanet_R_18_FPN", stock_gn="retinanet_gn_R_18_FPN",
                     rs="rs_atss_R_18_FPN"),
)


def _pair_configs(suffix: str) -> "OrderedDict[str, OrderedDict[str, str]]":
    """pair -> side -> config file name of the dataset whose configs end in ``suffix``."""
    return OrderedDict((pair, OrderedDict((side, f"{stem}{suffix}.yaml") for side, stem in sides.items()))
                       for pair, sides in _PAIR_STEMS.items())


# dataset -> train split, val split, config prefix of its size keys, pairs.
DATASETS: Dict[str, Dict[str, Any]] = OrderedDict(
    rs_synthetic=dict(train="rs_synthetic_train", val="rs_synthetic_val",
                      cfg_key="DATASETS.RS_SYNTHETIC", pairs=_pair_configs("")),
    rs_synthetic_hard=dict(train="rs_synthetic_hard_train", val="rs_synthetic_hard_val",
                           cfg_key="DATASETS.RS_SYNTHETIC_HARD", pairs=_pair_configs("_hard")),
)
PAIRS = ("faster", "mask", "atss")
MODEL_NAMES = {
    ("faster", "stock"): "Faster R-CNN (detectron2)",
    ("faster", "rs"): "RS-Faster R-CNN",
    ("mask", "stock"): "Mask R-CNN (detectron2)",
    ("mask", "rs"): "RS-Mask R-CNN",
    ("atss", "stock"): "RetinaNet (detectron2)",
    ("atss", "stock_gn"): "RetinaNet with GN head (detectron2)",
    ("atss", "rs"): "RS-ATSS",
}
# Learning-rate grids; stock_gn defaults to the stock grid (--lrs-stock).
DEFAULT_LRS = {"rs": (0.01, 0.02, 0.03), "stock": (0.01, 0.03, 0.06)}
DEFAULT_MAX_ITER = 1000
DEFAULT_OUTPUT_DIR = "./output/compare_to_detectron2"
# Assumptions of the time estimate when no finished run has measured them (2-core CPU).
ASSUMED_S_PER_ITER = {("faster", "stock"): 0.13, ("faster", "rs"): 0.135,
                      ("mask", "stock"): 0.16, ("mask", "rs"): 0.17,
                      ("atss", "stock"): 0.11, ("atss", "stock_gn"): 0.115, ("atss", "rs"): 0.12}
ASSUMED_S_PER_EVAL_IMAGE = {"faster": 0.03, "mask": 0.07, "atss": 0.03}
ASSUMED_STARTUP_S = 15.0
# Overrides that may differ between the runs of one output directory without making
# their results incomparable.
_NOT_COMPARED = ("OUTPUT_DIR",)


# ----------------------------------------------------------------------------------------
# Fit / holdout split (used by the run subprocesses and the tests)
# ----------------------------------------------------------------------------------------
def split_fit_holdout(dicts: Sequence[dict], fraction: float) -> Tuple[List[dict], List[dict]]:
    """Cut dataset dicts into (fit, holdout): the holdout is the last ``round(fraction *
    N)`` images by ``image_id`` (at least 1, at most N - 1). Deterministic, disjoint, and
    together they are the whole input."""
    ordered = sorted(dicts, key=lambda d: d["image_id"])
    n = len(ordered)
    if n < 2:
        raise ValueError(f"cannot split {n} image(s) into a fit and a holdout part")
    num_holdout = min(max(int(n * float(fraction) + 0.5), 1), n - 1)
    return ordered[: n - num_holdout], ordered[n - num_holdout:]


def fit_holdout_names(train_name: str) -> Tuple[str, str]:
    return f"{train_name}_fit", f"{train_name}_holdout"


def _load_part(train_name: str, fraction: float, part: int) -> List[dict]:
    from detectron2.data import DatasetCatalog

    return split_fit_holdout(DatasetCatalog.get(train_name), fraction)[part]


def register_fit_holdout(train_name: str, fraction: float) -> Tuple[str, str]:
    """Register ``<train_name>_fit`` and ``<train_name>_holdout`` (lazily: the train split
    is loaded when one of them is), with the train split's class metadata and no
    ``json_file``. ``train_name`` must be registered already. Returns the two names."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if train_name not in DatasetCatalog:
        raise KeyError(f"dataset {train_name!r} is not registered (known: {sorted(DatasetCatalog)})")
    source = MetadataCatalog.get(train_name)
    names = fit_holdout_names(train_name)
    for part, name in enumerate(names):
        if name in DatasetCatalog:
            DatasetCatalog.remove(name)
        if name in MetadataCatalog:
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, functools.partial(_load_part, train_name, float(fraction), part))
        meta = dict(thing_classes=list(source.thing_classes),
                    evaluator_type=source.get("evaluator_type", "coco"))
        if source.get("thing_dataset_id_to_contiguous_id", None) is not None:
            meta["thing_dataset_id_to_contiguous_id"] = dict(source.thing_dataset_id_to_contiguous_id)
        MetadataCatalog.get(name).set(**meta)
    return names


# ----------------------------------------------------------------------------------------
# Machine and versions
# ----------------------------------------------------------------------------------------
def machine_info() -> Dict[str, Any]:
    import torch

    cpu = cpu_name()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        usable = os.cpu_count()
    info = dict(cpu=cpu, cpu_count=os.cpu_count(), usable_cores=usable,
                torch_threads=torch.get_num_threads(), platform=platform.platform(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    return info


def versions() -> Dict[str, Optional[str]]:
    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for module in ("torch", "torchvision", "detectron2", "rs_detectron2", "numpy",
                   "pycocotools", "matplotlib"):
        try:
            mod = __import__(module)
            version = getattr(mod, "__version__", None)
            if version is None:
                from importlib.metadata import version as dist_version

                version = dist_version(module)
            out[module] = str(version)
        except Exception:  # noqa: BLE001 (any import failure: report it as missing)
            out[module] = None
    return out


# ----------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------
def _finite(x: Any) -> Optional[float]:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _clean(results: Any) -> Any:
    """Evaluation results as plain JSON (NaN -> None)."""
    if isinstance(results, dict):
        return {str(k): _clean(v) for k, v in results.items()}
    return _finite(results)


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _model_name(pair: str, side: str) -> str:
    return MODEL_NAMES.get((pair, side), side)


def _lr_tag(lr: float) -> str:
    return f"{lr:g}"


def run_name(regime: str, dataset: str, pair: str, side: str, lr: float, seed: int) -> str:
    return f"{regime}-{dataset}-{pair}-{side}-lr{_lr_tag(lr)}-seed{seed}"


def pair_sides(dataset: str, pair: str) -> List[str]:
    """The models of a pair, in run order (the stock ones, then RS)."""
    return [side for side in SIDES if side in DATASETS[dataset]["pairs"][pair]]


def config_for(regime: str, dataset: str, pair: str, side: str) -> str:
    """The config of one model in one regime, relative to the repository root."""
    return os.path.join(CONFIG_DIRS[regime], DATASETS[dataset]["pairs"][pair][side])


def side_lrs(args: argparse.Namespace, side: str) -> List[float]:
    """The learning-rate grid of a side: --lrs-rs, --lrs-stock or --lrs-stock-gn."""
    return list(args.lrs[side])


def default_output_dir(regime: str, max_iter: int) -> str:
    """One folder per regime and schedule, so that their results never mix:
    ./output/compare_to_detectron2[_pretrained][_<max_iter>iter] (the suffix only when
    not the default 1000)."""
    return (DEFAULT_OUTPUT_DIR + ("" if regime == "scratch" else f"_{regime}")
            + ("" if max_iter == DEFAULT_MAX_ITER else f"_{max_iter}iter"))


def curve_iterations(max_iter: int, points: int) -> Tuple[int, List[int]]:
    """(checkpoint period, iterations of the curve points, the last being max_iter)."""
    points = max(int(points), 1)
    period = max(int(math.ceil(max_iter / points)), 1)
    iters = [k * period for k in range(1, points) if k * period < max_iter] + [max_iter]
    return period, iters


def _checkpoint_for(run_dir: str, iteration: int) -> str:
    """PeriodicCheckpointer's file after ``iteration`` iterations (its 0-based index is
    ``iteration - 1``)."""
    return os.path.join(run_dir, f"model_{iteration - 1:07d}.pth")


def _tuple_opt(names: Sequence[str]) -> str:
    """A tuple of names as a config override value: ("a", "b",)."""
    return "(" + ", ".join(f'"{n}"' for n in names) + ",)"


def _fmt(x: Optional[float], digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


# ----------------------------------------------------------------------------------------
# The run subprocess (--run-one spec.json) and the curve subprocess (--curve-one result.json)
# ----------------------------------------------------------------------------------------
def _setup_run(spec: dict):
    """Config, registration and logging of one run, as train_net.py does it."""
    from detectron2.data import DatasetCatalog
    from detectron2.engine import default_argument_parser

    import rs_detectron2  # noqa: F401  (registers the RS heads and the built-in datasets)
    from rs_detectron2.engine import default_rs_setup

    args = default_argument_parser().parse_args(["--config-file", spec["config_path"], *spec["opts"]])
    cfg = default_rs_setup(args)
    if spec["train_dataset"] not in DatasetCatalog:
        # Built-in datasets registered by their own *_from_cfg function (if
        # default_rs_setup does not do it for this dataset).
        import rs_detectron2.data as data

        for attr in dir(data):
            if attr.startswith("register_") and attr.endswith("_from_cfg"):
                try:
                    getattr(data, attr)(cfg)
                except Exception:  # noqa: BLE001 (a registration for other config keys)
                    pass
    register_fit_holdout(spec["train_dataset"], spec["holdout_fraction"])
    return cfg


def _coco_evaluator(cfg, dataset_name: str, output_dir: Optional[str]):
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import COCOEvaluator

    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    if MetadataCatalog.get(dataset_name).get("json_file", None) is not None:
        output_dir = None  # nothing to convert: write no prediction files
    return COCOEvaluator(dataset_name, tasks=tasks, distributed=True, output_dir=output_dir)


def _evaluate_curve(cfg, spec: dict, result: dict) -> None:
    """Evaluate the run's intermediate checkpoints on val; completes ``result["curve"]``."""
    from detectron2.checkpoint import DetectionCheckpointer

    from rs_detectron2.engine import RSTrainer

    run_dir = spec["run_dir"]
    val = spec["val_dataset"]
    iters = spec["curve_iters"][:-1]
    missing = [it for it in iters if not os.path.exists(_checkpoint_for(run_dir, it))]
    if missing:
        raise FileNotFoundError(f"curve checkpoints missing in {run_dir}: iterations {missing}")
    cfg_val = cfg.clone()
    cfg_val.defrost()
    cfg_val.DATASETS.TEST = (val,)
    cfg_val.freeze()
    model = RSTrainer.build_model(cfg_val)
    points = []
    start = time.perf_counter()
    for it in iters:
        DetectionCheckpointer(model).load(_checkpoint_for(run_dir, it))
        evaluator = _coco_evaluator(cfg_val, val, os.path.join(run_dir, f"inference_curve_{it}"))
        res = RSTrainer.test(cfg_val, model, evaluators=[evaluator])
        if "bbox" in res or "segm" in res:
            res = {val: res}
        points.append(_curve_point(it, res.get(val, {})))
    final = [p for p in result["curve"] if p["iter"] == spec["max_iter"]]
    result["curve"] = points + final
    result["curve_complete"] = True
    result["curve_eval_seconds"] = time.perf_counter() - start
    result["curve_eval_images"] = len(iters) * result.get("num_val_images", 0)


def _curve_point(iteration: int, res: dict) -> dict:
    return dict(iter=int(iteration),
                box_AP=_finite(res.get("bbox", {}).get("AP")),
                mask_AP=_finite(res.get("segm", {}).get("AP")) if "segm" in res else None)


def _delete_curve_checkpoints(run_dir: str, iters: Sequence[int]) -> None:
    for it in iters:
        path = _checkpoint_for(run_dir, it)
        if os.path.exists(path):
            os.remove(path)


_LAUNCH_ENV = "RS_COMPARE_LAUNCH_TIME"
_IMPORTED_AT = time.time()


def _since_launch() -> float:
    """Seconds since the parent started this subprocess (imports included), or since this
    module was imported when run by hand."""
    try:
        start = float(os.environ[_LAUNCH_ENV])
    except (KeyError, ValueError):
        start = _IMPORTED_AT
    return time.time() - start


def run_one(spec_path: str) -> int:
    """Train and evaluate one run described by ``spec_path``; write its result JSON."""
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.engine import HookBase

    from rs_detectron2.engine import RSTrainer

    with open(spec_path) as f:
        spec = json.load(f)
    cfg = _setup_run(spec)
    fit_name, holdout_name = fit_holdout_names(spec["train_dataset"])
    fit_ids = [d["image_id"] for d in DatasetCatalog.get(fit_name)]
    holdout_ids = [d["image_id"] for d in DatasetCatalog.get(holdout_name)]

    class TrainClock(HookBase):
        """Training wall time, from before the first iteration to after the last one
        (checkpoint saves included, the final evaluation excluded)."""

        start = end = None
        iterations = 0

        def before_train(self):
            self.start = time.perf_counter()

        def after_step(self):
            self.iterations = self.trainer.iter + 1 - self.trainer.start_iter
            self.end = time.perf_counter()

    clock = TrainClock()
    trainer = RSTrainer(cfg)
    trainer.register_hooks([clock])
    trainer.resume_or_load(resume=False)
    status, error = "ok", None
    try:
        trainer.train()
    except FloatingPointError as e:  # the loss became NaN/inf: the learning rate diverged
        status, error = "diverged", str(e).splitlines()[0][:500]
    after_train = time.perf_counter()
    train_seconds = (clock.end or after_train) - (clock.start or after_train)
    res = getattr(trainer, "_last_eval_results", None) or {}
    if "bbox" in res or "segm" in res:  # DefaultTrainer.test unwraps a single dataset
        res = {cfg.DATASETS.TEST[0]: res}
    res = _clean(dict(res))
    num_val = len(DatasetCatalog.get(spec["val_dataset"]))
    eval_images = num_val + (len(holdout_ids) if spec["eval_holdout"] else 0)
    try:
        losses = float(trainer.storage.history("total_loss").median(20))
    except KeyError:
        losses = None
    result = dict(
        spec,
        status=status,
        error=error,
        holdout=res.get(holdout_name) if spec["eval_holdout"] else None,
        holdout_box_AP=_finite((res.get(holdout_name) or {}).get("bbox", {}).get("AP")),
        val=res.get(spec["val_dataset"]),
        iterations=clock.iterations,
        train_seconds=train_seconds,
        seconds_per_iter=train_seconds / clock.iterations if clock.iterations else None,
        eval_seconds=(after_train - clock.end) if status == "ok" and clock.end else 0.0,
        eval_images=eval_images if status == "ok" else 0,
        final_total_loss_median20=losses,
        num_fit_images=len(fit_ids),
        num_holdout_images=len(holdout_ids),
        num_val_images=num_val,
        holdout_image_ids=holdout_ids,
        curve=[],
        curve_complete=False,
        curve_eval_seconds=0.0,
        curve_eval_images=0,
        machine=machine_info(),
        versions=versions(),
        ims_per_batch=cfg.SOLVER.IMS_PER_BATCH,
    )
    run_dir = spec["run_dir"]
    # The last periodic checkpoint is model_final.pth again.
    last = _checkpoint_for(run_dir, spec["max_iter"])
    if os.path.exists(last) and os.path.exists(os.path.join(run_dir, "model_final.pth")):
        os.remove(last)
    if status == "ok":
        result["curve"] = [_curve_point(spec["max_iter"], result["val"] or {})]
        result["curve_complete"] = len(spec["curve_iters"]) == 1
        if spec["curve_in_run"] and not result["curve_complete"]:
            _evaluate_curve(cfg, spec, result)
            _delete_curve_checkpoints(run_dir, spec["curve_iters"][:-1])
    else:
        _delete_curve_checkpoints(run_dir, spec["curve_iters"][:-1])
    result["wall_seconds"] = _since_launch()
    result["torch_threads"] = torch.get_num_threads()
    _write_json(spec["result"], result)
    print(f"compare_to_detectron2: wrote {spec['result']} ({status})", flush=True)
    return 0


def curve_one(result_path: str) -> int:
    """Evaluate the intermediate checkpoints of a finished run on val (its learning curve)
    and rewrite its result JSON."""
    result = _read_json(result_path)
    if result is None:
        raise FileNotFoundError(result_path)
    cfg = _setup_run(result)
    _evaluate_curve(cfg, result, result)
    result["curve_wall_seconds"] = _since_launch()
    _write_json(result_path, result)
    _delete_curve_checkpoints(result["run_dir"], result["curve_iters"][:-1])
    print(f"compare_to_detectron2: curve of {result_path} done", flush=True)
    return 0


# ----------------------------------------------------------------------------------------
# Planning (the parent process)
# ----------------------------------------------------------------------------------------
class Planner:
    """Builds run specs and knows the settings shared by all runs of one invocation."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = os.path.abspath(args.output_dir)
        self._cfg_cache: Dict[str, Any] = {}

    def load_cfg(self, config: str, extra: Sequence[str] = ()):
        from detectron2.config import get_cfg

        import rs_detectron2  # noqa: F401
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
        prefix = DATASETS[dataset]["cfg_key"]
        opts: List[str] = []
        if self.args.num_train is not None:
            opts += [f"{prefix}.NUM_TRAIN", str(self.args.num_train)]
        if self.args.num_val is not None:
            opts += [f"{prefix}.NUM_VAL", str(self.args.num_val)]
        return opts

    def dataset_sizes(self, dataset: str, config: str) -> Tuple[int, int]:
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
        return config_for(self.args.regime, dataset, pair, side)

    def spec(self, dataset: str, pair: str, side: str, lr: float, seed: int,
             role: str, curve: bool) -> dict:
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

    # Settings every model of a pair must share: only the heads and their losses differ.
    SHARED_KEYS = (
        "SOLVER.IMS_PER_BATCH", "SOLVER.LR_SCHEDULER_NAME", "SOLVER.WARMUP_ITERS",
        "SOLVER.MAX_ITER", "SOLVER.CLIP_GRADIENTS", "SOLVER.MOMENTUM", "SOLVER.WEIGHT_DECAY",
        "SOLVER.WEIGHT_DECAY_NORM", "INPUT", "MODEL.WEIGHTS", "MODEL.PIXEL_MEAN",
        "MODEL.PIXEL_STD", "MODEL.BACKBONE", "MODEL.RESNETS", "MODEL.FPN", "MODEL.MASK_ON",
        "DATASETS.TRAIN", "DATASETS.TEST", "SEED", "MODEL.ROI_HEADS.NUM_CLASSES",
        "MODEL.RETINANET.NUM_CLASSES", "MODEL.ANCHOR_GENERATOR.SIZES", "DATALOADER",
    )

    def check_pair(self, dataset: str, pair: str) -> List[str]:
        """Shared settings (leaf keys of SHARED_KEYS) in which a stock config of the pair
        differs from the RS config, in the current regime."""
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
                    if x != y:
                        diffs.append(f"{leaf}: RS {x} vs {side} {y}")
        return diffs


def _leaf_pairs(key: str, a: Any, b: Any) -> List[Tuple[str, Tuple[Any, Any]]]:
    """(dotted key, (value in a, value in b)) for every leaf of two config nodes."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _leaf_pairs(f"{key}.{k}", a.get(k), b.get(k))
        return out
    return [(key, (a, b))]


def _comparable(old: dict, new: dict) -> Optional[str]:
    """Why an existing result cannot stand for the planned run (None if it can)."""
    def strip(opts):
        pairs = zip(opts[0::2], opts[1::2])
        return [x for key, value in pairs if key not in _NOT_COMPARED for x in (key, value)]

    for key in ("regime", "config", "holdout_fraction", "max_iter", "curve_iters"):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} there, {new.get(key)!r} now"
    if strip(old.get("opts", [])) != strip(new["opts"]):
        return f"overrides: {strip(old.get('opts', []))} there, {strip(new['opts'])} now"
    return None


def _setting(result: dict, key: str) -> Any:
    """A setting of a result, for the report; results made before regimes existed are
    scratch ones."""
    return result.get(key, "scratch" if key == "regime" else None)


def check_output_dir(out: str, regime: str, max_iter: int) -> None:
    """Refuse an output directory that holds results of another regime or schedule (one
    directory, one report: one regime and one --max-iter, see default_output_dir), or
    results made before regimes existed (their run names lack it: they would be rerun)."""
    results = load_results(out)
    legacy = [r for r in results if "regime" not in r]
    if legacy:
        raise SystemExit(
            f"compare_to_detectron2: {out} holds {len(legacy)} result(s) made before regimes "
            f"existed (e.g. {legacy[0]['name']}); use another --output-dir "
            f"(--report-only still reports them).")
    others = [r for r in results if (r["regime"], r.get("max_iter")) != (regime, max_iter)]
    if others:
        found = sorted({f"regime {r['regime']}, --max-iter {r.get('max_iter')}" for r in others})
        raise SystemExit(
            f"compare_to_detectron2: {out} holds {len(others)} result(s) of another setting "
            f"({'; '.join(found)}), not regime {regime}, --max-iter {max_iter}: use another "
            f"--output-dir (the default one depends on --regime and --max-iter).")


def select_lr(grid_results: Sequence[dict]) -> Optional[dict]:
    """The grid run with the best holdout box AP (ties: the smaller learning rate);
    None if no run has an AP."""
    best = None
    for r in sorted(grid_results, key=lambda r: r["lr"]):
        ap = r.get("holdout_box_AP") if r.get("status") == "ok" else None
        if ap is None:
            continue
        if best is None or ap > best["holdout_box_AP"]:
            best = r
    return best


# ----------------------------------------------------------------------------------------
# Time estimate
# ----------------------------------------------------------------------------------------
def measured_rates(results: Sequence[dict]) -> Dict[str, Dict]:
    """s/iter per (dataset, pair, side) and (pair, side), s/evaluated image per pair and
    start-up seconds, from finished runs."""
    s_iter: Dict[Any, List[float]] = {}
    s_img: Dict[str, List[float]] = {}
    startup: List[float] = []
    for r in results:
        if r.get("status") != "ok" or not r.get("seconds_per_iter"):
            continue
        for key in ((r["dataset"], r["pair"], r["side"]), (r["pair"], r["side"])):
            s_iter.setdefault(key, []).append(r["seconds_per_iter"])
        images = r.get("eval_images", 0) + r.get("curve_eval_images", 0)
        seconds = r.get("eval_seconds", 0) + r.get("curve_eval_seconds", 0)
        if images:
            s_img.setdefault(r["pair"], []).append(seconds / images)
        rest = r.get("wall_seconds", 0) - r["train_seconds"] - r.get("eval_seconds", 0)
        if r.get("curve_in_run"):  # its curve was evaluated in the run itself
            rest -= r.get("curve_eval_seconds", 0)
        if rest > 0:
            startup.append(rest)
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return dict(s_iter={k: mean(v) for k, v in s_iter.items()},
                s_img={k: mean(v) for k, v in s_img.items()},
                startup=mean(startup) if startup else None)


def estimate_seconds(jobs: Sequence[dict], rates: Dict[str, Dict]) -> float:
    total = 0.0
    for job in jobs:
        pair, side, dataset = job["pair"], job["side"], job["dataset"]
        s_iter = rates["s_iter"].get((dataset, pair, side),
                                     rates["s_iter"].get((pair, side), ASSUMED_S_PER_ITER[(pair, side)]))
        s_img = rates["s_img"].get(pair, ASSUMED_S_PER_EVAL_IMAGE[pair])
        startup = rates["startup"] if rates["startup"] is not None else ASSUMED_STARTUP_S
        total += startup + job["iters"] * s_iter + job["eval_images"] * s_img
    return total


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------
def load_results(out: str) -> List[dict]:
    folder = os.path.join(out, "results")
    results = []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json"):
                r = _read_json(os.path.join(folder, name))
                if r is not None and "status" in r:
                    results.append(r)
    return results


def summarize(results: Sequence[dict]) -> "OrderedDict[Tuple[str, str], Dict[str, dict]]":
    """(dataset, pair) -> side -> {"grid", "chosen", "finals"}."""
    out: "OrderedDict[Tuple[str, str], Dict[str, dict]]" = OrderedDict()
    order = {name: i for i, name in enumerate(DATASETS)}
    keys = sorted({(r["dataset"], r["pair"]) for r in results},
                  key=lambda k: (order.get(k[0], 99), k[0], PAIRS.index(k[1]) if k[1] in PAIRS else 9))
    for dataset, pair in keys:
        sides = {}
        present = {r["side"] for r in results if (r["dataset"], r["pair"]) == (dataset, pair)}
        known = pair_sides(dataset, pair) if dataset in DATASETS and pair in PAIRS else []
        for side in [s for s in SIDES if s in known or s in present]:
            mine = [r for r in results if (r["dataset"], r["pair"], r["side"]) == (dataset, pair, side)]
            grid = [r for r in mine if r["role"] == "grid"]
            if grid:  # the grid seed: the seed most grid runs have (normally the only one)
                seeds = sorted({r["seed"] for r in grid})
                grid_seed = max(seeds, key=lambda s: sum(r["seed"] == s for r in grid))
                grid = sorted([r for r in grid if r["seed"] == grid_seed], key=lambda r: r["lr"])
            chosen = select_lr(grid)
            finals = []
            if chosen is not None:
                finals = [chosen] + sorted(
                    [r for r in mine if r["role"] == "seed" and r["lr"] == chosen["lr"]
                     and r["status"] == "ok"], key=lambda r: r["seed"])
            sides[side] = dict(grid=grid, chosen=chosen, finals=finals, all=mine)
        out[(dataset, pair)] = sides
    return out


def _val(r: dict, task: str, metric: str) -> Optional[float]:
    return _finite(((r.get("val") or {}).get(task) or {}).get(metric))


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


CSV_FIELDS = ["regime", "dataset", "pair", "side", "model", "config", "lr", "seed", "role", "status",
              "chosen", "max_iter", "ims_per_batch", "num_fit_images", "num_holdout_images",
              "num_val_images", "holdout_box_AP", "val_box_AP", "val_box_AP50", "val_box_AP75",
              "val_box_APs", "val_box_APm", "val_box_APl", "val_mask_AP", "val_mask_AP50",
              "val_mask_AP75", "train_seconds", "seconds_per_iter", "eval_seconds",
              "curve_eval_seconds", "wall_seconds", "final_total_loss_median20", "curve",
              "error", "result"]


def write_report(out: str, quiet: bool = False) -> Dict[str, str]:
    """results.csv, results.md and curves_*.png from the result JSONs in ``out``."""
    results = load_results(out)
    summary = summarize(results)
    chosen_names = {s["chosen"]["name"] for sides in summary.values() for s in sides.values()
                    if s["chosen"] is not None}
    paths = {}

    rows = []
    for r in sorted(results, key=lambda r: (r["dataset"], PAIRS.index(r["pair"]),
                                            SIDES.index(r["side"]), r["seed"], r["lr"])):
        row = {k: r.get(k) for k in CSV_FIELDS}
        row["regime"] = _setting(r, "regime")
        row["chosen"] = r["name"] in chosen_names
        for task, prefix in (("bbox", "val_box_"), ("segm", "val_mask_")):
            for metric in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
                if prefix + metric in CSV_FIELDS:
                    row[prefix + metric] = _val(r, task, metric)
        row["curve"] = ";".join(f"{p['iter']}:{_fmt(p['box_AP'], 2)}" + (
            f"/{_fmt(p['mask_AP'], 2)}" if p.get("mask_AP") is not None else "")
            for p in r.get("curve") or [])
        row["result"] = os.path.relpath(r["result"], out) if r.get("result") else ""
        rows.append(row)
    paths["csv"] = os.path.join(out, "results.csv")
    os.makedirs(out, exist_ok=True)
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)

    regimes = sorted({_setting(r, "regime") for r in results})
    max_iters = sorted({r["max_iter"] for r in results})
    title = "# RS detectors vs detectron2's stock detectors"
    if results:
        title += (f" ({' / '.join(regimes)} regime, "
                  f"{' / '.join(str(n) for n in max_iters)} iterations)")
    md = [title, ""]
    if results:
        r0 = results[0]
        m = r0.get("machine", {})
        v = r0.get("versions", {})
        md += [f"Regime: {' / '.join(regimes)} (configs in "
               + ", ".join(f"{CONFIG_DIRS.get(g, g)}/" for g in regimes) + "; backbone "
               + "; ".join(_backbone_text(b) for b in sorted(
                   {json.dumps(r.get("backbone"), sort_keys=True) for r in results})) + ").",
               f"Machine: {m.get('cpu')}, {m.get('usable_cores')} usable cores, torch threads "
               f"{r0.get('torch_threads', m.get('torch_threads'))}, GPU: {m.get('gpu') or 'none'}.",
               "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
               f"Schedule: --max-iter {' / '.join(str(n) for n in max_iters)} "
               f"iterations of batch {r0.get('ims_per_batch')}; "
               f"learning rate chosen on the holdout part ({r0['holdout_fraction']:.0%} of train, "
               f"last image ids) by box AP; val AP of the seeds at the chosen learning rate. "
               f"Training time: {sum(r.get('train_seconds', 0) for r in results) / 3600:.2f} h, "
               f"whole runs with their evaluations: "
               f"{sum(r.get('wall_seconds', 0) + r.get('curve_wall_seconds', 0) for r in results) / 3600:.2f} h "
               f"({len(results)} runs).", ""]
    else:
        md += ["No finished runs yet.", ""]
    for (dataset, pair), sides in summary.items():
        mask = pair == "mask"
        mine = [r for s in sides.values() for r in s["all"]]
        schedules = " / ".join(str(n) for n in sorted({r["max_iter"] for r in mine}))
        md += [f"## {dataset}, {pair}", "", f"Schedule: {schedules} iterations.", ""]
        head = "| model | chosen LR | box AP (mean) | box AP per seed | AP50 | AP75 |"
        rule = "|---|---:|---:|---|---:|---:|"
        if mask:
            head += " mask AP (mean) | mask AP per seed | mask AP50 | mask AP75 |"
            rule += "---:|---|---:|---:|"
        md += [head + " s/iter |", rule + "---:|"]
        means = {}
        for side, s in sides.items():
            finals = s["finals"]
            model = _model_name(pair, side)
            if not finals:
                why = "(no runs yet)" if not s["grid"] else "(no LR gave a holdout AP)"
                md.append(f"| {model} | {why} |"
                          + " |" * (9 if mask else 5))
                continue
            box = [_val(r, "bbox", "AP") for r in finals]
            means[side] = _mean(box)
            line = (f"| {model} | {_lr_tag(s['chosen']['lr'])} | **{_fmt(means[side])}** | "
                    + ", ".join(f"{_fmt(b)} (seed {r['seed']})" for b, r in zip(box, finals))
                    + f" | {_fmt(_mean([_val(r, 'bbox', 'AP50') for r in finals]))}"
                    + f" | {_fmt(_mean([_val(r, 'bbox', 'AP75') for r in finals]))} |")
            if mask:
                seg = [_val(r, "segm", "AP") for r in finals]
                line += (f" {_fmt(_mean(seg))} | "
                         + ", ".join(f"{_fmt(x)} (seed {r['seed']})" for x, r in zip(seg, finals))
                         + f" | {_fmt(_mean([_val(r, 'segm', 'AP50') for r in finals]))}"
                         + f" | {_fmt(_mean([_val(r, 'segm', 'AP75') for r in finals]))} |")
            line += f" {_fmt(_mean([r.get('seconds_per_iter') for r in finals]), 3)} |"
            md.append(line)
        deltas = [f"RS - {side}, mean val box AP: {means['rs'] - means[side]:+.1f} "
                  f"({_model_name(pair, 'rs')} - {_model_name(pair, side)})."
                  for side in sides if side != "rs" and means.get(side) is not None
                  and means.get("rs") is not None]
        if deltas:
            md += [""] + deltas
        md += ["", "Learning-rate grid (first seed; holdout = held-out train images):", "",
               "| model | LR | holdout box AP | val box AP | " + ("val mask AP | " if mask else "")
               + "s/iter | status |",
               "|---|---:|---:|---:|" + ("---:|" if mask else "") + "---:|---|"]
        for side, s in sides.items():
            for r in s["grid"]:
                chosen = s["chosen"] is not None and r["name"] == s["chosen"]["name"]
                md.append(f"| {_model_name(pair, side)} | {_lr_tag(r['lr'])}{' (chosen)' if chosen else ''} | "
                          f"{_fmt(r.get('holdout_box_AP'))} | {_fmt(_val(r, 'bbox', 'AP'))} | "
                          + (f"{_fmt(_val(r, 'segm', 'AP'))} | " if mask else "")
                          + f"{_fmt(r.get('seconds_per_iter'), 3)} | {r['status']} |")
        curve_rows = [(side, r) for side, s in sides.items() for r in s["finals"] if r.get("curve")]
        if curve_rows:
            its = sorted({p["iter"] for _, r in curve_rows for p in r["curve"]})
            md += ["", "Val AP over training (box" + (" / mask" if mask else "") + "):", "",
                   "| model | seed | " + " | ".join(f"iter {it}" for it in its) + " |",
                   "|---|---:|" + "---:|" * len(its)]
            for side, r in curve_rows:
                by_iter = {p["iter"]: p for p in r["curve"]}
                cells = [(_fmt(by_iter[it]["box_AP"]) + (f" / {_fmt(by_iter[it].get('mask_AP'))}" if mask else ""))
                         if it in by_iter else "" for it in its]
                md.append(f"| {_model_name(pair, side)} | {r['seed']} | " + " | ".join(cells) + " |")
        md.append("")
        png = plot_curves(out, dataset, pair, sides)
        if png:
            paths[f"png_{dataset}_{pair}"] = png
            md += [f"![curves]({os.path.basename(png)})", ""]
    paths["md"] = os.path.join(out, "results.md")
    with open(paths["md"], "w") as f:
        f.write("\n".join(md) + "\n")
    if not quiet:
        print("\n".join(md))
    return paths


def _backbone_text(backbone_json: str) -> str:
    b = json.loads(backbone_json)
    if not b:
        return "not recorded"
    return (f"MODEL.WEIGHTS {b['weights']!r}" + (" (from scratch)" if not b["weights"] else "")
            + f", RESNETS.NORM {b['norm']}, BACKBONE.FREEZE_AT {b['freeze_at']}")


def plot_curves(out: str, dataset: str, pair: str, sides: Dict[str, dict]) -> Optional[str]:
    """curves_<dataset>_<pair>.png: val box AP (and mask AP) over iterations."""
    finals = [(side, r) for side, s in sides.items() for r in s["finals"] if r.get("curve")]
    if not finals:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("compare_to_detectron2: matplotlib is missing, no curve plots "
              "(pip install matplotlib)", file=sys.stderr)
        return None
    tasks = [("box_AP", "val box AP")] + ([("mask_AP", "val mask AP")] if pair == "mask" else [])
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    colors = {"stock": "tab:blue", "stock_gn": "tab:green", "rs": "tab:red"}
    styles = ["-", "--", ":", "-."]
    for ax, (key, title) in zip(axes[0], tasks):
        for side, r in finals:
            seed_index = sides[side]["finals"].index(r)
            pts = [(p["iter"], p.get(key)) for p in r["curve"] if p.get(key) is not None]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                    color=colors.get(side), linestyle=styles[seed_index % len(styles)],
                    label=f"{_model_name(pair, side)}, lr {_lr_tag(r['lr'])}, seed {r['seed']}")
        ax.set_xlabel("iteration")
        ax.set_ylabel(title)
        ax.set_title(f"{dataset}, {pair} ({_setting(finals[0][1], 'regime')}): {title}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(out, f"curves_{dataset}_{pair}.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------
class Driver:
    def __init__(self, args: argparse.Namespace, planner: Planner):
        self.args = args
        self.planner = planner
        self.started = time.perf_counter()
        self.done_jobs = 0

    # ---- one subprocess ----
    def _subprocess(self, argv: List[str], log_path: str, label: str) -> None:
        print(f"  $ {shlex.join(argv)}\n    (console: {log_path})", flush=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{_LAUNCH_ENV: repr(time.time())})
        with open(log_path, "a") as log:
            proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            with open(log_path) as f:
                tail = f.read()[-4000:]
            raise SystemExit(f"compare_to_detectron2: {label} failed (exit {proc.returncode}); "
                             f"last output:\n{tail}")

    def ensure_run(self, spec: dict) -> dict:
        """The result of ``spec``: its existing JSON, or run it now."""
        existing = _read_json(spec["result"])
        if existing is not None:
            why = _comparable(existing, spec)
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
        _write_json(spec_path, spec)
        print(f"[{time.strftime('%H:%M:%S')}] run {spec['name']} ({spec['role']}, "
              f"{spec['max_iter']} iterations)", flush=True)
        self._subprocess([sys.executable, SCRIPT, "--run-one", spec_path],
                         os.path.join(spec["run_dir"], "console.log"), spec["name"])
        result = _read_json(spec["result"])
        if result is None:
            raise SystemExit(f"compare_to_detectron2: {spec['name']} wrote no result JSON")
        self._after_job(result)
        return result

    def ensure_curve(self, result: dict) -> dict:
        if result.get("curve_complete") or self.args.dry_run:
            if self.args.dry_run and not result.get("curve_complete") and result:
                print(f"curve: {result['name']} (intermediate checkpoints on val)\n  $ "
                      f"{shlex.join([sys.executable, SCRIPT, '--curve-one', result['result']])}")
            return result
        iters = result["curve_iters"][:-1]
        if not all(os.path.exists(_checkpoint_for(result["run_dir"], it)) for it in iters):
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
        result = _read_json(result["result"])
        self._after_job(result)
        return result

    def _after_job(self, result: dict) -> None:
        self.done_jobs += 1
        holdout = result.get("holdout_box_AP")
        print(f"  -> {result['name']}: {result['status']}, holdout box AP {_fmt(holdout)}, "
              f"val box AP {_fmt(_val(result, 'bbox', 'AP'))}"
              + (f", val mask AP {_fmt(_val(result, 'segm', 'AP'))}" if result["pair"] == "mask" else "")
              + f", {_fmt(result.get('seconds_per_iter'), 3)} s/iter, "
              f"whole run {_fmt(result.get('wall_seconds'), 0)} s", flush=True)
        write_report(self.planner.out, quiet=True)
        remaining = estimate_seconds(self.remaining_jobs(), measured_rates(load_results(self.planner.out)))
        print(f"  elapsed {_hms(time.perf_counter() - self.started)}, "
              f"remaining about {_hms(remaining)}", flush=True)

    # ---- the plan ----
    def all_jobs(self) -> List[dict]:
        """Every training run and curve evaluation of the comparison, with its cost."""
        args = self.args
        jobs = []
        _, iters = curve_iterations(args.max_iter, args.curve_points)
        extra_points = len(iters) - 1
        for dataset in args.datasets:
            for pair in args.pairs:
                rs_config = self.planner.config(dataset, pair, "rs")
                num_train, num_val = self.planner.dataset_sizes(dataset, rs_config)
                num_holdout = min(max(int(num_train * args.holdout_fraction + 0.5), 1), num_train - 1)
                for side in pair_sides(dataset, pair):
                    base = dict(dataset=dataset, pair=pair, side=side)
                    for lr in side_lrs(args, side):
                        jobs.append(dict(base, kind="grid", lr=lr, seed=args.seeds[0],
                                         iters=args.max_iter, eval_images=num_holdout + num_val))
                    if extra_points:
                        jobs.append(dict(base, kind="curve", iters=0,
                                         eval_images=extra_points * num_val))
                    for seed in args.seeds[1:]:
                        jobs.append(dict(base, kind="seed", seed=seed, iters=args.max_iter,
                                         eval_images=(1 + extra_points) * num_val))
        return jobs

    def remaining_jobs(self) -> List[dict]:
        results = {r["name"]: r for r in load_results(self.planner.out)}
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

    def run(self) -> None:
        args = self.args
        for dataset in args.datasets:
            for pair in args.pairs:
                for side in pair_sides(dataset, pair):
                    self.run_model(dataset, pair, side)

    def run_model(self, dataset: str, pair: str, side: str) -> None:
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
              f"{_lr_tag(chosen['lr'])} (holdout box AP {_fmt(chosen['holdout_box_AP'])}; grid: "
              + ", ".join(f"{_lr_tag(g['lr'])} -> {_fmt(g.get('holdout_box_AP'))}" for g in grid) + ")",
              flush=True)
        if not args.keep_checkpoints and not args.dry_run:
            for g in grid:
                if g["name"] != chosen["name"]:
                    _delete_curve_checkpoints(g["run_dir"], g["curve_iters"][:-1])
        self.ensure_curve(chosen)
        for seed in args.seeds[1:]:
            self.ensure_run(self.planner.spec(dataset, pair, side, chosen["lr"], seed, "seed", True))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Trailing KEY VALUE pairs are added to the overrides of every run (all models).")
    p.add_argument("--regime", choices=REGIMES, default="scratch",
                   help="scratch: the configs of configs/Synthetic/ (backbone from scratch); "
                        "pretrained: those of the same names in configs/Synthetic/pretrained/ "
                        "(pretrained, frozen-BN backbone). Default scratch")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    p.add_argument("--max-iter", type=int, default=DEFAULT_MAX_ITER,
                   help=f"schedule length of every run (default {DEFAULT_MAX_ITER}; 2x: 2000)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2],
                   help="the first one also runs the learning-rate grids (default 1 2)")
    p.add_argument("--lrs-rs", type=float, nargs="+", default=list(DEFAULT_LRS["rs"]),
                   metavar="LR", help="learning-rate grid of the RS models (side rs; "
                                      "default %(default)s)")
    p.add_argument("--lrs-stock", type=float, nargs="+", default=list(DEFAULT_LRS["stock"]),
                   metavar="LR", help="learning-rate grid of detectron2's models (side stock, "
                                      "and stock_gn unless --lrs-stock-gn; default %(default)s)")
    p.add_argument("--lrs-stock-gn", type=float, nargs="+", default=None, metavar="LR",
                   help="learning-rate grid of detectron2's RetinaNet with GN head (side "
                        "stock_gn of the atss pair; default: that of --lrs-stock)")
    p.add_argument("--holdout-fraction", type=float, default=0.2,
                   help="share of the train split held out for choosing the learning rate")
    p.add_argument("--curve-points", type=int, default=4,
                   help="val evaluations over training of the seed runs, the end included")
    p.add_argument("--num-train", type=int, default=None, help="train split size (config's if unset)")
    p.add_argument("--num-val", type=int, default=None, help="val split size (config's if unset)")
    p.add_argument("--output-dir", default=None,
                   help=f"default {DEFAULT_OUTPUT_DIR}[_<regime> unless scratch]"
                        f"[_<max-iter>iter unless {DEFAULT_MAX_ITER}], so that regimes and "
                        "schedules never mix")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep the unevaluated curve checkpoints of the grid runs not chosen")
    p.add_argument("--report-only", action="store_true",
                   help="only regenerate results.csv/.md and the plots from the JSONs")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its commands")
    p.add_argument("--run-one", metavar="SPEC_JSON", help=argparse.SUPPRESS)
    p.add_argument("--curve-one", metavar="RESULT_JSON", help=argparse.SUPPRESS)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config overrides for every run")
    args = p.parse_args(argv)
    if args.opts and args.opts[0] == "--":
        args.opts = args.opts[1:]
    if len(args.opts) % 2:
        p.error(f"trailing overrides must be KEY VALUE pairs, got {args.opts}")
    if not 0 < args.holdout_fraction < 1:
        p.error("--holdout-fraction must be in (0, 1)")
    if args.max_iter < 1 or args.curve_points < 1:
        p.error("--max-iter and --curve-points must be >= 1")
    args.lrs = dict(rs=args.lrs_rs, stock=args.lrs_stock,
                    stock_gn=args.lrs_stock if args.lrs_stock_gn is None else args.lrs_stock_gn)
    if args.output_dir is None:
        args.output_dir = default_output_dir(args.regime, args.max_iter)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.run_one:
        return run_one(args.run_one)
    if args.curve_one:
        return curve_one(args.curve_one)
    out = os.path.abspath(args.output_dir)
    if args.report_only:
        paths = write_report(out)
        print("wrote " + ", ".join(sorted(paths.values())))
        return 0

    check_output_dir(out, args.regime, args.max_iter)
    print("Machine: " + json.dumps(machine_info()))
    print("Versions: " + json.dumps(versions()))
    missing = [config_for(args.regime, d, pr, side) for d in args.datasets for pr in args.pairs
               for side in pair_sides(d, pr)]
    missing = [c for c in missing if not os.path.exists(os.path.join(REPO, c))]
    if missing:
        raise SystemExit("compare_to_detectron2: missing configs: " + ", ".join(missing)
                         + " (choose others with --datasets / --pairs / --regime)")
    planner = Planner(args)
    for d in args.datasets:
        for pr in args.pairs:
            for diff in planner.check_pair(d, pr):
                print(f"WARNING {d}/{pr}: the configs differ in a shared setting: {diff}")
    driver = Driver(args, planner)
    jobs = driver.all_jobs()
    remaining = driver.remaining_jobs()
    rates = measured_rates(load_results(out))
    n_train = sum(j["kind"] != "curve" for j in jobs)
    n_curve = sum(j["kind"] == "curve" for j in jobs)
    train_s = sum(j["iters"] for j in jobs)
    _, iters = curve_iterations(args.max_iter, args.curve_points)
    models = [(d, pr, side) for d in args.datasets for pr in args.pairs for side in pair_sides(d, pr)]
    print(f"Plan ({args.regime} regime): {len(args.datasets)} dataset(s) x {len(args.pairs)} "
          f"pair(s), {len(models)} models: "
          f"{n_train} training runs ({sum(j['kind'] == 'grid' for j in jobs)} grid, "
          f"{sum(j['kind'] == 'seed' for j in jobs)} seed) of {args.max_iter} iterations "
          f"({train_s} in all) and {n_curve} curve evaluations (val at iterations {iters}); "
          f"{sum(j['eval_images'] for j in jobs)} evaluated images in all.")
    print(f"Estimated time: {_hms(estimate_seconds(jobs, rates))} for all of it, "
          f"{_hms(estimate_seconds(remaining, rates))} for the {len(remaining)} job(s) not done "
          f"yet (" + ("rates measured from finished runs where there are any" if rates["s_iter"]
                      else f"assumed s/iter {json.dumps({'/'.join(k): v for k, v in ASSUMED_S_PER_ITER.items()})}, "
                           f"s/evaluated image {json.dumps(ASSUMED_S_PER_EVAL_IMAGE)}, "
                           f"{ASSUMED_STARTUP_S:.0f} s start-up per run") + ").", flush=True)
    print(f"Output: {out}", flush=True)
    driver.run()
    if not args.dry_run:
        paths = write_report(out)
        print(f"Done in {_hms(time.perf_counter() - driver.started)}; wrote "
              + ", ".join(sorted(paths.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
