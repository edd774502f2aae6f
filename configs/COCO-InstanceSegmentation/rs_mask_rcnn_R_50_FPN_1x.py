# RS-Mask R-CNN, R-50-FPN, 1x, LazyConfig (paper: 40.0 box AP, 36.4 mask AP, 67.5 box oLRP
# on COCO minival); the YAML twin is rs_mask_rcnn_R_50_FPN_1x.yaml in this folder.
#   python lazy_train_net.py --config-file configs/COCO-InstanceSegmentation/rs_mask_rcnn_R_50_FPN_1x.py --num-gpus 8
from detectron2.model_zoo import get_config

from ..common.data.coco_rs import dataloader
from ..common.models.rs_mask_rcnn_fpn import model
from ..common.rs_coco_schedule import MAX_ITER_1X, lr_multiplier_1x as lr_multiplier
from ..common.rs_train import train

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.012  # batch 16: the only tuned setting
optimizer.foreach = True  # as detectron2's build_optimizer

model.backbone.bottom_up.freeze_at = 2
dataloader.evaluator.tasks = ("bbox", "segm")
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.max_iter = MAX_ITER_1X
train.output_dir = "./output/rs_mask_rcnn_R_50_FPN_1x_lazy"
