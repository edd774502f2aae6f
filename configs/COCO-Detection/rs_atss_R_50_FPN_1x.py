# RS-ATSS, R-50-FPN, 1x, LazyConfig (paper: 39.9 box AP, 67.9 box oLRP on COCO minival); the
# YAML twin is rs_atss_R_50_FPN_1x.yaml in this folder.
#   python lazy_train_net.py --config-file configs/COCO-Detection/rs_atss_R_50_FPN_1x.py --num-gpus 8
from detectron2.model_zoo import get_config

from ..common.data.coco_rs import dataloader
from ..common.models.rs_atss import model
from ..common.rs_coco_schedule import MAX_ITER_1X, lr_multiplier_1x as lr_multiplier
from ..common.rs_train import train

optimizer = get_config("common/optim.py").SGD
optimizer.lr = 0.008  # published RS-ATSS, batch 16
optimizer.params.weight_decay_norm = 1e-4  # published: weight decay on GroupNorm too
optimizer.foreach = True  # as detectron2's build_optimizer

model.backbone.bottom_up.freeze_at = 2
dataloader.train.mapper.use_instance_mask = False
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.max_iter = MAX_ITER_1X
train.output_dir = "./output/rs_atss_R_50_FPN_1x_lazy"
