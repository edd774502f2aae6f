"""Gradient clipping beyond detectron2's yacs path.

* :func:`sgd_with_gradient_clipping`: detectron2's per-parameter clipping
  (``SOLVER.CLIP_GRADIENTS``) for optimizers that a LazyConfig builds. detectron2 adds
  clipping only through a yacs config (``maybe_add_gradient_clipping``); the synthetic RS
  configs train from scratch with it (early gradient norms reach the 100s), so their
  LazyConfig twins need the same clipping, built by the same detectron2 code.
* :func:`build_rs_optimizer`: detectron2's ``build_optimizer`` plus ``CLIP_TYPE``
  "full_model": the total norm of all gradients clipped to ``CLIP_VALUE`` (mmdetection's
  ``grad_clip=dict(max_norm=..., norm_type=...)``, the published SOLOv2's 35), the name
  detectron2's own projects give it.
"""
import itertools
from typing import Any, Type

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.solver import build_optimizer
from detectron2.solver.build import maybe_add_gradient_clipping

__all__ = ["sgd_with_gradient_clipping", "full_model_gradient_clipping", "build_rs_optimizer"]


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


def full_model_gradient_clipping(optimizer_type: Type[torch.optim.Optimizer], max_norm: float,
                                 norm_type: float = 2.0) -> Type[torch.optim.Optimizer]:
    """A subclass of ``optimizer_type`` whose ``step`` first scales all gradients of its
    parameters so that their total ``norm_type`` norm is at most ``max_norm``
    (``torch.nn.utils.clip_grad_norm_``)."""

    class FullModelGradientClipping(optimizer_type):
        def step(self, closure=None):
            params = itertools.chain(*[group["params"] for group in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure=closure)

    FullModelGradientClipping.__name__ = optimizer_type.__name__ + "WithFullModelGradientClipping"
    return FullModelGradientClipping


def build_rs_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """detectron2's optimizer for ``cfg``; with ``SOLVER.CLIP_GRADIENTS.ENABLED`` and
    ``CLIP_TYPE`` "full_model" it clips the whole model's gradient norm (``CLIP_VALUE``,
    ``NORM_TYPE``) instead of detectron2's per-parameter "norm" / "value"."""
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if not (clip.ENABLED and clip.CLIP_TYPE == "full_model"):
        return build_optimizer(cfg, model)
    plain = cfg.clone()
    plain.defrost()
    plain.SOLVER.CLIP_GRADIENTS.ENABLED = False
    optimizer = build_optimizer(plain, model)
    optimizer.__class__ = full_model_gradient_clipping(type(optimizer), float(clip.CLIP_VALUE),
                                                       float(clip.NORM_TYPE))
    return optimizer
