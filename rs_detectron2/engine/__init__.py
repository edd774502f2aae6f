"""Training and evaluation of RS Loss detectors with detectron2's engine."""
from .trainer import RSTrainer, default_rs_setup, fall_back_to_cpu

__all__ = ["RSTrainer", "default_rs_setup", "fall_back_to_cpu"]
