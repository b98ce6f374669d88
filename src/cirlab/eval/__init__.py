"""Evaluation: metrics on rankings, and the evaluation loop over a dataset."""
from .evaluate import EvalResult, evaluate
from .metrics import average_precision_at_k, grouped_metrics, map_at_k, recall_at_k, retrieval_metrics

__all__ = ["EvalResult", "average_precision_at_k", "evaluate", "grouped_metrics", "map_at_k", "recall_at_k",
           "retrieval_metrics"]
