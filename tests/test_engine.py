"""RSTrainer and train_net.py on CPU, with a tiny stock-detectron2 Faster R-CNN and a tiny
COCO-format dataset written by the tests (no RS heads, no downloads)."""
import argparse
import json
import os
import subprocess
import sys
import uuid

import pytest
import torch

import detectron2.engine.defaults as d2_defaults
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer, default_argument_parser
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators
from detectron2.utils import comm

import rs_detectron2.engine.trainer as rs_trainer_module
from rs_detectron2.config import add_rs_config
from rs_detectron2.data import prepare_rs_synthetic, register_rs_synthetic_lvis
from rs_detectron2.engine import RSTrainer, default_rs_setup
from rs_detectron2.evaluation import OLRPEvaluator, RSLVISEvaluator

from .tiny_launch import TINY_CONFIG, register_tiny_coco

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_LAUNCH = os.path.join(REPO, "tests", "tiny_launch.py")
SUBPROCESS_TIMEOUT = 240


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """The tiny dataset, registered in this process as "rs_tiny_train"/"rs_tiny_val"."""
    root = str(tmp_path_factory.mktemp("tiny_data"))
    register_tiny_coco(root)
    return root


@pytest.fixture
def no_synthetic_registration(monkeypatch):
    """In-process setups skip the built-in synthetic datasets (they are not under test
    here); records the configs they were asked to register."""
    calls = []
    monkeypatch.setattr(rs_trainer_module, "register_rs_synthetic_datasets", calls.append)
    return calls


def tiny_cfg(output_dir, *opts):
    cfg = get_cfg()
    add_rs_config(cfg)
    cfg.merge_from_file(TINY_CONFIG)
    cfg.merge_from_list(["OUTPUT_DIR", str(output_dir), *opts])
    return cfg


def parse_args(argv):
    return default_argument_parser().parse_args([str(a) for a in argv])


def small_synthetic_opts(tmp_path):
    """Keys that keep the built-in synthetic datasets tiny and in ``tmp_path`` in case
    the real registration (subprocesses) generates anything."""
    return [
        "DATASETS.RS_SYNTHETIC.ROOT", str(tmp_path / "synthetic"),
        "DATASETS.RS_SYNTHETIC.NUM_TRAIN", "2",
        "DATASETS.RS_SYNTHETIC.NUM_VAL", "2",
        "DATASETS.RS_SYNTHETIC.IMAGE_SIZE", "64",
    ]  # fmt: skip


def run_tiny_launch(tmp_path, data_root, *argv):
    cmd = [sys.executable, TINY_LAUNCH, "--tiny-data", data_root, "--dist-url", "auto"]
    cmd += [str(a) for a in argv] + small_synthetic_opts(tmp_path)
    # One thread per process, as torchrun does: 2 processes x N threads thrash small CPUs.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT
    )


def read_text(path):
    with open(path) as f:
        return f.read()


# --------------------------------------------------------------------------- evaluator


@pytest.mark.parametrize("mask_on, tasks", [(False, ("bbox",)), (True, ("bbox", "segm"))])
def test_build_evaluator_coco(tiny_data, tmp_path, mask_on, tasks):
    cfg = tiny_cfg(tmp_path, "MODEL.MASK_ON", mask_on)
    evaluator = RSTrainer.build_evaluator(cfg, "rs_tiny_val")
    assert isinstance(evaluator, DatasetEvaluators)  # COCO AP, then oLRP
    coco, olrp = evaluator._evaluators
    assert isinstance(coco, COCOEvaluator) and isinstance(olrp, OLRPEvaluator)
    assert coco._tasks == tasks
    assert coco._distributed
    assert coco._output_dir == os.path.join(str(tmp_path), "inference")
    other = RSTrainer.build_evaluator(cfg, "rs_tiny_val", output_folder=str(tmp_path / "x"))
    assert other._evaluators[0]._output_dir == str(tmp_path / "x")
    alone = RSTrainer.build_evaluator(tiny_cfg(tmp_path, "TEST.OLRP.ENABLED", False),
                                      "rs_tiny_val")
    assert isinstance(alone, COCOEvaluator)


def test_build_evaluator_lvis(tmp_path):
    """An LVIS dataset gets LVIS AP (run on numpy 2) with cfg.TEST.DETECTIONS_PER_IMAGE
    detections per image, and oLRP."""
    register_rs_synthetic_lvis(root=str(tmp_path / "data"), num_train=12, num_val=3,
                               image_size=96)
    name = "rs_synthetic_lvis_val"
    prepare_rs_synthetic(name)  # LVISEvaluator reads the annotation file when built
    cfg = tiny_cfg(tmp_path, "MODEL.MASK_ON", True, "TEST.DETECTIONS_PER_IMAGE", 300)
    lvis, olrp = RSTrainer.build_evaluator(cfg, name)._evaluators
    assert isinstance(lvis, RSLVISEvaluator) and isinstance(olrp, OLRPEvaluator)
    assert lvis._tasks == ("bbox", "segm") and lvis._max_dets_per_image == 300


@pytest.mark.parametrize("evaluator_type", ["pascal_voc", None])
def test_build_evaluator_unsupported_type(tmp_path, evaluator_type):
    name = f"rs_test_unsupported_{uuid.uuid4().hex[:8]}"
    DatasetCatalog.register(name, lambda: [])
    if evaluator_type is not None:
        MetadataCatalog.get(name).set(evaluator_type=evaluator_type)
    with pytest.raises(NotImplementedError) as e:
        RSTrainer.build_evaluator(tiny_cfg(tmp_path), name)
    assert name in str(e.value) and f"'{evaluator_type}'" in str(e.value)


# --------------------------------------------------------------------------- CPU DDP


@pytest.fixture
def fake_ddp_in_world_of_two(monkeypatch):
    """A faked 2-process job whose DistributedDataParallel records its keyword arguments."""
    wrapped = []

    def fake_ddp(model, **kwargs):
        wrapped.append(kwargs)
        return model

    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(d2_defaults, "DistributedDataParallel", fake_ddp)
    return wrapped


def test_cpu_model_gets_ddp_without_device_ids(tiny_data, tmp_path, monkeypatch, fake_ddp_in_world_of_two):
    """In a (faked) 2-process job, RSTrainer wraps a CPU model with device_ids=None where
    stock DefaultTrainer passes [local_rank]; detectron2's create_ddp_model is restored."""
    wrapped = fake_ddp_in_world_of_two
    # A real train loader would all_gather a seed through the (absent) process group.
    monkeypatch.setattr(DefaultTrainer, "build_train_loader", classmethod(lambda cls, cfg: []))
    original = d2_defaults.create_ddp_model
    cfg = tiny_cfg(tmp_path)

    RSTrainer(cfg)
    assert d2_defaults.create_ddp_model is original
    DefaultTrainer(cfg)
    assert wrapped == [
        {"broadcast_buffers": False, "device_ids": None},
        {"broadcast_buffers": False, "device_ids": [0]},
    ]


def test_substitute_changes_only_cpu_models_without_device_ids(fake_ddp_in_world_of_two):
    wrapped = fake_ddp_in_world_of_two
    cpu_model, other_model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device="meta")
    with rs_trainer_module._cpu_ddp_without_device_ids():
        d2_defaults.create_ddp_model(cpu_model)
        d2_defaults.create_ddp_model(other_model)  # e.g. CUDA: stock [local_rank]
        d2_defaults.create_ddp_model(cpu_model, device_ids=[3])  # explicit: untouched
    assert wrapped == [{"device_ids": None}, {"device_ids": [0]}, {"device_ids": [3]}]


def test_create_ddp_model_restored_when_init_fails(tmp_path):
    original = d2_defaults.create_ddp_model
    with pytest.raises(KeyError):  # no such dataset
        RSTrainer(tiny_cfg(tmp_path, "DATASETS.TRAIN", ("rs_test_not_registered",)))
    assert d2_defaults.create_ddp_model is original


def test_train_net_two_cpu_processes(tiny_data, tmp_path):
    """``--num-gpus 2`` on a CPU-only machine: gloo, DDP on CPU, distributed evaluation."""
    out = tmp_path / "out"
    proc = run_tiny_launch(
        tmp_path, tiny_data, "--num-gpus", 2, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", 2
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert (out / "model_final.pth").is_file()
    log = read_text(out / "log.txt")
    assert "Rank of current process: 0. World size: 2" in log
    assert "Rank of current process: 1. World size: 2" in read_text(out / "log.txt.rank1")
    assert "DistributedDataParallel gets device_ids=None" in log
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in log
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 1


def test_stock_default_trainer_fails_on_cpu_ddp(tiny_data, tmp_path):
    """The setting of the test above breaks stock DefaultTrainer: the fix is exercised."""
    proc = run_tiny_launch(
        tmp_path,
        tiny_data,
        "--num-gpus", 2, "--stock-trainer", "OUTPUT_DIR", tmp_path / "out", "SOLVER.MAX_ITER", 2,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "ValueError: DistributedDataParallel device_ids" in proc.stderr


# --------------------------------------------------------------------------- train_net


def test_train_eval_only_resume(tiny_data, tmp_path, no_synthetic_registration):
    import train_net

    out = tmp_path / "out"
    cfg_file = ["--config-file", TINY_CONFIG]

    # Train 4 iterations.
    train_net.main(parse_args(cfg_file + ["OUTPUT_DIR", out, "SOLVER.MAX_ITER", 4]))
    assert read_text(out / "last_checkpoint") == "model_final.pth"
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 3
    assert "Starting training from iteration 0" in read_text(out / "log.txt")
    assert len(no_synthetic_registration) == 1

    # Evaluate that checkpoint.
    eval_out = tmp_path / "eval"
    res = train_net.main(
        parse_args(
            cfg_file
            + ["--eval-only", "MODEL.WEIGHTS", out / "model_final.pth", "OUTPUT_DIR", eval_out]
        )
    )
    assert set(res) == {"bbox", "bbox_oLRP"} and "AP" in res["bbox"]
    assert 0 <= res["bbox_oLRP"]["oLRP"] <= 100
    eval_log = read_text(eval_out / "log.txt")
    assert "Evaluation results for bbox" in eval_log
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in eval_log
    assert (eval_out / "inference" / "coco_instances_results.json").is_file()

    # Resume: MAX_ITER 4 -> 6 continues at iteration 4.
    train_net.main(parse_args(cfg_file + ["--resume", "OUTPUT_DIR", out, "SOLVER.MAX_ITER", 6]))
    assert "Starting training from iteration 4" in read_text(out / "log.txt")
    assert torch.load(out / "model_final.pth", weights_only=False)["iteration"] == 5
    with open(out / "metrics.json") as f:
        rows = [json.loads(line) for line in f]
    assert [r["iteration"] for r in rows if "total_loss" in r] == [3, 5]


# --------------------------------------------------------------------------- setup


def test_setup_falls_back_to_cpu(tmp_path, monkeypatch, no_synthetic_registration):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = ["--config-file", TINY_CONFIG, "MODEL.DEVICE", "cuda", "OUTPUT_DIR", tmp_path]
    cfg = default_rs_setup(parse_args(argv))
    assert cfg.MODEL.DEVICE == "cpu"
    assert cfg.is_frozen()
    lines = [line for line in read_text(tmp_path / "log.txt").splitlines() if "cpu instead" in line]
    assert lines == [lines[0]] and "'cuda'" in lines[0] and "CUDA is not available" in lines[0]
    assert no_synthetic_registration == [cfg]


@pytest.mark.parametrize(
    "device, cuda_available, expected",
    [("cpu", False, "cpu"), ("cuda:1", False, "cpu"), ("cuda", True, "cuda")],
)
def test_fall_back_to_cpu_only_without_cuda(monkeypatch, device, cuda_available, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_available)
    cfg = get_cfg()
    cfg.MODEL.DEVICE = device
    message = rs_trainer_module.fall_back_to_cpu(cfg)
    assert cfg.MODEL.DEVICE == expected
    assert (message is not None) == (expected != device)


def test_setup_without_config_file(tmp_path, no_synthetic_registration):
    opts = ["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path)]
    args = argparse.Namespace(config_file="", opts=opts, eval_only=True)
    cfg = default_rs_setup(args)
    assert cfg.MODEL.RS.DELTA == 0.5  # add_rs_config keys are there
    assert no_synthetic_registration == [cfg]
    assert "cpu instead" not in read_text(tmp_path / "log.txt")
