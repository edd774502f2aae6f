"""rs_detectron2: Rank & Sort Loss detectors as a detectron2 project extension.

Importing the package registers the RS heads with detectron2's registries and the
built-in synthetic datasets with its catalogs.
"""
from . import data  # noqa: F401  (registers rs_synthetic_train / rs_synthetic_val)
from . import modeling  # noqa: F401  (registers RSRPN, RSStandardROIHeads, ...)
from .config import add_rs_config

__version__ = "0.1.0"
__all__ = ["add_rs_config"]
