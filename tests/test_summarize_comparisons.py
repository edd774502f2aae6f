"""benchmarks/summarize_comparisons.py: one table over the compare output folders."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from summarize_comparisons import summary_table  # noqa: E402


def _result(folder, side, lr, seed, role, holdout, val):
    r = dict(name=f"{side}-{lr}-{seed}", regime="pretrained", max_iter=1000, dataset="rs_synthetic",
             pair="mask", side=side, role=role, seed=seed, lr=lr, status="ok",
             holdout_box_AP=holdout, val={"bbox": {"AP": val}, "segm": {"AP": val / 2}})
    os.makedirs(os.path.join(folder, "results"), exist_ok=True)
    with open(os.path.join(folder, "results", r["name"] + ".json"), "w") as f:
        json.dump(r, f)


def test_table_chooses_on_holdout_marks_edges_and_subtracts(tmp_path):
    folder = str(tmp_path / "cmp")
    for lr, holdout, val in ((0.01, 10.0, 11.0), (0.03, 30.0, 31.0), (0.06, 20.0, 21.0)):
        _result(folder, "stock", lr, 1, "grid", holdout, val)
    _result(folder, "stock", 0.03, 2, "seed", None, 33.0)
    for lr, holdout, val in ((0.01, 12.0, 13.0), (0.03, 40.0, 41.0)):
        _result(folder, "rs", lr, 1, "grid", holdout, val)
    _result(folder, "rs", 0.03, 2, "seed", None, 43.0)
    table = summary_table([folder, str(tmp_path / "empty")])
    rows = table.splitlines()[2:]
    assert len(rows) == 2
    stock, rs = rows
    assert "| 0.03 (0.01 / 0.03 / 0.06) |" in stock and "**32.0** (31.0, 33.0)" in stock
    assert stock.rstrip().endswith("| 16.0 | +10.0 |")  # mask AP mean; RS 42.0 - stock 32.0
    assert "0.03 edge (0.01 / 0.03)" in rs and "**42.0** (41.0, 43.0)" in rs
