"""benchmarks/compare_to_detectron2.py: the whole pipeline on a tiny synthetic dataset.

One dataset, the faster pair, 2 learning rates per model, 2 seeds, 3 iterations, 96 px:
learning rates chosen on the held-out part of train, JSON/CSV/Markdown/PNG outputs, resume
(a second invocation trains nothing), and the fit/holdout split. About 50 s on 2 cores.
"""
import csv
import glob
import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "compare_to_detectron2.py")

_spec = importlib.util.spec_from_file_location("compare_to_detectron2", SCRIPT)
cmp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cmp)

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
    assert "Plan: 1 dataset(s) x 1 pair(s) x 2 models: 6 training runs (4 grid, 2 seed)" in log
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
    fit, held = cmp.split_fit_holdout([{"image_id": i} for i in reversed(train_ids)], 0.34)
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
    fit, holdout = cmp.split_fit_holdout(dicts, 0.2)
    assert [d["image_id"] for d in holdout] == [11, 13]
    assert sorted(d["image_id"] for d in fit + holdout) == sorted(d["image_id"] for d in dicts)
    assert cmp.split_fit_holdout(list(reversed(dicts)), 0.2) == (fit, holdout)
    assert len(cmp.split_fit_holdout(dicts[:2], 0.01)[1]) == 1  # at least one held out
    assert len(cmp.split_fit_holdout(dicts[:2], 0.99)[0]) == 1  # at least one to fit
    with pytest.raises(ValueError):
        cmp.split_fit_holdout(dicts[:1], 0.2)


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
        fit, holdout = cmp.register_fit_holdout(name, 0.4)
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


def test_lr_selection_and_curve_points():
    grid = [dict(lr=0.03, status="ok", holdout_box_AP=5.0),
            dict(lr=0.01, status="ok", holdout_box_AP=5.0),
            dict(lr=0.02, status="ok", holdout_box_AP=None),
            dict(lr=0.06, status="diverged", holdout_box_AP=None)]
    assert cmp.select_lr(grid)["lr"] == 0.01  # tie: the smaller learning rate
    assert cmp.select_lr(grid + [dict(lr=0.04, status="ok", holdout_box_AP=5.5)])["lr"] == 0.04
    assert cmp.select_lr(grid[2:]) is None
    assert cmp.curve_iterations(360, 4) == (90, [90, 180, 270, 360])
    assert cmp.curve_iterations(10, 4) == (3, [3, 6, 9, 10])
    assert cmp.curve_iterations(5, 1) == (5, [5])
