"""The pooler-level option ``POOLER_SPARSE_CPU`` of the RoI heads' nodes, for any model.

``MODEL.ROI_BOX_HEAD.POOLER_SPARSE_CPU`` (and the same key of ``ROI_MASK_HEAD`` and
``ROI_KEYPOINT_HEAD``) makes that head's ROIPooler compute ROIAlign on the CPU as one
multi-threaded sparse matrix product (:class:`~rs_detectron2.layers.SparseROIAlign`: the
same results up to float summation order, torchvision's kernels on other devices and while
the model is traced, scripted or exported to ONNX: docs/deployment.md). It works
for detectron2's own RoI heads as well as the RS ones: :class:`~rs_detectron2.engine.RSTrainer`
applies it when it builds the model (``train_net.py``, training and ``--eval-only``); a model
built another way gets it from :func:`use_sparse_cpu_poolers`, and a LazyConfig names
:func:`sparse_cpu_roi_pooler` as the pooler's ``_target_``.
"""
from typing import Any, Dict

from detectron2.config import CfgNode
from detectron2.modeling.poolers import ROIPooler
from torch import nn

from ..layers import use_sparse_roi_align

__all__ = ["POOLER_NODES", "use_sparse_cpu_poolers", "sparse_cpu_roi_pooler"]

# RoI heads attribute of the pooler -> the config node whose POOLER_SPARSE_CPU turns it on.
POOLER_NODES: Dict[str, str] = {
    "box_pooler": "ROI_BOX_HEAD",
    "mask_pooler": "ROI_MASK_HEAD",
    "keypoint_pooler": "ROI_KEYPOINT_HEAD",
}


def use_sparse_cpu_poolers(model: nn.Module, cfg: CfgNode) -> nn.Module:
    """Make the poolers of ``model.roi_heads`` whose node sets ``POOLER_SPARSE_CPU`` use
    :class:`~rs_detectron2.layers.SparseROIAlign` (in place; returns ``model``). A model
    without RoI heads (one-stage) is returned as it is. Raises ValueError when the key is on
    for a pooler whose ``POOLER_TYPE`` is not ROIAlign / ROIAlignV2."""
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is None:
        return model
    for attr, node in POOLER_NODES.items():
        pooler = getattr(roi_heads, attr, None)
        if pooler is not None and cfg.MODEL[node].POOLER_SPARSE_CPU:
            use_sparse_roi_align(pooler, key=f"MODEL.{node}.POOLER_SPARSE_CPU")
    return model


def sparse_cpu_roi_pooler(**kwargs: Any) -> ROIPooler:
    """detectron2's ``ROIPooler(**kwargs)`` with the sparse CPU ROIAlign: the LazyConfig
    counterpart of ``POOLER_SPARSE_CPU True`` (``model.roi_heads.box_pooler._target_ =
    sparse_cpu_roi_pooler``). Raises ValueError for a ``pooler_type`` other than ROIAlign /
    ROIAlignV2."""
    return use_sparse_roi_align(ROIPooler(**kwargs), key="sparse_cpu_roi_pooler")
