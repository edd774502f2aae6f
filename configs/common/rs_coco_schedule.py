# The published 1x of the RS configs, LazyConfig (the YAML configs' SOLVER): 12 epochs of
# COCO train2017's 117,266 images with annotations at batch 16 (87,950 iterations),
# learning rate x0.1 after epochs 8 and 11, linear warm-up over 500 iterations from 0.001.
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

MAX_ITER_1X = 87950

lr_multiplier_1x = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01], milestones=[58633, 80620], num_updates=MAX_ITER_1X,
    ),
    warmup_length=500 / MAX_ITER_1X,
    warmup_method="linear",
    warmup_factor=0.001,
)
