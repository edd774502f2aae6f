"""The machine and software a benchmark ran on, described once for every benchmark.

Each benchmark records these next to its figures (timings mean little without them); they
all take them from here, so that the CPU name, the core counts and the version look-up agree
between benchmarks. A benchmark whose JSON or printed line has its own key names builds them
from :func:`machine_info` and :func:`versions` (see :func:`compact_report`).
"""
import importlib
import importlib.util
import os
import platform
from importlib.metadata import PackageNotFoundError, version as dist_version
from typing import Any, Dict, Optional, Sequence

# The packages whose versions the benchmarks record by default.
VERSION_MODULES = ("torch", "torchvision", "detectron2", "rs_detectron2", "numpy",
                   "pycocotools", "matplotlib")


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """The cores this process may run on (its affinity), else all of them."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def gpu_name(device: str = "cuda:0") -> Optional[str]:
    """The name of the CUDA ``device``, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device))


def machine_info() -> Dict[str, Any]:
    """cpu, cpu_count, usable_cores, torch_threads, platform and gpu (None without CUDA)."""
    import torch

    return dict(cpu=cpu_name(), cpu_count=os.cpu_count(), usable_cores=usable_cores(),
                torch_threads=torch.get_num_threads(), platform=platform.platform(),
                gpu=gpu_name())


def module_version(module: str) -> Optional[str]:
    """``module.__version__`` (else its distribution's version); None when the module is
    not installed. A module that is installed but fails to import raises: a broken package
    is not reported as a missing one."""
    if importlib.util.find_spec(module) is None:
        return None
    found = getattr(importlib.import_module(module), "__version__", None)
    if found is None:
        try:
            found = dist_version(module)
        except PackageNotFoundError:  # importable from a source tree, never installed
            return None
    return str(found)


def versions(modules: Sequence[str] = VERSION_MODULES) -> Dict[str, Optional[str]]:
    """python, then the version of each of ``modules`` (None: not installed)."""
    out: Dict[str, Optional[str]] = {"python": platform.python_version()}
    for module in modules:
        out[module] = module_version(module)
    return out


def compact_report() -> Dict[str, Any]:
    """cpu, cores, torch_threads, torch, python: the "machine" record of the micro
    benchmarks (bench_carafe_fpn, bench_olrp_eval)."""
    m, v = machine_info(), versions(("torch",))
    return {"cpu": m["cpu"], "cores": m["cpu_count"], "torch_threads": m["torch_threads"],
            "torch": v["torch"], "python": v["python"]}


def machine_line(device: str = "cpu") -> str:
    """One printable line: CPU, cores, torch (threads), Python, and the GPU of a CUDA
    ``device``."""
    r = compact_report()
    text = (f"{r['cpu']}, {r['cores']} cores, torch {r['torch']} ({r['torch_threads']} "
            f"threads), Python {r['python']}")
    if device.startswith("cuda"):
        text += f", GPU {gpu_name(device)}"
    return text
