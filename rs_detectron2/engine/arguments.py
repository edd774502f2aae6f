"""``train_net.py``'s command line: detectron2's arguments plus datasets given on it.

``--coco-dataset NAME JSON IMAGE_DIR`` (repeatable) registers a COCO-format instances
dataset under NAME with detectron2's ``register_coco_instances`` in every process (so it
also works with ``--num-gpus N``); point ``DATASETS.TRAIN`` / ``DATASETS.TEST`` at the
names in the config overrides. No Python file is needed for a dataset of one's own.
"""
import argparse
from typing import Any, Callable, Optional

from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import default_argument_parser, launch

__all__ = ["rs_argument_parser", "register_datasets_from_args", "launch_from_args"]

_EPILOG = """
Your own dataset (COCO JSON + image folder), e.g.:
  python train_net.py --config-file configs/Synthetic/pretrained/rs_mask_rcnn_R_18_FPN.yaml \\
    --coco-dataset my_train train.json images/ --coco-dataset my_val val.json images/ \\
    DATASETS.TRAIN '("my_train",)' DATASETS.TEST '("my_val",)' MODEL.ROI_HEADS.NUM_CLASSES 2
"""


def rs_argument_parser(epilog: Optional[str] = None) -> argparse.ArgumentParser:
    """detectron2's ``default_argument_parser`` with ``--coco-dataset NAME JSON IMAGE_DIR``."""
    parser = default_argument_parser(epilog=epilog or _EPILOG)
    parser.add_argument(
        "--coco-dataset", nargs=3, action="append", default=[],
        metavar=("NAME", "JSON", "IMAGE_DIR"),
        help="register a COCO-format instances dataset (repeatable); use NAME in "
             "DATASETS.TRAIN / DATASETS.TEST")
    return parser


def register_datasets_from_args(args: argparse.Namespace) -> None:
    """Register the ``--coco-dataset`` datasets of ``args`` (once per process; a name that
    is already registered with other files is an error)."""
    for name, json_file, image_root in getattr(args, "coco_dataset", None) or []:
        if name in DatasetCatalog:
            from detectron2.data import MetadataCatalog

            meta = MetadataCatalog.get(name)
            if (meta.get("json_file", None), meta.get("image_root", None)) == (json_file, image_root):
                continue
            raise ValueError(f"--coco-dataset {name}: a dataset of that name is already "
                             f"registered ({meta.get('json_file', 'not from a JSON')}); pick another name")
        register_coco_instances(name, {}, json_file, image_root)


def launch_from_args(main: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> None:
    """detectron2's ``launch`` of ``main(args)`` with the processes and machines that
    ``args`` (a ``default_argument_parser`` result) asks for."""
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
