"""Whether existing results may stand for the runs planned now.

An output folder holds one regime and one schedule; a result JSON stands for a planned run
only if it was made with the same settings. Anything else stops the invocation (mixing
would make the report compare unlike runs).
"""
from typing import Any, List, Optional

from .results import load_results

# Overrides that may differ between the runs of one output directory without making
# their results incomparable.
_NOT_COMPARED = ("OUTPUT_DIR",)


def _compared_opts(opts: List[Any]) -> List[Any]:
    pairs = zip(opts[0::2], opts[1::2])
    return [x for key, value in pairs if key not in _NOT_COMPARED for x in (key, value)]


def comparable(old: dict, new: dict) -> Optional[str]:
    """Why an existing result cannot stand for the planned run (None if it can)."""
    for key in ("regime", "config", "holdout_fraction", "max_iter", "curve_iters"):
        if old.get(key) != new.get(key):
            return f"{key}: {old.get(key)!r} there, {new.get(key)!r} now"
    before, now = _compared_opts(old.get("opts", [])), _compared_opts(new["opts"])
    if before != now:
        return f"overrides: {before} there, {now} now"
    return None


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
