"""Training and evaluation of RS Loss detectors with detectron2's engine."""
from .arguments import launch_from_args, register_datasets_from_args, rs_argument_parser
from .dataset_check import check_dataset_classes, lazy_model_num_classes, model_num_classes
from .lazy_training import default_rs_lazy_setup, do_test, do_train, evaluate_checkpoint
from .trainer import RSTrainer, default_rs_setup, fall_back_to_cpu

__all__ = ["RSTrainer", "default_rs_setup", "fall_back_to_cpu", "check_dataset_classes",
           "model_num_classes", "lazy_model_num_classes", "register_datasets_from_args", "launch_from_args",
           "rs_argument_parser", "default_rs_lazy_setup", "do_train", "do_test",
           "evaluate_checkpoint"]
