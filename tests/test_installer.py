"""The detectron2 installer: the pinned sha256 check and the rewrite into a pure wheel."""
import csv
import hashlib
import io
import os
import sys
import zipfile

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import install_detectron2  # noqa: E402


def test_sha256_mismatch_stops_with_a_clear_message(tmp_path):
    wheel = tmp_path / install_detectron2.WHEEL_FILE
    wheel.write_bytes(b"not the pinned wheel")
    with pytest.raises(SystemExit, match="sha256 mismatch") as info:
        install_detectron2.verify_sha256(str(wheel))
    assert install_detectron2.WHEEL_SHA256 in str(info.value)
    assert hashlib.sha256(b"not the pinned wheel").hexdigest() in str(info.value)


def make_fake_wheel(path):
    info = "sal_detectron2-0.7.2.dist-info"
    files = {
        "detectron2/__init__.py": b"__version__ = '0.7.2'\n",
        "detectron2/_C.cpython-310-x86_64-linux-gnu.so": b"\x7fELF binary",
        f"{info}/METADATA": b"Name: sal-detectron2\nRequires-Dist: numpy<2\nRequires-Dist: yacs>=0.1.8\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: cp310-cp310-linux_x86_64\n",
    }
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n")


def test_pure_wheel_drops_the_extension_and_fixes_tags(tmp_path):
    src = tmp_path / "src.whl"
    make_fake_wheel(src)
    out = install_detectron2.make_pure_wheel(str(src), str(tmp_path))
    assert os.path.basename(out) == "sal_detectron2-0.7.2-py3-none-any.whl"
    with zipfile.ZipFile(out) as z:
        names = z.namelist()
        assert not any(n.startswith("detectron2/_C") for n in names)
        wheel_info = z.read("sal_detectron2-0.7.2.dist-info/WHEEL").decode()
        assert "Root-Is-Purelib: true" in wheel_info and "Tag: py3-none-any" in wheel_info
        metadata = z.read("sal_detectron2-0.7.2.dist-info/METADATA").decode()
        assert "Requires-Dist: numpy\n" in metadata and "numpy<2" not in metadata
        rows = list(csv.reader(io.StringIO(z.read("sal_detectron2-0.7.2.dist-info/RECORD").decode())))
        recorded = {r[0] for r in rows}
        assert recorded == set(names)
        for name, digest, size in rows:
            if digest:  # every file but RECORD itself carries its true hash and size
                assert int(size) == len(z.read(name))
                assert digest == install_detectron2._record_hash(z.read(name))
