"""Search methods: chunk-level beam search and its special cases (Best-of-N, sampling), EFT, Nudging and tree
search."""

from ..configs import METHOD_ALIASES, canonical_method
from .adaptive import AdaptiveSearch, PrunedBestOfN
from .cbs import Beam, BestOfN, ChunkBeamSearch, Sampling, SearchResult
from .eft import EmulatedFineTuning
from .nudging import Nudging, NudgingResult
from .tree import TreeSearch

# the methods by their name, the same in Python (``.method``), on the command line (w2s search --method NAME),
# in the server's requests and in the output records
SEARCH_METHODS = {"cbs": ChunkBeamSearch, "bon": BestOfN, "sampling": Sampling, "eft": EmulatedFineTuning,
                  "adaptive": AdaptiveSearch, "pruned_bon": PrunedBestOfN, "nudging": Nudging,
                  "tree": TreeSearch}

__all__ = ["METHOD_ALIASES", "SEARCH_METHODS", "AdaptiveSearch", "Beam", "BestOfN", "ChunkBeamSearch",
           "EmulatedFineTuning", "Nudging", "NudgingResult", "PrunedBestOfN", "Sampling", "SearchResult", "canonical_method"]
