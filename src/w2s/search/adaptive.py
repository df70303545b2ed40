"""Beyond fixed budgets: CBS with a schedule of successors and an adaptive stop, and Best-of-N that
prunes its samples early.  Both are the CBS loop of :mod:`w2s.search.cbs` with another plan.

- :class:`AdaptiveSearch` samples ``schedule[t]`` successors per beam at chunk t, front-loaded by default
  (AdaSearch, arXiv 2510.23334: the guide's early scores predict the final reward least, so the early
  chunks get more samples), at the same total budget as CBS; optionally a prompt stops searching once its
  best beam has stayed the best line for ``patience`` chunks, and its best beam alone goes on.
- :class:`PrunedBestOfN` starts N samples, scores them at token checkpoints and drops the lowest-scoring
  fraction, as speculative rejection (Sun et al. 2024, arXiv 2410.20290) does; the survivors go on to the
  end and the best by score is returned, as Best-of-N does.  With ``prune_fraction=0`` it is Best-of-N,
  token for token on a local model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..validation import check_counts, check_range
from .cbs import Beam, BestOfN, ChunkBeamSearch, _Track


def front_loaded(successors: int, steps: int) -> tuple[int, ...]:
    """``steps`` successor counts falling linearly from ``2 * successors - 1`` to 1, summing to
    ``successors * steps`` (rounded by largest remainder), each at least 1.

    >>> front_loaded(4, 4)
    (7, 5, 3, 1)
    >>> sum(front_loaded(4, 10)) == 40
    True
    """
    if steps == 1 or successors == 1:
        return (successors,) * steps
    high = 2 * successors - 1
    exact = [high - (high - 1) * t / (steps - 1) for t in range(steps)]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(steps), key=lambda t: (counts[t] - exact[t], t))  # largest remainders first
    for t in order[: successors * steps - sum(counts)]:
        counts[t] += 1
    return tuple(counts)


@dataclass(frozen=True)
class AdaptiveSearch(ChunkBeamSearch):
    """CBS with a schedule of successors per chunk and an adaptive stop.

    Attributes:
        schedule: successors per beam at each chunk (the last one repeats); empty: front-loaded from
            ``successors_per_beam`` over the ``ceil(max_new_tokens / chunk_length)`` chunks of a full
            response (from 2K-1 down to 1, as many samples in all as CBS with K).  A constant schedule
            ``(K,)`` is CBS.
        patience: a prompt stops searching once its best beam has extended the previous best for this
            many chunks running: from then on its best beam alone is continued, one sample per chunk
            (fewer tokens sampled and scored); None: never.
    """

    schedule: tuple[int, ...] = ()
    patience: int | None = None

    method = "adaptive"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "schedule", check_counts("schedule", self.schedule))
        check_range("patience", self.patience, low=1, integer=True, allow_none=True)
        if not self.schedule:
            steps = math.ceil(self.max_new_tokens / (self.chunk_length or self.max_new_tokens))
            object.__setattr__(self, "schedule", front_loaded(self.successors_per_beam, steps))

    @property
    def follows_leader(self) -> bool:
        return self.patience is not None

    rows_formula = "beam_width * max(schedule)"

    @property
    def max_rows(self) -> int:
        return self.beam_width * max(self.schedule)

    def successors_at(self, step: int) -> int:
        return self.schedule[min(step, len(self.schedule) - 1)]

    def _successors(self, step: int, settled: bool) -> int:
        if settled:
            return 1
        k = self.successors_at(step)
        return self.beam_width * k if step == 0 else k

    def _settles(self, track: _Track, best: Beam) -> bool:
        extends = track.leader is not None and best.text.startswith(track.leader)
        track.leader, track.streak = best.text, (track.streak + 1 if extends else 0)
        return track.streak >= self.patience


@dataclass(frozen=True)
class PrunedBestOfN(BestOfN):
    """Best-of-N that scores its samples at token checkpoints and drops the lowest-scoring ones.

    Attributes:
        checkpoints: response lengths, in large-model tokens, at which the samples are scored and pruned.
        prune_fraction: share of a prompt's samples dropped at each checkpoint (rounded down, at least one
            kept); 0 is Best-of-N.
    """

    checkpoints: tuple[int, ...] = (16,)
    prune_fraction: float = 0.5

    method = "pruned_bon"
    merges_duplicates = False  # samples equal so far are still separate samples, as in Best-of-N

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "checkpoints", tuple(sorted(set(check_counts("checkpoints", self.checkpoints)))))
        check_range("prune_fraction", self.prune_fraction, low=0.0, high=1.0)

    @property
    def active_checkpoints(self) -> tuple[int, ...]:
        return tuple(c for c in self.checkpoints if c < self.max_new_tokens)

    def _successors(self, step: int, settled: bool) -> int:
        return self.n if step == 0 else 1

    def _limit(self, num_tokens: int) -> int:
        nxt = next((c for c in self.active_checkpoints if c > num_tokens), self.max_new_tokens)
        return nxt - num_tokens

    def _keep(self, step: int, pool: int, settled: bool) -> int:
        if step < len(self.active_checkpoints):
            return max(1, pool - math.floor(pool * self.prune_fraction))
        return pool  # the last stretch: all go on to the final selection

