"""benchmarks/bench_rank_sort_loss.py and the Bucketed RS Loss it times ours against: the
baseline is exact at δ = 0 (as its paper says) and the script's smoke mode runs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, BENCH)
from bucketed_rs_loss import bucketed_rank_sort_loss  # noqa: E402

from .rank_sort_reference import reference_rank_sort  # noqa: E402
from .test_rank_sort_loss import make_case  # noqa: E402


def _bucketed(scores, targets, delta):
    x = torch.tensor(scores, requires_grad=True)
    loss_rank, loss_sort = bucketed_rank_sort_loss(x, torch.tensor(targets), delta)
    (loss_rank + loss_sort).backward()
    return float(loss_rank.detach()), float(loss_sort.detach()), x.grad.numpy()


@pytest.mark.parametrize("seed", range(0, 240, 9))  # δ = 0 cases: seed % 3 == 0
def test_bucketed_is_exact_at_delta_zero(seed):
    scores, targets, delta, kind = make_case(seed)
    assert delta == 0.0
    ref = reference_rank_sort(scores, targets, 0.0)
    got = _bucketed(scores, targets, 0.0)
    assert abs(got[0] - ref[0]) <= 1e-9 and abs(got[1] - ref[1]) <= 1e-9, kind
    np.testing.assert_allclose(got[2], ref[2] + ref[3], atol=1e-9)


def test_bucketed_is_not_exact_for_positive_delta():
    rng = np.random.default_rng(0)
    scores = rng.normal(0, 1, 2000)
    targets = np.where(rng.random(2000) < 0.05, rng.uniform(0.5, 1.0, 2000), 0.0)
    ref = reference_rank_sort(scores, targets, 0.5)
    got = _bucketed(scores, targets, 0.5)
    # Bucket means change the smoothed ranking error and, more, the negatives' gradient.
    assert abs(got[0] - ref[0]) > 1e-6
    ref_g = ref[2] + ref[3]
    assert np.max(np.abs(got[2] - ref_g)) > 1e-3 * np.max(np.abs(ref_g))


def _run(args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(BENCH, "bench_rank_sort_loss.py")] + args,
                          check=True, capture_output=True, text=True, env=env, cwd=tmp_path)


def test_versus_suite_quick(tmp_path):
    out = tmp_path / "bench.json"
    _run(["--suite", "versus", "--quick", "--grid", "20:3000", "--modes", "t1,t1_over",
          "--rounds", "2", "--output", str(out)], tmp_path)
    report = json.loads(out.read_text())
    assert report["machine"]["cpu"] and report["settings"]["modes"] == ["t1", "t1_over"]
    assert [r["mode"] for r in report["results"]] == ["t1", "t1_over"]
    for r in report["results"]:
        assert r["num_pos"] == 20 and r["num_logits"] == 3000 and r["threads"] == 1
        assert r["rs_ms"] > 0 and r["bucketed_ms"] > 0 and r["bce_ms"] > 0
        assert r["rs_over_bucketed"] > 0 and r["rs_over_bce"] > 0
        assert r["delta0_check"]["max_abs_grad_diff"] < 1e-6  # Bucketed is exact at δ = 0
    assert report["results"][1]["oversubscribed"]
    table = (tmp_path / "bench.md").read_text()
    assert "RS / Bucketed" in table and "over-subscribed" in table
    # --resume keeps finished cases instead of running them again.
    _run(["--suite", "versus", "--quick", "--grid", "20:3000", "--modes", "t1",
          "--rounds", "2", "--output", str(out), "--resume"], tmp_path)
    again = json.loads(out.read_text())["results"]
    assert again == report["results"][:1]


def test_loop_suite_quick(tmp_path):
    out = _run(["--suite", "loop", "--quick", "--sizes", "20:2000", "--distributions", "early"],
               tmp_path).stdout
    assert "speedup" in out and "early" in out
