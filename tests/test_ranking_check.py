"""RankingStallCheck: the warning for an RS ranking loss that has not started to fall."""
import logging
import types

import pytest

from detectron2.utils.events import EventStorage

from rs_detectron2.config import add_rs_config
from rs_detectron2.engine import RSTrainer
from rs_detectron2.engine.ranking_check import RankingStallCheck, ranking_loss_names

from .test_engine import tiny_cfg, tiny_data  # noqa: F401  (fixture)


def run_hook(hook, losses_per_iter):
    """Drive ``hook`` over iterations whose logged losses are ``losses_per_iter``."""
    with EventStorage(0) as storage:
        hook.trainer = types.SimpleNamespace(iter=0, storage=storage)
        for it, losses in enumerate(losses_per_iter):
            storage.iter = it
            storage.put_scalars(**losses)
            hook.trainer.iter = it
            hook.after_step()
    return hook.warnings


def test_rank_loss_names():
    names = ["loss_rank", "loss_rpn_rank", "loss_roi_rank", "loss_roi_rank_stage3",
             "loss_roi_sort", "loss_box", "loss_cls", "rpn/box_balance", "loss_mask"]
    assert ranking_loss_names(names) == [
        "loss_rank", "loss_roi_rank", "loss_roi_rank_stage3", "loss_rpn_rank"]


def test_warns_for_a_stalled_loss_only():
    hook = RankingStallCheck(period=30, threshold=0.95, window=20)
    losses = [{"loss_roi_rank": 0.97, "loss_rpn_rank": 0.5 * 0.2}] * 30
    warnings = run_hook(hook, losses)
    assert len(warnings) == 1
    assert "loss_roi_rank is still 0.970" in warnings[0] and "after 30 iterations" in warnings[0]


def test_no_warning_once_ranking_has_started():
    hook = RankingStallCheck(period=10, threshold=0.95, window=5)
    # Falls below at the first check, then rises again: checked once only.
    losses = [{"loss_roi_rank": 0.9}] * 10 + [{"loss_roi_rank": 0.99}] * 20
    assert run_hook(hook, losses) == []


def test_warns_again_while_stalled_and_median_window():
    hook = RankingStallCheck(period=10, threshold=0.95, window=5)
    # Median over the last 5 iterations: one low outlier does not count as started.
    losses = [{"loss_rank": 0.99}] * 9 + [{"loss_rank": 0.1}] + [{"loss_rank": 0.99}] * 10
    warnings = run_hook(hook, losses)
    assert len(warnings) == 2 and "after 20 iterations" in warnings[1]


def test_rpn_rank_loss_is_divided_by_its_head_weight():
    losses = [{"loss_rpn_rank": 0.196}] * 10  # 0.98 x the head weight 0.2
    assert len(run_hook(RankingStallCheck(10, loss_scales={"loss_rpn_rank": 0.2}), losses)) == 1
    assert run_hook(RankingStallCheck(10), losses) == []  # read as 0.196: ranking


def test_not_checked_between_periods():
    losses = [{"loss_roi_rank": 0.99}] * 9
    assert run_hook(RankingStallCheck(period=10), losses) == []


@pytest.mark.parametrize("kwargs", [dict(period=0), dict(period=10, threshold=0.0),
                                    dict(period=10, threshold=1.5)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        RankingStallCheck(**kwargs)


def test_default_keys():
    from detectron2.config import get_cfg
    cfg = get_cfg()
    add_rs_config(cfg)
    assert cfg.MODEL.RS.RANKING_CHECK.PERIOD == 500
    assert cfg.MODEL.RS.RANKING_CHECK.THRESHOLD == 0.95


@pytest.mark.parametrize("period", [0, 7])
def test_trainer_adds_the_hook(tiny_data, tmp_path, period):  # noqa: F811
    cfg = tiny_cfg(tmp_path, "MODEL.RS.RANKING_CHECK.PERIOD", str(period),
                   "MODEL.RPN.LOSS_WEIGHT", "0.2")  # the RS-RPN's weight: loss_rpn_rank / 0.2
    trainer = RSTrainer(cfg)
    checks = [h for h in trainer._hooks if isinstance(h, RankingStallCheck)]
    assert len(checks) == (1 if period else 0)
    if period:
        assert checks[0]._period == 7 and checks[0]._scales == {"loss_rpn_rank": 0.2}


def test_warning_reaches_the_log():
    """Logged as a WARNING by the module's logger (a handler of our own: earlier tests'
    detectron2 setup_logger stops propagation to pytest's caplog)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    log = logging.getLogger("rs_detectron2.engine.ranking_check")
    log.addHandler(handler)
    try:
        run_hook(RankingStallCheck(period=5), [{"loss_roi_rank": 1.0}] * 5)
    finally:
        log.removeHandler(handler)
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "has not started to rank" in records[0].getMessage()
