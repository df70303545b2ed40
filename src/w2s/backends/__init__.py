"""Model backends: local ``transformers`` models (and, later, remote OpenAI-compatible engines)."""

from .base import Beams, Continuation, LanguageModel, SamplingParams
from .transformers import TransformersModel, load_model

__all__ = ["Beams", "Continuation", "LanguageModel", "SamplingParams", "TransformersModel", "load_model"]
