"""The README's "Your own dataset", "Fine-tune from a checkpoint" and "Use from Python"
snippets, run as written (in a scratch folder with the repository's configs; the shell
commands get overrides appended that shrink them to a few iterations on tiny data)."""
import os
import re
import shlex
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from rs_detectron2.pretrained_weights import pretrained_cache_path

from .tiny_launch import write_tiny_coco

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAST = ["SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "0", "SOLVER.IMS_PER_BATCH", "2",
        "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "96", "INPUT.MIN_SIZE_TEST",
        "64", "INPUT.MAX_SIZE_TEST", "96", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]
DEMO_OUT = "output/rs_mask_rcnn_R_18_FPN_synthetic_pretrained"


def snippet(name: str) -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    match = re.search(rf"<!-- snippet: {name} -->\n```\w+\n(.*?)```", text, re.S)
    assert match, f"README has no snippet {name}"
    return match.group(1)


def shell_argv(code: str):
    argv = shlex.split(code.replace("\\\n", " "))
    assert argv[:2] == ["python", "train_net.py"], argv[:2]
    return [sys.executable, os.path.join(ROOT, "train_net.py"), *argv[2:]]


@pytest.fixture
def workdir(tmp_path):
    """A scratch folder with the configs, a tiny COCO dataset in my_data/, an image and a
    stand-in for the cached pretrained backbone (so nothing is pretrained)."""
    os.symlink(os.path.join(ROOT, "configs"), tmp_path / "configs")
    write_tiny_coco(str(tmp_path / "my_data"), num_images=6)
    cv2.imwrite(str(tmp_path / "image.png"), np.random.default_rng(0).integers(
        0, 255, (80, 96, 3), dtype=np.uint8))
    backbone = pretrained_cache_path("small_resnet18_w32_s16.pth", str(tmp_path / "d2data"))
    os.makedirs(os.path.dirname(backbone))
    torch.save({"model": {}}, backbone)
    env = dict(os.environ, OMP_NUM_THREADS="1", DETECTRON2_DATASETS=str(tmp_path / "d2data"),
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return tmp_path, env


def run(argv, cwd, env):
    result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_own_dataset_then_fine_tune_then_python_use(workdir):
    cwd, env = workdir
    # Your own dataset: the command as written, shrunk.
    run(shell_argv(snippet("own-dataset")) + FAST, cwd, env)
    assert os.path.exists(cwd / "output" / "my_model" / "model_final.pth")
    # The demo's output folder stands in for a trained demo (2 iterations on my_data).
    tiny_data = ["--coco-dataset", "my_train", "my_data/train.json", "my_data/images",
                 "--coco-dataset", "my_val", "my_data/val.json", "my_data/images"]
    data_opts = ["DATASETS.TRAIN", '("my_train",)', "DATASETS.TEST", '("my_val",)',
                 "INPUT.MASK_FORMAT", "polygon", "MODEL.ROI_HEADS.NUM_CLASSES", "2"]
    demo = ["--config-file", "configs/Synthetic/pretrained/rs_mask_rcnn_R_18_FPN.yaml"]
    run([sys.executable, os.path.join(ROOT, "train_net.py"), *demo, *tiny_data, *data_opts,
         *FAST, "OUTPUT_DIR", DEMO_OUT], cwd, env)
    # Fine-tune from it: the command as written, on the tiny data, shrunk.
    argv = shell_argv(snippet("fine-tune"))
    i = argv.index("--config-file") + 2
    result = run(argv[:i] + tiny_data + argv[i:] + data_opts + FAST, cwd, env)
    assert "model_final.pth" in result.stdout + result.stderr  # it loaded the checkpoint
    assert os.path.exists(cwd / "output" / "finetuned" / "model_final.pth")
    # Use from Python: the snippet as written, on the stand-in demo model.
    result = run([sys.executable, "-c", snippet("python-use")], cwd, env)
    number = result.stdout.split()[0]
    assert number.isdigit()
