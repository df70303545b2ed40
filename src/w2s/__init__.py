"""w2s: align a large language model at generation time with small ones.

>>> import w2s
>>> strong = w2s.load_model("path/to/large")
>>> scorer = w2s.LogRatioScorer(tuned=w2s.load_model("small-dpo"), untuned=w2s.load_model("small-sft"))
>>> search = w2s.ChunkBeamSearch(beam_width=4, successors_per_beam=4, chunk_length=5, max_new_tokens=50)
>>> for result in search.generate(strong, scorer, ["The movie was"], seed=0):
...     print(result.response, result.score)

The names below are imported on first use (``import w2s`` does not import torch).
"""

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from .aligner import Aligner, StreamAligner, split_sentences
    from .backends import ContextLengthError, Conversation, RemoteModel, SamplingParams, TransformersModel, load_model
    from .models import ModelSpec, load
    from .scoring import CallableScorer, LogRatioScorer, RewardModelScorer, Scorer
    from .search import (AdaptiveSearch, Beam, BestOfN, ChunkBeamSearch, EmulatedFineTuning, Nudging, NudgingResult,
                         PrunedBestOfN, Sampling, SearchResult, TreeSearch)

__version__ = "0.1.0"

__all__ = [
    "AdaptiveSearch",
    "Aligner",
    "Beam",
    "BestOfN",
    "CallableScorer",
    "ChunkBeamSearch",
    "ContextLengthError",
    "Conversation",
    "EmulatedFineTuning",
    "LogRatioScorer",
    "ModelSpec",
    "Nudging",
    "NudgingResult",
    "PrunedBestOfN",
    "RemoteModel",
    "RewardModelScorer",
    "Sampling",
    "SamplingParams",
    "Scorer",
    "SearchResult",
    "StreamAligner",
    "TransformersModel",
    "TreeSearch",
    "load",
    "load_model",
    "split_sentences",
]

__getattr__, __dir__ = lazy_exports(__name__, {
    ".aligner": ("Aligner", "StreamAligner", "split_sentences"),
    ".backends": ("ContextLengthError", "Conversation", "RemoteModel", "SamplingParams", "TransformersModel", "load_model"),
    ".models": ("ModelSpec", "load"),
    ".scoring": ("CallableScorer", "LogRatioScorer", "RewardModelScorer", "Scorer"),
    ".search": ("AdaptiveSearch", "Beam", "BestOfN", "ChunkBeamSearch", "EmulatedFineTuning", "Nudging",
                "NudgingResult", "PrunedBestOfN", "Sampling", "SearchResult", "TreeSearch"),
})
