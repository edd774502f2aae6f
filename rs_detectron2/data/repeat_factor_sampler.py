"""Repeat factor sampling with the published rounding, and the schedule it implies.

An image's repeat factor r_i (Gupta et al., LVIS) is fractional. detectron2's
``RepeatFactorTrainingSampler`` rounds it stochastically each epoch (floor(r_i) times, plus
once more with probability r_i - floor(r_i)); the published RS models (mmdetection's
``ClassBalancedDataset``) repeat image i ceil(r_i) times in every epoch, deterministically.
:class:`CeilRepeatFactorTrainingSampler` is the published rule
(``DATALOADER.REPEAT_ROUNDING "ceil"``); :func:`repeated_epoch_size` and
:func:`lvis_schedule` give the epoch size and an epoch-based schedule in iterations;
:func:`repeated_epoch_size_bounds` bounds the epoch size from per-class image counts alone
(``tools/lvis_repeat_schedule.py``).
"""
import math
from fractions import Fraction
from typing import Optional, Sequence, Tuple, Union

import torch

from detectron2.data.samplers import RepeatFactorTrainingSampler

__all__ = [
    "CEIL_TOLERANCE",
    "REPEAT_ROUNDINGS",
    "CeilRepeatFactorTrainingSampler",
    "category_repeat_factors",
    "ceil_repeat_counts",
    "lvis_schedule",
    "repeated_epoch_size",
    "repeated_epoch_size_bounds",
]

# Values of DATALOADER.REPEAT_ROUNDING: detectron2's rule (the default) and the published one.
REPEAT_ROUNDINGS = ("stochastic", "ceil")

# ceil(r - CEIL_TOLERANCE): a factor that is an integer k up to float rounding (sqrt(t / f)
# with t / f = k^2 computed as k^2 + 1 ulp, say) is repeated k times, not k + 1. Far above
# float64's rounding error of the factor (~1e-15) and far below any real excess over an
# integer: on LVIS v1 (t N = 100.17) the smallest one is ~1e-5. detectron2's factors are
# float32, whose integers are exact and whose steps (>= 1.2e-7 above 1) survive it.
CEIL_TOLERANCE = 1e-9

RepeatFactors = Union[torch.Tensor, Sequence[float]]


def ceil_repeat_counts(repeat_factors: RepeatFactors) -> torch.Tensor:
    """ceil(r_i) of each repeat factor (int64): how often the published rule shows image i
    each epoch. Computed in float64 with :data:`CEIL_TOLERANCE` (an exact 1.0 gives 1)."""
    factors = torch.as_tensor(repeat_factors, dtype=torch.float64).flatten()
    return torch.ceil(factors - CEIL_TOLERANCE).to(torch.int64)


def repeated_epoch_size(repeat_factors: RepeatFactors) -> int:
    """Images in one epoch under the published rule: sum_i ceil(r_i)."""
    return int(ceil_repeat_counts(repeat_factors).sum())


def lvis_schedule(
    epoch_size: int, *, epochs: int = 12, ims_per_batch: int = 16
) -> Tuple[int, Tuple[int, int]]:
    """``(MAX_ITER, STEPS)`` of an epoch-based schedule in iterations: ``epochs`` epochs of
    ``epoch_size`` images (sum_i ceil(r_i), :func:`repeated_epoch_size`) at batch
    ``ims_per_batch`` = B, with the lr x0.1 after 8/12 and 11/12 of the epochs (the published
    1x: after epochs 8 and 11 of 12)::

        iterations = ceil(E * sum_i ceil(r_i) / B)
        step_k     = ceil(E * s_k * sum_i ceil(r_i) / B),   s = (8/12, 11/12)

    i.e. the iteration at which that many epochs' images have been seen. Exact (integer and
    rational) arithmetic."""
    if epoch_size <= 0 or epochs <= 0 or ims_per_batch <= 0:
        raise ValueError(f"lvis_schedule needs positive epoch_size, epochs and ims_per_batch, "
                         f"got {epoch_size}, {epochs}, {ims_per_batch}")
    iters = Fraction(epochs * epoch_size, ims_per_batch)
    steps = (math.ceil(iters * Fraction(8, 12)), math.ceil(iters * Fraction(11, 12)))
    return math.ceil(iters), steps


def category_repeat_factors(
    image_counts: Sequence[int], num_images: int, repeat_thresh: float, sqrt: bool = True
) -> torch.Tensor:
    """r_c = max(1, sqrt(t / f_c)), f_c = n_c / N, of classes in ``image_counts`` (n_c) of
    ``num_images`` (N) images; float32 from float64 arithmetic in the order of detectron2's
    ``repeat_factors_from_category_frequency``, so that they equal its per-image factors."""
    factors = []
    for count in image_counts:
        freq = count / num_images
        factors.append(max(1.0, math.sqrt(repeat_thresh / freq) if sqrt else repeat_thresh / freq))
    return torch.tensor(factors, dtype=torch.float32)


def repeated_epoch_size_bounds(
    image_counts: Sequence[int], num_images: int, repeat_thresh: float, sqrt: bool = True
) -> Tuple[int, int]:
    """``(lower, upper)`` bounds of sum_i ceil(r_i) over N = ``num_images`` images, each
    holding at least one class, knowing only each class's number of images n_c
    (``image_counts``).

    With k_c = ceil(r_c), ceil(r_i) = max over i's classes of k_c (ceil is monotone), so
    sum_i ceil(r_i) = N + sum_i e_i with e_i = max_{c in i} (k_c - 1) >= 0:

    * upper = N + sum_c n_c (k_c - 1), as e_i <= sum_{c in i} (k_c - 1); reached when no
      image holds two repeated classes (possible when their n_c sum to at most N);
    * lower = N + sum_{m >= 1} max{n_c : k_c - 1 >= m}, as e_i >= m for every image of a
      class with k_c - 1 >= m (sum_i e_i = sum_{m >= 1} #{i : e_i >= m}); reached when the
      classes' image sets are nested. It is at least N + max_c n_c (k_c - 1).

    Neither can be improved without knowing which classes share images.
    """
    counts = [int(n) for n in image_counts]
    if num_images <= 0 or any(n <= 0 or n > num_images for n in counts):
        raise ValueError(f"image counts must lie in 1..num_images={num_images}")
    extra = (ceil_repeat_counts(category_repeat_factors(counts, num_images, repeat_thresh, sqrt))
             - 1).tolist()
    upper = num_images + sum(n * e for n, e in zip(counts, extra))
    lower = num_images + sum(
        max(n for n, e in zip(counts, extra) if e >= m) for m in range(1, max(extra, default=0) + 1)
    )
    return lower, upper


class CeilRepeatFactorTrainingSampler(RepeatFactorTrainingSampler):
    """detectron2's ``RepeatFactorTrainingSampler`` with the published rounding: every epoch
    holds image i exactly ceil(r_i) times (mmdetection's ``ClassBalancedDataset``), in place
    of floor(r_i) plus a Bernoulli draw of the fraction.

    Only the epoch's index list changes. The seeded generator, the shuffle of each epoch
    and the sharding over processes (process k takes items k, k + W, ... of the stream) are
    detectron2's; the generator also makes detectron2's (here unused) rounding draw, so that
    where the rules agree (integer factors) the stream is detectron2's, index for index.
    """

    def __init__(self, repeat_factors: torch.Tensor, *, shuffle: bool = True,
                 seed: Optional[int] = None):
        """
        Args:
            repeat_factors: a float vector, the repeat factor r_i of each dataset index
                (e.g. ``repeat_factors_from_category_frequency``).
            shuffle, seed: as detectron2's (the seed must be the same in all processes;
                None draws one shared by them).
        """
        super().__init__(repeat_factors, shuffle=shuffle, seed=seed)
        counts = ceil_repeat_counts(repeat_factors)
        self._epoch_indices = torch.repeat_interleave(torch.arange(len(counts)), counts)

    def _get_epoch_indices(self, generator: torch.Generator) -> torch.Tensor:
        """Each dataset index i, ceil(r_i) times (the same every epoch; shuffled by the
        caller)."""
        torch.rand(len(self._frac_part), generator=generator)  # detectron2's draw, discarded
        return self._epoch_indices
