"""How long the comparison (or what is left of it) will take.

Per job: start-up + iterations x s/iter + evaluated images x s/image, with the rates
measured from the finished runs of the output folder where there are any, and otherwise
assumed (2-core CPU, batch 4, 192 px, scratch regime).
"""
import json
from typing import Any, Dict, List, Sequence

ASSUMED_S_PER_ITER = {("faster", "stock"): 0.13, ("faster", "rs"): 0.135,
                      ("mask", "stock"): 0.16, ("mask", "rs"): 0.17,
                      ("atss", "stock"): 0.11, ("atss", "stock_gn"): 0.115, ("atss", "rs"): 0.12,
                      ("ranking", "ap"): 0.12, ("ranking", "alrp"): 0.12, ("ranking", "rs"): 0.12,
                      ("paa", "stock"): 0.13, ("paa", "rs"): 0.13,
                      ("yolact", "stock"): 0.13, ("yolact", "rs"): 0.13,
                      ("solov2", "stock"): 0.2, ("solov2", "rs"): 0.2}
ASSUMED_S_PER_EVAL_IMAGE = {"faster": 0.03, "mask": 0.07, "atss": 0.03, "ranking": 0.03,
                            "paa": 0.04, "yolact": 0.05,
                            "solov2": 0.06}
ASSUMED_STARTUP_S = 15.0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def measured_rates(results: Sequence[dict]) -> Dict[str, Any]:
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
    return dict(s_iter={k: _mean(v) for k, v in s_iter.items()},
                s_img={k: _mean(v) for k, v in s_img.items()},
                startup=_mean(startup) if startup else None)


def estimate_seconds(jobs: Sequence[dict], rates: Dict[str, Any]) -> float:
    """Seconds the ``jobs`` (of Planner.all_jobs) take at ``rates`` (of measured_rates)."""
    total = 0.0
    for job in jobs:
        pair, side, dataset = job["pair"], job["side"], job["dataset"]
        s_iter = rates["s_iter"].get((dataset, pair, side),
                                     rates["s_iter"].get((pair, side), ASSUMED_S_PER_ITER[(pair, side)]))
        s_img = rates["s_img"].get(pair, ASSUMED_S_PER_EVAL_IMAGE[pair])
        startup = rates["startup"] if rates["startup"] is not None else ASSUMED_STARTUP_S
        total += startup + job["iters"] * s_iter + job["eval_images"] * s_img
    return total


def hms(seconds: float) -> str:
    """0h05m07s."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m{seconds % 60:02d}s"


def estimate_text(jobs: Sequence[dict], remaining: Sequence[dict], rates: Dict[str, Any]) -> str:
    """The time estimate printed at the start: all the jobs, those left, and the rates."""
    source = ("rates measured from finished runs where there are any" if rates["s_iter"]
              else f"assumed s/iter {json.dumps({'/'.join(k): v for k, v in ASSUMED_S_PER_ITER.items()})}, "
                   f"s/evaluated image {json.dumps(ASSUMED_S_PER_EVAL_IMAGE)}, "
                   f"{ASSUMED_STARTUP_S:.0f} s start-up per run")
    return (f"Estimated time: {hms(estimate_seconds(jobs, rates))} for all of it, "
            f"{hms(estimate_seconds(remaining, rates))} for the {len(remaining)} job(s) not done "
            f"yet ({source}).")
