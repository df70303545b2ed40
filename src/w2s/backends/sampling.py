"""The one sampling loop of local models: CBS, Best-of-N and plain sampling (:class:`LocalSearchSession`)
and the Stream Aligner's upstream (:class:`IncrementalGenerator`) draw their tokens here.

Randomness is counter-based: the uniform behind row ``i``'s token at step ``t`` is a hash of
``(seed_i, counter_i + t, lane_i)``, so all rows draw in one vectorised call and each row's numbers
depend only on its key, never on which other rows share the batch.  Ends are checked on token ids; text
is decoded per step only when a stop string or a stop function needs it, and then only the new tokens
(with a few tokens before them as context: :meth:`TransformersModel.decode_after`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .base import ANCHOR_TOKENS, SamplingParams, check_interrupt, per_row, stop_index

MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for 32-bit ``x`` held in int64, with no intermediate past 2**49."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash with good avalanche (Wellons' ``lowbias32``)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(seeds: Sequence[int], counters: Sequence[int], lanes: Sequence[int]) -> torch.Tensor:
    """One uniform in [0, 1) per row (float64, 53 random bits), a function of ``(seed, counter, lane)`` only."""
    key = torch.tensor([[s & MASK32, (s >> 32) & MASK32, c & MASK32, lane & MASK32]
                        for s, c, lane in zip(seeds, counters, lanes)], dtype=torch.int64).reshape(-1, 4)
    h = _mix32(key[:, 3] ^ 0x9E3779B9)
    for j in (2, 1, 0):
        h = _mix32(key[:, j] ^ h)
    low = _mix32(h ^ 0x85EBCA6B)
    return ((h >> 6) * 2.0**27 + (low >> 5)).double() / 2.0**53


@dataclass
class Drawn:
    """What one row sampled: its tokens (without an end token), and why it stopped.  ``reason`` is ``"end"``
    (an end-of-sequence token), ``"stop"`` (a stop string: ``text`` is cut before it), ``"cut"`` (the stop
    function cut ``text``), ``"held"`` (``hold`` stopped it before a token was drawn) or ``"length"``; ``text``
    is None unless stop strings or a stop function were checked (then it is the text so far)."""

    ids: list[int]
    reason: str
    text: str | None = None

    @property
    def ended(self) -> bool:
        return self.reason in ("end", "stop")


class Penalties:
    """The repetition controls of :class:`SamplingParams`, applied to each row's next-token logits.

    Row ``i``'s *history* is its context and response ids (``repetition_penalty`` and
    ``no_repeat_ngram_size`` look at it, as ``transformers``' processors look at ``input_ids``); its
    *response* is the response ids alone (``frequency_penalty`` and ``presence_penalty`` count those, as
    the OpenAI API does).  Both grow by each sampled token (:meth:`add`).  The counts are held as
    ``[rows, vocab]`` tensors, so a step costs one pass over the logits whatever the length.
    """

    def __init__(self, params: SamplingParams, histories: Sequence[Sequence[int]],
                 responses: Sequence[Sequence[int]], vocab: int, device):
        self.params, self.vocab = params, vocab
        rows = len(histories)
        self.seen = self.counts = None
        if params.repetition_penalty != 1.0:
            self.seen = torch.zeros(rows, vocab, dtype=torch.bool, device=device)
            for i, ids in enumerate(histories):
                self.seen[i, _in_vocab(ids, vocab, device)] = True
        if params.frequency_penalty or params.presence_penalty:
            self.counts = torch.zeros(rows, vocab, dtype=torch.float32, device=device)
            for i, ids in enumerate(responses):
                at = _in_vocab(ids, vocab, device)
                self.counts[i].index_add_(0, at, torch.ones(len(at), device=device))
        self.n = params.no_repeat_ngram_size
        self.tails: list[list[int]] = []  # each row's last n-1 ids
        self.followers: list[dict[tuple, set[int]]] = []  # each row's (n-1)-gram -> the ids that followed it
        if self.n:
            for ids in histories:
                ids, grams = list(ids), {}
                for j in range(len(ids) - self.n + 1):
                    grams.setdefault(tuple(ids[j : j + self.n - 1]), set()).add(ids[j + self.n - 1])
                self.followers.append(grams)
                self.tails.append(ids[len(ids) - self.n + 1 :] if self.n > 1 else [])

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits (float32) with the penalties on and the banned n-gram ends at -inf."""
        logits = logits.float()
        p = self.params
        if self.seen is not None:
            penalized = torch.where(logits < 0, logits * p.repetition_penalty, logits / p.repetition_penalty)
            logits = torch.where(self.seen, penalized, logits)
        if self.counts is not None:
            logits = logits - p.frequency_penalty * self.counts - p.presence_penalty * (self.counts > 0).float()
        if self.n:
            at = [(i, t) for i, tail in enumerate(self.tails) if len(tail) == self.n - 1
                  for t in self.followers[i].get(tuple(tail), ()) if t < logits.shape[-1]]
            if at:  # out of place: the logits may be an inference tensor
                rows, tokens = torch.tensor(at, device=logits.device).T
                logits = logits.index_put((rows, tokens), torch.tensor(float("-inf"), device=logits.device))
        return logits

    def add(self, tokens: Sequence[int], rows: Sequence[int]) -> None:
        """Row ``rows[j]`` drew ``tokens[j]``."""
        if not rows:
            return
        if self.seen is not None or self.counts is not None:
            at = torch.tensor(list(rows), device=(self.seen if self.seen is not None else self.counts).device)
            ids = torch.tensor([t if t < self.vocab else 0 for t in tokens], device=at.device)
            real = torch.tensor([t < self.vocab for t in tokens], device=at.device)
            if self.seen is not None:
                self.seen[at[real], ids[real]] = True
            if self.counts is not None:
                self.counts.index_put_((at[real], ids[real]), torch.ones(int(real.sum()), device=at.device),
                                       accumulate=True)
        if self.n:
            for i, t in zip(rows, tokens):
                tail = self.tails[i]
                if len(tail) == self.n - 1:
                    self.followers[i].setdefault(tuple(tail), set()).add(t)
                if self.n > 1:
                    tail.append(t)
                    del tail[: len(tail) - (self.n - 1)]


def _in_vocab(ids: Sequence[int], vocab: int, device) -> torch.Tensor:
    return torch.tensor([t for t in ids if 0 <= t < vocab], dtype=torch.long, device=device)


class _Text:
    """A row's response (prefix + sampled ids) and its text, decoded incrementally: only the tokens after
    the last complete character, with the few tokens before them as context."""

    def __init__(self, lm, context: Sequence[int], prefix: Sequence[int]):
        self.lm, self.context, self.ids = lm, list(context), list(prefix)
        self.text, self.done = "", 0

    def add(self, token: int) -> str:
        """Append ``token``; the text so far, an incomplete trailing character held back."""
        self.ids.append(token)
        done = self.done
        before = self.ids[max(0, done - ANCHOR_TOKENS) : done]
        if len(before) < ANCHOR_TOKENS:
            before = self.context[-(ANCHOR_TOKENS - len(before)) :] + before
        piece = self.lm.decode_after(before, self.ids[done:])
        if not piece.endswith("\ufffd"):
            self.text, self.done = self.text + piece, len(self.ids)
            return self.text
        return self.text + piece.rstrip("\ufffd")


def sample_rows(
    lm,
    params: SamplingParams,
    logits: torch.Tensor,
    forward: Callable[[list[int | None]], torch.Tensor],
    keys: tuple[Sequence[int], Sequence[int], Sequence[int]],
    contexts: Sequence[Sequence[int]],
    max_tokens: int | Sequence[int],
    prefixes: Sequence[list[int]] | None = None,
    active: Sequence[bool] | None = None,
    stop: Callable[[str], int | None] | Sequence[Callable[[str], int | None] | None] | None = None,
    hold: Callable[[int, torch.Tensor], Sequence[bool]] | None = None,
) -> list[Drawn | None]:
    """Sample up to ``max_tokens`` tokens for each row, all rows in lock step.

    Args:
        lm: the sampling model (:class:`TransformersModel`: ``sample_next``, ``eos_ids``, ``decode_after``).
        logits: ``[rows, vocab]`` next-token logits of every row.
        forward: ``forward(tokens)`` feeds row ``i`` its token ``tokens[i]`` (None: the row is done) and returns
            the next ``[rows, vocab]`` logits.  The last token sampled is never fed.
        keys: ``(seeds, counters, lanes)``: row ``i`` draws its ``t``-th token with key
            ``(seeds[i], counters[i] + t, lanes[i])``.
        contexts: each row's ids before its response (to decode it).
        max_tokens: the most tokens a row samples (one number for all rows, or one per row).
        prefixes: each row's response ids so far (default none): stop strings and ``stop`` see the text of
            prefix + new tokens, and a ``Drawn.text`` is that whole text.
        active: which rows sample (default all); the others get None.
        stop: ``stop(text)`` -> where to cut the response text so far, or None to go on (one function for
            all rows, or one per row, None where a row has none).
        hold: ``hold(step, logits)`` sees the raw ``[rows, vocab]`` logits before the ``step``-th token is
            drawn and says, per row, whether the row ends there without drawing it (reason ``"held"``): how
            Nudging hands over where the model is unsure, and entropy-cut chunks end.
    """
    rows = len(contexts)
    live = list(active) if active is not None else [True] * rows
    limits = per_row(max_tokens, rows)
    stops = per_row(stop, rows)
    seeds, counters, lanes = keys
    eos = torch.tensor(sorted(lm.eos_ids), dtype=torch.long)
    sampled_ids: list[list[int]] = [[] for _ in range(rows)]
    reasons: list[str | None] = [None if a else "inactive" for a in live]
    texts: dict[int, str] = {}
    check_text = any(f is not None for f in stops) or bool(params.stop)
    trackers = ({i: _Text(lm, contexts[i], prefixes[i] if prefixes is not None else []) for i in range(rows)
                 if live[i]} if check_text else {})
    max_stop = max((len(s) for s in params.stop), default=0)
    penalties = None
    if params.repetition_controls:
        responses = [list(prefixes[i]) if prefixes is not None else [] for i in range(rows)]
        penalties = Penalties(params, [list(contexts[i]) + responses[i] for i in range(rows)], responses,
                              logits.shape[-1], logits.device)
    for step in range(max(limits)):
        check_interrupt()
        if hold is not None:
            for i, held in enumerate(hold(step, logits)):
                if held and reasons[i] is None:
                    reasons[i] = "held"
            if all(r is not None for r in reasons):
                break
        u = uniforms(seeds, [c + step for c in counters], lanes)
        if penalties is not None:
            logits = penalties.apply(logits)
        tokens = lm.sample_next(logits, params, u).cpu()
        ended = torch.isin(tokens, eos).tolist()
        tokens = tokens.tolist()
        for i in range(rows):
            if reasons[i] is not None:
                continue
            if ended[i]:
                reasons[i] = "end"
                continue
            sampled_ids[i].append(tokens[i])
            if len(sampled_ids[i]) == limits[i]:
                reasons[i] = "length"  # (the text checks below may still end or cut it)
            if not check_text:
                continue
            tracker = trackers[i]
            before = len(tracker.text)
            text = tracker.add(tokens[i])
            at = _stop_in(text, params.stop, max(0, before - max_stop))
            cut = stops[i](text) if stops[i] is not None else None
            if at is not None or cut is not None:  # confirm on the whole decoded text
                text = lm.response_text(contexts[i], tracker.ids, finished=False)
                at, cut = stop_index(text, params.stop), (stops[i](text) if stops[i] is not None else None)
            if at is not None and (cut is None or at <= cut):
                reasons[i], texts[i] = "stop", text[:at]
            elif cut is not None:
                reasons[i], texts[i] = "cut", text[:cut]
            else:
                texts[i] = text
        going = [r is None for r in reasons]
        if not any(going):
            break
        if penalties is not None:
            penalties.add([tokens[i] for i in range(rows) if going[i]], [i for i in range(rows) if going[i]])
        logits = forward([tokens[i] if going[i] else None for i in range(rows)])
    return [None if reasons[i] == "inactive" else Drawn(sampled_ids[i], reasons[i], texts.get(i))
            for i in range(rows)]


def _stop_in(text: str, stop: Sequence[str], start: int) -> int | None:
    """Where the first stop string starting at or after ``start`` is (the text before was checked already)."""
    hits = [i for i in (text.find(s, start) for s in stop) if i >= 0]
    return min(hits) if hits else None
