# COCO 2017 as the RS configs train on it, LazyConfig: detectron2's own common/data/coco.py
# with single-scale training at 800 px (the published recipe; the YAML configs'
# INPUT.MIN_SIZE_TRAIN (800,)) and COCO AP with oLRP beside it.
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from rs_detectron2.evaluation import build_rs_evaluator

dataloader = get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations[0].short_edge_length = (800,)
dataloader.evaluator = L(build_rs_evaluator)(
    dataset_name="${..test.dataset.names}",
    tasks=("bbox",),  # the instance-segmentation configs add "segm"
    output_dir="${...train.output_dir}/inference",
    olrp=True,
)
