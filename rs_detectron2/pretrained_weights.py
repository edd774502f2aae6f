"""``rs_pretrained://`` weights: backbones the project pretrains itself, once, on first use.

Nothing can be downloaded, so ``MODEL.WEIGHTS: "rs_pretrained://small_resnet18_w32_s16.pth"``
names a checkpoint that :mod:`rs_detectron2.pretraining` makes: the narrow ResNet of depth 18
with res2 width 32 and stem width 16 (the synthetic configs' backbone), pretrained on the
built-in classification set.  Importing ``rs_detectron2`` registers a handler of the scheme
with detectron2's ``PathManager``, so ``DetectionCheckpointer`` (``train_net.py``, the
trainer, ``demo.py``) resolves it: the first use pretrains the backbone (a few CPU minutes,
logged, with a progress bar) and caches it; later uses return the cached file::

    <root>/rs_pretrained/v<version>_cls<data version>_img<size>_n<images>_it<iters>_seed<seed>/
        small_resnet18_w32_s16.pth

``<root>`` is ``$DETECTRON2_DATASETS`` or ``./datasets``, like the built-in datasets; the
folder changes with the pretraining recipe (:data:`rs_detectron2.pretraining.DEFAULT_RECIPE`
and its version).  The checkpoint is written atomically, under a file lock (concurrent
first uses pretrain once).  A checkpoint of another backbone: ``tools/pretrain_backbone.py``.
"""
import logging
import os
import re
import time
from typing import Any, Optional, Tuple

from iopath.common.file_io import PathHandler, file_lock

from detectron2.config import CfgNode, get_cfg
from detectron2.utils.file_io import PathManager

from . import pretraining
from .data.builtin import default_datasets_root
from .data.synthetic_classification import CLASSIFICATION_GENERATOR_VERSION

__all__ = [
    "PRETRAINED_PREFIX",
    "RSPretrainedHandler",
    "get_pretrained_checkpoint",
    "pretrained_cache_path",
    "pretrained_cfg",
    "pretrained_name",
    "register_pretrained_handler",
]

logger = logging.getLogger(__name__)

PRETRAINED_PREFIX = "rs_pretrained://"
_DEPTHS = (18, 34)  # those of build_small_resnet
_NAME = re.compile(r"small_resnet(?P<depth>\d+)_w(?P<res2>\d+)_s(?P<stem>\d+)\.pth")


def _say(msg: str) -> None:
    if logger.hasHandlers() and logger.isEnabledFor(logging.INFO):
        logger.info(msg)
    else:
        print(msg, flush=True)


def pretrained_name(cfg: CfgNode) -> str:
    """The ``rs_pretrained://`` file name of the backbone of ``cfg``: depth and widths
    (``MODEL.RESNETS.DEPTH``, ``RES2_OUT_CHANNELS``, ``STEM_OUT_CHANNELS``)."""
    r = cfg.MODEL.RESNETS
    return f"small_resnet{r.DEPTH}_w{r.RES2_OUT_CHANNELS}_s{r.STEM_OUT_CHANNELS}.pth"


def _parse(name: str) -> Tuple[int, int, int]:
    """(depth, res2 width, stem width) of an ``rs_pretrained://`` name; a clear error if
    it names nothing that can be built."""
    match = _NAME.fullmatch(name)
    depth, res2, stem = (int(match[k]) for k in ("depth", "res2", "stem")) if match else (0, 0, 0)
    if depth not in _DEPTHS or res2 < 1 or stem < 1:
        raise ValueError(
            f"{PRETRAINED_PREFIX}{name}: no such pretrained backbone. Names are "
            f"small_resnet<depth>_w<res2 width>_s<stem width>.pth with depth in {_DEPTHS}, "
            f"e.g. {PRETRAINED_PREFIX}small_resnet18_w32_s16.pth (the synthetic configs' "
            f"backbone: MODEL.RESNETS.DEPTH 18, RES2_OUT_CHANNELS 32, STEM_OUT_CHANNELS 16). "
            f"For another backbone, run tools/pretrain_backbone.py --config-file CONFIG "
            f"--output FILE.pth and set MODEL.WEIGHTS to FILE.pth.")
    return depth, res2, stem


def pretrained_cfg(name: str) -> CfgNode:
    """The detector config keys that build the backbone ``name`` names (from detectron2's
    defaults, as the synthetic configs: their PIXEL_MEAN / PIXEL_STD and INPUT.FORMAT)."""
    depth, res2, stem = _parse(name)
    cfg = get_cfg()  # detectron2's keys are all the backbone reads
    cfg.MODEL.BACKBONE.NAME = "build_small_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = res2
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = stem
    cfg.MODEL.RESNETS.NORM = "BN"
    return cfg


def pretrained_cache_path(name: str, root: Optional[str] = None,
                          recipe: Optional[pretraining.PretrainRecipe] = None) -> str:
    """Where the checkpoint ``name`` is cached (generated or not) for ``recipe`` (default:
    the current :data:`~rs_detectron2.pretraining.DEFAULT_RECIPE`) under ``root`` (default:
    ``$DETECTRON2_DATASETS`` or ``./datasets``)."""
    _parse(name)
    r = recipe if recipe is not None else pretraining.DEFAULT_RECIPE
    tag = (f"v{pretraining.PRETRAINING_VERSION}_cls{CLASSIFICATION_GENERATOR_VERSION}"
           f"_img{r.image_size}_n{r.num_train}_it{r.iterations}_seed{r.seed}")
    return os.path.join(os.path.abspath(root or default_datasets_root()), "rs_pretrained", tag, name)


def get_pretrained_checkpoint(name: str, root: Optional[str] = None) -> str:
    """The local path of ``rs_pretrained://<name>``: pretrained with
    :data:`~rs_detectron2.pretraining.DEFAULT_RECIPE` and cached on first use, the cached
    file afterwards."""
    recipe = pretraining.DEFAULT_RECIPE  # read at each call: tests shrink it
    path = pretrained_cache_path(name, root, recipe)
    if os.path.isfile(path):
        return path
    with file_lock(path):  # a concurrent first use waits, then finds the file
        if os.path.isfile(path):
            return path
        depth, res2, stem = _parse(name)
        _say(f"{PRETRAINED_PREFIX}{name}: pretraining the narrow R-{depth} (res2 {res2}, stem "
             f"{stem} channels) on the built-in synthetic classification set, once "
             f"({recipe.iterations} iterations, a few minutes on a CPU); it will be "
             f"cached at {path}")
        start = time.perf_counter()
        checkpoint = pretraining.pretrain_small_resnet(pretrained_cfg(name), recipe)
        pretraining.save_checkpoint(checkpoint, path)
        _say(f"{PRETRAINED_PREFIX}{name}: pretrained in {time.perf_counter() - start:.0f} s, "
             f"{pretraining.describe(checkpoint)}; cached at {path}")
    return path


class RSPretrainedHandler(PathHandler):
    """iopath handler of ``rs_pretrained://<name>`` (see the module doc)."""

    def _get_supported_prefixes(self):
        return [PRETRAINED_PREFIX]

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        self._check_kwargs(kwargs)
        return get_pretrained_checkpoint(path[len(PRETRAINED_PREFIX):])

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs: Any):
        self._check_kwargs(kwargs)
        if mode not in ("r", "rb"):
            raise ValueError(f"{path}: pretrained weights are read-only (mode {mode!r})")
        return open(self._get_local_path(path), mode, buffering=buffering)


def register_pretrained_handler() -> None:
    """Register :class:`RSPretrainedHandler` with detectron2's ``PathManager`` (once)."""
    if PRETRAINED_PREFIX not in PathManager._path_handlers:
        PathManager.register_handler(RSPretrainedHandler())


register_pretrained_handler()
