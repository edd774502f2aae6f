# The CPU demo as a LazyConfig: RS-Mask R-CNN, the narrow R-18-FPN with the project's
# pretrained backbone (FrozenBN, stem and res2 frozen) on the built-in synthetic dataset,
# 1,700 iterations of batch 4. Every setting is that of its YAML twin,
# rs_mask_rcnn_R_18_FPN.yaml in this folder (docs/lazyconfig.md lists the correspondence):
#   python lazy_train_net.py --config-file configs/Synthetic/pretrained/rs_mask_rcnn_R_18_FPN.py
import torch

from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.solver import WarmupParamScheduler
from detectron2.solver.build import get_default_optimizer_params
from fvcore.common.param_scheduler import CosineParamScheduler

from rs_detectron2.modeling import FastRCNNConvLNFCHead, small_resnet
from rs_detectron2.solver import sgd_with_gradient_clipping

from ...common.data.rs_synthetic import dataloader
from ...common.models.rs_mask_rcnn_fpn import model
from ...common.rs_train import train

# The narrow R-18 (widths 32-64-128-256, stem 16) and a 32-channel FPN.
model.backbone.bottom_up = L(small_resnet)(
    depth=18, stem_out_channels=16, res2_out_channels=32, norm="FrozenBN",
    out_features=["res2", "res3", "res4", "res5"], freeze_at=2,
)
model.backbone.out_channels = 32
# Smaller anchors, proposal counts and heads for 192 px images on a CPU.
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.head.in_channels = 32
model.proposal_generator.pre_nms_topk = (400, 400)
model.proposal_generator.post_nms_topk = (64, 100)
model.roi_heads.num_classes = 6
model.roi_heads.max_mask_rois = 32
model.roi_heads.box_pooler.sampling_ratio = 1
# detectron2's 2-FC head with a LayerNorm before each ReLU (rs_detectron2.modeling).
model.roi_heads.box_head = L(FastRCNNConvLNFCHead)(
    input_shape=ShapeSpec(channels=32, height=7, width=7), conv_dims=[], fc_dims=[256, 256],
)
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.box_predictor.test_score_thresh = 0.05
model.roi_heads.mask_pooler.sampling_ratio = 2
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=32, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [32, 32, 32]  # 2 convs and the deconv

# SGD as detectron2's build_optimizer, with per-parameter gradient-norm clipping at 1.0.
optimizer = L(sgd_with_gradient_clipping)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),
    lr=0.03, momentum=0.9, weight_decay=1e-4, foreach=True,
    clip_type="norm", clip_value=1.0,
)
# WarmupCosineLR: linear warm-up over 100 of the 1,700 iterations from 0.001 x lr.
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(CosineParamScheduler)(start_value=1.0, end_value=0.0),
    warmup_length=100 / 1700, warmup_method="linear", warmup_factor=0.001,
)

train.init_checkpoint = "rs_pretrained://small_resnet18_w32_s16.pth"
train.output_dir = "./output/rs_mask_rcnn_R_18_FPN_synthetic_pretrained_lazy"
train.max_iter = 1700
train.eval_period = 0  # evaluate once, at the end of training
train.checkpointer = dict(period=1000, max_to_keep=100)
train.seed = 55330654  # the YAML twin's SEED
