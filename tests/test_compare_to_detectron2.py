"""benchmarks/compare_to_detectron2.py: the whole pipeline on a tiny synthetic dataset.

One dataset, the faster pair, 2 learning rates per model, 2 seeds, 3 iterations, 96 px:
learning rates chosen on the held-out part of train, JSON/CSV/Markdown/PNG outputs, resume
(a second invocation trains nothing), and the fit/holdout split. About 50 s on 2 cores.
Without training: regimes (config folders, output directories, the resume checks), the
atss pair's three models in the plan (dry runs) and in the report (fake result JSONs).
"""
import csv
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "compare_to_detectron2.py")

_spec = importlib.util.spec_from_file_location("compare_to_detectron2", SCRIPT)
cmp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cmp)
# The entry script has put the repository on sys.path; its package does the work.
from benchmarks.compare.driver import Driver  # noqa: E402
from benchmarks.compare.holdout import register_fit_holdout, split_fit_holdout  # noqa: E402
from benchmarks.compare.layout import (  # noqa: E402
    CONFIG_DIRS, DATASETS, MODEL_NAMES, PAIRS, config_for, curve_iterations, pair_sides, run_name)
from benchmarks.compare.planner import Planner, side_lrs  # noqa: E402
from benchmarks.compare.report import write_report  # noqa: E402
from benchmarks.compare.results import select_lr, write_json  # noqa: E402
from benchmarks.compare.resume import check_output_dir, comparable  # noqa: E402
from benchmarks.compare.worker import eval_results  # noqa: E402

LRS = {"rs": [0.01, 0.02], "stock": [0.01, 0.03]}


def tiny_args(tmp_path):
    return [
        "--datasets", "rs_synthetic", "--pairs", "faster", "--max-iter", "3",
        "--curve-points", "2", "--seeds", "1", "2",
        "--lrs-rs", *map(str, LRS["rs"]), "--lrs-stock", *map(str, LRS["stock"]),
        "--num-train", "12", "--num-val", "4", "--holdout-fraction", "0.34",
        "--output-dir", str(tmp_path / "out"),
        "DATASETS.RS_SYNTHETIC.ROOT", str(tmp_path / "data"),
        "DATASETS.RS_SYNTHETIC.IMAGE_SIZE", "96",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
        "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
    ]


def compare(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


def best_lr(grid):
    """Argmax of the holdout box AP; ties and missing APs go to the smaller LR."""
    scored = [(r["holdout_box_AP"], -r["lr"]) for r in grid if r["holdout_box_AP"] is not None]
    return -max(scored)[1]


def test_whole_pipeline_tiny(tmp_path):
    out = tmp_path / "out"
    log = compare(*tiny_args(tmp_path))
    assert ("Plan (scratch regime): 1 dataset(s) x 1 pair(s), 2 models: 6 training runs "
            "(4 grid, 2 seed)") in log
    assert "Estimated time:" in log and "Machine:" in log and "Versions:" in log

    results = [json.load(open(p)) for p in sorted(glob.glob(str(out / "results" / "*.json")))]
    assert len(results) == 6
    for r in results:
        assert r["status"] == "ok"
        assert r["val"]["bbox"].keys() >= {"AP", "AP50", "AP75"}
        assert r["seconds_per_iter"] > 0 and r["iterations"] == 3
        assert r["num_fit_images"] == 8 and r["num_holdout_images"] == 4
        assert r["num_val_images"] == 4
        opts = dict(zip(r["opts"][0::2], r["opts"][1::2]))
        assert opts["SOLVER.BASE_LR"] == repr(r["lr"]) and opts["SEED"] == str(r["seed"])
        assert opts["DATASETS.TRAIN"] == '("rs_synthetic_train_fit",)'
    for side in ("stock", "rs"):
        mine = [r for r in results if r["side"] == side]
        grid = sorted([r for r in mine if r["role"] == "grid"], key=lambda r: r["lr"])
        assert [r["lr"] for r in grid] == LRS[side] and all(r["seed"] == 1 for r in grid)
        assert all("holdout_box_AP" in r and r["holdout"] is not None for r in grid)
        (seed_run,) = [r for r in mine if r["role"] == "seed"]
        chosen = best_lr(grid)
        assert seed_run["seed"] == 2 and seed_run["lr"] == chosen
        # both seed runs at the chosen LR have a curve: the end and one earlier point
        (first,) = [r for r in grid if r["lr"] == chosen]
        for r in (first, seed_run):
            assert r["curve_complete"] and [p["iter"] for p in r["curve"]] == [2, 3]
            assert r["curve"][-1]["box_AP"] == r["val"]["bbox"]["AP"]
        # The final model is evaluated once per test dataset (holdout, val), by the run
        # itself (RSTrainer.test), not by detectron2's EvalHook as well.
        (other,) = [r for r in grid if r["lr"] != chosen]
        with open(os.path.join(other["run_dir"], "log.txt")) as f:
            assert f.read().count("d2.evaluation.evaluator INFO: Start inference on") == 2
        # both sides had the same overrides, except the config file
        for lr in set(LRS["rs"]) & set(LRS["stock"]):
            a, b = ([r for r in results if r["side"] == s and r["lr"] == lr and r["seed"] == 1][0]
                    for s in ("rs", "stock"))
            strip = lambda o: [x for x in o if "runs" not in x]  # noqa: E731 (OUTPUT_DIR)
            assert strip(a["opts"]) == strip(b["opts"])
    # no curve checkpoints left behind
    assert not glob.glob(str(out / "runs" / "*" / "model_0*.pth"))

    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    for side in ("stock", "rs"):
        chosen_rows = [r for r in rows if r["side"] == side and r["chosen"] == "True"]
        assert len(chosen_rows) == 1 and chosen_rows[0]["role"] == "grid"
    md = (out / "results.md").read_text()
    assert "## rs_synthetic, faster" in md and "RS-Faster R-CNN" in md
    assert "Faster R-CNN (detectron2)" in md and "(chosen)" in md and "holdout box AP" in md
    png = out / "curves_rs_synthetic_faster.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The fit/holdout split: disjoint, together the whole train split, holdout = last ids.
    (train_json,) = glob.glob(str(tmp_path / "data" / "rs_synthetic" / "*" / "train" / "annotations.json"))
    train_ids = sorted(im["id"] for im in json.load(open(train_json))["images"])
    holdout = results[0]["holdout_image_ids"]
    assert all(r["holdout_image_ids"] == holdout for r in results)
    fit, held = split_fit_holdout([{"image_id": i} for i in reversed(train_ids)], 0.34)
    fit_ids = [d["image_id"] for d in fit]
    assert [d["image_id"] for d in held] == holdout == train_ids[-4:]
    assert not set(fit_ids) & set(holdout) and sorted(fit_ids + holdout) == train_ids

    # A second invocation trains nothing.
    stamps = {p: os.stat(p).st_mtime_ns for p in glob.glob(str(out / "results" / "*.json"))}
    again = compare(*tiny_args(tmp_path))
    assert again.count("skip (done)") == 6 and "--run-one" not in again and "--curve-one" not in again
    assert {p: os.stat(p).st_mtime_ns for p in stamps} == stamps

    # --report-only rebuilds the tables from the JSONs.
    (out / "results.md").unlink()
    compare("--report-only", "--output-dir", str(out))
    assert (out / "results.md").read_text() == md


def test_split_is_deterministic_disjoint_and_complete():
    dicts = [{"image_id": i} for i in (7, 3, 11, 5, 2, 13, 1, 8, 4, 10)]
    fit, holdout = split_fit_holdout(dicts, 0.2)
    assert [d["image_id"] for d in holdout] == [11, 13]
    assert sorted(d["image_id"] for d in fit + holdout) == sorted(d["image_id"] for d in dicts)
    assert split_fit_holdout(list(reversed(dicts)), 0.2) == (fit, holdout)
    assert len(split_fit_holdout(dicts[:2], 0.01)[1]) == 1  # at least one held out
    assert len(split_fit_holdout(dicts[:2], 0.99)[0]) == 1  # at least one to fit
    with pytest.raises(ValueError):
        split_fit_holdout(dicts[:1], 0.2)


def test_registered_fit_holdout_datasets_copy_the_metadata():
    from detectron2.data import DatasetCatalog, MetadataCatalog

    name = "cmp_test_tiny_train"
    dicts = [{"image_id": i, "file_name": f"{i}.png", "height": 8, "width": 8, "annotations": []}
             for i in range(5)]
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=["a", "b"], evaluator_type="coco",
                                  thing_dataset_id_to_contiguous_id={1: 0, 2: 1},
                                  json_file="/nonexistent.json")
    try:
        fit, holdout = register_fit_holdout(name, 0.4)
        assert (fit, holdout) == (name + "_fit", name + "_holdout")
        assert [d["image_id"] for d in DatasetCatalog.get(holdout)] == [3, 4]
        assert [d["image_id"] for d in DatasetCatalog.get(fit)] == [0, 1, 2]
        for n in (fit, holdout):
            meta = MetadataCatalog.get(n)
            assert meta.thing_classes == ["a", "b"] and meta.evaluator_type == "coco"
            assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1}
            assert not hasattr(meta, "json_file")  # COCOEvaluator converts the dicts
    finally:
        for n in (name, name + "_fit", name + "_holdout"):
            if n in DatasetCatalog:
                DatasetCatalog.remove(n)
            if n in MetadataCatalog:
                MetadataCatalog.remove(n)


def test_eval_results_are_wrapped_and_missing_ones_raise():
    """RSTrainer.test's return value: one dataset comes unwrapped; a dataset or task
    without results (no evaluator, nothing evaluated) is an error, not a run without AP."""
    box = {"AP": 5.0, "AP50": float("nan")}
    assert eval_results({"bbox": box}, ("val",), ("bbox",)) == \
        {"val": {"bbox": {"AP": 5.0, "AP50": None}}}
    both = {"holdout": {"bbox": box}, "val": {"bbox": box}}
    assert eval_results(both, ("holdout", "val"), ("bbox",))["holdout"]["bbox"]["AP"] == 5.0
    with pytest.raises(RuntimeError, match="no results for val/bbox"):
        eval_results({}, ("val",), ("bbox",))  # DefaultTrainer.test without an evaluator
    with pytest.raises(RuntimeError, match="no results for val/segm"):
        eval_results({"bbox": box}, ("val",), ("bbox", "segm"))
    with pytest.raises(RuntimeError, match="no results for holdout/bbox"):
        eval_results({"holdout": {}, "val": {"bbox": box}}, ("holdout", "val"), ("bbox",))


def test_a_failing_run_stops_the_comparison_with_its_error(tmp_path, capsys):
    """A run subprocess that fails writes no result; the driver stops with its output
    (the next invocation deletes the partial run folder and starts it again)."""
    args = cmp.parse_args(["--datasets", "rs_synthetic", "--pairs", "faster",
                           "--output-dir", str(tmp_path / "out")])
    planner = Planner(args)
    spec = dict(planner.spec("rs_synthetic", "faster", "rs", 0.01, 1, "grid", False),
                train_dataset="cmp_test_unregistered_train")
    with pytest.raises(SystemExit) as failed:
        Driver(args, planner).ensure_run(spec)
    message = str(failed.value)
    assert f"{spec['name']} failed (exit 1)" in message
    assert "KeyError" in message and "cmp_test_unregistered_train" in message
    assert not os.path.exists(spec["result"])
    assert os.path.exists(os.path.join(spec["run_dir"], "console.log"))


def test_lr_selection_and_curve_points():
    grid = [dict(lr=0.03, status="ok", holdout_box_AP=5.0),
            dict(lr=0.01, status="ok", holdout_box_AP=5.0),
            dict(lr=0.02, status="ok", holdout_box_AP=None),
            dict(lr=0.06, status="diverged", holdout_box_AP=None)]
    assert select_lr(grid)["lr"] == 0.01  # tie: the smaller learning rate
    assert select_lr(grid + [dict(lr=0.04, status="ok", holdout_box_AP=5.5)])["lr"] == 0.04
    assert select_lr(grid[2:]) is None
    assert curve_iterations(360, 4) == (90, [90, 180, 270, 360])
    assert curve_iterations(10, 4) == (3, [3, 6, 9, 10])
    assert curve_iterations(5, 1) == (5, [5])


# ----------------------------------------------------------------------------------------
# Regimes, the atss pair's third model, resume checks, report: no training
# ----------------------------------------------------------------------------------------
ATSS = {"stock": "retinanet_R_18_FPN.yaml", "stock_gn": "retinanet_gn_R_18_FPN.yaml",
        "rs": "rs_atss_R_18_FPN.yaml"}
PRETRAINED = {"MODEL.WEIGHTS": "rs_pretrained://test.pth", "MODEL.RESNETS.NORM": "FrozenBN",
              "MODEL.BACKBONE.FREEZE_AT": 2}


def fake_pretrained_configs(folder, overrides=None):
    """Pretrained twins of the rs_synthetic atss configs in ``folder``, as the real ones
    are: _BASE_ the scratch config, then the pretrained backbone."""
    folder.mkdir(exist_ok=True)
    for side, name in ATSS.items():
        tree = {"_BASE_": os.path.join(ROOT, "configs", "Synthetic", name)}
        for key, value in dict(PRETRAINED, **(overrides or {}).get(side, {})).items():
            *parents, leaf = key.split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        (folder / name).write_text(yaml.safe_dump(tree))


@pytest.fixture
def pretrained_dir(tmp_path, monkeypatch):
    folder = tmp_path / "pretrained"
    fake_pretrained_configs(folder)
    monkeypatch.setitem(CONFIG_DIRS, "pretrained", str(folder))
    return folder


def test_regime_configs_output_dirs_and_grids():
    assert config_for("scratch", "rs_synthetic", "mask", "rs") == \
        "configs/Synthetic/rs_mask_rcnn_R_18_FPN.yaml"
    assert config_for("pretrained", "rs_synthetic_hard", "atss", "stock_gn") == \
        "configs/Synthetic/pretrained/retinanet_gn_R_18_FPN_hard.yaml"
    assert pair_sides("rs_synthetic", "atss") == ["stock", "stock_gn", "rs"]
    assert pair_sides("rs_synthetic_hard", "mask") == ["stock", "rs"]
    # Every scratch config exists, and the GN twins differ from stock only in the head norm.
    for d in DATASETS:
        for pair in PAIRS:
            for side in pair_sides(d, pair):
                assert os.path.exists(os.path.join(ROOT, config_for("scratch", d, pair, side)))
    planner = Planner(cmp.parse_args([]))
    for d in DATASETS:
        assert planner.check_pair(d, "atss") == []
        stock, gn = (planner.load_cfg(planner.config(d, "atss", s)) for s in ("stock", "stock_gn"))
        assert (stock.MODEL.RETINANET.NORM, gn.MODEL.RETINANET.NORM) == ("", "GN")
        assert gn.MODEL.FPN.OUT_CHANNELS % 32 == 0  # GroupNorm(32, channels) of get_norm
        gn.defrost()
        gn.MODEL.RETINANET.NORM, gn.OUTPUT_DIR = "", stock.OUTPUT_DIR
        assert gn == stock

    out = lambda argv: cmp.parse_args(argv).output_dir  # noqa: E731
    assert out([]) == "./output/compare_to_detectron2"
    assert out(["--regime", "pretrained"]) == "./output/compare_to_detectron2_pretrained"
    assert out(["--max-iter", "2000"]) == "./output/compare_to_detectron2_2000iter"
    assert out(["--regime", "pretrained", "--max-iter", "2000", "--pairs", "mask"]) == \
        "./output/compare_to_detectron2_pretrained_2000iter"
    assert out(["--regime", "pretrained", "--output-dir", "/x"]) == "/x"

    args = cmp.parse_args([])
    assert [side_lrs(args, s) for s in ("rs", "stock", "stock_gn")] == \
        [[0.01, 0.02, 0.03], [0.01, 0.03, 0.06], [0.01, 0.03, 0.06]]
    args = cmp.parse_args(["--lrs-stock", "0.1", "--lrs-stock-gn", "0.2", "0.3"])
    assert [side_lrs(args, s) for s in ("rs", "stock", "stock_gn")] == \
        [[0.01, 0.02, 0.03], [0.1], [0.2, 0.3]]


def test_pretrained_specs_and_check_pair(tmp_path, pretrained_dir):
    args = cmp.parse_args(["--regime", "pretrained", "--output-dir", str(tmp_path / "out")])
    planner = Planner(args)
    spec = planner.spec("rs_synthetic", "atss", "stock_gn", 0.03, 1, "grid", False)
    assert spec["config"] == str(pretrained_dir / "retinanet_gn_R_18_FPN.yaml")
    assert spec["regime"] == "pretrained"
    assert spec["name"] == "pretrained-rs_synthetic-atss-stock_gn-lr0.03-seed1"
    assert spec["backbone"] == dict(weights="rs_pretrained://test.pth", norm="FrozenBN", freeze_at=2)
    cfg = planner.load_cfg(spec["config"])
    assert cfg.MODEL.RETINANET.NORM == "GN" and cfg.MODEL.RESNETS.NORM == "FrozenBN"
    assert planner.check_pair("rs_synthetic", "atss") == []

    # The backbone settings are shared keys: a pretrained pair must agree on them.
    fake_pretrained_configs(pretrained_dir, {
        "stock_gn": {"MODEL.BACKBONE.FREEZE_AT": 0},
        "stock": {"MODEL.WEIGHTS": "rs_pretrained://other.pth", "MODEL.RESNETS.NORM": "BN"}})
    diffs = Planner(args).check_pair("rs_synthetic", "atss")
    assert sorted(diffs) == sorted([
        "MODEL.WEIGHTS: RS rs_pretrained://test.pth vs stock rs_pretrained://other.pth",
        "MODEL.RESNETS.NORM: RS FrozenBN vs stock BN",
        "MODEL.BACKBONE.FREEZE_AT: RS 2 vs stock_gn 0"])


def dry_run(capsys, *argv):
    assert cmp.main(["--dry-run", "--datasets", "rs_synthetic", "--pairs", "atss", *argv]) == 0
    return capsys.readouterr().out


def test_dry_run_plans_three_models_and_the_rs_grid_once(tmp_path, capsys):
    log = dry_run(capsys, "--output-dir", str(tmp_path / "out"))
    assert ("Plan (scratch regime): 1 dataset(s) x 1 pair(s), 3 models: 12 training runs "
            "(9 grid, 3 seed)") in log
    runs = [line.split()[1] for line in log.splitlines() if line.startswith("run: ")]
    expected = [f"scratch-rs_synthetic-atss-{side}-lr{lr}-seed1"
                for side, lrs in (("stock", "0.01 0.03 0.06"), ("stock_gn", "0.01 0.03 0.06"),
                                  ("rs", "0.01 0.02 0.03")) for lr in lrs.split()]
    assert [r for r in runs if r.endswith("-seed1")] == expected  # RS once, in this order
    assert [r for r in runs if r.endswith("-seed2")] == [
        f"scratch-rs_synthetic-atss-{side}-lr<chosen>-seed2" for side in ("stock", "stock_gn", "rs")]
    assert "--config-file configs/Synthetic/retinanet_gn_R_18_FPN.yaml SOLVER.BASE_LR 0.03" in log
    assert "WARNING" not in log and "retinanet_gn_R_18_FPN_hard" not in log

    log = dry_run(capsys, "--output-dir", str(tmp_path / "out"), "--lrs-stock-gn", "0.02")
    runs = [line for line in log.splitlines() if line.startswith("run: ") and "-seed1" in line]
    assert [r for r in runs if "-stock_gn-" in r] == ["run: scratch-rs_synthetic-atss-stock_gn-lr0.02-seed1"]
    assert len(runs) == 7


def test_dry_run_pretrained_uses_its_configs(tmp_path, capsys, pretrained_dir):
    log = dry_run(capsys, "--regime", "pretrained", "--output-dir", str(tmp_path / "out"))
    assert "Plan (pretrained regime): 1 dataset(s) x 1 pair(s), 3 models" in log
    for name in ATSS.values():
        assert f"--config-file {pretrained_dir / name} " in log
    assert "configs/Synthetic/rs_atss" not in log
    assert "run: pretrained-rs_synthetic-atss-rs-lr0.02-seed1" in log


def fake_result(out, regime="scratch", max_iter=1000, dataset="rs_synthetic", pair="atss",
                side="rs", lr=0.01, seed=1, role="grid", box_ap=10.0, holdout_ap=None, **extra):
    """A finished run's result JSON, with what the report reads."""
    name = run_name(regime, dataset, pair, side, lr, seed)
    val = {"bbox": {"AP": box_ap, "AP50": box_ap + 10, "AP75": box_ap - 1}}
    r = dict(name=name, regime=regime, dataset=dataset, pair=pair, side=side,
             model=MODEL_NAMES[(pair, side)], role=role, lr=lr, seed=seed,
             max_iter=max_iter, status="ok", holdout_fraction=0.2,
             holdout_box_AP=box_ap if holdout_ap is None else holdout_ap, val=val,
             backbone=dict(weights="rs_pretrained://x.pth" if regime == "pretrained" else "",
                           norm="FrozenBN" if regime == "pretrained" else "BN",
                           freeze_at=2 if regime == "pretrained" else 0),
             config=config_for(regime, dataset, pair, side), opts=[], seconds_per_iter=0.1,
             train_seconds=100.0, wall_seconds=120.0, ims_per_batch=4, curve_iters=[max_iter],
             curve=[dict(iter=max_iter // 2, box_AP=box_ap / 2, mask_AP=None),
                    dict(iter=max_iter, box_AP=box_ap, mask_AP=None)],
             curve_complete=True, machine=dict(cpu="test CPU"), versions=dict(python="3"),
             result=os.path.join(out, "results", name + ".json"), **extra)
    write_json(r["result"], r)
    return r


def test_output_dir_and_resume_refuse_another_regime_or_max_iter(tmp_path, capsys):
    out = str(tmp_path / "out")
    fake_result(out, regime="scratch", max_iter=1000)
    with pytest.raises(SystemExit, match="regime scratch, --max-iter 1000"):
        cmp.main(["--dry-run", "--regime", "pretrained", "--output-dir", out])
    with pytest.raises(SystemExit, match="another setting"):
        cmp.main(["--dry-run", "--pairs", "mask", "--max-iter", "2000", "--output-dir", out])
    check_output_dir(out, "scratch", 1000)
    # Results made before regimes existed (named without one) are refused too: they would
    # be trained again under the new names. The report counts them as scratch.
    legacy = tmp_path / "legacy"
    r = fake_result(str(legacy))
    del r["regime"]
    write_json(r["result"], r)
    with pytest.raises(SystemExit, match="before regimes"):
        check_output_dir(str(legacy), "scratch", 1000)
    md = open(write_report(str(legacy), quiet=True)["md"]).read()
    assert md.startswith("# RS detectors vs detectron2's stock detectors (scratch regime, 1000 iterations)")

    # The per-run check compares the regime and the schedule too.
    planner = Planner(cmp.parse_args(["--output-dir", out]))
    spec = planner.spec("rs_synthetic", "atss", "rs", 0.01, 1, "grid", False)
    assert comparable(dict(spec), spec) is None
    assert comparable(dict(spec, regime="pretrained"), spec).startswith("regime:")
    assert comparable(dict(spec, max_iter=2000), spec).startswith("max_iter:")
    assert comparable(dict(spec, config=config_for("pretrained", "rs_synthetic", "atss", "rs")),
                           spec).startswith("config:")


def test_report_shows_each_stock_model_against_rs(tmp_path):
    out = str(tmp_path / "out")
    aps = {"stock": (10.0, 12.0), "stock_gn": (20.0, 23.0), "rs": (40.0, 42.0)}
    for side, (ap1, ap2) in aps.items():
        fake_result(out, "pretrained", 2000, side=side, lr=0.01, box_ap=ap1)
        fake_result(out, "pretrained", 2000, side=side, lr=0.03, box_ap=1.0)
        fake_result(out, "pretrained", 2000, side=side, lr=0.01, seed=2, role="seed", box_ap=ap2)
    paths = write_report(out, quiet=True)
    md = open(paths["md"]).read()
    lines = md.splitlines()
    assert lines[0] == ("# RS detectors vs detectron2's stock detectors "
                        "(pretrained regime, 2000 iterations)")
    assert lines[2].startswith("Regime: pretrained (configs in configs/Synthetic/pretrained/; "
                               "backbone MODEL.WEIGHTS 'rs_pretrained://x.pth', "
                               "RESNETS.NORM FrozenBN, BACKBONE.FREEZE_AT 2)")
    assert "Schedule: --max-iter 2000 iterations" in md
    rows = [line for line in lines if line.startswith("| ") and "**" in line]
    assert [row.split(" | ")[0] for row in rows] == [
        "| RetinaNet (detectron2)", "| RetinaNet with GN head (detectron2)", "| RS-ATSS"]
    assert [row.split(" | ")[2] for row in rows] == ["**11.0**", "**21.5**", "**41.0**"]
    assert ("RS - stock, mean val box AP: +30.0 (RS-ATSS - RetinaNet (detectron2)).") in lines
    assert ("RS - stock_gn, mean val box AP: +19.5 "
            "(RS-ATSS - RetinaNet with GN head (detectron2)).") in lines
    assert sum("(chosen)" in line for line in lines) == 3
    with open(paths["csv"]) as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 9 and {r["regime"] for r in csv_rows} == {"pretrained"}
    assert [r["side"] for r in csv_rows if r["chosen"] == "True"] == ["stock", "stock_gn", "rs"]
    png = paths["png_rs_synthetic_atss"]
    assert open(png, "rb").read()[:8] == b"\x89PNG\r\n\x1a\n"

    # A pair with the third model not run yet says so.
    for p in glob.glob(os.path.join(out, "results", "*stock_gn*.json")):
        os.remove(p)
    md = open(write_report(out, quiet=True)["md"]).read()
    assert "| RetinaNet with GN head (detectron2) | (no runs yet) |" in md
    assert "RS - stock_gn" not in md and "RS - stock, mean val box AP: +30.0" in md
