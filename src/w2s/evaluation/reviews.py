"""Weak-to-strong on the reviews task (:mod:`w2s.tasks.reviews`): a fluent small guide pair steering a
larger instruct model of another family, judged by VADER *and* fluency under a model that takes no part.

    out_dir/config.json                 settings; a rerun into the same directory must match them
    out_dir/raw/{run}/seed{s}.jsonl     one line per instruction (vader, fluency, ...), resumable
    out_dir/summary.csv, summary.md     one row per run: vader, fluency and combined gold, tokens, time
    out_dir/gold_vs_compute.png         combined gold against strong-model tokens sampled, the guides alone as lines

Runs: ``base`` (plain sampling of the strong model), Best-of-4/16, CBS 2x2 and 4x4 (chunks of
:data:`CHUNK_LENGTH` tokens), the tuned and untuned guides alone, and the budget variants: pruned
Best-of-16, CBS 4x4 with sentence chunks, and CBS 4x4 front-loaded with the adaptive stop.  The combined gold's fluency floor
comes from the ``base`` run (all its seeds), so ``base`` always runs.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence

from ..tasks import reviews
from .common import (SAMPLING, VARIANT_MARKERS, check_runs, draw_lines, draw_points, figure, make_search,
                     model_settings, read_raw, run_prompts, seed_stats, start_run, write_summary)

REVIEW_RUNS = {"base": 1, "bon-4": 4, "bon-16": 16, "cbs-2x2": 4, "cbs-4x4": 16, "tuned-alone": 1,
               "untuned-alone": 1, "pruned-bon-16": 16, "cbs-4x4-sentence": 16, "adaptive-4x4": 16}
CHUNK_LENGTH = 16  # strong-model tokens per CBS chunk: about a clause of a review
CHECKED = ("instructions", "max_new_tokens", "temperature", "top_p", "top_k", "strong", "tuned", "untuned",
           "fluency_model", "strong_template", "tuned_template", "untuned_template")
GOLD = ("vader", "fluency", "combined")
COLUMNS = ("method", "compute_N", *(f"{g}_{s}" for g in GOLD for s in ("mean", "std")), "mean_tokens",
           "sampled_tokens", "seconds_per_prompt", "prompts", "seeds")


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

    per_run = {name: [read_raw(out / "raw" / name / f"seed{s}.jsonl") for s in seeds] for name in names}
    floor = reviews.fluency_floor([r["fluency"] for records in per_run["base"] for r in records])
    rows = [_summary_row(name, per_run[name], floor, len(instructions)) for name in names]
    write_summary(out, rows, COLUMNS, markdown_table(rows, floor))
    _plot(rows, out / "gold_vs_compute.png")
    return rows


def _summary_row(name: str, per_seed: list[list[dict]], floor: float, n_prompts: int) -> dict:
    for records in per_seed:
        for r in records:
            r["combined"] = reviews.combined(r["vader"], r["fluency"], floor)
    row = {"method": name, "compute_N": REVIEW_RUNS[name], "prompts": n_prompts, "seeds": len(per_seed)}
    for g in GOLD:
        row[f"{g}_mean"], row[f"{g}_std"] = seed_stats(per_seed, g)
    flat = [r for records in per_seed for r in records]
    row.update(mean_tokens=statistics.fmean(r["num_tokens"] for r in flat),
               sampled_tokens=statistics.fmean(r["sampled_tokens"] for r in flat),
               seconds_per_prompt=statistics.fmean(r["seconds"] for r in flat))
    return row


def markdown_table(rows: list[dict], floor: float) -> str:
    lines = ["| method | compute N | VADER | fluency (nats/token) | combined gold | response tokens | sampled tokens "
             "| s / prompt | prompts | seeds |", "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        gold = " | ".join(f"{r[f'{g}_mean']:.3f} ± {r[f'{g}_std']:.3f}" for g in GOLD)
        lines.append(f"| {r['method']} | {r['compute_N']} | {gold} | {r['mean_tokens']:.1f} "
                     f"| {r['sampled_tokens']:.0f} | {r['seconds_per_prompt']:.2f} | {r['prompts']} | {r['seeds']} |")
    lines += ["", f"VADER: compound sentiment in [-1, 1]. Fluency: mean per-token log-likelihood under the fluency "
              f"model. Combined: VADER - max(0, {floor:.3f} - fluency), the floor being the "
              f"{reviews.FLOOR_PERCENTILE}th percentile of the base run's fluency. Mean over instructions, ± std "
              "across seeds of the per-seed mean. Compute N: strong-model samples per prompt per step (W·K for "
              f"CBS, with chunks of {CHUNK_LENGTH} tokens; n for Best-of-N). Response tokens are the generator's; "
              "sampled tokens are all it drew per prompt (every beam and sample): the cost compared."]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    got = {r["method"]: r for r in rows}
    fig = figure()
    ax = fig.add_subplot()
    draw_lines(ax, got, [(["base", "bon-4", "bon-16"], "o-", "Best-of-N"),
                         (["base", "cbs-2x2", "cbs-4x4"], "s-", f"CBS (L={CHUNK_LENGTH})")], "combined")
    for name, style in (("tuned-alone", "--"), ("untuned-alone", ":")):
        if name in got:
            ax.axhline(got[name]["combined_mean"], ls=style, color="gray", label=name.replace("-", " ") + " (guide)")
    ax.plot([got["base"]["sampled_tokens"]], [got["base"]["combined_mean"]], "k*", label="base")
    draw_points(ax, got, VARIANT_MARKERS, "combined")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("strong-model tokens sampled per prompt")
    ax.set_ylabel("combined gold (VADER less the fluency penalty)")
    ax.set_title("Reviews: gold vs compute")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
