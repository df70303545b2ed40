"""Evaluations that reproduce the paper's comparisons (``w2s eval ...``)."""

from .sentiment import METHODS, evaluate_sentiment

__all__ = ["METHODS", "evaluate_sentiment"]
