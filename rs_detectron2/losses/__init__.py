"""Ranking-based losses of the RS family; free of detectron2 so they can be used alone."""
from .ap_losses import (
    ALRPLoss,
    ALRPLossOutput,
    APLoss,
    alrp_loss,
    alrp_regression_loss,
    ap_loss,
)
from .rank_sort_loss import RankSortLoss, rank_sort_loss
from .ranking_pool import (
    RANKING_POOLS,
    gather_ranking_pool,
    global_sum,
    pooled_alrp_loss,
    pooled_ap_loss,
    pooled_rank_sort_loss,
    ranking_world_size,
)

__all__ = [
    "RankSortLoss",
    "rank_sort_loss",
    "APLoss",
    "ap_loss",
    "ALRPLoss",
    "ALRPLossOutput",
    "alrp_loss",
    "alrp_regression_loss",
    "RANKING_POOLS",
    "gather_ranking_pool",
    "global_sum",
    "pooled_rank_sort_loss",
    "pooled_ap_loss",
    "pooled_alrp_loss",
    "ranking_world_size",
]
