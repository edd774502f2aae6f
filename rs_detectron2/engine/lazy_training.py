"""Training and evaluation of RS detectors from LazyConfigs (detectron2's Python configs).

detectron2's ``tools/lazyconfig_train_net.py`` (``do_train`` / ``do_test``, the
``cfg.model / dataloader / optimizer / lr_multiplier / train`` layout of its
``configs/common``) with what :class:`~.trainer.RSTrainer` adds to ``DefaultTrainer``: the
dataset-classes check before anything is built, the ranking-stall warning
(``train.ranking_check``), CUDA falling back to the CPU, and multi-process training on a
CPU-only machine. Evaluation is whatever ``dataloader.evaluator`` builds (the RS configs:
:func:`~rs_detectron2.evaluation.build_rs_evaluator`, AP and oLRP).
"""
import argparse
import logging
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_setup, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .dataset_check import check_classes, lazy_model_num_classes
from .ranking_check import RankingStallCheck, rank_loss_scales
from .trainer import cpu_ddp_kwargs

__all__ = ["default_rs_lazy_setup", "do_test", "do_train", "evaluate_checkpoint",
           "ranking_check_settings", "lazy_dataset_names"]

logger = logging.getLogger(__name__)

# train.ranking_check when a config leaves it out: on, as MODEL.RS.RANKING_CHECK.
RANKING_CHECK_DEFAULTS = {"period": 500, "threshold": 0.95}


def default_rs_lazy_setup(args: argparse.Namespace) -> Any:
    """Load ``args.config_file`` (a LazyConfig), apply ``args.opts`` (``key=value``), fall
    back to the CPU when ``train.device`` asks for CUDA and none is available, then
    detectron2's :func:`default_setup` (seed ``train.seed``, logs, the config saved to
    ``train.output_dir``) and the "rs_detectron2" logger."""
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts or [])
    device = str(cfg.train.device)
    fell_back = device.startswith("cuda") and not torch.cuda.is_available()
    if fell_back:
        cfg.train.device = "cpu"
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="rs_detectron2")
    if fell_back:
        logger.warning(f"train.device is '{device}' but CUDA is not available: running on "
                       f"cpu instead.")
    return cfg


def lazy_dataset_names(loader_cfg: Any) -> Optional[List[str]]:
    """The dataset names of a data loader config built on detectron2's
    ``get_detection_dataset_dicts(names=...)`` (a name or a list), or None for another."""
    dataset = loader_cfg.get("dataset", None) if loader_cfg is not None else None
    if dataset is None or "names" not in dataset:
        return None
    names = dataset.names
    return [names] if isinstance(names, str) else list(names)


def _check_classes(cfg: Any, which: str) -> None:
    """The dataset-classes check of :func:`~.dataset_check.check_classes` for
    ``cfg.dataloader[which]`` ("train", or "test": evaluated)."""
    names = lazy_dataset_names(cfg.dataloader.get(which, None))
    if names is None:
        logger.warning(f"dataloader.{which} does not name its datasets "
                       f"(get_detection_dataset_dicts(names=...)): their classes are not "
                       f"checked against the model's.")
        return
    key, num_classes = lazy_model_num_classes(cfg)
    check_classes(names, num_classes, key, evaluated=which == "test")


def do_test(cfg: Any, model: nn.Module) -> Dict[str, Any]:
    """Evaluate ``model`` on ``dataloader.test`` with ``dataloader.evaluator`` (after the
    classes check); logs the tables and their "copypaste:" lines, returns the results
    ({} without an evaluator)."""
    if "evaluator" not in cfg.dataloader:
        logger.warning("the config has no dataloader.evaluator: nothing to evaluate.")
        return {}
    _check_classes(cfg, "test")
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test),
                                   instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(results)
    return results


def ranking_check_settings(cfg: Any) -> Dict[str, float]:
    """``train.ranking_check`` (``period``, ``threshold``) over its defaults (period 500,
    threshold 0.95; period 0 turns the check off)."""
    settings = dict(RANKING_CHECK_DEFAULTS)
    given = cfg.train.get("ranking_check", None)
    if given is not None:
        unknown = set(given) - set(settings)
        if unknown:
            raise KeyError(f"train.ranking_check has unknown keys {sorted(unknown)}; "
                           f"it takes {sorted(settings)}")
        settings.update(given)
    return settings


def do_train(args: argparse.Namespace, cfg: Any) -> Dict[str, Any]:
    """Train ``cfg.model`` as detectron2's ``lazyconfig_train_net.do_train`` does, with the
    classes check first and :class:`RankingStallCheck` among the hooks; returns the last
    evaluation's results (``train.eval_period``; 0 = once, after training)."""
    _check_classes(cfg, "train")
    if "evaluator" in cfg.dataloader:
        _check_classes(cfg, "test")
    model = instantiate(cfg.model)
    logger.info(f"Model:\n{model}")
    model.to(cfg.train.device)
    loss_scales = rank_loss_scales(model)

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **cpu_ddp_kwargs(model, cfg.train.ddp))
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(
        model, train_loader, optimizer)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    last_results: Dict[str, Any] = {}

    def test_and_keep() -> Dict[str, Any]:
        last_results.clear()
        last_results.update(do_test(cfg, model))
        return last_results

    check = ranking_check_settings(cfg)
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
        if comm.is_main_process() else None,
        hooks.EvalHook(cfg.train.eval_period, test_and_keep),
        RankingStallCheck(int(check["period"]), float(check["threshold"]),
                          loss_scales=loss_scales) if check["period"] > 0 else None,
        hooks.PeriodicWriter(default_writers(cfg.train.output_dir, cfg.train.max_iter),
                             period=cfg.train.log_period)
        if comm.is_main_process() else None,
    ])

    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=args.resume)
    # A checkpoint stores the iteration that just finished: resume at the next one.
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return dict(last_results)


def evaluate_checkpoint(cfg: Any) -> Dict[str, Any]:
    """``--eval-only``: build ``cfg.model``, load ``train.init_checkpoint``, :func:`do_test`."""
    _check_classes(cfg, "test")
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    model = create_ddp_model(model, **cpu_ddp_kwargs(model, {}))
    DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    return do_test(cfg, model)
