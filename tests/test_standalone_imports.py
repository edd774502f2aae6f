"""The loss and the numpy core of oLRP load without detectron2 (a fresh interpreter each)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("detectron2", "cv2", "pycocotools", "fvcore")


def run_python(code: str) -> None:
    """Run ``code`` in a fresh interpreter at the repository root; fail with its stderr."""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", ["rs_detectron2", "rs_detectron2.losses",
                                    "rs_detectron2.losses.ap_losses",
                                    "rs_detectron2.evaluation.olrp_core"])
def test_module_loads_no_detectron2(module):
    code = (f"import sys, {module}\n"
            f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
            "assert not heavy, heavy\n")
    run_python(code)


def test_loss_runs_without_detectron2():
    code = ("import sys, torch\n"
            "from rs_detectron2.losses import rank_sort_loss\n"
            "rank, sort = rank_sort_loss(torch.tensor([2.0, 1.0, 0.5]), torch.tensor([0.9, 0.0, 0.4]))\n"
            "assert 0 < float(rank) < 1 and 'detectron2' not in sys.modules\n")
    run_python(code)


def test_ap_losses_run_without_detectron2():
    code = ("import sys, torch\n"
            "from rs_detectron2.losses import ap_loss, alrp_loss\n"
            "s, y = torch.tensor([2.0, 1.0, 0.5]), torch.tensor([1.0, 0.0, 1.0])\n"
            "ap = ap_loss(s, y)\n"
            "out = alrp_loss(s, y, torch.tensor([0.2, 0.4]))\n"
            "assert 0 < float(ap) < 1 and 0 < float(out.loss_cls) < 1 and float(out.loss_reg) > 0\n"
            "assert 'detectron2' not in sys.modules\n")
    run_python(code)


def test_configuring_registers_everything():
    code = ("from rs_detectron2 import add_rs_config\n"
            "from detectron2.data import DatasetCatalog\n"
            "from detectron2.modeling import META_ARCH_REGISTRY, PROPOSAL_GENERATOR_REGISTRY\n"
            "from detectron2.utils.file_io import PathManager\n"
            "assert 'RSRPN' in PROPOSAL_GENERATOR_REGISTRY and 'RSRetinaNet' in META_ARCH_REGISTRY\n"
            "assert 'rs_synthetic_val' in DatasetCatalog\n"
            "assert any('rs_pretrained' in p for p in PathManager._path_handlers)\n")
    run_python(code)
