"""One ranking pool over all processes: RS Loss of the logits of every process's images.

The published RS Loss ranks the logits of each process's batch: with 4 GPUs x 4 images a
positive is ranked against the negatives of 4 images, with 8 x 2 against those of 2, so
the loss a model trains with changes with the number of processes. With the "global" pool
every process ranks the positives and relevant negatives of *all* processes together:

1. the smallest positive score over all processes (``all_reduce`` MIN) fixes the relevant
   negatives (score >= that - δ; any other negative has H = 0 for every positive and so
   no effect and no gradient);
2. each process sends its positives and relevant negatives (scores and targets) to all
   (``all_gather`` of variable lengths);
3. each computes the same exact loss over the pool and back-propagates only into its own
   entries.

Gradients: each process's logits receive ``world_size x dL/ds``. DistributedDataParallel
averages the parameter gradients over the processes, so the average is the gradient of
the one global loss (every process's contribution counted once). Weighted means over the
positives (the RS heads' box and mask losses) pool the same way (:func:`global_sum`).

Pure ``torch.distributed``; with one process (or none initialised) everything reduces to
the per-process loss, bit for bit.
"""
from typing import List, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from .ap_losses import ALRPLossOutput, alrp_loss, ap_loss
from .rank_sort_loss import rank_sort_loss

__all__ = ["RANKING_POOLS", "check_ranking_pool", "ranking_world_size", "ranking_pool_members",
           "gather_ranking_pool", "global_sum", "pooled_rank_sort_loss", "pooled_ap_loss", "pooled_alrp_loss"]

RANKING_POOLS = ("process", "global")


def ranking_world_size() -> int:
    """The number of processes a "global" pool spans (1 without torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def check_ranking_pool(pool: str) -> str:
    """``pool`` if it is one of :data:`RANKING_POOLS`, else a ValueError naming them."""
    if pool not in RANKING_POOLS:
        raise ValueError(f"ranking pool (MODEL.RS.RANKING_POOL) must be one of "
                         f"{RANKING_POOLS}, got {pool!r}")
    return pool


def _all_gather_variable(x: Tensor) -> Tuple[Tensor, List[int]]:
    """Every process's 1-D ``x`` (lengths may differ), concatenated in rank order, and the
    lengths."""
    world = dist.get_world_size()
    size = torch.tensor([x.numel()], dtype=torch.int64, device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    lengths = [int(s) for s in sizes]
    padded = x.new_zeros(max(max(lengths), 1))  # gloo gathers no empty tensors
    padded[: x.numel()] = x.detach()
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, lengths)]), lengths


def _is_global(pool: str) -> bool:
    """Whether ``pool`` pools across processes here: "global" with more than one running."""
    return check_ranking_pool(pool) == "global" and ranking_world_size() > 1


class _GatherWithLocalGradient(torch.autograd.Function):
    """:func:`_all_gather_variable` whose backward hands each process ``world_size x`` the
    gradient of its own slice."""

    @staticmethod
    def forward(ctx, local: Tensor) -> Tensor:
        pooled, lengths = _all_gather_variable(local)
        ctx.start = sum(lengths[: dist.get_rank()])
        ctx.size = local.numel()
        ctx.world = len(lengths)
        return pooled

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad[ctx.start: ctx.start + ctx.size] * ctx.world


def ranking_pool_members(logits: Tensor, targets: Tensor, delta: float) -> Tensor:
    """Which of this process's (flattened) entries go into the pool: its positives, and its
    negatives scored at least the lowest positive score of all processes minus ``delta``
    (every other negative has H = 0 for every positive). A collective: every process calls
    it."""
    flat_logits, flat_targets = logits.detach().reshape(-1), targets.reshape(-1)
    positive = flat_targets > 0
    local_min = flat_logits[positive].min() if bool(positive.any()) else None
    lowest = torch.tensor([float("inf") if local_min is None else float(local_min)],
                          dtype=torch.float64, device=logits.device)
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    return positive | ((flat_targets == 0) & (flat_logits >= float(lowest) - float(delta)))


def gather_ranking_pool(logits: Tensor, targets: Tensor, delta: float) -> Tuple[Tensor, Tensor]:
    """The pool of every process's positives and relevant negatives
    (:func:`ranking_pool_members`): ``(logits, targets)``, 1-D, concatenated in rank order
    (identical on every process), differentiable into this process's ``logits``
    (``world_size x`` the gradient of its entries, see the module docstring). Targets follow
    :func:`~.rank_sort_loss.rank_sort_loss`: > 0 positive, 0 negative, < 0 ignored (ignored
    entries and irrelevant negatives are not sent)."""
    target_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    flat_logits, flat_targets = logits.reshape(-1), targets.reshape(-1).to(target_dtype)
    keep = ranking_pool_members(flat_logits, flat_targets, delta)
    pooled_logits = _GatherWithLocalGradient.apply(flat_logits[keep])
    pooled_targets, _ = _all_gather_variable(flat_targets[keep].detach())
    return pooled_logits, pooled_targets


class _GlobalSum(torch.autograd.Function):
    """The sum of a scalar over all processes; the backward hands each process
    ``world_size x`` the incoming gradient (see the module docstring)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        total = x.detach().clone()
        dist.all_reduce(total)
        ctx.world = dist.get_world_size()
        return total

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.world


def global_sum(x: Tensor, pool: str = "global") -> Tensor:
    """``x`` summed over all processes when ``pool`` is "global" and several run (with the
    gradient scaling of the module docstring); ``x`` itself otherwise."""
    return _GlobalSum.apply(x) if _is_global(pool) else x


def pooled_rank_sort_loss(logits: Tensor, targets: Tensor, delta: float = 0.5,
                          pool: str = "process") -> Tuple[Tensor, Tensor]:
    """:func:`~.rank_sort_loss.rank_sort_loss` over this process's entries ("process") or
    over the pool of all processes (:func:`gather_ranking_pool`, "global"); the same
    ``(loss_rank, loss_sort)`` on every process with "global"."""
    if not _is_global(pool):
        return rank_sort_loss(logits, targets, delta)
    return rank_sort_loss(*gather_ranking_pool(logits, targets, delta), delta)


def pooled_ap_loss(logits: Tensor, targets: Tensor, delta: float = 1.0,
                   pool: str = "process") -> Tensor:
    """:func:`~.ap_losses.ap_loss` over this process's entries or the pool of all processes."""
    if not _is_global(pool):
        return ap_loss(logits, targets, delta)
    return ap_loss(*gather_ranking_pool(logits, targets, delta), delta)


def pooled_alrp_loss(logits: Tensor, targets: Tensor, regression_losses: Tensor,
                     delta: float = 1.0, pool: str = "process") -> ALRPLossOutput:
    """:func:`~.ap_losses.alrp_loss` over this process's entries or the pool of all
    processes; ``regression_losses`` (one per positive, in the flat order of the positives)
    are gathered in the pool's order of the positives."""
    if not _is_global(pool):
        return alrp_loss(logits, targets, regression_losses, delta)
    pooled_logits, pooled_targets = gather_ranking_pool(logits, targets, delta)
    pooled_regression = _GatherWithLocalGradient.apply(regression_losses.reshape(-1))
    return alrp_loss(pooled_logits, pooled_targets, pooled_regression, delta)
