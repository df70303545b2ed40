"""One worker thread owns the models; a bounded queue feeds it; requests that agree are batched.

Requests with the same method, the same parameters and the same templates run as one ``generate``
call over all their prompts.  Each prompt samples from its own seed, ``prompt_seeds(seed, i)`` of its
request (as ``generate(prompts, seed=seed)`` would give it alone), so batching never changes an answer.
Events go back to each request's asyncio queue through ``loop.call_soon_threadsafe``.

A request of more prompts than ``max_batch_size`` is queued as parts of at most that many prompts, so
that one long list never runs as one batch ahead of everyone.

Failures stay with their request: a batch that fails is run again one request at a time, and a
prompt whose remote engine failed ends only its own request (502, 504 on a timeout).  A streamed request
keeps what it was sent: when its rerun's text does not continue that, its stream ends with an error
rather than a contradicting or silently cut answer.

Cancellation and deadlines: a queued request is removed from the queue; a running batch checks at
every token (local models) and while it waits for an engine (remote ones) whether its requests are
still wanted (:func:`w2s.backends.base.interrupt_when`): a request past its deadline gets a 504, and
the batch stops once none of its requests is left.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..backends.base import Cancelled, ContextLengthError, RemoteError, interrupt_when
from ..models import Models
from ..scoring import LogRatioScorer
from ..search.cbs import prompt_seeds
from .config import ALIGNER_METHODS, ALIGNER_ROLE, build_method

log = logging.getLogger("w2s.serve")
ONE_SEED = ("eft", "nudging", "tree")  # methods whose batch is one request's part: they take one seed per call


class QueueFull(Exception):
    """The bounded queue is full: the request is refused (503)."""

    @classmethod
    def of(cls, queue_size: int) -> "QueueFull":
        return cls(f"the queue is full ({queue_size} requests waiting); retry later.")


class DeadlineExceeded(Exception):
    """A request ran past the server's per-request deadline (504)."""


@dataclass
class Output:
    """A prompt's final answer."""

    text: str
    finished: bool  # ended by itself (EOS, stop string, or the upstream's end), not by a length limit
    num_tokens: int
    score: float | None = None
    sampled_tokens: int | None = None  # tokens the large model sampled for it (all beams, samples or drafts)
    small_tokens: int | None = None  # tokens the small models read (guides) or wrote (aligners) for it


@dataclass
class Job:
    """One request: its prompts (raw, each model applies its template), method and resolved parameters.

    ``emit(kind, index, payload)`` must be thread-safe; kinds: ``delta`` (text that can no longer
    change), ``done`` (an :class:`Output`), ``error`` (an exception, ``index`` None).
    """

    prompts: list[str]
    method: str
    params: dict
    seed: int
    strong_template: str
    stream: bool
    emit: Callable[[str, int | None, object], None]
    deadline_s: float | None = None  # seconds from submission; None: none
    cancelled: threading.Event = field(default_factory=threading.Event)  # gone, failed or past its deadline
    enqueued: float = field(default_factory=time.perf_counter)
    sent: dict[int, str] = field(default_factory=dict)  # prompt index -> text already streamed

    @property
    def overdue(self) -> bool:
        return self.deadline_s is not None and time.perf_counter() - self.enqueued > self.deadline_s

    def fail(self, err: Exception) -> None:
        """Send the request its error (once) and stop its work."""
        if not self.cancelled.is_set():
            self.cancelled.set()
            self.emit("error", None, err)

    @property
    def key(self):
        """Jobs with equal keys run as one batch; EFT and Nudging run alone (they take one seed per call)."""
        if self.method in ONE_SEED:
            return (self.method, id(self))
        return (self.method, self.strong_template, tuple(sorted((k, _freeze(v)) for k, v in self.params.items())))


def _freeze(value):
    return tuple(value) if isinstance(value, list) else value


@dataclass
class Part:
    """Prompts ``start`` to ``stop`` of a job: what the queue holds and a batch is made of."""

    job: Job
    start: int
    stop: int

    @property
    def prompts(self) -> list[str]:
        return self.job.prompts[self.start : self.stop]


class _Seeded:
    """The large model, with explicit per-prompt seeds: a batch of requests keeps each request's seeds.

    The method runs with ``seed=0``, so prompt ``i`` of the batch asks for ``prompt_seeds(0, i)``; that
    is swapped for the request's own seed (also when the method runs a subset of the prompts)."""

    def __init__(self, model, seeds: list[int]):
        self._model = model
        self._seeds = dict(zip(prompt_seeds(0, 0, len(seeds)), seeds))

    def __getattr__(self, name):
        return getattr(self._model, name)

    def open(self, prompts, params, seeds, template="{prompt}"):
        return self._model.open(prompts, params, [self._seeds[s] for s in seeds], template)

    def generator(self, n_rows, params, seeds, template="{prompt}"):
        return self._model.generator(n_rows, params, [self._seeds[s] for s in seeds], template)


def _jobs(parts: list[Part]) -> list[Job]:
    """The distinct jobs of ``parts``, in order."""
    return list({id(p.job): p.job for p in parts}.values())


def common_prefix(texts: list[str]) -> str:
    if not texts:
        return ""
    lo, hi = min(texts), max(texts)  # the common prefix of all is that of the extremes
    n = 0
    while n < len(lo) and lo[n] == hi[n]:
        n += 1
    return lo[:n]


class Batcher:
    """The worker thread and its bounded queue.

    Args:
        models: the served :class:`w2s.models.Models` (strong, tuned, untuned, aligner, whole_aligner;
            an aligner may be None).
        queue_size: waiting requests beyond this are refused with :class:`QueueFull`.
        batch_window: seconds the worker waits for more requests of the same kind after the first.
        max_batch_size: prompts per batch.
        metrics: a :class:`w2s.serve.metrics.Metrics` (or None).
    """

    def __init__(self, models: Models, *, queue_size: int, batch_window: float, max_batch_size: int, metrics=None):
        self.models, self.queue_size = models, queue_size
        self.batch_window, self.max_batch_size, self.metrics = batch_window, max_batch_size, metrics
        self._waiting: collections.deque[Part] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="w2s-serve-worker", daemon=True)
        self._thread.start()

    # -- the request side (event loop thread) -----------------------------------------------------
    def submit(self, job: Job) -> None:
        """Queue the job, as parts of at most ``max_batch_size`` prompts."""
        with self._cond:
            if self.depth >= self.queue_size:
                raise QueueFull.of(self.queue_size)
            n = len(job.prompts)
            self._waiting.extend(Part(job, lo, min(lo + self.max_batch_size, n))
                                 for lo in range(0, n, self.max_batch_size))
            self._depth()
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job's queued parts, and mark it for the worker."""
        with self._cond:
            job.cancelled.set()
            queued = [part for part in self._waiting if part.job is job]
            for part in queued:
                self._waiting.remove(part)
            if queued:
                self._depth()
                self._count_cancelled("queued")

    @property
    def depth(self) -> int:
        """Requests waiting (a request queued as several parts counts once)."""
        with self._cond:  # the worker takes parts off the queue under this lock (/health reads it meanwhile)
            return len({id(part.job) for part in self._waiting})

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # -- the worker side -------------------------------------------------------------------------
    def _depth(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(self.depth)

    def _count_cancelled(self, stage: str, n: int = 1) -> None:
        if self.metrics:
            self.metrics.cancelled.labels(stage=stage).inc(n)

    def _take_batch(self) -> list[Part] | None:
        with self._cond:
            while not self._waiting:
                if self._closed:
                    return None
                self._cond.wait(0.5)
            first = self._waiting.popleft()
            batch, size = [first], len(first.prompts)
            deadline = time.monotonic() + self.batch_window
            while size < self.max_batch_size and first.job.method not in ONE_SEED:
                for part in list(self._waiting):
                    if part.job.key == first.job.key and size + len(part.prompts) <= self.max_batch_size:
                        self._waiting.remove(part)
                        batch.append(part)
                        size += len(part.prompts)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            self._depth()
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            self._run_isolated(batch)

    def _run_isolated(self, parts: list[Part]) -> None:
        """Run a batch; when it fails, run its requests one by one, so that only the failing one fails."""
        try:
            self._run(parts)
        except Cancelled:
            self._count_cancelled("running", len(_jobs(parts)))
            log.info("batch of %d prompts stopped: none of its requests is wanted any more",
                     sum(len(p.prompts) for p in parts))
        except Exception as err:  # the requests get the error; the worker goes on
            jobs = [job for job in _jobs(parts) if not job.cancelled.is_set()]
            if len(jobs) > 1:
                log.warning("a batch of %d requests failed (%s); running them one by one", len(jobs), err)
                for job in jobs:
                    self._run_isolated([p for p in parts if p.job is job])
                return
            log.log(logging.INFO if isinstance(err, ValueError) else logging.ERROR, "request failed",
                    exc_info=not isinstance(err, ValueError))
            for job in jobs:
                job.fail(err)

    def _run(self, parts: list[Part]) -> None:
        jobs = _jobs(parts)
        method = jobs[0].method
        prompts = [p for part in parts for p in part.prompts]
        owners = [(part.job, i) for part in parts for i in range(part.start, part.stop)]  # batch row -> (job, index)
        seeds = [s for part in parts for s in prompt_seeds(part.job.seed, part.start, len(part.prompts))]
        if self.metrics:
            self.metrics.batches.labels(method=method).inc()
            self.metrics.batch_prompts.labels(method=method).observe(len(prompts))

        def check_wanted() -> None:  # at every token and while an engine is waited for
            for job in jobs:
                if job.overdue:
                    job.fail(DeadlineExceeded(f"the request took longer than the server's deadline of "
                                              f"{job.deadline_s:g} s; retry later or ask for fewer tokens."))
            if all(job.cancelled.is_set() for job in jobs):
                raise Cancelled

        def stream(row: int, text: str) -> None:
            job, index = owners[row]
            sent = job.sent.get(index, "")
            if job.stream and not job.cancelled.is_set() and len(text) > len(sent):
                if not text.startswith(sent):  # a rerun after a failed batch that went another way: never
                    contradicted(job, sent, text)  # retract what the client holds
                    return
                job.emit("delta", index, text[len(sent):])
                job.sent[index] = text

        def contradicted(job: Job, sent: str, text: str) -> None:
            log.error("a rerun's text %r does not continue the streamed %r: the stream ends with an error", text, sent)
            job.fail(RuntimeError("the answer computed again after a failed batch differs from the part already "
                                  "streamed"))

        def finish(row: int, output: Output, result=None) -> None:
            job, index = owners[row]
            if result is not None and result.error is not None:  # this prompt failed: its request fails
                log.warning("a prompt failed (%s): %s", result.error_kind, result.error)
                job.fail(ContextLengthError(result.error) if result.error_kind == "context" else
                         RemoteError(result.error, kind=result.error_kind, status=result.error_status))
                return
            sent = job.sent.get(index, "")
            if job.stream and not output.text.startswith(sent):
                contradicted(job, sent, output.text)
                return
            stream(row, output.text)
            if self.metrics:
                self.metrics.tokens.labels(method=method).inc(output.num_tokens)
            if not job.cancelled.is_set():
                job.emit("done", index, output)

        with interrupt_when(check_wanted):
            self._generate(parts, prompts, seeds, check_wanted, stream, finish)

    def _generate(self, parts: list[Part], prompts, seeds, check_wanted, stream, finish) -> None:
        """Run the batch's method over its prompts, reporting through ``stream`` and ``finish`` (by row)."""
        method = parts[0].job.method
        m = self.models
        strong = m.strong.model
        config = build_method(method, parts[0].job.params)
        template = parts[0].job.strong_template
        if method in ALIGNER_METHODS:
            aligner = m[ALIGNER_ROLE[method]]
            models = (_Seeded(strong, seeds), aligner.model)
            templates = dict(upstream_template=template, aligner_template=aligner.template)
            if method == "aligner":
                for row, answer in enumerate(config.run(*models, prompts, **templates)):
                    finish(row, Output(answer.corrected, True, _count_tokens(strong, answer.corrected),
                                       sampled_tokens=_count_tokens(strong, answer.original),
                                       small_tokens=answer.aligner_tokens))
                return
            texts, steps = [""] * len(prompts), [0] * len(prompts)
            originals, small = [""] * len(prompts), [0] * len(prompts)
            for step in config.steps(*models, prompts, **templates):  # one StreamStep per corrected sentence
                originals[step.question_index] += step.original
                small[step.question_index] += step.aligner_tokens
                check_wanted()
                texts[step.question_index] += step.corrected
                steps[step.question_index] += 1
                stream(step.question_index, texts[step.question_index])
            for row, text in enumerate(texts):
                # a full max_sentences means the answer may have been cut
                finish(row, Output(text, steps[row] < config.max_sentences, _count_tokens(strong, text),
                                   sampled_tokens=_count_tokens(strong, originals[row]), small_tokens=small[row]))
            return

        tuned, untuned = m.tuned, m.untuned
        if method == "nudging":  # one part per batch (it takes one seed); the tuned model nudges
            results = config.generate(strong, tuned.model, prompts, seed=parts[0].job.seed,
                                      start_index=parts[0].start, base_template=template,
                                      nudger_template=tuned.template, batch_size=len(prompts))
        elif method == "tree":  # one part per batch (its rows' seeds are its own): the answer grows a chunk a step
            results = config.generate(strong, LogRatioScorer(tuned.model, untuned.model, tuned.template,
                                                             untuned.template),
                                      prompts, seed=parts[0].job.seed, start_index=parts[0].start, template=template,
                                      batch_size=len(prompts), max_rows=None,
                                      on_step=lambda row, texts: (check_wanted(), stream(row, texts[0])))
        elif method == "eft":  # one part per batch (its sampler takes one seed)
            results = config.generate(strong, tuned.model, untuned.model, prompts, seed=parts[0].job.seed,
                                      start_index=parts[0].start,
                                      strong_template=template, tuned_template=tuned.template,
                                      untuned_template=untuned.template, batch_size=len(prompts))
        else:
            needs_scorer = config.max_rows > 1
            # a fresh scorer per batch: its kept rows never carry one batch's state into another
            scorer = LogRatioScorer(tuned.model, untuned.model, tuned.template,
                                    untuned.template) if needs_scorer else None

            def on_step(row: int, beam_texts: list[str]) -> None:
                check_wanted()
                stream(row, common_prefix(beam_texts))  # every later beam extends one of these

            results = config.generate(_Seeded(strong, seeds), scorer, prompts, template=template,
                                      batch_size=len(prompts), on_step=on_step, max_rows=None)  # checked before
        for row, result in enumerate(results):
            finish(row, Output(result.response, result.finished, result.num_tokens, result.score,
                               result.sampled_tokens, result.guide_tokens), result)


def _count_tokens(model, text: str) -> int:
    return len(model.encode(text)) if text and hasattr(model, "encode") else 0
