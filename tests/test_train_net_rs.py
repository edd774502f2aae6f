"""train_net.py end to end with an RS model on a tiny built-in synthetic dataset (CPU).

Train a few iterations writing a checkpoint, evaluate that checkpoint with --eval-only,
resume from the last iteration, and train with 2 CPU processes (gloo).
"""
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "Synthetic", "rs_mask_rcnn_R_18_FPN.yaml")


def tiny_opts(data_root, output_dir, max_iter, dataset="RS_SYNTHETIC", num_train=8, num_val=4):
    """Options for a few-iteration run on tiny data of the family ``DATASETS.<dataset>``."""
    return [
        f"DATASETS.{dataset}.ROOT", str(data_root),
        f"DATASETS.{dataset}.NUM_TRAIN", str(num_train),
        f"DATASETS.{dataset}.NUM_VAL", str(num_val),
        f"DATASETS.{dataset}.IMAGE_SIZE", "96",
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
    for task in ("bbox", "segm"):  # oLRP beside AP, with each class's optimal threshold
        assert f"copypaste: Task: {task}_oLRP" in evaluated
        assert (tmp_path / "eval" / "inference" / f"olrp_thresholds_{task}.json").is_file()
    for task in ("bbox", "segm"):  # the checkpoint gives the AP printed after training
        assert printed_ap(evaluated, task) == printed_ap(log, task)

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


def printed_ap(log, task):
    """The AP of ``task`` from detectron2's "copypaste:" lines."""
    lines = [line.split("copypaste: ", 1)[1] for line in log.splitlines() if "copypaste: " in line]
    at = lines.index(f"Task: {task}")
    return float(lines[at + 2].split(",")[0])


DEMO_CONFIG = os.path.join(ROOT, "configs", "Synthetic", "pretrained", "rs_mask_rcnn_R_18_FPN.yaml")


@pytest.mark.slow
def test_cpu_demo_meets_its_time_and_ap_bars(tmp_path):
    """The README's main job, as a user runs it: the pretrained-backbone demo takes at most
    15 minutes on a 2-core CPU from an empty dataset cache (the backbone's pretraining, once,
    is timed separately before it), box AP >= 40, and --eval-only on its checkpoint prints
    the same AP. About 6 minutes here (plus the pretraining the first time): run with
    RS_RUN_SLOW=1."""
    from rs_detectron2.pretrained_weights import get_pretrained_checkpoint

    start = time.perf_counter()
    # Where train_net.py (cwd ROOT) looks: $DETECTRON2_DATASETS or ./datasets.
    root = os.environ.get("DETECTRON2_DATASETS", os.path.join(ROOT, "datasets"))
    get_pretrained_checkpoint("small_resnet18_w32_s16.pth", root=root)
    print(f"pretraining (or finding it cached): {(time.perf_counter() - start) / 60:.1f} min")
    out = tmp_path / "out"
    opts = ["DATASETS.RS_SYNTHETIC.ROOT", str(tmp_path / "data"), "OUTPUT_DIR", str(out)]
    start = time.perf_counter()
    log = train_net("--config-file", DEMO_CONFIG, *opts, timeout=1800)
    minutes = (time.perf_counter() - start) / 60
    box_ap, mask_ap = printed_ap(log, "bbox"), printed_ap(log, "segm")
    print(f"demo: {minutes:.1f} min, box AP {box_ap:.2f}, mask AP {mask_ap:.2f}")
    assert minutes <= 15.0
    assert box_ap >= 40.0
    evaluated = train_net(
        "--config-file", DEMO_CONFIG, "--eval-only", *opts, "MODEL.WEIGHTS", str(out / "model_final.pth")
    )
    assert printed_ap(evaluated, "bbox") == box_ap and printed_ap(evaluated, "segm") == mask_ap


LVIS_CONFIG = os.path.join(ROOT, "configs", "Synthetic", "rs_mask_rcnn_R_18_FPN_lvis.yaml")


def tiny_lvis_opts(data_root, output_dir, max_iter):
    """tiny_opts on rs_synthetic_lvis (40 training images: every class, a tail) with a
    repeat-factor threshold that repeats its rare classes."""
    return tiny_opts(data_root, output_dir, max_iter, "RS_SYNTHETIC_LVIS", 40, 6) + [
        "DATALOADER.REPEAT_THRESHOLD", "0.3"]


def test_lvis_training_with_repeat_factors_then_eval_only(tmp_path):
    """The LVIS config trains with repeat factor sampling, then prints LVIS AP (with APr /
    APc / APf) and oLRP; --eval-only on its checkpoint prints the same."""
    out = tmp_path / "out"
    log = train_net("--config-file", LVIS_CONFIG, *tiny_lvis_opts(tmp_path / "data", out, 3))
    assert "Using training sampler RepeatFactorTrainingSampler" in log
    evaluated = train_net(
        "--config-file", LVIS_CONFIG, "--eval-only", "MODEL.WEIGHTS", str(out / "model_final.pth"),
        *tiny_lvis_opts(tmp_path / "data", tmp_path / "eval", 3),
    )
    for text in (log, evaluated):
        for task in ("bbox", "segm"):
            assert f"Evaluation results for {task}" in text
            assert f"copypaste: Task: {task}_oLRP" in text
        assert "APr" in text and "APc" in text and "APf" in text
        assert "copypaste: oLRP,oLRP_loc,oLRP_FP,oLRP_FN" in text
    assert (tmp_path / "eval" / "inference" / "olrp_thresholds_bbox.json").exists()
    for task in ("bbox", "segm"):
        assert printed_ap(evaluated, task) == printed_ap(log, task)
