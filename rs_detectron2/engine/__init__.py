"""Training and evaluation of RS Loss detectors with detectron2's engine."""
from .trainer import RSTrainer, default_rs_setup

__all__ = ["RSTrainer", "default_rs_setup"]
