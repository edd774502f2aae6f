"""Layers of rs_detectron2 that detectron2 does not have."""
from .sparse_roi_align import (
    SparseROIAlign,
    roi_align_sampling_matrix,
    sparse_roi_align,
    use_sparse_roi_align,
)

__all__ = ["SparseROIAlign", "roi_align_sampling_matrix", "sparse_roi_align", "use_sparse_roi_align"]
