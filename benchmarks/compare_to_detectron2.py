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

The code is in ``benchmarks/compare/``, one job a module (its ``__init__`` lists them);
this script is its command line.

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
model_final.pth; the console goes to ``console.log`` there), evaluates the final model
with ``RSTrainer.test`` (its return value) and writes ``<output-dir>/results/<name>.json``
atomically at the end. A run that fails otherwise than by a diverged loss (an evaluation
without results included) stops the comparison with the end of its console.log; the next
invocation starts it again. Before each run, an existing
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
import json
import os
import sys
import time
from typing import Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from benchmarks.compare.driver import Driver  # noqa: E402
from benchmarks.compare.estimate import estimate_text, hms, measured_rates  # noqa: E402
from benchmarks.compare.layout import (  # noqa: E402
    DATASETS, DEFAULT_LRS, DEFAULT_MAX_ITER, DEFAULT_OUTPUT_DIR, DEFAULT_PAIRS, PAIRS, REGIMES,
    config_for,
    default_output_dir, pair_sides)
from benchmarks.compare.planner import Planner, plan_text  # noqa: E402
from benchmarks.compare.report import write_report  # noqa: E402
from benchmarks.compare.results import load_results  # noqa: E402
from benchmarks.compare.resume import check_output_dir  # noqa: E402
from benchmarks.compare import worker  # noqa: E402
from benchmarks.machine import machine_info, versions  # noqa: E402


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (see the module docstring); ``args.lrs`` is side -> grid."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Trailing KEY VALUE pairs are added to the overrides of every run (all models).")
    p.add_argument("--regime", choices=REGIMES, default="scratch",
                   help="scratch: the configs of configs/Synthetic/ (backbone from scratch); "
                        "pretrained: those of the same names in configs/Synthetic/pretrained/ "
                        "(pretrained, frozen-BN backbone). Default scratch")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    p.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS), choices=list(PAIRS),
                   help="faster, mask, atss: RS vs detectron2's stock models (the default); "
                        "ranking: RS-ATSS vs ATSS with AP Loss and with aLRP Loss; paa: RS-PAA "
                        "vs PAA with its standard losses (focal loss + GIoU); yolact: RS-YOLACT vs "
                        "YOLACT with its standard losses; solov2: RS-SOLOv2 vs SOLOv2 (focal + "
                        "Dice)")
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
    p.add_argument("--lrs-ap", type=float, nargs="+", default=None, metavar="LR",
                   help="learning-rate grid of ATSS with AP Loss (side ap of the ranking pair; "
                        "default: that of --lrs-rs)")
    p.add_argument("--lrs-alrp", type=float, nargs="+", default=None, metavar="LR",
                   help="learning-rate grid of ATSS with aLRP Loss (side alrp of the ranking "
                        "pair; default: that of --lrs-rs)")
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
                    stock_gn=args.lrs_stock if args.lrs_stock_gn is None else args.lrs_stock_gn,
                    ap=args.lrs_rs if args.lrs_ap is None else args.lrs_ap,
                    alrp=args.lrs_rs if args.lrs_alrp is None else args.lrs_alrp)
    if args.output_dir is None:
        args.output_dir = default_output_dir(args.regime, args.max_iter)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run (or with --dry-run print) the comparison; --report-only, --run-one and
    --curve-one do just that."""
    args = parse_args(argv)
    if args.run_one:
        return worker.run_one(args.run_one)
    if args.curve_one:
        return worker.curve_one(args.curve_one)
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
    jobs = planner.all_jobs()
    print(plan_text(args, jobs))
    print(estimate_text(jobs, planner.remaining_jobs(), measured_rates(load_results(out))),
          flush=True)
    print(f"Output: {out}", flush=True)
    driver.run()
    if not args.dry_run:
        paths = write_report(out)
        print(f"Done in {hms(time.perf_counter() - driver.started)}; wrote "
              + ", ".join(sorted(paths.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
