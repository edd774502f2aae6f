"""benchmarks/machine.py: the one machine and version report of every benchmark."""
import os
import platform
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import machine  # noqa: E402


def test_machine_info_has_the_keys_of_the_result_jsons():
    info = machine.machine_info()
    assert set(info) == {"cpu", "cpu_count", "usable_cores", "torch_threads", "platform", "gpu"}
    assert info["cpu"] == machine.cpu_name() and info["cpu"]
    assert 1 <= info["usable_cores"] <= info["cpu_count"]
    assert info["torch_threads"] == torch.get_num_threads()
    assert (info["gpu"] is None) == (not torch.cuda.is_available())


def test_versions_missing_is_none_broken_raises(tmp_path, monkeypatch):
    (tmp_path / "rs_test_broken_pkg").mkdir()
    (tmp_path / "rs_test_broken_pkg" / "__init__.py").write_text("raise ImportError('boom')\n")
    (tmp_path / "rs_test_plain_mod.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    v = machine.versions(("torch", "rs_test_no_such_module", "rs_test_plain_mod"))
    assert v == {"python": platform.python_version(), "torch": str(torch.__version__),
                 "rs_test_no_such_module": None, "rs_test_plain_mod": None}
    assert list(machine.versions()) == ["python", *machine.VERSION_MODULES]
    # An installed package that fails to import is not reported as a missing one.
    with pytest.raises(ImportError, match="boom"):
        machine.versions(("rs_test_broken_pkg",))


def test_compact_report_and_line_agree_with_machine_info():
    report, info = machine.compact_report(), machine.machine_info()
    assert report == {"cpu": info["cpu"], "cores": info["cpu_count"],
                      "torch_threads": info["torch_threads"], "torch": str(torch.__version__),
                      "python": platform.python_version()}
    line = machine.machine_line()
    assert line == (f"{info['cpu']}, {info['cpu_count']} cores, torch {torch.__version__} "
                    f"({info['torch_threads']} threads), Python {platform.python_version()}")
    assert "GPU" not in line
