# The built-in synthetic shapes dataset (rs_synthetic_train / rs_synthetic_val: 1,000 / 200
# images of 192 px, 6 classes, RLE masks), LazyConfig: the loaders of the YAML configs in
# configs/Synthetic/ (fixed 192 px, horizontal flip, batch 4, bitmask masks), evaluated with
# COCO AP and oLRP. Swap the names for rs_synthetic_hard_* (the hard dataset) or your own.
from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    DatasetMapper,
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

from rs_detectron2.evaluation import build_rs_evaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="rs_synthetic_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(short_edge_length=(192,), max_size=192, sample_style="choice"),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="bitmask",  # the synthetic masks are RLE
    ),
    total_batch_size=4,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="rs_synthetic_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=192, max_size=192)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=1,
)

dataloader.evaluator = L(build_rs_evaluator)(
    dataset_name="${..test.dataset.names}",
    tasks=("bbox", "segm"),
    output_dir="${...train.output_dir}/inference",
    olrp=True,
)
