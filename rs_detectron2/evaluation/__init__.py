"""Evaluation of RS detectors: oLRP (:class:`OLRPEvaluator`) and detectron2's LVIS
evaluation made to run on numpy 2 (:class:`RSLVISEvaluator`)."""
from .lvis_evaluation import RSLVISEvaluator, lvis_numpy_aliases
from .olrp import OLRPEvaluator

__all__ = ["OLRPEvaluator", "RSLVISEvaluator", "lvis_numpy_aliases"]
