"""The trainer of RS Loss detectors and the setup of ``train_net.py``.

:class:`RSTrainer` is detectron2's :class:`~detectron2.engine.DefaultTrainer` (hooks,
checkpointer, ``resume_or_load``, ``test``, LR scheduler, ``cfg.DATALOADER.SAMPLER_TRAIN``
incl. ``RepeatFactorTrainingSampler`` ...) with two changes: it picks its evaluators from
the dataset's ``evaluator_type`` (COCO or LVIS AP, plus oLRP), and multi-process training
works on a CPU-only machine (gloo backend, no GPU).
"""
import argparse
import contextlib
import logging
import os
from typing import Any, Dict, Iterator, Optional

import torch
from torch import nn

import detectron2.engine.defaults as _d2_defaults
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.engine import DefaultTrainer, default_setup
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_rs_config
from ..data import register_rs_synthetic_datasets
from ..data.repeat_factor_sampler import (
    REPEAT_ROUNDINGS,
    CeilRepeatFactorTrainingSampler,
    repeated_epoch_size,
)
from ..data.yolact_augmentations import YOLACTDatasetMapper, input_augmentations
from ..evaluation import build_rs_evaluator
from ..solver import build_rs_optimizer
from ..modeling.backbone import check_deformable_backbone
from ..modeling.sparse_poolers import use_sparse_cpu_poolers
from .dataset_check import check_dataset_classes
from .ranking_check import RankingStallCheck, rank_loss_scales

__all__ = ["RSTrainer", "default_rs_setup", "fall_back_to_cpu", "cpu_ddp_kwargs"]

logger = logging.getLogger(__name__)


def _is_cpu_module(model: nn.Module) -> bool:
    """Whether all parameters of ``model`` live on the CPU (and it has some)."""
    return {p.device.type for p in model.parameters()} == {"cpu"}


def cpu_ddp_kwargs(model: nn.Module, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``kwargs`` of detectron2's ``create_ddp_model``, plus ``device_ids=None`` when the
    caller gave none, ``model`` is on the CPU and several processes run: PyTorch's
    DistributedDataParallel rejects device ids for a CPU module."""
    kwargs = dict(kwargs)
    if "device_ids" not in kwargs and _is_cpu_module(model) and comm.get_world_size() > 1:
        logger.info("Model is on the CPU: DistributedDataParallel gets device_ids=None.")
        kwargs["device_ids"] = None
    return kwargs


@contextlib.contextmanager
def _cpu_ddp_without_device_ids() -> Iterator[None]:
    """Within this block, ``detectron2.engine.defaults.create_ddp_model`` gives a CPU model
    ``device_ids=None``.

    ``DefaultTrainer.__init__`` wraps the model with ``create_ddp_model(model,
    broadcast_buffers=False)``, which always passes ``device_ids=[local_rank]``; PyTorch's
    DistributedDataParallel rejects ``device_ids`` for a CPU module, so stock detectron2
    cannot train with ``--num-gpus N`` (N > 1 processes, gloo) on a machine without GPUs.
    The substitute only adds ``device_ids=None`` when the caller gave none and the model is
    on the CPU, and otherwise delegates unchanged to the function it replaces, which is put
    back when the block exits (also on error).
    """
    original = _d2_defaults.create_ddp_model

    def create_ddp_model(model: nn.Module, **kwargs: Any) -> nn.Module:
        return original(model, **cpu_ddp_kwargs(model, kwargs))

    _d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        _d2_defaults.create_ddp_model = original


class RSTrainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` for RS Loss detectors.

    Differences from the stock trainer:

    * :meth:`build_evaluator` picks the evaluator from the dataset's ``evaluator_type``;
    * :meth:`build_hooks` adds :class:`RankingStallCheck` (``MODEL.RS.RANKING_CHECK``),
      which warns when an RS ranking loss has not started to fall;
    * a model on the CPU is wrapped in DistributedDataParallel with ``device_ids=None``,
      so ``train_net.py --num-gpus N`` also works on a CPU-only machine;
    * :meth:`build_optimizer` adds whole-model gradient clipping
      (``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` "full_model", the published SOLOv2's);
    * :meth:`build_train_loader` rounds repeat factors as ``DATALOADER.REPEAT_ROUNDING``
      says ("ceil": the published :class:`CeilRepeatFactorTrainingSampler`);
    * with ``INPUT.AUGMENTATIONS`` "yolact" the train and test loaders map images with
      :class:`~rs_detectron2.data.yolact_augmentations.YOLACTDatasetMapper`;
    * before anything is built it checks that the training datasets' classes fit the
      model and that the test datasets' classes are the model's
      (:func:`~.dataset_check.check_dataset_classes`); :meth:`test` checks them again.
    """

    def __init__(self, cfg: CfgNode):
        """
        Args:
            cfg: a detectron2 config with :func:`~rs_detectron2.config.add_rs_config` keys.
        """
        # DefaultTrainer.__init__ builds the model and wraps it in DDP in one go; the only
        # seam is the module-level ``create_ddp_model`` it calls, substituted just for now.
        check_dataset_classes(cfg, cfg.DATASETS.TRAIN)
        check_dataset_classes(cfg, cfg.DATASETS.TEST, evaluated=True)
        with _cpu_ddp_without_device_ids():
            super().__init__(cfg)

    def build_hooks(self):
        """detectron2's hooks, plus :class:`RankingStallCheck` before the metric writer when
        ``MODEL.RS.RANKING_CHECK.PERIOD`` > 0."""
        hooks = super().build_hooks()
        check = self.cfg.MODEL.RS.RANKING_CHECK
        if check.PERIOD > 0:
            model = getattr(self.model, "module", self.model)  # under DDP, the wrapped one
            stall = RankingStallCheck(check.PERIOD, check.THRESHOLD,
                                      loss_scales=rank_loss_scales(model))
            hooks.insert(len(hooks) - 1 if comm.is_main_process() else len(hooks), stall)
        return hooks

    @classmethod
    def build_model(cls, cfg: CfgNode) -> nn.Module:
        """detectron2's model building, after a check that fails loudly (with the backbone
        to use instead) where the config asks detectron2 for deformable convolutions that
        its missing compiled ops cannot provide; then the poolers whose node sets
        ``POOLER_SPARSE_CPU`` get the sparse CPU ROIAlign (any RoI heads, stock too)."""
        check_deformable_backbone(cfg)
        return use_sparse_cpu_poolers(super().build_model(cfg), cfg)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: nn.Module):
        """detectron2's optimizer, plus ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` "full_model"
        (:func:`rs_detectron2.solver.build_rs_optimizer`)."""
        return build_rs_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """detectron2's training loader; with ``DATALOADER.REPEAT_ROUNDING`` "ceil" its
        ``RepeatFactorTrainingSampler`` is :class:`CeilRepeatFactorTrainingSampler` (the
        published rule: image i ceil(r_i) times every epoch), on detectron2's per-image
        factors of the training dicts. "stochastic" is detectron2's loader unchanged. With
        ``INPUT.AUGMENTATIONS`` "yolact" either maps with ``YOLACTDatasetMapper(cfg, True)``.
        An unknown value, or "ceil" with another sampler, raises ``ValueError``."""
        rounding = cfg.DATALOADER.REPEAT_ROUNDING
        if rounding not in REPEAT_ROUNDINGS:
            raise ValueError(f"DATALOADER.REPEAT_ROUNDING must be one of {REPEAT_ROUNDINGS}, "
                             f"got {rounding!r}")
        mapper = YOLACTDatasetMapper(cfg, True) if input_augmentations(cfg) == "yolact" else None
        if rounding == "stochastic":
            if mapper is None:
                return super().build_train_loader(cfg)
            return build_detection_train_loader(cfg, mapper=mapper)
        sampler_name = cfg.DATALOADER.SAMPLER_TRAIN
        if sampler_name != "RepeatFactorTrainingSampler":
            raise ValueError(
                f"DATALOADER.REPEAT_ROUNDING 'ceil' rounds the repeat factors of "
                f"DATALOADER.SAMPLER_TRAIN 'RepeatFactorTrainingSampler', but SAMPLER_TRAIN is "
                f"{sampler_name!r}: set that sampler, or REPEAT_ROUNDING 'stochastic'")
        # The dicts as detectron2's _train_loader_from_config gets them, loaded once and also
        # given to the loader: the sampler's indices are the loader's.
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
            dataset, cfg.DATALOADER.REPEAT_THRESHOLD, sqrt=cfg.DATALOADER.REPEAT_SQRT)
        sampler = CeilRepeatFactorTrainingSampler(factors, seed=cfg.SEED)
        size, batch = repeated_epoch_size(factors), cfg.SOLVER.IMS_PER_BATCH
        logger.info(f"Using training sampler CeilRepeatFactorTrainingSampler (REPEAT_ROUNDING "
                    f"'ceil'): {len(dataset)} images, {size} per epoch = {size / batch:.2f} "
                    f"iterations at batch {batch}.")
        return build_detection_train_loader(cfg, dataset=dataset, sampler=sampler, mapper=mapper)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """detectron2's test loader of ``dataset_name``; with ``INPUT.AUGMENTATIONS``
        "yolact" it maps with ``YOLACTDatasetMapper(cfg, False)`` (the published resize to
        S x S). An unknown value raises ``ValueError``."""
        if input_augmentations(cfg) == "yolact":
            return build_detection_test_loader(cfg, dataset_name,
                                               mapper=YOLACTDatasetMapper(cfg, False))
        return super().build_test_loader(cfg, dataset_name)

    @classmethod
    def test(cls, cfg: CfgNode, model: nn.Module, evaluators=None):
        """detectron2's evaluation on ``cfg.DATASETS.TEST``, after checking that their
        classes fit the model (:func:`~.dataset_check.check_dataset_classes`)."""
        check_dataset_classes(cfg, cfg.DATASETS.TEST, evaluated=True)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_evaluator(
        cls, cfg: CfgNode, dataset_name: str, output_folder: Optional[str] = None
    ) -> DatasetEvaluator:
        """:func:`~rs_detectron2.evaluation.build_rs_evaluator` of ``dataset_name``: COCO or
        LVIS AP by its ``evaluator_type``, on "bbox" (and "segm" when ``cfg.MODEL.MASK_ON``),
        at most ``cfg.TEST.DETECTIONS_PER_IMAGE`` detections per image (LVIS), with oLRP
        beside it when ``cfg.TEST.OLRP.ENABLED``, writing to ``output_folder`` (default
        ``cfg.OUTPUT_DIR/inference``). Any other type raises ``NotImplementedError`` (which
        ``DefaultTrainer.test`` reports as "no evaluator" and skips the dataset)."""
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference")
        return build_rs_evaluator(
            dataset_name, tasks=("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",),
            output_dir=output_folder, olrp=cfg.TEST.OLRP.ENABLED,
            max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE)


def fall_back_to_cpu(cfg: CfgNode) -> Optional[str]:
    """Set ``cfg.MODEL.DEVICE`` to "cpu" if it asks for CUDA and none is available.
    Returns the message to log, or None when nothing changed."""
    device = str(cfg.MODEL.DEVICE)
    if device.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
        return f"MODEL.DEVICE is '{device}' but CUDA is not available: running on cpu instead."
    return None


def default_rs_setup(args: argparse.Namespace) -> CfgNode:
    """Build the frozen config of a ``train_net.py`` run and set up the job.

    Like the ``setup`` of detectron2's ``tools/train_net.py``: ``get_cfg()`` +
    :func:`add_rs_config`, merge ``args.config_file`` (optional) and ``args.opts``, fall
    back to the CPU when the config asks for CUDA and none is available, register the
    built-in synthetic datasets (shapes, hard glyphs, long-tailed LVIS) with the config's
    sizes, freeze, then
    :func:`~detectron2.engine.default_setup` and the "rs_detectron2" logger.

    Args:
        args: parsed :func:`~detectron2.engine.default_argument_parser` arguments.
    """
    cfg = get_cfg()
    add_rs_config(cfg)
    if args.config_file:
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts or [])
    device_message = fall_back_to_cpu(cfg)
    register_rs_synthetic_datasets(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    # Like detectron2's projects: the package's own loggers ("rs_detectron2.*") also go to
    # the console of the main process and to OUTPUT_DIR/log.txt.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="rs_detectron2")
    if device_message is not None:
        logger.warning(device_message)
    return cfg
