"""rs_detectron2: Rank & Sort Loss detectors as a detectron2 project extension.

Importing the package loads nothing of detectron2, so that the loss
(:mod:`rs_detectron2.losses`) and the numpy core of oLRP
(:mod:`rs_detectron2.evaluation.olrp_core`) can be used alone. The detectron2-facing parts
register themselves when they are imported: :mod:`rs_detectron2.config` (``add_rs_config``,
also reachable as ``rs_detectron2.add_rs_config``) and :mod:`rs_detectron2.engine` register
everything (the RS heads with detectron2's registries, the built-in synthetic datasets with
its catalogs, the ``rs_pretrained://`` weights with its ``PathManager``);
:func:`register_all` does the same explicitly.
"""
from typing import Any

__version__ = "0.4.0"
__all__ = ["add_rs_config", "register_all"]


def register_all() -> None:
    """Register the RS heads, the built-in datasets and ``rs_pretrained://`` with detectron2
    (importing :mod:`rs_detectron2.config` does it; calling again is harmless)."""
    from . import config  # noqa: F401  (imports modeling, data, pretrained_weights)


def __getattr__(name: str) -> Any:
    """``rs_detectron2.add_rs_config``: loaded (with detectron2) on first use."""
    if name == "add_rs_config":
        from .config import add_rs_config

        return add_rs_config
    raise AttributeError(f"module 'rs_detectron2' has no attribute {name!r}")
