"""Search methods: chunk-level beam search and its special cases (Best-of-N, sampling), and EFT."""

from .adaptive import AdaptiveSearch, PrunedBestOfN
from .cbs import Beam, BestOfN, ChunkBeamSearch, Sampling, SearchResult
from .eft import EmulatedFineTuning

# the methods by their command-line name (w2s search --method NAME)
SEARCH_METHODS = {"cbs": ChunkBeamSearch, "bon": BestOfN, "base": Sampling, "eft": EmulatedFineTuning,
                  "adaptive": AdaptiveSearch, "pruned_bon": PrunedBestOfN}

__all__ = ["SEARCH_METHODS", "AdaptiveSearch", "Beam", "BestOfN", "ChunkBeamSearch", "EmulatedFineTuning",
           "PrunedBestOfN", "Sampling", "SearchResult"]
