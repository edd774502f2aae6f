"""Ranking-based losses of the RS family; free of detectron2 so they can be used alone."""
from .rank_sort_loss import RankSortLoss, rank_sort_loss
from .ranking_pool import (
    RANKING_POOLS,
    gather_ranking_pool,
    global_sum,
    pooled_rank_sort_loss,
    ranking_world_size,
)

__all__ = ["RankSortLoss", "rank_sort_loss", "RANKING_POOLS", "gather_ranking_pool",
           "global_sum", "pooled_rank_sort_loss", "ranking_world_size"]
