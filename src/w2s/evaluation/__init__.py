"""Evaluations that reproduce the paper's comparisons (``w2s eval ...``)."""

from .sentiment import SENTIMENT_RUNS, evaluate_sentiment

__all__ = ["SENTIMENT_RUNS", "evaluate_sentiment"]
