"""Search methods: chunk-level beam search and its special cases (Best-of-N, sampling), and EFT."""

from .cbs import Beam, BestOfN, ChunkBeamSearch, Sampling, SearchResult
from .eft import EmulatedFineTuning

# the methods by their command-line name (w2s search --method NAME)
SEARCH_METHODS = {"cbs": ChunkBeamSearch, "bon": BestOfN, "base": Sampling, "eft": EmulatedFineTuning}

__all__ = ["SEARCH_METHODS", "Beam", "BestOfN", "ChunkBeamSearch", "EmulatedFineTuning", "Sampling", "SearchResult"]
