"""What the comparison compares and where its files go.

Regimes and their config folders, the datasets and their pairs of models, the models'
names, and the names that resume depends on: run names, output folders and checkpoint
files. Existing result directories are read and resumed by these names, so they do not
change.
"""
import math
import os
from collections import OrderedDict
from typing import Any, Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The entry script: the run and curve subprocesses are ``python SCRIPT --run-one ...``.
SCRIPT = os.path.join(REPO, "benchmarks", "compare_to_detectron2.py")

# Regime -> the folder of its configs (relative to the repository root). The configs of
# both folders have the same file names; the pretrained ones _BASE_ the scratch ones and set
# MODEL.WEIGHTS, MODEL.RESNETS.NORM and MODEL.BACKBONE.FREEZE_AT.
CONFIG_DIRS: Dict[str, str] = OrderedDict(
    scratch="configs/Synthetic",
    pretrained="configs/Synthetic/pretrained",
)
REGIMES = tuple(CONFIG_DIRS)
# Run (and report) order of the models of a pair: the stock models (or the other ranking
# losses), then RS.
SIDES = ("stock", "stock_gn", "ap", "alrp", "rs")
# pair -> side -> config name stem; a dataset's files add its suffix ("" or "_hard"), in
# the regime's folder of CONFIG_DIRS.
_PAIR_STEMS = OrderedDict(
    faster=OrderedDict(stock="faster_rcnn_R_18_FPN", rs="rs_faster_rcnn_R_18_FPN"),
    mask=OrderedDict(stock="mask_rcnn_R_18_FPN", rs="rs_mask_rcnn_R_18_FPN"),
    atss=OrderedDict(stock="retinanet_R_18_FPN", stock_gn="retinanet_gn_R_18_FPN",
                     rs="rs_atss_R_18_FPN"),
    # the ranking losses of the RS family on the same one-stage detector (MODEL.RS.RANKING_LOSS)
    ranking=OrderedDict(ap="ap_atss_R_18_FPN", alrp="alrp_atss_R_18_FPN", rs="rs_atss_R_18_FPN"),
    # RS-PAA and its stock-loss twin (the same PAA detector, focal loss + GIoU)
    paa=OrderedDict(stock="paa_R_18_FPN", rs="rs_paa_R_18_FPN"),
    # RS-YOLACT and its stock-loss twin (the same YOLACT, OHEM cross entropy + smooth L1 +
    # mask BCE)
    yolact=OrderedDict(stock="yolact_R_18_FPN", rs="rs_yolact_R_18_FPN"),
    # RS-SOLOv2 and its stock twin (the same SOLOv2, focal loss + Dice)
    solov2=OrderedDict(stock="solov2_R_18_FPN", rs="rs_solov2_R_18_FPN"),
)


def _pair_configs(suffix: str) -> "OrderedDict[str, OrderedDict[str, str]]":
    """pair -> side -> config file name of the dataset whose configs end in ``suffix``."""
    return OrderedDict((pair, OrderedDict((side, f"{stem}{suffix}.yaml") for side, stem in sides.items()))
                       for pair, sides in _PAIR_STEMS.items())


# dataset -> train split, val split, config prefix of its size keys, pairs.
DATASETS: Dict[str, Dict[str, Any]] = OrderedDict(
    rs_synthetic=dict(train="rs_synthetic_train", val="rs_synthetic_val",
                      cfg_key="DATASETS.RS_SYNTHETIC", pairs=_pair_configs("")),
    rs_synthetic_hard=dict(train="rs_synthetic_hard_train", val="rs_synthetic_hard_val",
                           cfg_key="DATASETS.RS_SYNTHETIC_HARD", pairs=_pair_configs("_hard")),
)
PAIRS = ("faster", "mask", "atss", "ranking", "paa", "yolact", "solov2")
# The pairs of instance-segmentation models: their reports give mask AP too.
MASK_PAIRS = ("mask", "yolact", "solov2")
# What runs without --pairs: the comparisons with detectron2's stock models.
DEFAULT_PAIRS = ("faster", "mask", "atss")
MODEL_NAMES = {
    ("faster", "stock"): "Faster R-CNN (detectron2)",
    ("faster", "rs"): "RS-Faster R-CNN",
    ("mask", "stock"): "Mask R-CNN (detectron2)",
    ("mask", "rs"): "RS-Mask R-CNN",
    ("atss", "stock"): "RetinaNet (detectron2)",
    ("atss", "stock_gn"): "RetinaNet with GN head (detectron2)",
    ("atss", "rs"): "RS-ATSS",
    ("ranking", "ap"): "ATSS with AP Loss",
    ("ranking", "alrp"): "ATSS with aLRP Loss",
    ("ranking", "rs"): "RS-ATSS",
    ("paa", "stock"): "PAA, focal loss + GIoU",
    ("paa", "rs"): "RS-PAA",
    ("yolact", "stock"): "YOLACT, OHEM CE + smooth L1 + mask BCE",
    ("yolact", "rs"): "RS-YOLACT",
    ("solov2", "stock"): "SOLOv2, focal loss + Dice",
    ("solov2", "rs"): "RS-SOLOv2",
}
# Learning-rate grids; stock_gn defaults to the stock grid (--lrs-stock).
DEFAULT_LRS = {"rs": (0.01, 0.02, 0.03), "stock": (0.01, 0.03, 0.06)}
DEFAULT_MAX_ITER = 1000
DEFAULT_OUTPUT_DIR = "./output/compare_to_detectron2"


def model_name(pair: str, side: str) -> str:
    """The model's name in the report (the side itself if unknown)."""
    return MODEL_NAMES.get((pair, side), side)


def lr_tag(lr: float) -> str:
    """A learning rate as run names and the report write it (0.01, 0.1, 1e-05)."""
    return f"{lr:g}"


def run_name(regime: str, dataset: str, pair: str, side: str, lr: float, seed: int) -> str:
    """``<regime>-<dataset>-<pair>-<side>-lr<LR>-seed<S>``: the name of a run's folder and
    of its result JSON."""
    return f"{regime}-{dataset}-{pair}-{side}-lr{lr_tag(lr)}-seed{seed}"


def pair_sides(dataset: str, pair: str) -> List[str]:
    """The models of a pair, in run order (the stock ones, then RS)."""
    return [side for side in SIDES if side in DATASETS[dataset]["pairs"][pair]]


def config_for(regime: str, dataset: str, pair: str, side: str) -> str:
    """The config of one model in one regime, relative to the repository root."""
    return os.path.join(CONFIG_DIRS[regime], DATASETS[dataset]["pairs"][pair][side])


def default_output_dir(regime: str, max_iter: int) -> str:
    """One folder per regime and schedule, so that their results never mix:
    ./output/compare_to_detectron2[_pretrained][_<max_iter>iter] (the suffix only when
    not the default 1000)."""
    return (DEFAULT_OUTPUT_DIR + ("" if regime == "scratch" else f"_{regime}")
            + ("" if max_iter == DEFAULT_MAX_ITER else f"_{max_iter}iter"))


def curve_iterations(max_iter: int, points: int) -> Tuple[int, List[int]]:
    """(checkpoint period, iterations of the curve points, the last being max_iter)."""
    points = max(int(points), 1)
    period = max(int(math.ceil(max_iter / points)), 1)
    iters = [k * period for k in range(1, points) if k * period < max_iter] + [max_iter]
    return period, iters


def checkpoint_for(run_dir: str, iteration: int) -> str:
    """PeriodicCheckpointer's file after ``iteration`` iterations (its 0-based index is
    ``iteration - 1``)."""
    return os.path.join(run_dir, f"model_{iteration - 1:07d}.pth")
