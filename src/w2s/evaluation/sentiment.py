"""The controlled-sentiment comparison of Zhou et al. 2024 (arXiv 2405.19262, Sec. 5.1, Fig. 3): gold reward
against compute for weak-to-strong search (CBS), Best-of-N, EFT and the tuned small model alone, all with
one frozen strong model and the authors' sampling (temperature 0.7, top-k 50, top-p 1.0).

    out_dir/config.json               settings; a rerun into the same directory must match them
    out_dir/raw/{method}/seed{s}.jsonl one line per prompt, appended batch by batch (resumable)
    out_dir/summary.csv, summary.md   one row per method
    out_dir/reward_vs_compute.png     gold reward against compute N (log2 axis)
    out_dir/reward_vs_tokens.png      gold reward against the strong-model tokens sampled per prompt

Beyond the paper's runs: pruned Best-of-16 (halved at two checkpoints), CBS 4x4 with sentence chunks, and
CBS 4x4 with the front-loaded schedule, without and with the adaptive stop (:func:`make_search`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..tasks.sentiment import gold_reward
from .common import (SAMPLING, VARIANT_MARKERS, check_runs, draw_lines, draw_points, figure, make_search, mean_of,
                     model_settings, read_raw, run_prompts, seed_stats, start_run, write_summary)

# name: compute N, i.e. strong-model samples per prompt per step (W*K for CBS, n for Best-of-N)
SENTIMENT_RUNS = {"base": 1, "bon-4": 4, "bon-16": 16, "cbs-2x2": 4, "cbs-4x4": 16, "eft": 1, "tuned-alone": 1,
                  "pruned-bon-16": 16, "cbs-4x4-sentence": 16, "front-4x4": 16, "adaptive-4x4": 16}
CHECKED = ("prompts", "max_new_tokens", "temperature", "top_p", "top_k", "strong", "tuned", "untuned",
           "strong_template", "tuned_template", "untuned_template")  # settings a resumed run must share
COLUMNS = ("method", "compute_N", "gold_reward_mean", "gold_reward_std", "mean_tokens", "sampled_tokens",
           "guide_tokens", "seconds_per_prompt", "prompts", "seeds", "skipped")


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
    start_run(out, config, CHECKED)

    skipped = {}
    if "eft" in names:
        try:
            check_same_vocabulary(strong, tuned=tuned, untuned=untuned)
        except ValueError as err:
            skipped["eft"] = str(err)
    scorer = LogRatioScorer(tuned, untuned, tuned_template, untuned_template)
    for name in (n for n in names if n not in skipped):
        search = make_search(name, SENTIMENT_RUNS[name], max_new_tokens, chunk_length=5)
        for seed in seeds:
            _run(out / "raw" / name / f"seed{seed}.jsonl", name, search, models, templates, scorer, prompts,
                 seed, batch_size, progress)

    rows = [_summary_row(out, name, seeds, len(prompts), skipped.get(name)) for name in names]
    write_summary(out, rows, COLUMNS, markdown_table(rows))
    _plot(rows, out / "reward_vs_compute.png")
    _plot_tokens(rows, out / "reward_vs_tokens.png")
    return rows


def _run(path: Path, name, search, models, templates, scorer, prompts, seed, batch_size, progress) -> None:
    """Generate the prompts that ``path`` does not hold yet, appending one line per prompt per batch."""
    if name == "eft":
        def generate(batch, **kw):
            return search.generate(models["strong"], models["tuned"], models["untuned"], batch, scorer=scorer,
                                   **{f"{who}_template": t for who, t in templates.items()}, **kw)
    else:
        who = "tuned" if name == "tuned-alone" else "strong"  # the tuned small model alone is its own generator

        def generate(batch, **kw):
            return search.generate(models[who], scorer, batch, template=templates[who], **kw)

    run_prompts(path, name, generate, prompts, seed, batch_size, progress,
                lambda _, responses: [{"gold_reward": gold_reward(r)} for r in responses])


def _summary_row(out: Path, name: str, seeds, n_prompts: int, skipped: str | None) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(method=name, compute_N=SENTIMENT_RUNS[name], prompts=n_prompts, seeds=len(seeds), skipped=skipped)
    if skipped:
        return row
    per_seed = [read_raw(out / "raw" / name / f"seed{s}.jsonl") for s in seeds]
    flat = [r for records in per_seed for r in records]
    mean, std = seed_stats(per_seed, "gold_reward")
    row.update(gold_reward_mean=mean, gold_reward_std=std, mean_tokens=mean_of(flat, "num_tokens"),
               sampled_tokens=mean_of(flat, "sampled_tokens"), guide_tokens=mean_of(flat, "guide_tokens"),
               seconds_per_prompt=mean_of(flat, "seconds"))
    return row


def markdown_table(rows: list[dict]) -> str:
    lines = ["| method | compute N | gold reward | response tokens | sampled tokens | guide tokens | s / prompt "
             "| prompts | seeds |",
             "|:--|--:|--:|--:|--:|--:|--:|--:|--:|"]
    number = lambda x, digits=0: "–" if x is None else f"{x:.{digits}f}"  # noqa: E731  (older runs lack a column)
    for r in rows:
        if not r["skipped"]:
            reward = f"{r['gold_reward_mean']:.3f} ± {r['gold_reward_std']:.3f}"
            lines.append(f"| {r['method']} | {r['compute_N']} | {reward} | {r['mean_tokens']:.1f} "
                         f"| {number(r['sampled_tokens'])} | {number(r['guide_tokens'])} "
                         f"| {r['seconds_per_prompt']:.3f} | {r['prompts']} | {r['seeds']} |")
    lines += ["", "Gold reward: VADER compound sentiment of the response in [-1, 1], mean over prompts, "
              "± std across seeds of the per-seed mean. Compute N: strong-model samples per prompt per step "
              "(W·K for CBS, n for Best-of-N). Response tokens are the generator's tokens; sampled tokens, "
              "the generator's tokens drawn per prompt over all samples and chunks (the strong model's cost); "
              "guide tokens, the tokens both guides ran to score them (their KV caches' reuse not counted)."]
    skipped = [r for r in rows if r["skipped"]]
    if skipped:
        lines += ["", "Skipped:", ""] + [f"- `{r['method']}`: {r['skipped']}" for r in skipped]
    return "\n".join(lines) + "\n"


FAMILIES = [(["base", "bon-4", "bon-16"], "o-", "Best-of-N"), (["base", "cbs-2x2", "cbs-4x4"], "s-", "CBS (L=5)")]


def _plot(rows: list[dict], path: Path) -> None:
    got = {r["method"]: r for r in rows if not r["skipped"]}
    fig = figure()
    ax = fig.add_subplot()

    def draw(names, fmt, label):
        pts = [got[n] for n in names if n in got]
        ax.errorbar([p["compute_N"] for p in pts], [p["gold_reward_mean"] for p in pts],
                    yerr=[p["gold_reward_std"] for p in pts], fmt=fmt, capsize=3, label=label)

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
    ax.set_ylabel("gold reward (VADER compound)")
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
    draw_points(ax, got, [*VARIANT_MARKERS, "eft", *([] if lines else ["base"])], "gold_reward")
    if "tuned-alone" in got:
        ax.axhline(got["tuned-alone"]["gold_reward_mean"], ls="--", color="gray", label="tuned small model alone")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("strong-model tokens sampled per prompt (log scale)")
    ax.set_ylabel("gold reward (VADER compound)")
    ax.set_title("Controlled sentiment: gold reward vs tokens sampled")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
