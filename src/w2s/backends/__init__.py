"""Model backends: local ``transformers`` models and remote OpenAI-compatible engines.

The backends are imported on first use (torch and transformers for the local one, httpx for the remote one).
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .base import (ERROR_KINDS, Cancelled, ContextLengthError, Continuation, Conversation, LanguageModel, RemoteError,
                   SamplingParams, SearchSession)

if TYPE_CHECKING:
    from .remote import RemoteModel
    from .transformers import TransformersModel, load_model

__all__ = ["ERROR_KINDS", "Cancelled", "ContextLengthError", "Continuation", "Conversation", "LanguageModel",
           "RemoteError", "RemoteModel", "SamplingParams", "SearchSession", "TransformersModel", "load_model"]

__getattr__, __dir__ = lazy_exports(__name__, {
    ".remote": ("RemoteModel",),
    ".transformers": ("TransformersModel", "load_model"),
})
