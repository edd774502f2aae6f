"""Evaluation of RS detectors (temporary: olrp pending)."""
from .lvis_evaluation import RSLVISEvaluator, lvis_numpy_aliases
