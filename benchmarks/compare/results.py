"""The result JSONs: one per finished run, ``<output-dir>/results/<run name>.json``.

Written atomically (a killed run leaves no half file), read back by resume, the time
estimate and the report; plus the two questions asked of them everywhere: a metric of the
val evaluation, and which learning rate of a grid is chosen.
"""
import json
import math
import os
from typing import Any, List, Optional, Sequence


def finite(x: Any) -> Optional[float]:
    """``x`` as a float, or None if it is not a finite number."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def clean(results: Any) -> Any:
    """Evaluation results as plain JSON (NaN -> None)."""
    if isinstance(results, dict):
        return {str(k): clean(v) for k, v in results.items()}
    return finite(results)


def read_json(path: str) -> Optional[dict]:
    """The JSON at ``path``, or None if there is none (or only a partial one)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path: str, data: dict) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file, then a rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def load_results(out: str) -> List[dict]:
    """Every finished run's result in ``out/results``, by file name."""
    folder = os.path.join(out, "results")
    results = []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json"):
                r = read_json(os.path.join(folder, name))
                if r is not None and "status" in r:
                    results.append(r)
    return results


def val_metric(r: dict, task: str, metric: str) -> Optional[float]:
    """A metric of the run's val evaluation (``task`` "bbox" or "segm"), None if absent."""
    return finite(((r.get("val") or {}).get(task) or {}).get(metric))


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
