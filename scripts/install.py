#!/usr/bin/env python
"""One-command set-up of rs_detectron2 into the current Python environment.

    python scripts/install.py

In order, each step skipped when what it installs is already there and working:

1. torch + torchvision whose compiled ops load. If they are missing or broken, installs
   the registry pair torch==2.13.0 + torchvision==0.28.0. That pair is taken from the
   package index itself, bypassing pip's configured find-links: a CPU-only torch wheel
   found there does not load the registry's torchvision ops ("operator torchvision::nms
   does not exist"), while the registry's CUDA build of torch also runs on a CPU.
2. detectron2, through scripts/install_detectron2.py (keeps a working one).
3. rs_detectron2 in editable mode with its dependencies and the test tools
   (``pip install -e .[dev]``).

A second run changes nothing. Uses only the standard library.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib import metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import install_detectron2  # noqa: E402

TORCH_PAIR = ["torch==2.13.0", "torchvision==0.28.0"]
TORCH_CHECK = """
import torch, torchvision
from torchvision.ops import nms, roi_align
nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
roi_align(torch.zeros(1, 1, 4, 4), [torch.zeros(1, 4)], 2)
print(torch.__version__, torchvision.__version__)
"""


def say(message: str) -> None:
    print(f"[install] {message}", flush=True)


def pip(*args: str, env=None) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    say("running: " + " ".join(cmd[1:]))
    subprocess.run(cmd, check=True, env=env)


def torch_versions():
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_CHECK], capture_output=True, text=True, cwd=tempfile.gettempdir()
    )
    return proc.stdout.split() if proc.returncode == 0 else None


def ensure_torch() -> None:
    found = torch_versions()
    if found:
        say(f"keeping torch {found[0]} + torchvision {found[1]}: compiled ops load")
        return
    say(f"torch/torchvision missing or their compiled ops do not load; installing {' + '.join(TORCH_PAIR)}")
    try:
        installed = metadata.version("torch")
    except metadata.PackageNotFoundError:
        installed = None
    if installed and "+cpu" in installed:
        say(f"removing torch {installed} (a CPU-only build the registry's torchvision cannot load)")
        pip("uninstall", "-y", "torch", "torchvision")
    # Take the pair from the package index, not from a configured local wheel folder.
    env = dict(os.environ, PIP_CONFIG_FILE=os.devnull, PIP_FIND_LINKS="")
    pip("install", *TORCH_PAIR, env=env)
    found = torch_versions()
    if not found:
        raise SystemExit("[install] torchvision's compiled ops still do not load; see the output above")
    say(f"installed torch {found[0]} + torchvision {found[1]}")


def editable_here() -> bool:
    """True when rs_detectron2 is installed editable from this checkout, requirements met."""
    try:
        dist = metadata.distribution("rs_detectron2")
    except metadata.PackageNotFoundError:
        return False
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    url = direct_url.get("url", "")
    if not direct_url.get("dir_info", {}).get("editable") or os.path.realpath(
        url.replace("file://", "")
    ) != os.path.realpath(ROOT):
        return False
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pip always carries a copy
        from pip._vendor.packaging.requirements import Requirement

    for spec in dist.requires or []:
        req = Requirement(spec)
        env = {"extra": "dev"}
        if req.marker and not req.marker.evaluate(env):
            continue
        try:
            if not req.specifier.contains(metadata.version(req.name), prereleases=True):
                return False
        except metadata.PackageNotFoundError:
            return False
    return True


def ensure_package() -> None:
    if editable_here():
        say(f"keeping rs_detectron2, installed editable from {ROOT}, requirements met")
        return
    pip("install", "-e", f"{ROOT}[dev]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.parse_args()
    say(f"Python {sys.version.split()[0]} at {sys.executable}")
    ensure_torch()
    install_detectron2.install()
    ensure_package()
    say("done; check with: python scripts/collect_env.py")


if __name__ == "__main__":
    main()
