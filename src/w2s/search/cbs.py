"""Chunk-level beam search (CBS) over samples of a frozen large model.

Weak-to-Strong Search: Align Large Language Models via Searching over Small Language Models
(Zhou et al., 2024, arXiv 2405.19262), Algorithm 1.  The guidance score is any :class:`w2s.Scorer`;
with :class:`w2s.LogRatioScorer` it is log pi_tuned(y|x) - log pi_untuned(y|x) (Eq. 4).

    beams = W copies of the prompt            # every step samples W*K rows per prompt
    until every beam has finished or max_new_tokens is reached:
        sample K continuations of up to L tokens for each unfinished beam
        candidates = all continuations + finished beams (carried once, unchanged)
        beams = the W best distinct candidates by score
    return the best finished beam (the best unfinished one when none finished within max_new_tokens)

Best-of-N (W=1, K=N, L=inf) and plain sampling (W=K=1, L=inf) are special cases of the same code.  So are
the variants of :mod:`w2s.search.adaptive` (a schedule of K, an adaptive stop, pruned Best-of-N): each
changes the plan (:meth:`ChunkBeamSearch._successors`, ``_limit``, ``_keep``), not the loop.  With
``chunk_end`` a chunk ends at a delimiter (a sentence end, a newline...) before its L tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Sequence

from ..backends.base import ContextLengthError, SamplingParams, check_sampling, context_error, error_code
from ..scoring import as_scorer
from ..validation import check_range, check_template


@dataclass
class Beam:
    """A response (partial or complete) kept by the search."""

    text: str
    finished: bool
    num_tokens: int
    score: float | None = None
    row: int | None = field(default=None, repr=False)  # index among the session's live rows
    prompt: int = field(default=0, repr=False)  # index of its prompt in the batch


@dataclass
class SearchResult:
    """What a search returns for one prompt.

    ``response`` is the best-scoring *finished* final beam when one exists (ALGORITHMS.md: "the best
    finished candidate"), otherwise the best unfinished one.  ``finished`` is true only when the response
    ended by itself (EOS or stop string); ``score`` is the scorer's value of ``response`` (with the end
    token counted when finished).  ``beams`` holds all final beams
    with their own scores when asked for (``return_beams=True``), best first.  ``error`` is set (and the
    response is empty) when this prompt could not be searched, the other prompts unaffected; ``error_kind``
    says why (a key of :data:`w2s.backends.base.ERROR_KINDS`): ``"engine"`` (a remote large model failed;
    ``error_status`` is the HTTP status of its last answer, None when it could not be reached),
    ``"timeout"`` (it did not answer in time) or ``"context"`` (the prompt and the tokens asked for do not
    fit a model's context); ``error_code`` is the kind's code (``engine_error``, ``engine_timeout``,
    ``context_length_exceeded``).  ``sampled_tokens`` counts the large-model
    tokens drawn for this prompt over all its beams and chunks (the search's cost: W·K·L per chunk at most,
    fewer when samples finish early), and ``guide_tokens`` the guide tokens its scoring ran, both guides
    summed, what their KV caches already held not counted (0 when nothing was scored; None when the
    scorer cannot count, e.g. a callable or a remote guide).
    """

    prompt: str
    response: str
    score: float | None
    finished: bool
    num_tokens: int
    method: str
    beams: list[Beam] | None = None
    error: str | None = None
    error_kind: str | None = None
    error_status: int | None = None
    sampled_tokens: int = 0
    guide_tokens: int | None = 0

    @property
    def error_code(self) -> str | None:
        return error_code(self.error_kind)


# the large-model rows one prompt may sample at once unless the caller allows more (``generate(max_rows=...)``,
# ``w2s search --max-rows``, the server's ``max_rows``): a bound checked before any work
MAX_ROWS = 1024


def prompt_seeds(seed: int, start: int, count: int) -> list[int]:
    """Independent per-prompt seeds: prompt i's randomness depends only on (seed, i), not on batching."""
    import numpy as np  # here: the command line reads this module's configs for its flags

    return [int(np.random.SeedSequence([seed, i]).generate_state(1)[0]) for i in range(start, start + count)]


@dataclass(frozen=True)
class ChunkBeamSearch:
    """Chunk-level beam search (CBS).

    Attributes:
        beam_width: W, beams kept per prompt after each chunk.
        successors_per_beam: K, continuations sampled from each unfinished beam per chunk.
        chunk_length: L, large-model tokens per chunk; None means unlimited (one chunk).  With ``chunk_end``
            it caps a chunk that reaches no delimiter.
        chunk_end: where a chunk ends before its L tokens (step-level chunks): ``"sentence"`` (after a
            sentence, by the Stream Aligner's streaming rule), ``"line"`` (after a newline),
            ``"paragraph"`` (after a blank line), or any other text, a delimiter of your own (kept in the
            chunk); None: chunks of exactly L tokens.
        chunk_entropy: a chunk also ends before the token at which the large model's next-token entropy (in
            nats, over its whole vocabulary) reaches this, once it has 4 tokens (CARDS' segments; L caps
            it).  Remotely the entropy is estimated from the engine's top 20 log-probs (a lower bound).
            None: off.
        max_new_tokens: length limit of a response, in large-model tokens.
        sampling: the large model's sampling: temperature, top_p, top_k and stop strings (the authors'
            settings by default: 0.7, 1.0, 50).
        return_beams: also return all W final beams with their scores.
    """

    beam_width: int = 4
    successors_per_beam: int = 4
    chunk_length: int | None = 5
    chunk_end: str | None = None
    chunk_entropy: float | None = None
    max_new_tokens: int = 50
    sampling: SamplingParams = field(default_factory=SamplingParams)
    return_beams: bool = False

    method = "cbs"

    def __post_init__(self) -> None:
        check_range("beam_width", self.beam_width, low=1, integer=True)
        check_range("successors_per_beam", self.successors_per_beam, low=1, integer=True)
        check_range("chunk_length", self.chunk_length, low=1, integer=True, allow_none=True)
        check_range("max_new_tokens", self.max_new_tokens, low=1, integer=True)
        if self.chunk_end is not None and (not isinstance(self.chunk_end, str) or not self.chunk_end):
            raise ValueError(f"chunk_end must be 'sentence', 'line', 'paragraph', a delimiter (a non-empty string) "
                             f"or None, got {self.chunk_end!r}.")
        check_range("chunk_entropy", self.chunk_entropy, low=0.0, allow_none=True)
        check_sampling(self.sampling)
        if not isinstance(self.return_beams, bool):
            raise ValueError(f"return_beams must be true or false, got {self.return_beams!r}.")

    @property
    def samples_per_step(self) -> int:
        """W*K: large-model rows per prompt per chunk, the unit of compute compared across methods."""
        return self.beam_width * self.successors_per_beam

    rows_formula = "beam_width * successors_per_beam"  # what max_rows is, in the config's parameters

    @property
    def max_rows(self) -> int:
        """The most large-model rows one prompt samples at once, at any chunk (the bound checked before any
        work: :meth:`check_rows`); more than one needs a scorer to rank them."""
        return self.samples_per_step

    def check_rows(self, limit: int | None, allowance: str = "max_rows") -> None:
        """Refuse (ValueError), before any work, a search that would sample more than ``limit`` large-model
        rows for one prompt at once (None: no bound); ``allowance`` names the bound in the message."""
        if limit is not None and self.max_rows > limit:
            raise ValueError(f"{self.rows_formula} = {self.max_rows} large-model rows per prompt at once, more "
                             f"than {allowance} = {limit}; lower them, or raise {allowance}.")

    def check_tokens_per_forward(self, model, prompts: int) -> None:
        """Refuse (ValueError), before any work, a batch whose rows cannot fit one forward of ``model`` under
        its ``max_tokens_per_forward``: every forward runs at least one token per row, and ``prompts``
        prompts sample up to :attr:`max_rows` rows each (longer forwards are split into several calls)."""
        bound = getattr(model, "max_tokens_per_forward", None)
        rows = prompts * self.max_rows
        if bound is not None and rows > bound:
            raise ValueError(f"max_tokens_per_forward={bound} of {getattr(model, 'name', 'the large model')} is below "
                             f"the {rows} rows one forward may hold ({prompts} prompts x {self.rows_formula} = "
                             f"{self.max_rows}); raise it to at least {rows}, or lower batch_size or "
                             f"{self.rows_formula}.")

    def generate(
        self,
        model,
        scorer,
        prompts: Sequence[str],
        *,
        seed: int = 0,
        template: str = "{prompt}",
        batch_size: int = 8,
        progress: bool = False,
        start_index: int = 0,
        on_step=None,
        max_rows: int | None = MAX_ROWS,
    ) -> Iterator[SearchResult]:
        """Search for each prompt; yields results in input order, ``batch_size`` prompts at a time.

        Args:
            model: the large model (a :class:`w2s.backends.base.LanguageModel`).
            scorer: a :class:`w2s.Scorer` or a callable ``fn(prompt, response) -> float``; may be None
                only when nothing needs ranking (W = K = 1), and then results carry no score.
            template: the large model's prompt template (``{prompt}`` format string or ``"chat"``).
            seed: each prompt draws from its own generator, seeded by (seed, prompt position): the same
                seed and ``batch_size`` give identical results; another batch size gives results equal in
                distribution (scores to about 1e-5: padded batches change floating-point rounding).
            start_index: position of ``prompts[0]`` in the whole run, so that a resumed run draws the
                same randomness for each prompt as an uninterrupted one.
            on_step: optional ``fn(prompt_index, beam_texts)``, called after each chunk with the texts of
                that prompt's kept beams (``prompt_index`` into ``prompts``); every later beam extends
                one of them, so their common prefix is final (``w2s serve`` streams it).  An exception
                it raises stops the search (e.g. to cancel).
            max_rows: the most large-model rows one prompt may sample at once (:attr:`max_rows` above it
                is a ValueError before any work; None: no bound).
        """
        if isinstance(prompts, str):
            raise ValueError("prompts must be a list of strings, got a single string.")
        check_range("batch_size", batch_size, low=1, integer=True)
        check_range("max_rows", max_rows, low=1, integer=True, allow_none=True)
        self.check_rows(max_rows)
        check_template("template", template)
        if scorer is not None:
            scorer = as_scorer(scorer)
        elif self.max_rows > 1:
            raise ValueError(f"{type(self).__name__} ranks up to {self.max_rows} samples and needs a scorer.")
        prompts = list(prompts)
        self.check_tokens_per_forward(model, min(batch_size, len(prompts)))
        yield from in_batches(prompts, batch_size, seed, start_index, progress, type(self).__name__, on_step,
                              lambda batch, seeds, step: self._isolated(model, scorer, batch, seeds, template, step))

    def context_error(self, model, scorer, prompt: str, template: str = "{prompt}") -> str | None:
        """Why ``prompt`` cannot be searched, or None: it and ``max_new_tokens`` must fit the large model's
        context, and each guide's (a guide is taken to need as many of its own tokens for the response)."""
        why = context_error(model, template, prompt, self.max_new_tokens, who="the large model")
        if why is None and hasattr(scorer, "context_error"):
            why = scorer.context_error(prompt, self.max_new_tokens)
        return why

    def _isolated(self, model, scorer, prompts: list[str], seeds: list[int], template: str, on_step
                  ) -> list[SearchResult]:
        """:meth:`_search`, where a prompt that does not fit a model's context gets an error result and
        the others are searched: checked before, and, when a response outgrows a guide's context, by
        searching the batch's prompts one at a time (each with its own seed)."""
        errors = {p: self.context_error(model, scorer, prompt, template) for p, prompt in enumerate(prompts)}
        todo = [p for p in range(len(prompts)) if errors[p] is None]
        step = None if on_step is None else (lambda i, texts: on_step(todo[i], texts))
        try:
            done = dict(zip(todo, self._search(model, scorer, [prompts[p] for p in todo], [seeds[p] for p in todo],
                                               template, step) if todo else []))
        except ContextLengthError as err:
            if len(todo) == 1:
                done, errors[todo[0]] = {}, str(err)
            else:
                done = {}
                for p in todo:
                    one = None if on_step is None else (lambda i, texts, p=p: on_step(p, texts))
                    done[p] = self._isolated(model, scorer, [prompts[p]], [seeds[p]], template, one)[0]
        return [done[p] if p in done else SearchResult(prompts[p], "", None, False, 0, self.method, error=errors[p],
                                                       error_kind="context")
                for p in range(len(prompts))]

    # -- the plan of a search: CBS's, overridden by its variants ---------------------------------------
    def _successors(self, step: int, settled: bool) -> int:
        """Continuations sampled from each live beam of a prompt at ``step`` (the first expands the prompt)."""
        return self.samples_per_step if step == 0 else self.successors_per_beam

    def _limit(self, num_tokens: int) -> int:
        """The token cap of the next chunk of a beam that has ``num_tokens`` tokens."""
        return min(self.chunk_length or self.max_new_tokens, self.max_new_tokens - num_tokens)

    def _keep(self, step: int, pool: int, settled: bool) -> int:
        """How many of a prompt's ``pool`` distinct candidates are kept after ``step``."""
        return 1 if settled else self.beam_width

    merges_duplicates = True  # equal candidates are one beam (distinct beams, as the paper's CBS keeps)
    follows_leader = False  # whether _settles is asked after every chunk (the candidates scored even when all are kept)

    def _settles(self, track: "_Track", best: Beam) -> bool:
        """After a chunk, whether a prompt whose best candidate is now ``best`` stops searching (adaptive
        variants); from then on its best beam alone is continued, one sample per chunk."""
        return False

    def _search(self, model, scorer, prompts: list[str], seeds: list[int], template: str,
                on_step=None) -> list[SearchResult]:
        n_prompts = len(prompts)
        if hasattr(scorer, "reset"):  # each batch is scored on its own: results depend on the batch, not the run
            scorer.reset()
        session = model.open(prompts, self.sampling, seeds, template)
        beams = [[Beam("", False, 0, row=p, prompt=p)] for p in range(n_prompts)]  # W copies of the prompt, as one
        end = chunk_end_rule(self.chunk_end)
        chunk_end = {} if end is None else {"end": end}  # (sessions that know no chunk ends are called as before)
        if self.chunk_entropy is not None:
            chunk_end["entropy"] = self.chunk_entropy
        errors: dict[int, str] = {}  # prompt -> why a remote model could not sample for it: it ends there
        sampled = [0] * n_prompts  # large-model tokens drawn per prompt
        guide: list[int | None] = [0] * n_prompts  # guide tokens run per prompt (None: the scorer cannot tell)
        tracks = [_Track() for _ in range(n_prompts)]
        step = 0
        while True:
            live = [b for p in range(n_prompts) for b in beams[p]
                    if not b.finished and b.num_tokens < self.max_new_tokens]
            if not live:
                break
            rows = [b.row for b in live]
            ns = [self._successors(step, tracks[p].settled) for p in range(n_prompts)]
            counts = [ns[b.prompt] for b in live]
            continuations = session.expand(rows, _uniform(counts), _uniform([self._limit(b.num_tokens) for b in live]),
                                           **chunk_end)
            parents = [b for b, k in zip(live, counts) for _ in range(k)]
            if hasattr(session, "close") and all(c.finished or c.num_tokens >= self.max_new_tokens
                                                 for c in continuations):
                session.close()  # nothing is expanded again: the large model's cache goes before the guides run

            # candidates = finished beams (and any at the length limit) carried once + all new continuations,
            # without duplicates
            pools = [[b for b in beams[p] if b.finished or b.num_tokens >= self.max_new_tokens]
                     for p in range(n_prompts)]
            for i, (c, parent) in enumerate(zip(continuations, parents)):
                if c.error is not None:
                    errors.setdefault(c.prompt_index, c)
                sampled[c.prompt_index] += c.drawn if c.drawn is not None else c.num_tokens - parent.num_tokens
                pools[c.prompt_index].append(Beam(c.text, c.finished, c.num_tokens, row=i, prompt=c.prompt_index))
            pools = [[] if p in errors else _distinct(pool) if self.merges_duplicates else pool
                     for p, pool in enumerate(pools)]
            ranked = [p for p in range(n_prompts) if len(pools[p]) > self._keep(step, len(pools[p]), tracks[p].settled)
                      or (self.follows_leader and not tracks[p].settled)]
            self._score(scorer, prompts, [(p, b) for p in ranked for b in pools[p]], guide)
            for p in ranked:
                pools[p] = sorted(pools[p], key=lambda b: -b.score)  # stable: ties keep order
                if self.follows_leader and pools[p] and not tracks[p].settled:
                    tracks[p].settled = self._settles(tracks[p], pools[p][0])
                pools[p] = pools[p][: self._keep(step, len(pools[p]), tracks[p].settled)]
            beams = pools
            survivors = [b for p in range(n_prompts) for b in beams[p]
                         if not b.finished and b.num_tokens < self.max_new_tokens]
            if survivors:
                session.select([b.row for b in survivors])
            for row, b in enumerate(survivors):
                b.row = row
            if on_step is not None:
                for p in range(n_prompts):
                    on_step(p, [b.text for b in beams[p]])
            step += 1

        if scorer is not None:
            self._score(scorer, prompts, [(p, b) for p in range(n_prompts) for b in beams[p]], guide)
        results = []
        for p, prompt in enumerate(prompts):
            if p in errors:
                failure = errors[p].failure
                results.append(SearchResult(prompt, "", None, False, 0, self.method, error=errors[p].error,
                                            error_kind=failure.kind if failure else "engine",
                                            error_status=failure.status if failure else None,
                                            sampled_tokens=sampled[p], guide_tokens=guide[p]))
                continue
            final = sorted(beams[p], key=lambda b: -b.score) if scorer is not None else beams[p]
            final = final[: self.beam_width]  # the final selection (a no-op for CBS; Best-of-N's best one)
            best = next((b for b in final if b.finished), final[0])  # the best finished beam, if any
            results.append(
                SearchResult(
                    prompt, best.text, best.score, best.finished, best.num_tokens, self.method,
                    final if self.return_beams else None, sampled_tokens=sampled[p], guide_tokens=guide[p],
                )
            )
        return results

    @staticmethod
    def _score(scorer, prompts: list[str], items: list[tuple[int, Beam]], guide: list[int | None]) -> None:
        """Score the beams that have no score yet, in one batched call across prompts, adding the guide
        tokens that took to each prompt's count in ``guide`` (None once the scorer could not tell)."""
        todo = [(p, b) for p, b in items if b.score is None]
        if not todo:
            return
        scores = scorer.score([prompts[p] for p, _ in todo], [b.text for _, b in todo], [b.finished for _, b in todo])
        for (_, b), s in zip(todo, scores):
            b.score = float(s)
        counts = getattr(scorer, "last_tokens", None) or [None] * len(todo)
        for (p, _), n in zip(todo, counts):
            guide[p] = None if guide[p] is None or n is None else guide[p] + n


@dataclass
class _Track:
    """What an adaptive search follows of one prompt: its best beam so far, for how many chunks running the
    best has extended the previous best, and whether the prompt has stopped searching."""

    leader: str | None = None
    streak: int = 0
    settled: bool = False


def _uniform(values: list[int]) -> int | list[int]:
    """One number when all ``values`` are equal (what sessions take most simply), else the list."""
    return values[0] if len(set(values)) == 1 else values


CHUNK_DELIMITERS = {"line": "\n", "paragraph": "\n\n"}


def chunk_end_rule(name: str | None):
    """The chunk-end rule ``end(new_text) -> cut | None`` named by a search's ``chunk_end`` (None: no rule).

    ``"sentence"`` cuts after the first complete sentence by :func:`w2s.split_sentences`' streaming rule
    (:func:`w2s.first_sentence_end`), before the whitespace that follows it, so that the next chunk starts
    with the space its first token carries; ``"line"`` and ``"paragraph"`` cut after the first newline or
    blank line (``"\\n"``, ``"\\n\\n"``), and any other string after its first occurrence (kept in the chunk).
    """
    if name is None:
        return None
    if name == "sentence":
        from ..aligner.segment import first_sentence_end

        def sentence(text: str) -> int | None:
            at = first_sentence_end(text)
            cut = None if at is None else len(text[:at].rstrip())
            return cut or None

        return sentence
    delimiter = CHUNK_DELIMITERS.get(name, name)

    def delimited(text: str) -> int | None:
        at = text.find(delimiter)
        return None if at < 0 else at + len(delimiter)

    return delimited


def _distinct(pool: list[Beam]) -> list[Beam]:
    seen, out = set(), []
    for b in pool:
        if (b.text, b.finished) not in seen:
            seen.add((b.text, b.finished))
            out.append(b)
    return out


def in_batches(prompts: list[str], batch_size: int, seed: int, start_index: int, progress: bool, desc: str,
               on_step, run) -> Iterator:
    """``run(batch, seeds, on_step)``'s results over ``prompts``, ``batch_size`` at a time, in order: each prompt
    with its own seed (:func:`prompt_seeds`, by its place in the whole run), ``on_step``'s prompt index into
    ``prompts``, and a progress bar."""
    bar = _progress_bar(len(prompts), progress, desc)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start:start + batch_size]
        step = None if on_step is None else (lambda p, texts, start=start: on_step(start + p, texts))
        yield from run(batch, prompt_seeds(seed, start_index + start, len(batch)), step)
        bar.update(len(batch))
    bar.close()


def _progress_bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="prompt", file=None)


@dataclass(frozen=True)
class BestOfN(ChunkBeamSearch):
    """Best-of-N: N samples, the best by the score.  CBS with W=1, K=N, L=inf (equal compute at W*K=N).

    Attributes:
        n: number of samples per prompt.
    """

    n: int = 16
    beam_width: int = field(default=1, init=False)
    successors_per_beam: int = field(default=16, init=False)
    chunk_length: int | None = field(default=None, init=False)
    chunk_end: str | None = field(default=None, init=False)
    chunk_entropy: float | None = field(default=None, init=False)

    method = "bon"
    rows_formula = "n"

    def __post_init__(self) -> None:
        check_range("n", self.n, low=1, integer=True)
        object.__setattr__(self, "successors_per_beam", self.n)
        super().__post_init__()


@dataclass(frozen=True)
class Sampling(ChunkBeamSearch):
    """Plain sampling from the large model: CBS with W=K=1, L=inf."""

    beam_width: int = field(default=1, init=False)
    successors_per_beam: int = field(default=1, init=False)
    chunk_length: int | None = field(default=None, init=False)
    chunk_end: str | None = field(default=None, init=False)
    chunk_entropy: float | None = field(default=None, init=False)

    method = "sampling"
