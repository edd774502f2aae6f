"""Evaluation of RS detectors: oLRP (:class:`OLRPEvaluator`, on the numpy core
:mod:`.olrp_core`) and detectron2's LVIS evaluation made to run on numpy 2
(:class:`RSLVISEvaluator`), and :func:`build_rs_evaluator`, which picks them for a dataset. The evaluators load detectron2 on first use, so that importing
``rs_detectron2.evaluation.olrp_core`` does not."""
from typing import Any

__all__ = ["OLRPEvaluator", "RSLVISEvaluator", "build_rs_evaluator", "lvis_numpy_aliases"]

_LAZY = {"OLRPEvaluator": ".olrp", "RSLVISEvaluator": ".lvis_evaluation",
         "lvis_numpy_aliases": ".lvis_evaluation", "build_rs_evaluator": ".evaluators"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
