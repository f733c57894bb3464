"""Compatibility: the metrics now live in :mod:`neuralcodes.retrieval.metrics`. Import from
there; this module goes once every caller has moved."""

from neuralcodes.retrieval.metrics import (
    RankingMetrics,
    rank_order,
    ranking_metrics,
    ranking_metrics_from_scores,
    self_retrieval_metrics,
    topk_correct,
)

__all__ = ["RankingMetrics", "rank_order", "ranking_metrics", "ranking_metrics_from_scores",
           "self_retrieval_metrics", "topk_correct"]
