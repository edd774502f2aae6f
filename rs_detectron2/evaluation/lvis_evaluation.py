"""detectron2's LVIS evaluation, runnable with numpy 2.

The ``lvis`` package (0.5.3, its latest release) computes precision with
``np.cumsum(...).astype(dtype=np.float)``; ``np.float`` was removed in numpy 1.24, so
detectron2's :class:`~detectron2.evaluation.LVISEvaluator` crashes at its first
evaluation under numpy 2. This module is the project's one place that deals with it: the
alias is restored (``np.float = float``, what it always meant) only while LVIS evaluation
runs, and removed again afterwards.
"""
import contextlib
from typing import Iterator

import numpy as np
from detectron2.evaluation import LVISEvaluator

__all__ = ["RSLVISEvaluator", "lvis_numpy_aliases"]


@contextlib.contextmanager
def lvis_numpy_aliases() -> Iterator[None]:
    """Within this block ``np.float`` is ``float`` (if numpy lacks it), as ``lvis.eval``
    needs; numpy is left as it was when the block exits (also on error)."""
    added = "float" not in np.__dict__
    if added:
        np.float = float  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if added:
            del np.float  # type: ignore[attr-defined]


class RSLVISEvaluator(LVISEvaluator):
    """detectron2's :class:`LVISEvaluator` with its evaluation run inside
    :func:`lvis_numpy_aliases`, so that it works with numpy >= 1.24 (and 2.x)."""

    def _eval_predictions(self, predictions):
        with lvis_numpy_aliases():
            return super()._eval_predictions(predictions)
