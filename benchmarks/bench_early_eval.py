"""How long ``--eval-only`` of an early (barely trained) checkpoint takes, per image,
against the training time per image of the same run.

An RS head's untrained scores sit near sigmoid(0) = 0.5, above every score threshold, so
every image keeps ``TEST.DETECTIONS_PER_IMAGE`` detections (with masks) until the model has
learnt something. This script trains each config for a few iterations with
``train_net.py`` (the config's own evaluation on its ``DATASETS.TEST`` follows) and reads
detectron2's timings from the log: "Overall training speed" (s / iteration, batch
``SOLVER.IMS_PER_BATCH``) and "Total inference time" (s / image). Both are measured in
the same process, so their ratio is what the README reports.

    OMP_NUM_THREADS=1 python benchmarks/bench_early_eval.py --iters 20 \\
        configs/Synthetic/rs_mask_rcnn_R_18_FPN.yaml configs/Synthetic/pretrained/rs_mask_rcnn_R_18_FPN.yaml
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine import machine_line  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TRAIN = re.compile(r"Overall training speed: \d+ iterations in \S+ \(([\d.]+) s / it\)")
_INFER = re.compile(r"Total inference time: \S+ \(([\d.]+) s / iter per device")
_BATCH = re.compile(r"IMS_PER_BATCH: (\d+)")


def run(config: str, iters: int, output_dir: str) -> dict:
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config,
           "SOLVER.MAX_ITER", str(iters), "SOLVER.WARMUP_ITERS", "0", "OUTPUT_DIR", output_dir]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"{config}: train_net.py failed\n{log[-3000:]}")
    train = _TRAIN.search(log)
    infer = _INFER.findall(log)
    with open(os.path.join(output_dir, "config.yaml")) as f:
        batch = int(_BATCH.search(f.read()).group(1))
    s_per_image_train = float(train.group(1)) / batch
    s_per_image_eval = float(infer[0])
    return {"config": os.path.relpath(config, ROOT), "iters": iters, "batch": batch,
            "train_s_per_image": round(s_per_image_train, 4),
            "eval_s_per_image": round(s_per_image_eval, 4),
            "eval_over_train": round(s_per_image_eval / s_per_image_train, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    print(machine_line())
    for config in args.configs:
        with tempfile.TemporaryDirectory() as out:
            print(json.dumps(run(os.path.abspath(config), args.iters, out)))


if __name__ == "__main__":
    main()
