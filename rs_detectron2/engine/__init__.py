"""Training and evaluation of RS Loss detectors with detectron2's engine."""
from .arguments import register_datasets_from_args, rs_argument_parser
from .dataset_check import check_dataset_classes, model_num_classes
from .trainer import RSTrainer, default_rs_setup, fall_back_to_cpu

__all__ = ["RSTrainer", "default_rs_setup", "fall_back_to_cpu", "check_dataset_classes",
           "model_num_classes", "register_datasets_from_args", "rs_argument_parser"]
