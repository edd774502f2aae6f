"""Datasets of one's own: given on train_net.py's command line, checked against the model."""
import json
import os
import subprocess
import sys

import pytest

from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog

from rs_detectron2.config import add_rs_config
from rs_detectron2.engine import check_dataset_classes, model_num_classes
from rs_detectron2.engine.arguments import register_datasets_from_args, rs_argument_parser

from .tiny_launch import write_tiny_coco

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RS_FASTER = os.path.join(ROOT, "configs", "Synthetic", "rs_faster_rcnn_R_18_FPN.yaml")


def _cfg(meta_arch="GeneralizedRCNN", num_classes=2):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = meta_arch
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.RETINANET.NUM_CLASSES = num_classes
    return cfg


def test_more_dataset_classes_than_the_model_stop_with_both_numbers():
    MetadataCatalog.get("own_check_5").set(thing_classes=list("abcde"))
    for meta_arch, key in (("GeneralizedRCNN", "MODEL.ROI_HEADS.NUM_CLASSES"),
                           ("RSRetinaNet", "MODEL.RETINANET.NUM_CLASSES"),
                           ("RetinaNet", "MODEL.RETINANET.NUM_CLASSES")):
        assert model_num_classes(_cfg(meta_arch, 3)) == (key, 3)
        with pytest.raises(ValueError, match=rf"5 classes.*{key} = 3: set {key} 5"):
            check_dataset_classes(_cfg(meta_arch, 3), ["own_check_5"])
        check_dataset_classes(_cfg(meta_arch, 5), ["own_check_5"])  # fits: no error
        check_dataset_classes(_cfg(meta_arch, 8), ["own_check_5"])  # more outputs: trains
        with pytest.raises(ValueError, match=rf"evaluation dataset .* 5 classes .*{key} = 8"):
            check_dataset_classes(_cfg(meta_arch, 8), ["own_check_5"], evaluated=True)


def test_coco_dataset_argument_registers_it(tmp_path):
    paths = write_tiny_coco(str(tmp_path), num_images=4)
    args = rs_argument_parser().parse_args(
        ["--coco-dataset", "own_args_train", paths["train_json"], paths["image_root"]])
    register_datasets_from_args(args)
    register_datasets_from_args(args)  # again, same files: fine (every launched process)
    meta = MetadataCatalog.get("own_args_train")
    assert meta.json_file == paths["train_json"] and meta.evaluator_type == "coco"
    other = rs_argument_parser().parse_args(
        ["--coco-dataset", "own_args_train", paths["val_json"], paths["image_root"]])
    with pytest.raises(ValueError, match="already registered"):
        register_datasets_from_args(other)
    # thing_classes come from the JSON when the check loads it
    with pytest.raises(ValueError, match="2 classes"):
        check_dataset_classes(_cfg(num_classes=1), ["own_args_train"])


def _run_train_net(*argv, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", DETECTRON2_DATASETS=os.path.join(cwd, "d2data"))
    return subprocess.run([sys.executable, os.path.join(ROOT, "train_net.py"), *argv],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def test_train_net_refuses_fewer_classes_than_the_data(tmp_path):
    """The issue's command: 6 built-in classes, NUM_CLASSES 3 -> non-zero exit, both numbers
    (the built-in dataset's classes are known at registration: nothing is generated)."""
    result = _run_train_net("--config-file", RS_FASTER, "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                            "OUTPUT_DIR", str(tmp_path / "out"), cwd=str(tmp_path))
    assert result.returncode != 0
    assert "has 6 classes" in result.stderr and "MODEL.ROI_HEADS.NUM_CLASSES = 3" in result.stderr
    assert not os.path.exists(tmp_path / "d2data")


def test_own_coco_dataset_trains_and_evaluates_with_one_command(tmp_path):
    """The README's "Your own dataset" command, on a tiny COCO JSON + image folder, with a
    shipped RS config shrunk to a few iterations."""
    paths = write_tiny_coco(str(tmp_path / "mydata"), num_images=6)
    out = tmp_path / "out"
    result = _run_train_net(
        "--config-file", RS_FASTER,
        "--coco-dataset", "my_train", paths["train_json"], paths["image_root"],
        "--coco-dataset", "my_val", paths["val_json"], paths["image_root"],
        "DATASETS.TRAIN", '("my_train",)', "DATASETS.TEST", '("my_val",)',
        "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.DEVICE", "cpu",
        "SOLVER.MAX_ITER", "3", "SOLVER.WARMUP_ITERS", "0", "SOLVER.IMS_PER_BATCH", "2",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "INPUT.MASK_FORMAT", "polygon",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out), cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.path.exists(out / "model_final.pth")
    with open(out / "inference" / "coco_instances_results.json") as f:
        json.load(f)  # the evaluator ran on my_val
    assert "Evaluation results for bbox" in result.stdout + result.stderr
    assert not os.path.exists(tmp_path / "d2data")  # no built-in dataset was generated
