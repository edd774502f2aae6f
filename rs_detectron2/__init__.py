"""rs_detectron2: Rank & Sort Loss detectors as a detectron2 project extension.

Importing the package registers the RS heads with detectron2's registries, the
built-in synthetic datasets with its catalogs and the ``rs_pretrained://`` weights with its
``PathManager``.
"""
from . import data  # noqa: F401  (registers rs_synthetic_train / rs_synthetic_val)
from . import modeling  # noqa: F401  (registers RSRPN, RSStandardROIHeads, ...)
from . import pretrained_weights  # noqa: F401  (registers rs_pretrained://)
from .config import add_rs_config

__version__ = "0.1.0"
__all__ = ["add_rs_config"]
