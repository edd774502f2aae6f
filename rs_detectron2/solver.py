"""detectron2's per-parameter gradient clipping (``SOLVER.CLIP_GRADIENTS``) for optimizers
that a LazyConfig builds.

detectron2 adds clipping only through a yacs config (``maybe_add_gradient_clipping``); the
synthetic RS configs train from scratch with it (early gradient norms reach the 100s), so
their LazyConfig twins need the same clipping, built by the same detectron2 code.
"""
from typing import Any

import torch
from detectron2.config import CfgNode
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["sgd_with_gradient_clipping"]


def sgd_with_gradient_clipping(
    *, clip_type: str = "norm", clip_value: float = 1.0, norm_type: float = 2.0, **sgd_kwargs: Any
) -> torch.optim.SGD:
    """``torch.optim.SGD(**sgd_kwargs)`` whose ``step`` first clips each parameter's gradient
    as detectron2's ``SOLVER.CLIP_GRADIENTS`` with ``ENABLED True`` and these ``CLIP_TYPE``
    ("norm" or "value"), ``CLIP_VALUE`` and ``NORM_TYPE`` (detectron2's own
    ``maybe_add_gradient_clipping``)."""
    if clip_type not in ("norm", "value"):
        raise ValueError(f"sgd_with_gradient_clipping: clip_type must be 'norm' or 'value' "
                         f"(detectron2's per-parameter clipping), got {clip_type!r}")
    clipping = CfgNode({"SOLVER": {"CLIP_GRADIENTS": {
        "ENABLED": True, "CLIP_TYPE": clip_type, "CLIP_VALUE": float(clip_value),
        "NORM_TYPE": float(norm_type)}}})
    return maybe_add_gradient_clipping(clipping, torch.optim.SGD(**sgd_kwargs))
