"""One worker thread owns the models; a bounded queue feeds it; requests that agree are batched.

Requests with the same method, the same parameters and the same templates run as one ``generate``
call over all their prompts.  Each prompt samples from its own seed, ``prompt_seeds(seed, i)`` of its
request (as ``generate(prompts, seed=seed)`` would give it alone), so batching never changes an answer.
Events go back to each request's asyncio queue through ``loop.call_soon_threadsafe``.

Cancellation: a queued request is removed from the queue; a running batch stops at the next step
boundary (chunk or sentence) once every request in it has been cancelled.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..scoring import LogRatioScorer
from ..search.cbs import prompt_seeds
from ..models import Models
from .config import ALIGNER_METHODS, ALIGNER_ROLE, build_method

log = logging.getLogger("w2s.serve")


class QueueFull(Exception):
    """The bounded queue is full: the request is refused (503)."""


class _Cancelled(Exception):
    """Raised inside a running batch when all of its requests have gone."""


@dataclass
class Output:
    """A prompt's final answer."""

    text: str
    finished: bool  # ended by itself (EOS, stop string, or the upstream's end), not by a length limit
    num_tokens: int
    score: float | None = None


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
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def key(self):
        """Jobs with equal keys run as one batch; EFT runs alone (its sampler takes one seed per call)."""
        if self.method == "eft":
            return ("eft", id(self))
        return (self.method, self.strong_template, tuple(sorted((k, _freeze(v)) for k, v in self.params.items())))


def _freeze(value):
    return tuple(value) if isinstance(value, list) else value


class _Seeded:
    """The large model, with explicit per-prompt seeds: a batch of requests keeps each request's seeds."""

    def __init__(self, model, seeds: list[int]):
        self._model, self._seeds = model, seeds

    def __getattr__(self, name):
        return getattr(self._model, name)

    def open(self, prompts, params, seeds, template="{prompt}"):
        assert len(prompts) == len(self._seeds), "one open() call per batch"
        return self._model.open(prompts, params, self._seeds, template)

    def generator(self, n_rows, params, seeds, template="{prompt}"):
        assert n_rows == len(self._seeds), "one generator per batch"
        return self._model.generator(n_rows, params, self._seeds, template)


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
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="w2s-serve-worker", daemon=True)
        self._thread.start()

    # -- the request side (event loop thread) -----------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cond:
            if len(self._waiting) >= self.queue_size:
                raise QueueFull(f"the queue is full ({self.queue_size} requests waiting); retry later.")
            self._waiting.append(job)
            self._depth()
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it is still queued, else mark it for the worker."""
        with self._cond:
            job.cancelled.set()
            if job in self._waiting:
                self._waiting.remove(job)
                self._depth()
                self._count_cancelled("queued")

    @property
    def depth(self) -> int:
        return len(self._waiting)

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
            self.metrics.queue_depth.set(len(self._waiting))

    def _count_cancelled(self, stage: str, n: int = 1) -> None:
        if self.metrics:
            self.metrics.cancelled.labels(stage=stage).inc(n)

    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._waiting:
                if self._closed:
                    return None
                self._cond.wait(0.5)
            first = self._waiting.popleft()
            batch, size = [first], len(first.prompts)
            deadline = time.monotonic() + self.batch_window
            while size < self.max_batch_size and first.method != "eft":
                for job in list(self._waiting):
                    if job.key == first.key and size + len(job.prompts) <= self.max_batch_size:
                        self._waiting.remove(job)
                        batch.append(job)
                        size += len(job.prompts)
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
            try:
                self._run(batch)
            except _Cancelled:
                self._count_cancelled("running", len(batch))
                log.info("batch of %d cancelled: every client went away", len(batch))
            except Exception as err:  # the requests get the error; the worker goes on
                log.exception("batch failed")
                for job in batch:
                    job.emit("error", None, err)

    def _run(self, jobs: list[Job]) -> None:
        method = jobs[0].method
        prompts = [p for job in jobs for p in job.prompts]
        owners = [(job, i) for job in jobs for i in range(len(job.prompts))]  # batch row -> (job, index)
        seeds = [s for job in jobs for s in prompt_seeds(job.seed, 0, len(job.prompts))]
        if self.metrics:
            self.metrics.batches.labels(method=method).inc()
            self.metrics.batch_prompts.labels(method=method).observe(len(prompts))
        sent = [""] * len(prompts)  # text already streamed, per row

        def check_cancelled() -> None:
            if all(job.cancelled.is_set() for job in jobs):
                raise _Cancelled

        def stream(row: int, text: str) -> None:
            job, index = owners[row]
            if job.stream and not job.cancelled.is_set() and len(text) > len(sent[row]):
                if not text.startswith(sent[row]):  # cannot happen for prefix-stable decoding; never retract
                    log.warning("streamed text %r is not a prefix of %r", sent[row], text)
                    return
                job.emit("delta", index, text[len(sent[row]):])
                sent[row] = text

        def finish(row: int, output: Output) -> None:
            job, index = owners[row]
            stream(row, output.text)
            if self.metrics:
                self.metrics.tokens.labels(method=method).inc(output.num_tokens)
            if not job.cancelled.is_set():
                job.emit("done", index, output)

        m = self.models
        strong = m.strong.model
        config = build_method(method, jobs[0].params)
        template = jobs[0].strong_template
        if method in ALIGNER_METHODS:
            aligner = m[ALIGNER_ROLE[method]]
            models = (_Seeded(strong, seeds), aligner.model)
            templates = dict(upstream_template=template, aligner_template=aligner.template)
            if method == "aligner":
                for row, answer in enumerate(config.run(*models, prompts, **templates)):
                    finish(row, Output(answer.corrected, True, _count_tokens(strong, answer.corrected)))
                return
            texts, steps = [""] * len(prompts), [0] * len(prompts)
            for step in config.steps(*models, prompts, **templates):  # one StreamStep per corrected sentence
                check_cancelled()
                texts[step.question_index] += step.corrected
                steps[step.question_index] += 1
                stream(step.question_index, texts[step.question_index])
            for row, text in enumerate(texts):
                # a full max_sentences means the answer may have been cut
                finish(row, Output(text, steps[row] < config.max_sentences, _count_tokens(strong, text)))
            return

        tuned, untuned = m.tuned, m.untuned
        if method == "eft":
            job = jobs[0]
            results = config.generate(strong, tuned.model, untuned.model, prompts, seed=job.seed,
                                      strong_template=template, tuned_template=tuned.template,
                                      untuned_template=untuned.template, batch_size=len(prompts))
        else:
            needs_scorer = config.samples_per_step > 1
            # a fresh scorer per batch: its kept rows never carry one batch's state into another
            scorer = LogRatioScorer(tuned.model, untuned.model, tuned.template,
                                    untuned.template) if needs_scorer else None

            def on_step(row: int, beam_texts: list[str]) -> None:
                check_cancelled()
                stream(row, common_prefix(beam_texts))  # every later beam extends one of these

            results = config.generate(_Seeded(strong, seeds), scorer, prompts, template=template,
                                      batch_size=len(prompts), on_step=on_step)
        for row, result in enumerate(results):
            finish(row, Output(result.response, result.finished, result.num_tokens, result.score))


def _count_tokens(model, text: str) -> int:
    return len(model.encode(text)) if text and hasattr(model, "encode") else 0
