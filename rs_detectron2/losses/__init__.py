"""Ranking-based losses of the RS family; free of detectron2 so they can be used alone."""
from .rank_sort_loss import RankSortLoss, rank_sort_loss

__all__ = ["RankSortLoss", "rank_sort_loss"]
