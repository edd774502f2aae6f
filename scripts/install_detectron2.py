#!/usr/bin/env python
"""Install detectron2 for rs_detectron2, or keep the one that is already there.

detectron2 is not published on PyPI. This installer:

1. keeps a detectron2 that is already importable and working (for example one built
   from source with its compiled ops: see the README);
2. otherwise installs a registry redistribution of upstream detectron2's Python code,
   ``sal-detectron2==0.7.2`` (a cp310 wheel of mid-2024 upstream code): it downloads the
   wheel, checks it against a pinned sha256, drops its CPython-3.10-only ``_C``
   extension, marks the wheel pure Python, relaxes its ``numpy<2`` pin, and installs it
   with the versions of fvcore and iopath that detectron2 expects.

Without ``_C`` detectron2 falls back by itself (pycocotools' COCOeval; rotated-box ops
and DeformConv raise only when used). Uses only the standard library.

    python scripts/install_detectron2.py [--force] [--wheel-dir DIR]
"""
import argparse
import base64
import csv
import hashlib
import io
import os
import subprocess
import sys
import tempfile
import zipfile

WHEEL_REQUIREMENT = "sal-detectron2==0.7.2"
WHEEL_FILE = "sal_detectron2-0.7.2-cp310-none-any.whl"
WHEEL_SHA256 = "491af0c7f79bdb2d178e46f6cb16a97c4ac968d45c41ea3f6b6435d59bbee561"
PURE_WHEEL_FILE = "sal_detectron2-0.7.2-py3-none-any.whl"
# What detectron2 needs beside its wheel's own requirements (fvcore/iopath as upstream pins).
COMPANIONS = ["fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10", "pycocotools>=2.0.2"]

# A detectron2 is "working" when its configs, models and trainer import and a config builds.
WORKING_CHECK = """
import detectron2
from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer
from detectron2.modeling import build_model
get_cfg()
try:
    from detectron2 import _C  # noqa: F401
    ops = "present"
except ImportError:
    ops = "absent (pure-Python fallbacks)"
print(detectron2.__version__, detectron2.__file__, ops, sep="|")
"""


def say(message: str) -> None:
    print(f"[install_detectron2] {message}", flush=True)


def working_detectron2():
    """(version, location, compiled ops) of an importable, working detectron2, else None."""
    proc = subprocess.run(
        [sys.executable, "-c", WORKING_CHECK], capture_output=True, text=True, cwd=tempfile.gettempdir()
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.strip().splitlines()[-1].split("|")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(dest: str) -> str:
    """Download the pinned wheel into ``dest`` and check its sha256."""
    say(f"downloading {WHEEL_REQUIREMENT} (cp310 wheel) from the package registry")
    subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.10", "-d", dest, WHEEL_REQUIREMENT,
        ],
        check=True,
    )
    path = os.path.join(dest, WHEEL_FILE)
    if not os.path.exists(path):
        raise SystemExit(f"[install_detectron2] expected {WHEEL_FILE} in {dest}, found {os.listdir(dest)}")
    verify_sha256(path)
    return path


def verify_sha256(path: str) -> None:
    actual = sha256_of(path)
    if actual != WHEEL_SHA256:
        raise SystemExit(
            f"[install_detectron2] sha256 mismatch for {os.path.basename(path)}:\n"
            f"  expected {WHEEL_SHA256}\n  got      {actual}\n"
            "The registry's file changed since this installer was written. Refusing to install "
            "it. Install detectron2 from source instead (see the README), then run the set-up "
            "again: a working detectron2 is kept."
        )
    say(f"sha256 verified: {actual}")


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def _pure_metadata(text: str) -> str:
    return text.replace("Requires-Dist: numpy<2\n", "Requires-Dist: numpy\n")


def _pure_wheel_info(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if line.startswith("Root-Is-Purelib:"):
            line = "Root-Is-Purelib: true"
        elif line.startswith("Tag:"):
            line = "Tag: py3-none-any"
        lines.append(line)
    return "\n".join(lines) + "\n"


def make_pure_wheel(src: str, dest_dir: str) -> str:
    """Rewrite the wheel as pure Python: no ``_C``, purelib, py3 tag, numpy pin relaxed."""
    dest = os.path.join(dest_dir, PURE_WHEEL_FILE)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        record_name = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        rows = []
        for info in zin.infolist():
            name = info.filename
            if name == record_name:
                continue
            if name.startswith("detectron2/_C") and name.endswith(".so"):
                say(f"dropping {name} (built for CPython 3.10 and an old torch)")
                continue
            data = zin.read(name)
            if name.endswith(".dist-info/METADATA"):
                data = _pure_metadata(data.decode()).encode()
            elif name.endswith(".dist-info/WHEEL"):
                data = _pure_wheel_info(data.decode()).encode()
            zout.writestr(info, data)
            rows.append((name, _record_hash(data), str(len(data))))
        rows.append((record_name, "", ""))
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        zout.writestr(record_name, buf.getvalue())
    return dest


def install(force: bool = False, wheel_dir: str = "") -> None:
    found = None if force else working_detectron2()
    if found:
        version, location, ops = found
        say(f"keeping the working detectron2 {version} at {os.path.dirname(location)}; compiled ops {ops}")
        return
    say("no working detectron2 found; installing the registry redistribution")
    with tempfile.TemporaryDirectory() as tmp:
        if wheel_dir:
            src = os.path.join(wheel_dir, WHEEL_FILE)
            verify_sha256(src)
        else:
            src = download_wheel(tmp)
        pure = make_pure_wheel(src, tmp)
        say(f"installing {os.path.basename(pure)} with {', '.join(COMPANIONS)}")
        subprocess.run([sys.executable, "-m", "pip", "install", pure] + COMPANIONS, check=True)
    found = working_detectron2()
    if not found:
        raise SystemExit("[install_detectron2] detectron2 was installed but does not import; see above")
    say(f"installed detectron2 {found[0]}; compiled ops {found[2]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if one works")
    parser.add_argument("--wheel-dir", default="", help=f"use {WHEEL_FILE} from here, no download")
    args = parser.parse_args()
    install(args.force, args.wheel_dir)


if __name__ == "__main__":
    main()
