"""Search methods: chunk-level beam search and its special cases (Best-of-N, sampling), and EFT."""

from .cbs import Beam, BestOfN, ChunkBeamSearch, Sampling, SearchResult
from .eft import EmulatedFineTuning

__all__ = ["Beam", "BestOfN", "ChunkBeamSearch", "EmulatedFineTuning", "Sampling", "SearchResult"]
