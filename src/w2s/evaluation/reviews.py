"""Weak-to-strong on the reviews task (:mod:`w2s.tasks.reviews`): a fluent small guide pair steering a
larger instruct model of another family, judged by VADER *and* fluency under a model that takes no part.

    out_dir/config.json                 settings; a rerun into the same directory must match them
    out_dir/raw/{run}/seed{s}.jsonl     one line per instruction (vader, fluency, ...), resumable
    out_dir/summary.csv, summary.md     one row per run: the gold columns with their 95% intervals over prompts,
                                        the seed spread, the quality columns and non-answers, tokens, time
    out_dir/comparisons.csv, .md        the paired comparisons of :func:`comparisons`
    out_dir/gold_vs_compute.png         combined gold against strong-model tokens sampled, the guides alone as lines

Runs: ``base`` (plain sampling of the strong model), Best-of-4/16, CBS 2x2 and 4x4 (chunks of
:data:`CHUNK_LENGTH` tokens), the tuned and untuned guides alone, and the budget variants: pruned
Best-of-16, CBS 4x4 with sentence chunks, and CBS 4x4 front-loaded with the adaptive stop.  The combined gold
(:func:`w2s.tasks.reviews.gold_of`) gates non-answers to 0 and has a constant fluency floor
(:data:`w2s.tasks.reviews.FLUENCY_FLOOR`), so a record's gold does not depend on the other runs; ``base``
always runs, as the reference row.  The tuned guide alone is marked as trained on the old gold's reward
(:func:`w2s.tasks.reviews.pair_reward`).

:func:`rewrite_from_raw` (``w2s eval reviews --out DIR --from-raw``) rescores and rewrites the tables,
comparisons and plot from ``DIR/config.json`` and the raw files (each record keeps ``vader`` and
``fluency``), loading no model.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

from ..tasks import reviews
from . import report
from .common import (SAMPLING, SEARCH_MODELS_CHECKED, VARIANT_MARKERS, check_runs, draw_lines, draw_points, figure,
                     make_search, model_settings, read_raw, run_prompts, start_run, write_summary)

REVIEW_RUNS = {"base": 1, "bon-4": 4, "bon-16": 16, "cbs-2x2": 4, "cbs-4x4": 16, "tuned-alone": 1,
               "untuned-alone": 1, "pruned-bon-16": 16, "cbs-4x4-sentence": 16, "adaptive-4x4": 16}
CHUNK_LENGTH = 16  # strong-model tokens per CBS chunk: about a clause of a review
CHECKED = ("instructions", "max_new_tokens", "temperature", "top_p", "top_k", *SEARCH_MODELS_CHECKED, "fluency_model",
           "fluency_model_dtype")
GOLD = ("vader", "fluency", "combined")
GOLD_LABELS = {"combined": "combined gold", "vader": "VADER", "fluency": "fluency (nats/token)"}
COLUMNS = ("method", "compute_N", *(f"{g}_{s}" for g in GOLD for s in ("mean", "low", "high", "seed_sd")),
           "non_answers", "answers", "looping", "padded", "distinct2", "truncated", "mean_tokens", "sampled_tokens",
           "seconds_per_prompt", "prompts", "seeds", "note")
OLD_GOLD_GUIDE = "tuned-alone"  # the guide trained on pair_reward, the old gold's VADER + fluency reward
OLD_GOLD_NOTE = "trained on the old gold's VADER+fluency reward"
COMPARED = ("combined", "vader", "fluency")


def comparisons(names: Sequence[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """The paired comparisons of the reviews tables (first minus second, on the combined gold and its
    parts): CBS against Best-of-N at equal N and against base, CBS 4x4 and 2x2 against the tuned guide
    alone, the tuned guide against the untuned one, Best-of-N against base, the budget variants against
    CBS 4x4, and each ``X-norepeat`` against ``X`` and base."""
    pairs = [("cbs-2x2", "bon-4"), ("cbs-4x4", "bon-16"), ("cbs-2x2", "base"), ("cbs-4x4", "base"),
             ("cbs-4x4", "tuned-alone"), ("cbs-2x2", "tuned-alone"), ("tuned-alone", "untuned-alone"),
             ("bon-4", "base"), ("bon-16", "base"), ("pruned-bon-16", "bon-16"),
             *((v, "cbs-4x4") for v in ("cbs-4x4-sentence", "adaptive-4x4"))]
    return [(a, b, COMPARED) for a, b in pairs] + report.norepeat_pairs(names, COMPARED)


def evaluate_reviews(out_dir, strong, tuned, untuned, fluency_model, instructions: Sequence[str], *,
                     strong_template="chat", tuned_template="chat", untuned_template="chat", seeds=(0, 1, 2),
                     max_new_tokens=64, methods=None, batch_size=4, progress=True) -> list[dict]:
    """Run every method for every seed over ``instructions`` (resuming what ``out_dir`` holds), score
    each answer's VADER and fluency, and write the summary table and the plot; returns the summary rows."""
    from ..scoring import LogRatioScorer

    instructions, seeds = list(instructions), list(dict.fromkeys(seeds))
    names = check_runs(REVIEW_RUNS, methods, instructions, seeds, batch_size, max_new_tokens, always=("base",),
                       what="instructions")
    models = {"strong": strong, "tuned": tuned, "untuned": untuned}
    templates = {"strong": strong_template, "tuned": tuned_template, "untuned": untuned_template}
    config = {"instructions": instructions, "max_new_tokens": max_new_tokens, **SAMPLING,
              **model_settings({**models, "fluency_model": fluency_model}, templates), "seeds": seeds,
              "methods": names, "batch_size": batch_size, "chunk_length": CHUNK_LENGTH}
    out = Path(out_dir)
    start_run(out, config, CHECKED)

    fluency = reviews.Fluency(fluency_model)
    scorer = LogRatioScorer(tuned, untuned, tuned_template, untuned_template)
    for name in names:
        search = make_search(name, REVIEW_RUNS[name], max_new_tokens, CHUNK_LENGTH)
        who = name.removesuffix("-alone") if name.endswith("-alone") else "strong"

        def generate(batch, search=search, who=who, **kw):
            return search.generate(models[who], scorer, batch, template=templates[who], **kw)

        for seed in seeds:
            run_prompts(out / "raw" / name / f"seed{seed}.jsonl", name, generate, instructions, seed, batch_size,
                        progress, lambda prompts, responses: reviews.gold(prompts, responses, fluency))

    runs = {name: {s: read_raw(out / "raw" / name / f"seed{s}.jsonl") for s in seeds} for name in names}
    return write_report(out, names, runs, len(instructions), max_new_tokens)


def rewrite_from_raw(out_dir) -> list[dict]:
    """Rescore and rewrite ``summary``, ``comparisons`` and the plot of ``out_dir`` from its ``config.json``
    and raw files (the records' ``vader``, ``fluency`` and ``response``), loading no model: every run
    directory whose seed files are complete, in the table's order."""
    out = Path(out_dir)
    config, runs, names, notes = report.read_table(out, "instructions", list(REVIEW_RUNS))
    return write_report(out, names, runs, len(config["instructions"]), config["max_new_tokens"], notes)


def write_report(out: Path, names: Sequence[str], runs: dict, n_prompts: int, max_new_tokens: int,
                 notes: Sequence[str] = ()) -> list[dict]:
    """Score every record (:func:`w2s.tasks.reviews.gold_of`), then write the summary table, the comparisons
    and the plot of ``runs`` (name -> {seed: records}); returns the summary rows in ``names``' order."""
    for run in runs.values():
        for r in report.flat(run):
            r["non_answer"] = reviews.non_answer(r["response"])
            r["combined"] = reviews.gold_of(r)
    rows = [_summary_row(name, runs[name], n_prompts, max_new_tokens) for name in names]
    write_summary(out, rows, COLUMNS, markdown_table(rows, notes=notes))
    arms = {n: report.arm(n, runs[n], {c: c for c in COMPARED}, "response") for n in names}
    report.write_comparisons(out, report.compare(arms, comparisons(names)), GOLD_LABELS,
                             note=f"`{OLD_GOLD_GUIDE}` was {OLD_GOLD_NOTE} (not this gold).")
    _plot(rows, out / "gold_vs_compute.png")
    return rows


def _summary_row(name: str, run: dict, n_prompts: int, max_new_tokens: int) -> dict:
    row = {"method": name, "compute_N": report.compute_n(name, REVIEW_RUNS), "prompts": n_prompts,
           "seeds": len(run), "note": OLD_GOLD_NOTE if name == OLD_GOLD_GUIDE else ""}
    for g in GOLD:
        row.update(report.gold_stats(run, g, g))
    row.update(report.quality_stats(run, "response", max_new_tokens, gate=True))
    flat = report.flat(run)
    row.update(mean_tokens=statistics.fmean(r["num_tokens"] for r in flat),
               sampled_tokens=statistics.fmean(r["sampled_tokens"] for r in flat),
               seconds_per_prompt=statistics.fmean(r["seconds"] for r in flat))
    return row


def markdown_table(rows: list[dict], floor: float = reviews.FLUENCY_FLOOR, notes: Sequence[str] = ()) -> str:
    lines = ["| method | compute N | combined gold [95% CI] | seed sd | non-answers | VADER [95% CI] "
             f"| fluency (nats/token) [95% CI] | {report.QUALITY_HEADER} | response tokens | sampled tokens "
             "| s / prompt | prompts | seeds |", "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    num = report.num
    for r in rows:
        name = f"{r['method']} †" if r["note"] else r["method"]
        lines.append(f"| {name} | {num(r['compute_N'], 0)} | {report.gold_cell(r, 'combined')} "
                     f"| {num(r['combined_seed_sd'])} | {r['non_answers']}/{r['answers']} "
                     f"| {report.gold_cell(r, 'vader')} | {report.gold_cell(r, 'fluency')} "
                     f"| {report.quality_cells(r)} "
                     f"| {r['mean_tokens']:.1f} | {r['sampled_tokens']:.0f} | {r['seconds_per_prompt']:.2f} "
                     f"| {r['prompts']} | {r['seeds']} |")
    lines += ["", "Combined gold: 0 for a non-answer (a refusal, an AI disclaimer or a question back, "
              "`w2s.tasks.quality.non_answer`), else VADER − max(0, "
              f"{floor:.2f} − fluency), the floor a constant: the {reviews.FLOOR_PERCENTILE}th percentile of "
              "Gemma-3-270M's fluency on 40 hand-written reference reviews that no evaluation uses. VADER: "
              "compound sentiment in [-1, 1]. Fluency: mean per-token log-likelihood under the fluency model. "
              "Non-answers: answers the gate scores 0, of all answers. " + report.GOLD_NOTE + " "
              + report.QUALITY_NOTE + " Compute N: strong-model samples per prompt per step (W·K for "
              f"CBS, with chunks of {CHUNK_LENGTH} tokens; n for Best-of-N). Response tokens are the generator's; "
              "sampled tokens are all it drew per prompt (every beam and sample): the cost compared. "
              f"† {OLD_GOLD_GUIDE}: the tuned guide alone, {OLD_GOLD_NOTE} (a per-batch floor, no gate), not on "
              "this gold. Paired differences between rows: `comparisons.md`."]
    if notes:
        lines += ["", "Left out:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    got = {r["method"]: r for r in rows}
    fig = figure()
    ax = fig.add_subplot()
    families = [(["base", "bon-4", "bon-16"], "o-", "Best-of-N"),
                (["base", "cbs-2x2", "cbs-4x4"], "s-", f"CBS (L={CHUNK_LENGTH})")]
    draw_lines(ax, got, families, "combined")
    for name, style in (("tuned-alone", "--"), ("untuned-alone", ":")):
        if name in got:
            old = name == OLD_GOLD_GUIDE
            label = name.replace("-", " ") + (" (guide, trained on the old gold)" if old else " (guide)")
            ax.axhline(got[name]["combined_mean"], ls=style, color="gray", label=label)
    if "base" in got:
        ax.plot([got["base"]["sampled_tokens"]], [got["base"]["combined_mean"]], "k*", label="base")
    lined = {n for names, _, _ in families for n in names}
    draw_points(ax, got, [*VARIANT_MARKERS, *(n for n in got if n not in lined and n not in VARIANT_MARKERS
                                              and not n.endswith("-alone"))], "combined")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("strong-model tokens sampled per prompt")
    ax.set_ylabel("combined gold, 95% CI over prompts")
    ax.set_title("Reviews: gold vs compute")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
