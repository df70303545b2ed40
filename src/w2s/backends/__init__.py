"""Model backends: local ``transformers`` models and remote OpenAI-compatible engines."""

from .base import Beams, Continuation, Conversation, LanguageModel, SamplingParams
from .remote import RemoteError, RemoteModel
from .transformers import TransformersModel, load_model

__all__ = ["Beams", "Continuation", "Conversation", "LanguageModel", "RemoteError", "RemoteModel", "SamplingParams", "TransformersModel",
           "load_model"]
