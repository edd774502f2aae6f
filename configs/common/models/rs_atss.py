# RS-ATSS (Oksuz et al., ICCV 2021), LazyConfig: detectron2's own common/models/retinanet.py
# with the RS parts swapped in, the published recipe included (the YAML twin:
# configs/COCO-Detection/rs_atss_R_50_FPN_1x.yaml's model).
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.model_zoo import get_config
from detectron2.modeling.box_regression import Box2BoxTransform

from rs_detectron2.modeling import RSATSSHead, RSRetinaNet
from rs_detectron2.modeling.backbone import LastLevelP6P7FromP5

model = get_config("common/models/retinanet.py").model

# RSRetinaNet: RS Loss on all anchors and classes, GIoU on decoded boxes weighted by the
# score, balanced to the RS loss (focal_loss_alpha / focal_loss_gamma are not read).
model._target_ = RSRetinaNet
model.assigner = "atss"  # MODEL.RS_RETINANET.ASSIGNER ("iou": detectron2's anchor_matcher)
model.atss_topk = 9  # MODEL.RS_RETINANET.ATSS_TOPK
model.delta = 0.5  # MODEL.RS.DELTA
model.box2box_transform = L(Box2BoxTransform)(weights=(10.0, 10.0, 5.0, 5.0))
# Inference (published): top 1000 anchors per level, score > 0.05, class-wise NMS 0.6.
model.test_score_thresh = 0.05
model.test_topk_candidates = 1000
model.test_nms_thresh = 0.6
model.max_detections_per_image = 100
# One anchor shape per scale (ratio 1, 3 scales per octave from base scale 4).
model.anchor_generator.aspect_ratios = [1.0]
# P6 from P5's output, no ReLU before P7 (MODEL.FPN.P6P7_TOP_BLOCK "P5_NO_RELU").
model.backbone.top_block = L(LastLevelP6P7FromP5)(channels="${..out_channels}")
# Towers of 4 conv + GroupNorm(32), a learnable scale per level, no centerness.
model.head = L(RSATSSHead)(
    input_shape=[ShapeSpec(channels=256)] * 5,
    num_classes="${..num_classes}",
    num_anchors=3,
    conv_dims=[256, 256, 256, 256],
    norm="GN",
    prior_prob=0.01,
)
