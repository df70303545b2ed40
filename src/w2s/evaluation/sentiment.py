"""The controlled-sentiment comparison of Zhou et al. 2024 (arXiv 2405.19262, Sec. 5.1, Fig. 3): gold reward
against compute for weak-to-strong search (CBS), Best-of-N, EFT and the tuned small model alone, all with
one frozen strong model and the authors' sampling (temperature 0.7, top-k 50, top-p 1.0).

    out_dir/config.json               settings; a rerun into the same directory must match them
    out_dir/raw/{method}/seed{s}.jsonl one line per prompt, appended batch by batch (resumable)
    out_dir/summary.csv, summary.md   one row per method: gold with its 95% interval over prompts, the seed
                                      spread, the quality columns (:mod:`w2s.tasks.quality`), tokens, time
    out_dir/comparisons.csv, .md      the paired comparisons of :data:`COMPARISONS` (:mod:`w2s.evaluation.stats`)
    out_dir/reward_vs_compute.png     gold reward against compute N (log2 axis)
    out_dir/reward_vs_tokens.png      gold reward against the strong-model tokens sampled per prompt

Beyond the paper's runs: pruned Best-of-16 (halved at two checkpoints), CBS 4x4 with sentence chunks, and
CBS 4x4 with the front-loaded schedule, without and with the adaptive stop (:func:`make_search`).

:func:`rewrite_from_raw` (``w2s eval sentiment --out DIR --from-raw``) rewrites the tables, comparisons and
plots from ``DIR/config.json`` and the raw files alone, loading no model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..tasks.sentiment import gold_reward
from . import report
from .common import (NO_REPEAT, SAMPLING, SEARCH_MODELS_CHECKED, VARIANT_MARKERS, check_runs, draw_lines, draw_points,
                     figure, make_search, mean_of, model_settings, read_raw, run_prompts, start_run, write_config,
                     write_summary)

# name: compute N, i.e. strong-model samples per prompt per step (W*K for CBS, n for Best-of-N)
SENTIMENT_RUNS = {"base": 1, "bon-4": 4, "bon-16": 16, "cbs-2x2": 4, "cbs-4x4": 16, "eft": 1, "tuned-alone": 1,
                  "pruned-bon-16": 16, "cbs-4x4-sentence": 16, "front-4x4": 16, "adaptive-4x4": 16,
                  "cbs-4x4-entropy": 16, "tree-4x4": 16, "nudging": 1}
SENTIMENT_RUNS.update({f"{name}{NO_REPEAT}": SENTIMENT_RUNS[name]  # with the repetition control
                       for name in ("base", "bon-4", "bon-16", "cbs-2x2", "cbs-4x4", "cbs-4x4-sentence", "front-4x4",
                                    "adaptive-4x4")})
# settings a resumed run must share
CHECKED = ("prompts", "max_new_tokens", "temperature", "top_p", "top_k", *SEARCH_MODELS_CHECKED)
COLUMNS = ("method", "compute_N", "gold_reward_mean", "gold_reward_low", "gold_reward_high", "gold_reward_seed_sd",
           "looping", "padded", "distinct2", "truncated", "mean_tokens", "sampled_tokens", "guide_tokens", "seconds_per_prompt",
           "prompts", "seeds", "skipped")
GOLD_COLUMNS = {"gold_reward": "gold reward (VADER)"}
CBS_VARIANTS = ("cbs-4x4-sentence", "front-4x4", "adaptive-4x4", "cbs-4x4-entropy", "tree-4x4")


def comparisons(names: Sequence[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """The paired comparisons of the sentiment table (first minus second, on the gold), for the runs
    ``names`` (a pair with a missing run is skipped when the comparisons are computed)."""
    gold = tuple(GOLD_COLUMNS)
    pairs = [("cbs-2x2", "bon-4"), ("cbs-4x4", "bon-16"), ("pruned-bon-16", "bon-16"), ("pruned-bon-16", "cbs-2x2"),
             *((v, "cbs-4x4") for v in CBS_VARIANTS), ("adaptive-4x4", "front-4x4"), ("adaptive-4x4", "cbs-2x2"),
             ("cbs-4x4", "tuned-alone"), ("nudging", "cbs-4x4"), ("nudging", "tuned-alone"),
             *((n, "base") for n in names if n != "base")]
    return [(a, b, gold) for a, b in pairs] + report.norepeat_pairs(names, gold)


def evaluate_sentiment(out_dir, strong, tuned, untuned, prompts: Sequence[str], *, strong_template="{prompt}",
                       tuned_template="{prompt}", untuned_template="{prompt}", seeds=(0, 1, 2), max_new_tokens=50,
                       methods=None, batch_size=8, progress=True) -> list[dict]:
    """Run every method for every seed over ``prompts`` (resuming what ``out_dir`` already holds), then
    write the summary table and the plot; returns the summary rows (skipped methods carry their reason)."""
    from ..scoring import LogRatioScorer  # here, not at the top: `w2s --help` imports this module, not torch
    from ..search.eft import check_same_vocabulary

    prompts, seeds = list(prompts), list(dict.fromkeys(seeds))
    names = check_runs(SENTIMENT_RUNS, methods, prompts, seeds, batch_size, max_new_tokens)
    templates = {"strong": strong_template, "tuned": tuned_template, "untuned": untuned_template}
    models = {"strong": strong, "tuned": tuned, "untuned": untuned}
    config = {"prompts": prompts, "max_new_tokens": max_new_tokens, **SAMPLING, **model_settings(models, templates),
              "seeds": seeds, "methods": names, "batch_size": batch_size}
    out = Path(out_dir)
    earlier = _earlier_skips(out)
    start_run(out, config, CHECKED)

    skipped = {}
    if "eft" in names:
        try:
            check_same_vocabulary(strong, tuned=tuned, untuned=untuned)
        except ValueError as err:
            skipped["eft"] = str(err)
    kept = {**{m: why for m, why in earlier.items() if m not in names}, **skipped}
    if kept:  # kept in the settings (an earlier run's too), so that --from-raw can say why
        write_config(out, {**config, "skipped": kept})
    scorer = LogRatioScorer(tuned, untuned, tuned_template, untuned_template)
    for name in (n for n in names if n not in skipped):
        search = make_search(name, SENTIMENT_RUNS[name], max_new_tokens, chunk_length=5)
        for seed in seeds:
            _run(out / "raw" / name / f"seed{seed}.jsonl", name, search, models, templates, scorer, prompts,
                 seed, batch_size, progress)

    runs = {name: {s: read_raw(out / "raw" / name / f"seed{s}.jsonl") for s in seeds}
            for name in names if name not in skipped}
    return write_report(out, names, runs, len(prompts), max_new_tokens, skipped)


def _earlier_skips(out: Path) -> dict:
    try:
        return json.loads((out / "config.json").read_text(encoding="utf-8")).get("skipped", {})
    except (OSError, ValueError):
        return {}


def rewrite_from_raw(out_dir) -> list[dict]:
    """Rewrite ``summary``, ``comparisons`` and the plots of ``out_dir`` from its ``config.json`` and raw
    files, loading no model: every run directory whose seed files are complete (a partial file is left out
    and noted), in the table's order (unknown names after, ``X-norepeat`` beside ``X``)."""
    out = Path(out_dir)
    config = report.read_config(out)
    runs, notes = report.read_runs(out, config["prompts"], "prompt")
    reasons = config.get("skipped", {})
    skipped = {m: why for m, why in reasons.items() if m not in runs}  # e.g. EFT across vocabularies
    notes += [f"{m}: no complete raw file" for m in config.get("methods", []) if m not in runs and m not in reasons]
    names = report.order([*runs, *skipped], list(SENTIMENT_RUNS))
    return write_report(out, names, runs, len(config["prompts"]), config["max_new_tokens"], skipped, notes)


def write_report(out: Path, names: Sequence[str], runs: dict, n_prompts: int, max_new_tokens: int,
                 skipped: dict | None = None, notes: Sequence[str] = ()) -> list[dict]:
    """The summary table, the comparisons and the plots of ``runs`` (name -> {seed: records}); returns the
    summary rows, in ``names``' order (a skipped run carries its reason)."""
    skipped = skipped or {}
    rows = [_summary_row(name, runs.get(name), n_prompts, max_new_tokens, skipped.get(name)) for name in names]
    write_summary(out, rows, COLUMNS, markdown_table(rows, notes))
    present = [n for n in names if n in runs]
    arms = {n: report.arm(n, runs[n], {c: c for c in GOLD_COLUMNS}, "response") for n in present}
    report.write_comparisons(out, report.compare(arms, comparisons(present)), GOLD_COLUMNS)
    _plot(rows, out / "reward_vs_compute.png")
    _plot_tokens(rows, out / "reward_vs_tokens.png")
    return rows


def _run(path: Path, name, search, models, templates, scorer, prompts, seed, batch_size, progress) -> None:
    """Generate the prompts that ``path`` does not hold yet, appending one line per prompt per batch."""
    if name == "nudging":  # the tuned guide nudges the strong model
        def generate(batch, **kw):
            return search.generate(models["strong"], models["tuned"], batch, scorer=scorer,
                                   base_template=templates["strong"], nudger_template=templates["tuned"], **kw)
    elif name == "eft":
        def generate(batch, **kw):
            return search.generate(models["strong"], models["tuned"], models["untuned"], batch, scorer=scorer,
                                   **{f"{who}_template": t for who, t in templates.items()}, **kw)
    else:
        who = "tuned" if name == "tuned-alone" else "strong"  # the tuned small model alone is its own generator

        def generate(batch, **kw):
            return search.generate(models[who], scorer, batch, template=templates[who], **kw)

    run_prompts(path, name, generate, prompts, seed, batch_size, progress,
                lambda _, responses: [{"gold_reward": gold_reward(r)} for r in responses])


def _summary_row(name: str, run: dict | None, n_prompts: int, max_new_tokens: int, skipped: str | None) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(method=name, compute_N=report.compute_n(name, SENTIMENT_RUNS), prompts=n_prompts,
               seeds=len(run or ()), skipped=skipped)
    if skipped or not run:
        return row
    flat = report.flat(run)
    row.update(report.gold_stats(run, "gold_reward", "gold_reward"))
    row.update({k: v for k, v in report.quality_stats(run, "response", max_new_tokens).items() if k in row})
    row.update(mean_tokens=mean_of(flat, "num_tokens"), sampled_tokens=mean_of(flat, "sampled_tokens"),
               guide_tokens=mean_of(flat, "guide_tokens"), seconds_per_prompt=mean_of(flat, "seconds"))
    return row


def markdown_table(rows: list[dict], notes: Sequence[str] = ()) -> str:
    lines = [f"| method | compute N | gold reward [95% CI] | seed sd | {report.QUALITY_HEADER} | response tokens "
             "| sampled tokens | guide tokens | s / prompt | prompts | seeds |",
             "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    number = report.num
    for r in rows:
        if not r["skipped"]:
            lines.append(f"| {r['method']} | {number(r['compute_N'], 0)} | {report.gold_cell(r, 'gold_reward')} "
                         f"| {number(r['gold_reward_seed_sd'])} | {report.quality_cells(r)} "
                         f"| {number(r['mean_tokens'], 1)} | {number(r['sampled_tokens'], 0)} "
                         f"| {number(r['guide_tokens'], 0)} | {number(r['seconds_per_prompt'])} | {r['prompts']} "
                         f"| {r['seeds']} |")
    lines += ["", "Gold reward: VADER compound sentiment of the response in [-1, 1]. " + report.GOLD_NOTE + " "
              + report.QUALITY_NOTE + " Compute N: strong-model samples per prompt per step "
              "(W·K for CBS, n for Best-of-N). Response tokens are the generator's tokens; sampled tokens, "
              "the generator's tokens drawn per prompt over all samples and chunks (the strong model's cost); "
              "guide tokens, the tokens both guides ran to score them (their KV caches' reuse not counted). "
              "Paired differences between rows: `comparisons.md`."]
    skipped = [r for r in rows if r["skipped"]]
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- `{r['method']}`: {r['skipped']}" for r in skipped]
    if notes:
        lines += ["", "Left out:", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


FAMILIES = [(["base", "bon-4", "bon-16"], "o-", "Best-of-N"), (["base", "cbs-2x2", "cbs-4x4"], "s-", "CBS (L=5)")]


def _plot(rows: list[dict], path: Path) -> None:
    got = {r["method"]: r for r in rows if not r["skipped"] and r["compute_N"] is not None}
    fig = figure()
    ax = fig.add_subplot()

    def draw(names, fmt, label):
        pts = [got[n] for n in names if n in got]
        ax.errorbar([p["compute_N"] for p in pts], [p["gold_reward_mean"] for p in pts],
                    yerr=report.yerr(pts, "gold_reward"), fmt=fmt, capsize=3, label=label)

    drawn = [f for f in FAMILIES if any(n in got for n in f[0][1:])]  # a family needs more than base
    for family in drawn:
        draw(*family)
    if "base" in got and not drawn:
        draw(["base"], "o", "base (sampling)")
    if "eft" in got:
        draw(["eft"], "D", "EFT (β=1)")
    if "tuned-alone" in got:
        alone = got["tuned-alone"]
        ax.axhline(alone["gold_reward_mean"], ls="--", color="gray", label="tuned small model alone")
    ax.set_xscale("log", base=2)
    ax.set_xticks([1, 2, 4, 8, 16], labels=["1", "2", "4", "8", "16"])
    ax.set_xlabel("compute N (strong-model samples per prompt per step)")
    ax.set_ylabel("gold reward (VADER compound), 95% CI over prompts")
    ax.set_title("Controlled sentiment: gold reward vs compute")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.savefig(path, dpi=120)


def _plot_tokens(rows: list[dict], path: Path) -> None:
    got = {r["method"]: r for r in rows if not r["skipped"] and r["sampled_tokens"] is not None}
    fig = figure()
    ax = fig.add_subplot()
    lines = draw_lines(ax, got, FAMILIES, "gold_reward")
    lined = {n for names, _, _ in FAMILIES for n in names}
    others = [n for n in got if n not in lined and n not in VARIANT_MARKERS and n not in ("eft", "tuned-alone")]
    draw_points(ax, got, [*VARIANT_MARKERS, "eft", *([] if lines else ["base"]), *others], "gold_reward")
    if "tuned-alone" in got:
        ax.axhline(got["tuned-alone"]["gold_reward_mean"], ls="--", color="gray", label="tuned small model alone")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("strong-model tokens sampled per prompt (log scale)")
    ax.set_ylabel("gold reward (VADER compound), 95% CI over prompts")
    ax.set_title("Controlled sentiment: gold reward vs tokens sampled")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
