"""A training hook that warns when an RS ranking loss has not started to fall.

RS Loss's ranking error is 1 when the classifier ranks positives and negatives at random
(every score tied) and falls as soon as the head learns anything. A head whose
``loss_*rank*`` is still above ~0.95 hundreds of iterations in has not started to train
(dead box-head units, a learning rate too high for the data, no positives); the total
loss of such a run looks like any other, so nothing else would tell the user.
"""
import logging
import re
from typing import Dict, List, Mapping, Optional

from detectron2.engine import HookBase

__all__ = ["RankingStallCheck", "ranking_loss_names", "rank_loss_scales"]

logger = logging.getLogger(__name__)

# The RS heads' ranking losses: loss_rank (one-stage), loss_rpn_rank, loss_roi_rank,
# loss_roi_rank_stage1 ... (cascade).
_RANK_LOSS = re.compile(r"^loss_(\w+_)?rank(_stage\d+)?$")


def ranking_loss_names(names) -> List[str]:
    """The names among ``names`` that are RS ranking losses."""
    return sorted(n for n in names if _RANK_LOSS.match(n))


def rank_loss_scales(model) -> Dict[str, float]:
    """The weight ``loss_rpn_rank`` is logged with (the RPN's ``loss_weight["loss_rpn_cls"]``,
    ``MODEL.RPN.LOSS_WEIGHT``), so that the check reads it as a ranking error; {} for a model
    without an RPN."""
    weights = getattr(getattr(model, "proposal_generator", None), "loss_weight", None)
    if isinstance(weights, dict) and "loss_rpn_cls" in weights:
        return {"loss_rpn_rank": float(weights["loss_rpn_cls"])}
    return {}


class RankingStallCheck(HookBase):
    """Every ``period`` iterations, warn for each RS ranking loss whose median over the
    last ``window`` iterations is still at or above ``threshold``.

    A loss that is logged multiplied by a loss weight (the RS-RPN's MODEL.RPN.LOSS_WEIGHT, 0.2) is divided by it
    first (``loss_scales``), so the threshold always reads as a ranking error in [0, 1].
    Once a loss has been seen below the threshold at a check it is not checked again.
    """

    def __init__(self, period: int, threshold: float = 0.95, window: int = 20,
                 loss_scales: Optional[Mapping[str, float]] = None):
        """
        Args:
            period: check at iterations period, 2 x period, ... (> 0).
            threshold: the ranking error (in [0, 1]) at or above which a loss is stalled.
            window: iterations of the loss's history whose median is compared.
            loss_scales: loss name -> the weight it is logged with (default 1).
        """
        if period <= 0:
            raise ValueError(f"RankingStallCheck: period must be > 0, got {period}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"RankingStallCheck: threshold must be in (0, 1], got {threshold}")
        self._period = period
        self._threshold = threshold
        self._window = window
        self._scales: Dict[str, float] = dict(loss_scales or {})
        self._started: set = set()
        self.warnings: List[str] = []  # every warning logged, for callers and tests

    def after_step(self) -> None:
        next_iter = self.trainer.iter + 1
        if next_iter % self._period != 0:
            return
        storage = self.trainer.storage
        histories = storage.histories()
        for name in ranking_loss_names(histories):
            if name in self._started:
                continue
            error = histories[name].median(self._window) / self._scales.get(name, 1.0)
            if error < self._threshold:
                self._started.add(name)
                continue
            message = (
                f"{name} is still {error:.3f} (ranking error, median of the last "
                f"{self._window} iterations) after {next_iter} iterations: this head has not "
                f"started to rank positives above negatives (1.0 = random), so the model is "
                f"not training. Usual causes: a learning rate too high for this data and "
                f"initialisation (try SOLVER.BASE_LR / 3), dead units in the box head "
                f"(benchmarks/training_diagnostics.py shows them), no gradient clipping when "
                f"training from scratch (SOLVER.CLIP_GRADIENTS), or no positives (check the "
                f"dataset's boxes and MODEL.ROI_HEADS.NUM_CLASSES). This check: "
                f"MODEL.RS.RANKING_CHECK.*"
            )
            self.warnings.append(message)
            logger.warning(message)
