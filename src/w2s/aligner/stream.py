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

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from ..backends.base import LanguageModel, SamplingParams, TextGenerator
from ..validation import check_range, check_template
from .segment import first_sentence_end, sentences_end

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


@dataclass
class AlignedAnswer:
    question: str
    original: str
    corrected: str
    steps: list[StreamStep] = field(default_factory=list)
    first_seconds: float = 0.0  # time to the first corrected text
    total_seconds: float = 0.0


class _Corrector:
    """What the Stream Aligner and the Aligner share: the two models, their templates, the sampling."""

    def __init__(self, upstream: LanguageModel, aligner, max_correction_tokens: int, upstream_template: str,
                 aligner_template: str, temperature: float, top_p: float, top_k: int):
        check_range("max_correction_tokens", max_correction_tokens, low=1, integer=True)
        check_template("upstream_template", upstream_template)
        check_template("aligner_template", aligner_template)
        self.upstream, self.aligner, self.max_correction_tokens = upstream, aligner, max_correction_tokens
        self.upstream_template, self.aligner_template = upstream_template, aligner_template
        self.sampling = SamplingParams(temperature, top_p, top_k)

    @property
    def _aligner_is_model(self) -> bool:
        return hasattr(self.aligner, "generator")

    def _upstream_generator(self, n: int, seed: int, start_index: int) -> TextGenerator:
        from ..search.cbs import prompt_seeds  # here: w2s.search imports torch, `w2s --help` does not

        return self.upstream.generator(n, self.sampling, prompt_seeds(seed, start_index, n), self.upstream_template)

    def _aligner_generator(self, n: int) -> TextGenerator:
        """The aligner decodes greedily; its rows keep their caches between calls."""
        return self.aligner.generator(n, SamplingParams(temperature=0.0), [0] * n, self.aligner_template)

    def _revise(self, generator: TextGenerator, asks: dict[int, str]) -> dict[int, str]:
        """Aligner outputs for ``asks`` (row -> aligner input, before its template)."""
        contexts = {i: self.aligner.render(self.aligner_template, text) for i, text in asks.items()}
        return {i: text for i, (text, _) in generator.generate(contexts, self.max_correction_tokens).items()}


class StreamAligner(_Corrector):
    """Sentence-level correction of a streaming upstream model by a small aligner.

    Args:
        upstream: the large model whose answers are corrected.
        aligner: the small aligner model (input: :data:`STREAM_ALIGNER_TEMPLATE` in its template), or a
            function ``fn(question, prefix, sentence) -> corrected sentence`` (a teacher, a rule).
        max_sentences: rounds per answer.
        max_sentence_tokens: upstream tokens per sentence before it is cut anyway.
        max_correction_tokens: aligner tokens per corrected sentence.
        upstream_template, aligner_template: ``"chat"`` or a format string with ``{prompt}``.
        temperature, top_p, top_k: the upstream's sampling (the aligner decodes greedily).
        speculative: while the aligner corrects a sentence, the upstream already samples the next one from
            the uncorrected sentence; the draft is kept when the aligner leaves the sentence unchanged and
            discarded otherwise (its random draws too, so the answers are exactly those of a plain run).
    """

    def __init__(self, upstream: LanguageModel, aligner: LanguageModel, *, max_sentences: int = 16,
                 max_sentence_tokens: int = 96, max_correction_tokens: int = 128, upstream_template: str = "chat",
                 aligner_template: str = "chat", temperature: float = 0.7, top_p: float = 1.0, top_k: int = 50,
                 speculative: bool = False):
        super().__init__(upstream, aligner, max_correction_tokens, upstream_template, aligner_template,
                         temperature, top_p, top_k)
        check_range("max_sentences", max_sentences, low=1, integer=True)
        check_range("max_sentence_tokens", max_sentence_tokens, low=1, integer=True)
        self.max_sentences, self.max_sentence_tokens = max_sentences, max_sentence_tokens
        self.speculative = bool(speculative)

    def stream(self, question: str, *, seed: int = 0) -> Iterator[StreamStep]:
        """Yield each corrected sentence of the answer to ``question`` as soon as it is ready."""
        yield from self._run([question], seed=seed)

    def run(self, questions: Sequence[str], *, seed: int = 0, start_index: int = 0) -> list[AlignedAnswer]:
        """Answer and correct many questions as one batch (offline evaluation).  Question i's randomness
        depends on (seed, start_index + i) only, so batches and resumed runs agree."""
        answers = [AlignedAnswer(q, "", "") for q in questions]
        for step in self._run(list(questions), seed=seed, start_index=start_index):
            a = answers[step.question_index]
            a.steps.append(step)
            a.original += step.original
            a.corrected += step.corrected
            a.total_seconds = step.elapsed
            if step.index == 0:
                a.first_seconds = step.elapsed
        return answers

    def _run(self, questions: list[str], seed: int, start_index: int = 0) -> Iterator[StreamStep]:
        n = len(questions)
        upstream = self._upstream_generator(n, seed, start_index)
        aligner = self._aligner_generator(n) if self._aligner_is_model else None
        contexts = [self.upstream.render(self.upstream_template, q) for q in questions]
        prefixes = [""] * n
        live = set(range(n))
        drafts: dict[int, tuple[str, bool]] = {}  # next sentences sampled while the aligner worked, kept
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=1) as pool:
            for index in range(self.max_sentences):
                if not live:
                    break
                t0 = time.perf_counter()
                sentences = upstream.generate({i: contexts[i] + prefixes[i] for i in live if i not in drafts},
                                              self.max_sentence_tokens, stop=first_sentence_end)
                sentences.update((i, drafts[i]) for i in live if i in drafts)
                drafted, drafts, saved = set(drafts), {}, None
                t1 = time.perf_counter()
                originals = {i: text.rstrip() for i, (text, _) in sentences.items()}  # whitespace opens the next
                todo = [i for i in sorted(live) if originals[i].strip()]
                revising = pool.submit(self._revisions, aligner, questions, prefixes, originals, todo)
                last_round = index + 1 == self.max_sentences
                spec = [i for i in todo if not sentences[i][1]] if self.speculative and not last_round else []
                if spec:  # meanwhile the upstream goes on from the uncorrected sentence
                    saved = upstream.rng_states(spec) if hasattr(upstream, "rng_states") else None
                    drafts = upstream.generate({i: contexts[i] + prefixes[i] + originals[i] for i in spec},
                                               self.max_sentence_tokens, stop=first_sentence_end)
                revisions = revising.result()
                t2 = time.perf_counter()
                for i in sorted(live):
                    original = originals[i]
                    lead = original[: len(original) - len(original.lstrip())]
                    corrected = lead + revisions[i].strip() if i in revisions else original
                    if i in drafts and corrected != original:  # the draft continued a sentence that changed
                        del drafts[i]
                        if saved is not None:  # sample as if it had never been drawn
                            upstream.restore_rng_states({i: saved[i]})
                    prefixes[i] += corrected
                    if sentences[i][1] or not original.strip():  # the upstream ended (or had nothing more to say)
                        live.discard(i)
                    if original:
                        yield StreamStep(i, index, original, corrected, t1 - t0, t2 - t1, time.perf_counter() - start,
                                         drafted=i in drafted)

    def _revisions(self, aligner: TextGenerator | None, questions, prefixes, originals, todo) -> dict[int, str]:
        if aligner is None:
            return {i: self.aligner(questions[i], prefixes[i], originals[i].strip()) for i in todo}
        return self._revise(aligner, {i: stream_aligner_input(questions[i], prefixes[i], originals[i].strip())
                                      for i in todo})

    def correct_sentence(self, question: str, prefix: str, sentence: str) -> str:
        """One correction outside the loop (e.g. to correct a finished answer sentence by sentence)."""
        aligner = self._aligner_generator(1) if self._aligner_is_model else None
        return self._revisions(aligner, [question], [prefix], {0: sentence}, [0])[0].strip()


class Aligner(_Corrector):
    """The Aligner baseline: the upstream writes the whole answer, then the aligner corrects it in one pass.

    Same backend and arguments as :class:`StreamAligner`; the input is :data:`ALIGNER_TEMPLATE`, and a
    function aligner is called as ``fn(question, answer) -> corrected answer``.  ``max_sentences`` (None:
    no limit) ends the upstream's answer after that many sentences, as the Stream Aligner's rounds do.
    """

    def __init__(self, upstream: LanguageModel, aligner: LanguageModel, *, max_new_tokens: int = 512,
                 max_correction_tokens: int = 768, upstream_template: str = "chat", aligner_template: str = "chat",
                 temperature: float = 0.7, top_p: float = 1.0, top_k: int = 50, max_sentences: int | None = None):
        super().__init__(upstream, aligner, max_correction_tokens, upstream_template, aligner_template,
                         temperature, top_p, top_k)
        check_range("max_new_tokens", max_new_tokens, low=1, integer=True)
        if max_sentences is not None:
            check_range("max_sentences", max_sentences, low=1, integer=True)
        self.max_new_tokens, self.max_sentences = max_new_tokens, max_sentences

    def run(self, questions: Sequence[str], *, seed: int = 0, start_index: int = 0) -> list[AlignedAnswer]:
        n = len(questions)
        start = time.perf_counter()
        upstream = self._upstream_generator(n, seed, start_index)
        contexts = {i: self.upstream.render(self.upstream_template, q) for i, q in enumerate(questions)}
        stop = None if self.max_sentences is None else lambda text: sentences_end(text, self.max_sentences)
        answers = {i: text for i, (text, _) in upstream.generate(contexts, self.max_new_tokens, stop=stop).items()}
        if self._aligner_is_model:
            asks = {i: aligner_input(q, answers[i].strip()) for i, q in enumerate(questions)}
            corrections = self._revise(self._aligner_generator(n), asks)
        else:
            corrections = {i: self.aligner(q, answers[i].strip()) for i, q in enumerate(questions)}
        total = time.perf_counter() - start
        return [AlignedAnswer(q, answers[i], corrections[i].strip(), first_seconds=total, total_seconds=total)
                for i, q in enumerate(questions)]
