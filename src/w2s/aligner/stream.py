"""Stream Aligner: a small aligner corrects the upstream model's answer sentence by sentence, while it streams.

Stream Aligner: Efficient Sentence-Level Alignment via Distribution Induction (Lou et al. 2025,
arXiv 2501.05336), with Aligner (Ji et al. 2024, arXiv 2402.02416) as the whole-answer baseline.

    prefix = ""
    repeat until the upstream ends or max_sentences:
        sentence  = upstream continues (question, prefix), stopping at the end of its next sentence
        corrected = aligner(question, prefix, sentence)
        emit corrected                       # the user sees it now
        prefix    = prefix + corrected       # the upstream continues from it

Unlike the research code, the upstream stops at the sentence boundary (a stopping criterion on the
decoded text) instead of generating the rest of the answer every round, and its KV cache of the
unchanged prefix is reused between rounds.  Many questions run as one batch.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from ..backends.base import LanguageModel, SamplingParams, TextGenerator, check_sampling, context_error
from ..validation import check_choice, check_range, check_template
from .lines import first_line_end
from .segment import first_sentence_end, units_end

# what the aligner corrects at a time: name -> where the first one of a streamed text ends (each rule is
# lossless and never moves an end once reported)
UNITS = {"sentence": first_sentence_end, "line": first_line_end}

# what a correction may change (``guard``): None, anything; "code", comments only: a correction whose code
# differs from the original's token for token (w2s.tasks.code.changed_code) is refused and the original kept
GUARDS = ("code",)


_BLANK_LINES = re.compile(r"\A(?:[ \t]*\r?\n)+")


def shown(unit: str, text: str) -> str:
    """A unit as the aligner sees it and the records hold it: a sentence stripped; a line of code without the
    blank lines before it and with its indentation (which its correction must keep)."""
    return _BLANK_LINES.sub("", text).rstrip() if unit == "line" else text.strip()


def accept(guard: str | None, original: str, revision: str) -> tuple[str, str | None]:
    """The corrected unit made of an aligner's ``revision`` of ``original``: the original's leading whitespace,
    the revision stripped, the original's trailing whitespace (a line's newline); and why it was refused
    under ``guard`` (None when it was not), in which case the original is the corrected unit.  Under
    ``"code"`` a revision that is one fenced block counts as its inside."""
    if guard == "code":
        from ..tasks.code import changed_code, unfence

        revision = unfence(revision.strip())
    lead = original[: len(original) - len(original.lstrip())]
    tail = original[len(original.rstrip()):] if original.strip() else ""
    corrected = lead + revision.strip() + tail
    if guard == "code" and corrected != original:
        why = changed_code(original, corrected)
        if why is not None:
            return original, why
    return corrected, None


# The authors' input formats: one constant each, shared by data building, training and inference.
STREAM_ALIGNER_TEMPLATE = (
    "##Question: {question} | ##Answer_Prefix: {prefix} | ##Answer_Last_Sentence: {sentence} | ##Your_Revision: "
)
ALIGNER_TEMPLATE = "##Question: {question}\n##Answer: {answer}\n##Correction: "


def stream_aligner_input(question: str, prefix: str, sentence: str) -> str:
    return STREAM_ALIGNER_TEMPLATE.format(question=question, prefix=prefix, sentence=sentence)


def aligner_input(question: str, answer: str) -> str:
    return ALIGNER_TEMPLATE.format(question=question, answer=answer)


@dataclass
class StreamStep:
    """One corrected sentence, as it is emitted.

    ``corrected`` keeps the original's leading whitespace, so ``"".join`` of the steps is the answer.
    ``elapsed`` is the time from the start of the question to this emission; ``upstream_seconds`` and
    ``aligner_seconds`` are the round's waits (in a batch, the round of all questions).
    """

    question_index: int
    index: int
    original: str
    corrected: str
    upstream_seconds: float
    aligner_seconds: float
    elapsed: float
    drafted: bool = False  # the upstream sampled it speculatively while the previous sentence was corrected
    rejected: str | None = None  # why the aligner's correction was refused by the guard (the original was kept)
    aligner_tokens: int = 0  # tokens the aligner model generated for it (0 for a function aligner)


@dataclass
class AlignedAnswer:
    question: str
    original: str
    corrected: str
    steps: list[StreamStep] = field(default_factory=list)
    first_seconds: float = 0.0  # time to the first corrected text
    total_seconds: float = 0.0
    rejected: str | None = None  # (Aligner) why the guard refused the correction; the Stream Aligner's steps say it
    aligner_tokens: int = 0  # tokens the aligner model generated for the answer (its steps' together)


class _Correction:
    """One call's models and templates, as the Stream Aligner and the Aligner use them."""

    def __init__(self, upstream: LanguageModel, aligner, sampling: SamplingParams, max_correction_tokens: int,
                 upstream_template: str, aligner_template: str):
        check_template("upstream_template", upstream_template)
        check_template("aligner_template", aligner_template)
        self.upstream, self.aligner, self.sampling = upstream, aligner, sampling
        self.max_correction_tokens = max_correction_tokens
        self.upstream_template, self.aligner_template = upstream_template, aligner_template
        self.aligner_is_model = hasattr(aligner, "generator")

    def upstream_generator(self, n: int, seed: int, start_index: int) -> TextGenerator:
        from ..search.cbs import prompt_seeds  # here: w2s.search imports torch, `w2s --help` does not

        return self.upstream.generator(n, self.sampling, prompt_seeds(seed, start_index, n), self.upstream_template)

    def aligner_generator(self, n: int) -> TextGenerator | None:
        """The aligner decodes greedily; its rows keep their caches between calls (None for a function)."""
        if not self.aligner_is_model:
            return None
        return self.aligner.generator(n, SamplingParams(temperature=0.0), [0] * n, self.aligner_template)

    def revise(self, generator: TextGenerator, asks: dict[int, str]) -> dict[int, tuple[str, int]]:
        """Aligner outputs for ``asks`` (row -> aligner input, before its template), each with the number of
        tokens the aligner generated for it (its end token included)."""
        contexts = {i: self.aligner.render(self.aligner_template, text) for i, text in asks.items()}
        count = getattr(self.aligner, "encode", lambda text: text.split())
        return {i: (text, len(count(text)) + ended)
                for i, (text, ended) in generator.generate(contexts, self.max_correction_tokens).items()}


def _check_common(config) -> None:
    check_range("max_correction_tokens", config.max_correction_tokens, low=1, integer=True)
    check_sampling(config.sampling)
    check_choice("unit", config.unit, UNITS)
    if config.guard is not None:
        check_choice("guard", config.guard, GUARDS)


@dataclass(frozen=True)
class StreamAligner:
    """Sentence-level correction of a streaming upstream model by a small aligner.

    The models are given to :meth:`stream` / :meth:`run`: ``upstream`` is the large model whose answers
    are corrected; ``aligner`` the small aligner model (input: :data:`STREAM_ALIGNER_TEMPLATE` in its
    template), or a function ``fn(question, prefix, sentence) -> corrected sentence`` (a teacher, a rule).

    Attributes:
        max_sentences: rounds (corrected sentences) per answer.
        max_sentence_tokens: upstream tokens per sentence before it is cut anyway.
        max_correction_tokens: aligner tokens per corrected sentence.
        sampling: the upstream's sampling: temperature, top_p, top_k, stop strings (the aligner decodes
            greedily).
        speculative: while the aligner corrects a sentence, the upstream already samples the next one from
            the uncorrected sentence; the draft is kept when the aligner leaves the sentence unchanged and
            discarded otherwise (its random draws too, so the answers are exactly those of a plain run).
        unit: what is corrected at a time (a "sentence" in the names above): ``sentence`` (prose,
            :func:`w2s.split_sentences`) or ``line`` (a logical line of code: brackets, strings and
            backslash continuations spanning lines stay together, :mod:`w2s.aligner.lines`).
        guard: what a correction may change: None, anything; ``code``, comments only (a correction that
            changes a code token, or does not tokenize, is refused and the original unit kept:
            :func:`accept`; a unit of comment lines only is kept without asking the aligner).
        function_body: (unit ``line``) the answer is the body of a function, written after its signature
            by raw completion: the first line that starts at column 0 ends it and is dropped (the rule of
            :data:`w2s.tasks.code.STOP`, which stop strings cannot apply once a line's newline is in the
            prefix).
    """

    max_sentences: int = 16
    max_sentence_tokens: int = 96
    max_correction_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    speculative: bool = False
    unit: str = field(default="sentence", metadata={"choices": tuple(UNITS)})
    guard: str | None = field(default=None, metadata={"choices": GUARDS})
    function_body: bool = False

    def __post_init__(self) -> None:
        _check_common(self)
        check_range("max_sentences", self.max_sentences, low=1, integer=True)
        check_range("max_sentence_tokens", self.max_sentence_tokens, low=1, integer=True)
        for name in ("speculative", "function_body"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        if self.function_body and self.unit != "line":
            raise ValueError(f"function_body needs unit='line', got unit={self.unit!r}.")

    def stream(self, upstream: LanguageModel, aligner, question: str, *, seed: int = 0,
               upstream_template: str = "chat", aligner_template: str = "chat") -> Iterator[StreamStep]:
        """Yield each corrected sentence of the answer to ``question`` as soon as it is ready."""
        yield from self.steps(upstream, aligner, [question], seed=seed, upstream_template=upstream_template,
                              aligner_template=aligner_template)

    def run(self, upstream: LanguageModel, aligner, questions: Sequence[str], *, seed: int = 0,
            start_index: int = 0, upstream_template: str = "chat", aligner_template: str = "chat"
            ) -> list[AlignedAnswer]:
        """Answer and correct many questions as one batch (offline evaluation).  Question i's randomness
        depends on (seed, start_index + i) only, so batches and resumed runs agree."""
        answers = [AlignedAnswer(q, "", "") for q in questions]
        for step in self.steps(upstream, aligner, list(questions), seed=seed, start_index=start_index,
                               upstream_template=upstream_template, aligner_template=aligner_template):
            a = answers[step.question_index]
            a.steps.append(step)
            a.original += step.original
            a.corrected += step.corrected
            a.total_seconds = step.elapsed
            a.aligner_tokens += step.aligner_tokens
            if step.index == 0:
                a.first_seconds = step.elapsed
        return answers

    def steps(self, upstream: LanguageModel, aligner, questions: Sequence[str], *, seed: int = 0,
              start_index: int = 0, upstream_template: str = "chat", aligner_template: str = "chat"
              ) -> Iterator[StreamStep]:
        """The corrected sentences of all ``questions``' answers, one :class:`StreamStep` each, as each
        round of the batch finishes (what :meth:`stream` and :meth:`run` are made of)."""
        job = _Correction(upstream, aligner, self.sampling, self.max_correction_tokens, upstream_template,
                          aligner_template)
        questions = list(questions)
        n = len(questions)
        upstream_rows = job.upstream_generator(n, seed, start_index)
        aligner_rows = job.aligner_generator(n)
        contexts = [upstream.render(upstream_template, q) for q in questions]
        prefixes = [""] * n
        live = set(range(n))
        drafts: dict[int, tuple[str, bool]] = {}  # next sentences sampled while the aligner worked, kept
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1) as pool:
            for index in range(self.max_sentences):
                if not live:
                    break
                t0 = time.perf_counter()
                sentences = upstream_rows.generate({i: contexts[i] + prefixes[i] for i in live if i not in drafts},
                                                   self.max_sentence_tokens, stop=UNITS[self.unit])
                sentences.update((i, drafts[i]) for i in live if i in drafts)
                drafted, drafts, saved = set(drafts), {}, None
                t1 = time.perf_counter()
                # a sentence's trailing whitespace opens the next one; a line keeps its newline (without it the
                # upstream could go on writing the same line)
                originals = {i: text if self.unit == "line" else text.rstrip() for i, (text, _) in sentences.items()}
                if self.function_body:  # a line at column 0: the function is done
                    for i, text in originals.items():
                        if _BLANK_LINES.sub("", text)[:1].strip():
                            originals[i], sentences[i] = "", ("", True)
                todo = [i for i in sorted(live) if originals[i].strip() and not self._kept(originals[i])]
                revising = pool.submit(self._revisions, job, aligner_rows, questions, prefixes,
                                       {i: shown(self.unit, originals[i]) for i in todo})
                last_round = index + 1 == self.max_sentences
                speculated = [i for i in todo if not sentences[i][1]] if self.speculative and not last_round else []
                if speculated:  # meanwhile the upstream goes on from the uncorrected sentence
                    saved = upstream_rows.rng_states(speculated) if hasattr(upstream_rows, "rng_states") else None
                    drafts = upstream_rows.generate(
                        {i: contexts[i] + prefixes[i] + originals[i] for i in speculated},
                        self.max_sentence_tokens, stop=UNITS[self.unit])
                revisions = revising.result()
                t2 = time.perf_counter()
                for i in sorted(live):
                    original = originals[i]
                    revision, tokens = revisions.get(i, (None, 0))
                    corrected, rejected = (original, None) if revision is None else accept(self.guard, original,
                                                                                           revision)
                    if i in drafts and corrected != original:  # the draft continued a sentence that changed
                        del drafts[i]
                        if saved is not None:  # sample as if it had never been drawn
                            upstream_rows.restore_rng_states({i: saved[i]})
                    prefixes[i] += corrected
                    if sentences[i][1] or not original.strip():  # the upstream ended (or had nothing more to say)
                        live.discard(i)
                    if original:
                        yield StreamStep(i, index, original, corrected, t1 - t0, t2 - t1, time.perf_counter() - start,
                                         drafted=i in drafted, rejected=rejected, aligner_tokens=tokens)

    def context_error(self, upstream, aligner, question: str, *, upstream_template: str = "chat",
                      aligner_template: str = "chat") -> str | None:
        """Why ``question``'s longest answer would not fit the upstream's or the aligner's context, or None.
        The prefix is taken as up to ``max_sentences - 1`` corrections, each as long as the longer of the
        two per-sentence limits (the models' own tokens)."""
        prefix = (self.max_sentences - 1) * max(self.max_sentence_tokens, self.max_correction_tokens)
        return (context_error(upstream, upstream_template, question, prefix + self.max_sentence_tokens,
                              who="the upstream model")
                or context_error(aligner, aligner_template, stream_aligner_input(question, "", ""),
                                 prefix + self.max_sentence_tokens + self.max_correction_tokens, who="the aligner"))

    def _kept(self, unit: str) -> bool:
        """Whether ``unit`` is kept without asking the aligner: under the code guard, a unit of comment lines
        only (the guard lets a correction add comments and nothing else; the aligner is not asked to comment
        a comment)."""
        if self.guard != "code":
            return False
        from ..tasks.code import only_comments

        return only_comments(unit)

    @staticmethod
    def _revisions(job: _Correction, aligner_rows: TextGenerator | None, questions, prefixes, units: dict[int, str]
                   ) -> dict[int, tuple[str, int]]:
        """The aligner's revision of each unit (row -> the unit as :func:`shown`), with the tokens it took (0
        for a function); a function aligner with a ``many`` method gets all of a round's units in one call:
        ``many({row: (question, prefix, unit)})``."""
        if aligner_rows is None:
            if hasattr(job.aligner, "many"):
                revised = job.aligner.many({i: (questions[i], prefixes[i], unit) for i, unit in units.items()})
            else:
                revised = {i: job.aligner(questions[i], prefixes[i], unit) for i, unit in units.items()}
            return {i: (text, 0) for i, text in revised.items()}
        return job.revise(aligner_rows, {i: stream_aligner_input(questions[i], prefixes[i], unit)
                                         for i, unit in units.items()})

    def correct_sentence(self, aligner, question: str, prefix: str, sentence: str, *,
                         aligner_template: str = "chat") -> str:
        """One correction outside the loop (e.g. to correct a finished answer sentence by sentence), as in the
        loop: ``sentence``'s leading whitespace kept, the guard applied (:func:`accept`)."""
        job = _Correction(None, aligner, self.sampling, self.max_correction_tokens, "chat", aligner_template)
        sentence = sentence.rstrip()
        revision = self._revisions(job, job.aligner_generator(1), [question], [prefix], {0: shown(self.unit, sentence)})
        return accept(self.guard, sentence, revision[0][0])[0]


@dataclass(frozen=True)
class Aligner:
    """The Aligner baseline: the upstream writes the whole answer, then the aligner corrects it in one pass.

    Used as :class:`StreamAligner` is (models given to :meth:`run`); the input is :data:`ALIGNER_TEMPLATE`,
    and a function aligner is called as ``fn(question, answer) -> corrected answer``.

    Attributes:
        max_new_tokens: upstream tokens per answer.
        max_correction_tokens: aligner tokens per corrected answer.
        sampling: the upstream's sampling: temperature, top_p, top_k, stop strings.
        max_sentences: end the upstream's answer after that many sentences (units), as the Stream
            Aligner's rounds do; None: no limit.
        unit: what ``max_sentences`` counts: ``sentence`` or ``line`` (as the Stream Aligner's unit).
        guard: what the correction may change (as the Stream Aligner's): None, anything; ``code``,
            comments only (else the answer is kept as the upstream wrote it).
    """

    max_new_tokens: int = 512
    max_correction_tokens: int = 768
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_sentences: int | None = None
    unit: str = field(default="sentence", metadata={"choices": tuple(UNITS)})
    guard: str | None = field(default=None, metadata={"choices": GUARDS})

    def __post_init__(self) -> None:
        _check_common(self)
        check_range("max_new_tokens", self.max_new_tokens, low=1, integer=True)
        check_range("max_sentences", self.max_sentences, low=1, integer=True, allow_none=True)

    def context_error(self, upstream, aligner, question: str, *, upstream_template: str = "chat",
                      aligner_template: str = "chat") -> str | None:
        """Why ``question``'s longest answer and its correction would not fit a model's context, or None."""
        return (context_error(upstream, upstream_template, question, self.max_new_tokens, who="the upstream model")
                or context_error(aligner, aligner_template, aligner_input(question, ""),
                                 self.max_new_tokens + self.max_correction_tokens, who="the aligner"))

    def run(self, upstream: LanguageModel, aligner, questions: Sequence[str], *, seed: int = 0,
            start_index: int = 0, upstream_template: str = "chat", aligner_template: str = "chat"
            ) -> list[AlignedAnswer]:
        job = _Correction(upstream, aligner, self.sampling, self.max_correction_tokens, upstream_template,
                          aligner_template)
        n = len(questions)
        start = time.perf_counter()
        contexts = {i: upstream.render(upstream_template, q) for i, q in enumerate(questions)}
        stop = (None if self.max_sentences is None else
                lambda text: units_end(UNITS[self.unit], text, self.max_sentences))
        generated = job.upstream_generator(n, seed, start_index).generate(contexts, self.max_new_tokens, stop=stop)
        answers = {i: text for i, (text, _) in generated.items()}
        if job.aligner_is_model:
            asks = {i: aligner_input(q, shown(self.unit, answers[i])) for i, q in enumerate(questions)}
            corrections = job.revise(job.aligner_generator(n), asks)
        else:
            corrections = {i: (aligner(q, shown(self.unit, answers[i])), 0) for i, q in enumerate(questions)}
        total = time.perf_counter() - start
        out = []
        for i, q in enumerate(questions):
            correction, tokens = corrections[i]
            corrected, rejected = ((correction.strip(), None) if self.guard is None else
                                   accept(self.guard, answers[i].rstrip(), correction))
            out.append(AlignedAnswer(q, answers[i], corrected, first_seconds=total, total_seconds=total,
                                     rejected=rejected, aligner_tokens=tokens))
        return out
