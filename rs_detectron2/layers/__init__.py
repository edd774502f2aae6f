"""Layers of rs_detectron2 that detectron2 does not have."""
from .fast_matrix_nms import fast_nms, matrix_nms
from .prototype_masks import assemble_masks, crop_masks, mask_bounding_boxes, mask_targets
from .score_voting import score_voting
from .sparse_roi_align import (
    SparseROIAlign,
    roi_align_sampling_matrix,
    sparse_roi_align,
    use_sparse_roi_align,
)

__all__ = ["SparseROIAlign", "roi_align_sampling_matrix", "sparse_roi_align", "use_sparse_roi_align",
           "fast_nms", "matrix_nms", "score_voting", "assemble_masks", "crop_masks", "mask_targets", "mask_bounding_boxes"]
