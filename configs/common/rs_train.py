# detectron2's common/train.py for lazy_train_net.py, plus the RS ranking-stall check: every
# `period` iterations, warn for each RS ranking loss still >= `threshold` (the YAML configs'
# MODEL.RS.RANKING_CHECK; period 0 turns it off).
from detectron2.model_zoo import get_config

train = get_config("common/train.py").train
train.ranking_check = dict(period=500, threshold=0.95)
