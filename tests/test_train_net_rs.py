"""train_net.py end to end with an RS model on a tiny built-in synthetic dataset (CPU).

Train a few iterations writing a checkpoint, evaluate that checkpoint with --eval-only,
resume from the last iteration, and train with 2 CPU processes (gloo).
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "Synthetic", "rs_mask_rcnn_R_18_FPN.yaml")


def tiny_opts(data_root, output_dir, max_iter):
    return [
        "DATASETS.RS_SYNTHETIC.ROOT", str(data_root),
        "DATASETS.RS_SYNTHETIC.NUM_TRAIN", "8",
        "DATASETS.RS_SYNTHETIC.NUM_VAL", "4",
        "DATASETS.RS_SYNTHETIC.IMAGE_SIZE", "96",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", "2",
        "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(output_dir),
    ]


def train_net(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py"), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


def metric_iterations(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["iteration"] for r in rows if "total_loss" in r]


def test_train_eval_only_and_resume(tmp_path):
    out = tmp_path / "out"
    log = train_net("--config-file", CONFIG, *tiny_opts(tmp_path / "data", out, 4))
    assert "running on cpu instead" in log
    assert "loss_roi_rank" in log and "loss_rpn_sort" in log and "loss_mask" in log
    checkpoint = out / "model_final.pth"
    assert checkpoint.exists()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert "Evaluation results for bbox" in log and "Evaluation results for segm" in log

    evaluated = train_net(
        "--config-file", CONFIG, "--eval-only",
        *tiny_opts(tmp_path / "data", tmp_path / "eval", 4), "MODEL.WEIGHTS", str(checkpoint),
    )
    assert "Evaluation results for bbox" in evaluated and "Evaluation results for segm" in evaluated
    assert "copypaste: AP,AP50,AP75,APs,APm,APl" in evaluated

    resumed = train_net("--config-file", CONFIG, "--resume", *tiny_opts(tmp_path / "data", out, 6))
    assert "Starting training from iteration 4" in resumed
    # metrics.json rows: the last iteration of the first run (3), then of the resumed one (5).
    assert metric_iterations(out) == [3, 5]


def test_two_cpu_processes_with_rs_heads(tmp_path):
    out = tmp_path / "out"
    log = train_net(
        "--config-file", CONFIG, "--num-gpus", "2", *tiny_opts(tmp_path / "data", out, 2)
    )
    assert "DistributedDataParallel gets device_ids=None" in log
    assert (out / "model_final.pth").exists()
    assert "Evaluation results for bbox" in log
