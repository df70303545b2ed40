"""The Stream Aligner demo task, evaluated: gold metrics and latency of the upstream alone, with the
Aligner (whole-answer correction), and with the Stream Aligner (plain and speculative).

Task: :mod:`w2s.tasks.positive` (make answers positive without changing what they say).  Gold metrics
per answer: VADER compound of the final answer, word-level F1 with the upstream's own original answer
(content kept), and F1 with the teacher's rewrite of that original (how well the aligner imitates).
Latency per answer: time to the first corrected text and total time.  With ``batch_size`` 1 (the
default) they are a single user's latencies.

    out_dir/config.json                settings; a rerun into the same directory must match them
    out_dir/raw/{method}/seed{s}.jsonl  one line per question, appended batch by batch (resumable)
    out_dir/summary.csv, summary.md    one row per method: VADER and content F1 with their 95% intervals over
                                       questions, the seed spread, the quality columns, latency
    out_dir/comparisons.csv, .md       the paired comparisons of :func:`comparisons`
    out_dir/quality_latency.png        gold metrics (95% intervals) and latency per method

:func:`rewrite_from_raw` (``w2s eval stream --out DIR --from-raw``) rewrites the tables, comparisons and
plot from ``DIR/config.json`` and the raw files alone, loading no model.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from dataclasses import replace
from functools import partial
from typing import Sequence

from ..aligner import Aligner, StreamAligner
from ..backends.base import SamplingParams
from ..tasks import positive
from ..validation import check_range
from ..jsonl import append_batches
from . import report
from .common import figure, read_raw, start_run, write_summary

STREAM_SYSTEMS = ("upstream", "aligner", "stream-aligner", "stream-aligner-speculative", "teacher")
LABELS = {"upstream": "upstream alone", "aligner": "Aligner (whole answer)", "stream-aligner": "Stream Aligner",
          "stream-aligner-speculative": "Stream Aligner, speculative", "teacher": "teacher (reference)"}
CHECKED = ("questions", "max_sentences", "max_sentence_tokens", "temperature", "upstream", "stream_aligner",
           "whole_aligner", "upstream_template", "aligner_template")
COLUMNS = ("method", "vader_mean", "vader_low", "vader_high", "vader_seed_sd", "content_f1_mean", "content_f1_low",
           "content_f1_high", "content_f1_seed_sd", "teacher_f1", "looping", "padded", "distinct2", "truncated",
           "changed_sentences", "inverted", "inverted_beyond_teacher", "first_seconds", "total_seconds", "drafts_kept", "sentences", "questions", "seeds")
COMPARED = {"vader": "VADER", "content_f1": "content F1", "teacher_f1": "teacher F1",
            "first_seconds": "first (s)", "total_seconds": "total (s)"}
ORIGINAL = " (its upstream answer)"  # the arm of a system's uncorrected answers


def comparisons(names: Sequence[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """The paired comparisons of the Stream Aligner table, as its findings (docs/experiments/stream-aligner.md)
    make them: each correcting system's VADER against its own uncorrected upstream answer, the Stream
    Aligner against the whole-answer Aligner, the upstream alone and the teacher, and the speculative Stream
    Aligner against the plain one (same answers, other latency)."""
    gold = ("vader", "content_f1", "teacher_f1")
    pairs = [(n, n + ORIGINAL, ("vader",)) for n in ("stream-aligner", "aligner", "teacher") if n in names]
    return pairs + [("stream-aligner", "aligner", (*gold, "first_seconds", "total_seconds")),
                    ("stream-aligner", "upstream", (*gold, "first_seconds", "total_seconds")),
                    ("stream-aligner", "teacher", gold),
                    ("stream-aligner-speculative", "stream-aligner", (*gold, "first_seconds", "total_seconds"))]


def _unchanged(question, prefix, sentence):  # the upstream alone: every sentence stays as it is
    return sentence


def build_methods(upstream, stream_aligner, whole_aligner, *, upstream_template="chat", aligner_template="{prompt}",
                  max_sentences=4, max_sentence_tokens=48, temperature=0.7, whole_aligner_template=None) -> dict:
    """The compared systems, all over the same upstream, sampling and sentence limits: name ->
    ``run(questions, seed=, start_index=)``."""
    sampling = SamplingParams(temperature=temperature)
    sentences = StreamAligner(max_sentences=max_sentences, max_sentence_tokens=max_sentence_tokens, sampling=sampling)
    whole = Aligner(max_sentences=max_sentences, max_new_tokens=max_sentences * max_sentence_tokens,
                    max_correction_tokens=max_sentences * max_sentence_tokens * 2, sampling=sampling)
    speculative = replace(sentences, speculative=True)
    systems = {"upstream": (sentences, _unchanged), "aligner": (whole, whole_aligner),
               "stream-aligner": (sentences, stream_aligner),
               "stream-aligner-speculative": (speculative, stream_aligner), "teacher": (sentences, positive.teacher)}
    templates = {name: aligner_template for name in systems}
    templates["aligner"] = whole_aligner_template or aligner_template
    return {name: partial(config.run, upstream, aligner, upstream_template=upstream_template,
                          aligner_template=templates[name])
            for name, (config, aligner) in systems.items()}


def evaluate_stream(out_dir, upstream, stream_aligner, whole_aligner, questions: Sequence[str], *,
                    upstream_template="chat", aligner_template="{prompt}", max_sentences=4, max_sentence_tokens=48,
                    temperature=0.7, seeds=(0,), methods=None, batch_size=1, progress=True,
                    whole_aligner_template=None) -> list[dict]:
    """Run each method for each seed over ``questions`` (resuming what ``out_dir`` holds), then write the
    summary table and the plot; returns the summary rows."""
    questions, seeds = list(questions), list(dict.fromkeys(seeds))
    unknown = sorted(set(methods or ()) - set(STREAM_SYSTEMS))
    if unknown:
        raise ValueError(f"methods must be among {list(STREAM_SYSTEMS)}, got {unknown}.")
    names = [m for m in STREAM_SYSTEMS if methods is None or m in methods]
    if not questions or not seeds or not names:
        raise ValueError("questions, seeds and methods must not be empty.")
    check_range("batch_size", batch_size, low=1, integer=True)
    config = {"questions": questions, "max_sentences": max_sentences, "max_sentence_tokens": max_sentence_tokens,
              "temperature": temperature, "upstream_template": upstream_template,
              "aligner_template": aligner_template, "seeds": seeds, "methods": names, "batch_size": batch_size,
              **{who: getattr(m, "name", type(m).__name__) for who, m in
                 (("upstream", upstream), ("stream_aligner", stream_aligner), ("whole_aligner", whole_aligner))}}
    out = Path(out_dir)
    systems = build_methods(upstream, stream_aligner, whole_aligner, upstream_template=upstream_template,
                            aligner_template=aligner_template, max_sentences=max_sentences,
                            max_sentence_tokens=max_sentence_tokens, temperature=temperature,
                            whole_aligner_template=whole_aligner_template)
    start_run(out, config, CHECKED)
    for name in names:
        for seed in seeds:
            _run(out / "raw" / name / f"seed{seed}.jsonl", name, systems[name], questions, seed, batch_size, progress)
    runs = {name: {s: read_raw(out / "raw" / name / f"seed{s}.jsonl") for s in seeds} for name in names}
    return write_report(out, names, runs, len(questions))


def rewrite_from_raw(out_dir) -> list[dict]:
    """Rewrite ``summary``, ``comparisons`` and the plot of ``out_dir`` from its ``config.json`` and raw
    files, loading no model: every known system whose seed files are complete."""
    out = Path(out_dir)
    config = report.read_config(out)
    runs, notes = report.read_runs(out, config["questions"], "question")
    unknown = sorted(set(runs) - set(STREAM_SYSTEMS))
    if unknown:
        raise ValueError(f"{out}/raw holds runs {unknown}; the stream table knows only {list(STREAM_SYSTEMS)}.")
    if not runs:
        raise ValueError(f"out_dir {str(out)!r} holds no complete raw run (raw/{{method}}/seed{{s}}.jsonl).")
    names = [m for m in STREAM_SYSTEMS if m in runs]
    return write_report(out, names, runs, len(config["questions"]), notes)


def write_report(out: Path, names: Sequence[str], runs: dict, n_questions: int,
                 notes: Sequence[str] = ()) -> list[dict]:
    """The summary table, the comparisons and the plot of ``runs`` (name -> {seed: records})."""
    rows = [_summary_row(name, runs[name], n_questions) for name in names]
    write_summary(out, rows, COLUMNS, markdown_table(rows, notes))
    arms = {n: report.arm(n, runs[n], {c: c for c in COMPARED}, "corrected") for n in names}
    for n in names:
        arms[n + ORIGINAL] = report.arm(n + ORIGINAL, runs[n], {"vader": "vader_original"}, "original")
    report.write_comparisons(out, report.compare(arms, comparisons(names)), COMPARED,
                             note="Unit prompt (in the csv) is the question here. `X (its upstream answer)`: the "
                                  "same records' uncorrected upstream answers (their `vader_original`), so that "
                                  "difference is what the correction added.", item="question")
    _plot(rows, out / "quality_latency.png")
    return rows


def answer_record(answer) -> dict:
    """Gold metrics and latency of one :class:`~w2s.aligner.AlignedAnswer`."""
    original, corrected = answer.original.strip(), answer.corrected.strip()
    return {"question": answer.question, "original": original, "corrected": corrected,
            "vader_original": positive.vader(original), "vader": positive.vader(corrected),
            "content_f1": positive.overlap(original, corrected),
            "teacher_f1": positive.overlap(positive.rewrite(original), corrected),
            "first_seconds": answer.first_seconds, "total_seconds": answer.total_seconds,
            "sentences": len(answer.steps),
            "changed": sum(s.corrected.strip() != s.original.strip() for s in answer.steps),
            "drafted": sum(s.drafted for s in answer.steps)}


def _run(path: Path, name: str, system, questions, seed: int, batch_size: int, progress: bool) -> None:
    def rows(batch, start):
        return [answer_record(a) for a in system(batch, seed=seed, start_index=start)]

    append_batches(path, questions, batch_size, rows, desc=f"{name} seed {seed}", unit="question", progress=progress)


def _summary_row(name: str, run: dict, n_questions: int) -> dict:
    flat = report.flat(run)
    sentences = sum(r["sentences"] for r in flat)
    # a draft can only be kept for a sentence after the first one
    followers = sum(max(r["sentences"] - 1, 0) for r in flat)
    row = {"method": name, **report.gold_stats(run, "vader", "vader"),
           **report.gold_stats(run, "content_f1", "content_f1"),
           "teacher_f1": statistics.fmean(r["teacher_f1"] for r in flat),
           # the records keep no token counts, so truncation is not known (None)
           **{k: v for k, v in report.quality_stats(run, "corrected", None).items() if k != "answers"},
           "changed_sentences": sum(r["changed"] for r in flat) / sentences if sentences else None,
           # answers whose correction says the opposite somewhere (an antonym or a negation), and those where the
           # teacher's rewrite would not have
           "inverted": statistics.fmean(bool(positive.inversions(r["original"], r["corrected"])) for r in flat),
           "inverted_beyond_teacher": statistics.fmean(bool(positive.beyond_teacher(r["original"], r["corrected"]))
                                                       for r in flat),
           "first_seconds": statistics.fmean(r["first_seconds"] for r in flat),
           "total_seconds": statistics.fmean(r["total_seconds"] for r in flat),
           "drafts_kept": sum(r["drafted"] for r in flat) / max(followers, 1) if "speculative" in name else None,
           "sentences": sentences / len(flat) if sentences else None, "questions": n_questions, "seeds": len(run)}
    return row


def markdown_table(rows: list[dict], notes: Sequence[str] = ()) -> str:
    lines = [f"| method | VADER [95% CI] | seed sd | content F1 [95% CI] | teacher F1 | {report.QUALITY_HEADER} "
             "| sentences changed | inverted | beyond teacher | first (s) | total (s) | drafts kept |",
             "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        kept = "" if r["drafts_kept"] is None else f"{r['drafts_kept']:.0%}"
        changed = "" if r["changed_sentences"] is None else f"{r['changed_sentences']:.0%}"
        lines.append(f"| {LABELS[r['method']]} | {report.gold_cell(r, 'vader')} | {report.num(r['vader_seed_sd'])} "
                     f"| {report.gold_cell(r, 'content_f1')} | {r['teacher_f1']:.3f} | {report.quality_cells(r)} | {changed} "
                     f"| {r['inverted']:.0%} | {r['inverted_beyond_teacher']:.0%} | {r['first_seconds']:.2f} | {r['total_seconds']:.2f} | {kept} |")
    q, s = rows[0]["questions"], rows[0]["seeds"]
    lines += ["", f"{q} held-out questions × {s} seed(s). VADER: compound sentiment of the final answer in [-1, 1]. "
              "Content F1: words shared with the upstream's own answer. Teacher F1: words shared with the teacher's "
              "rewrite of that answer (mean). " + report.GOLD_NOTE.replace("prompt", "question") + " "
              + report.QUALITY_NOTE + " Truncated is – here: the records keep no token counts. First / total: "
              "seconds to the first corrected text and to the whole answer. Inverted: share of answers whose correction "
              "says the opposite somewhere, word for word (a word swapped for its antonym, by the teacher's table, a "
              "negating prefix or -less/-ful, or a negation added or removed: w2s.tasks.positive.inversions); beyond "
              "teacher: those with such a change the teacher's rewrite does not make. Drafts kept: sentences the "
              "upstream had already sampled while the aligner worked, among all sentences after the first. "
              "Paired differences between rows: `comparisons.md`."]
    if notes:
        lines += ["", "Left out:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    fig = figure(9.6, 4.0)
    quality, latency = fig.subplots(1, 2)
    labels = [LABELS[r["method"]] for r in rows]
    for r, label in zip(rows, labels):
        quality.errorbar(r["content_f1_mean"], r["vader_mean"], xerr=report.yerr([r], "content_f1"),
                         yerr=report.yerr([r], "vader"), fmt="o", capsize=3, label=label)
    quality.set_xlabel("content F1 with the upstream's answer")
    quality.set_ylabel("VADER compound (gold), 95% CI over questions")
    quality.set_title("Quality")
    quality.grid(alpha=0.3)
    quality.legend(fontsize=7)
    y = range(len(rows))
    latency.barh([i + 0.2 for i in y], [r["total_seconds"] for r in rows], height=0.4, label="whole answer")
    latency.barh([i - 0.2 for i in y], [r["first_seconds"] for r in rows], height=0.4, label="first text")
    latency.set_yticks(list(y), labels=labels, fontsize=7)
    latency.invert_yaxis()
    latency.set_xlabel("seconds per answer")
    latency.set_title("Latency")
    latency.legend(fontsize=7)
    fig.savefig(path, dpi=120)
