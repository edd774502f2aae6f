# RS-Mask R-CNN with FPN (Oksuz et al., ICCV 2021), LazyConfig: detectron2's own
# common/models/mask_rcnn_fpn.py with the RS parts swapped in, the published recipe
# included (the YAML twin: configs/Base-RS-RCNN-FPN.yaml + MASK_ON). Set
# model.roi_heads.mask_in_features = None (and mask_pooler / mask_head) for RS-Faster R-CNN.
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from detectron2.modeling.box_regression import Box2BoxTransform

from rs_detectron2.modeling import (
    RSRPN,
    RSFastRCNNOutputLayers,
    RSMaskRCNNConvUpsampleHead,
    RSStandardROIHeads,
    sparse_cpu_roi_pooler,
)

model = get_config("common/models/mask_rcnn_fpn.py").model

# RS-RPN: every anchor into one RS Loss (no sampling: batch_size_per_image and
# positive_fraction are not read), GIoU on decoded boxes, losses x 0.2 (published).
model.proposal_generator._target_ = RSRPN
model.proposal_generator.delta = 0.5  # smoothing of RS Loss (MODEL.RS.DELTA)
model.proposal_generator.loss_weight = 0.2  # MODEL.RPN.LOSS_WEIGHT
model.proposal_generator.box2box_transform = L(Box2BoxTransform)(weights=(10.0, 10.0, 5.0, 5.0))

# RS RoI heads: all proposals kept (ground truth appended, no sampling: batch_size_per_image
# and positive_fraction are not read), K sigmoid logits trained by RS Loss, score-weighted
# GIoU, at most max_mask_rois positives into a score-weighted Dice mask loss balanced to the
# box head's RS loss.
model.roi_heads._target_ = RSStandardROIHeads
model.roi_heads.max_mask_rois = 200  # MODEL.RS.MAX_MASK_ROIS
model.roi_heads.balance_mask_loss = True  # MODEL.RS.BALANCE_MASK_LOSS
model.roi_heads.box_predictor._target_ = RSFastRCNNOutputLayers
model.roi_heads.box_predictor.delta = 0.5
model.roi_heads.box_predictor.test_score_thresh = 0.40  # published: much cheaper inference
model.roi_heads.box_predictor.test_nms_thresh = 0.5
model.roi_heads.mask_head._target_ = RSMaskRCNNConvUpsampleHead
# On the CPU, ROIAlign of all proposals as one sparse product (POOLER_SPARSE_CPU True).
model.roi_heads.box_pooler._target_ = sparse_cpu_roi_pooler
model.roi_heads.mask_pooler._target_ = sparse_cpu_roi_pooler
