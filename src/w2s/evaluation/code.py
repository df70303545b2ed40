"""Weak-to-strong on HumanEval (:mod:`w2s.tasks.code`): a guide pair steering a coder, judged by executing
the problem's tests in the sandbox (and, for the style pair, by the comment rule).

    out_dir/config.json                 settings; a rerun into the same directory must match them
    out_dir/raw/{run}/seed{s}.jsonl     one line per problem (passed, aligned, status, ...), resumable
    out_dir/summary.csv, summary.md     one row per run: pass, aligned and comment-rule rates with 95% intervals
                                        over problems, comment lines, loops, truncation, tokens, time per problem
    out_dir/comparisons.csv, .md        the paired comparisons of :func:`comparisons`, with the sign test
    out_dir/gold_vs_compute.png         pass and aligned rates against strong-model tokens sampled

Runs (:data:`CODE_RUNS`): ``greedy`` and ``base`` (the strong model alone, greedy and sampled), Best-of-4/16
by the guides' log-ratio, CBS 2x2 and 4x4 with line chunks (a chunk ends after a newline, capped at
:data:`CHUNK_LENGTH` tokens), and each guide alone.  Every model continues the problem's own text (the
``"{prompt}"`` template) and every run stops by :data:`w2s.tasks.code.STOP`, with the evaluations' sampling
(temperature 0.7, top-k 50).  ``base`` always runs, as the reference row.  With several seeds, the base row
also gives the strong model's pass@k over its own samples (k = seeds: the headroom a selector has).

:func:`rewrite_from_raw` (``w2s eval code --out DIR --from-raw``) rewrites the tables, comparisons and plot
from ``DIR/config.json`` and the raw files, executing and loading nothing.
"""

from __future__ import annotations

import statistics
from math import comb
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from ..tasks import code, quality
from . import report
from .common import (SAMPLING, SEARCH_MODELS_CHECKED, check_runs, draw_lines, figure, make_search, mean_of,
                     model_settings, run_prompts, start_run, write_summary)

CODE_RUNS = {"greedy": 1, "base": 1, "bon-4": 4, "bon-16": 16, "cbs-2x2": 4, "cbs-4x4": 16, "tuned-alone": 1,
             "untuned-alone": 1, "stream-aligner": 1, "stream-aligner-speculative": 1, "aligner": 1,
             "cbs-2x2-entropy": 4, "tree-2x2": 4, "nudging": 1}
# the runs that correct the strong model's answer with an aligner (issue 26) instead of steering its sampling
ALIGNER_RUNS = ("stream-aligner", "stream-aligner-speculative", "aligner")
CHUNK_LENGTH = 32  # strong-model tokens a line chunk may run to before it is cut anyway
CHECKED = ("task_ids", "max_new_tokens", "temperature", "top_p", "top_k", *SEARCH_MODELS_CHECKED)
GOLD = ("pass", "aligned", "commented")
GOLD_LABELS = {"pass": "pass", "aligned": "aligned (pass + comment rule)", "commented": "comment rule"}
GETTERS = {"pass": lambda r: float(r["passed"]), "aligned": lambda r: float(r["aligned"]),
           "commented": lambda r: float(r["commented"])}
COLUMNS = ("method", "compute_N", *(f"{g}_{s}" for g in GOLD for s in ("mean", "low", "high", "seed_sd")),
           "pass_at_seeds", "comment_lines", "looping", "truncated", "timeouts", "mean_tokens", "sampled_tokens",
           "guide_tokens", "seconds_per_problem", "first_seconds", "code_changed", "pass_lost", "problems", "seeds")


def comparisons(names: Sequence[str]) -> list[tuple[str, str, tuple[str, ...]]]:
    """The paired comparisons of the code table (first minus second): CBS against the strong model alone
    (sampled and greedy), against Best-of-N at equal samples and against the tuned guide alone; Best-of-N
    against base; the tuned guide against the untuned one; sampled against greedy."""
    pairs = [("cbs-2x2", "base"), ("cbs-4x4", "base"), ("cbs-2x2", "greedy"), ("cbs-4x4", "greedy"),
             ("cbs-2x2", "bon-4"), ("cbs-4x4", "bon-16"), ("cbs-2x2", "tuned-alone"), ("cbs-4x4", "tuned-alone"),
             ("bon-4", "base"), ("bon-16", "base"), ("tuned-alone", "untuned-alone"), ("base", "greedy"),
             ("stream-aligner", "base"), ("aligner", "base"), ("stream-aligner", "aligner"),
             ("stream-aligner", "cbs-2x2"), ("stream-aligner-speculative", "stream-aligner"),
             ("cbs-2x2-entropy", "cbs-2x2"), ("tree-2x2", "cbs-2x2"), ("nudging", "base"), ("nudging", "cbs-2x2")]
    return [(a, b, GOLD) for a, b in pairs if a in names and b in names]


def evaluate_code(out_dir, strong, tuned, untuned, problems: Sequence[dict], *, strong_template="{prompt}",
                  tuned_template="{prompt}", untuned_template="{prompt}", seeds=(0,), max_new_tokens=384,
                  methods=None, batch_size=4, limits: code.Limits = code.Limits(), guides: str = "",
                  aligner=None, whole_aligner=None, aligner_template="chat", progress=True) -> list[dict]:
    """Run every method for every seed over ``problems`` (resuming what ``out_dir`` holds), execute each
    completion's tests and write the summary table, the comparisons and the plot; returns the summary rows.
    ``aligner`` / ``whole_aligner`` (models or functions, as :class:`w2s.StreamAligner` takes them) are
    needed by the runs of :data:`ALIGNER_RUNS` only (:func:`aligned_runs`)."""
    from ..scoring import LogRatioScorer

    problems, seeds = list(problems), list(dict.fromkeys(seeds))
    prompts = [p["prompt"] for p in problems]
    if len(set(prompts)) != len(prompts):
        raise ValueError("problems must have distinct prompts (each raw record is matched to its problem by it).")
    names = check_runs(CODE_RUNS, methods, problems, seeds, batch_size, max_new_tokens, always=("base",),
                       what="problems")
    for name in names:
        if name in ALIGNER_RUNS and (whole_aligner if name == "aligner" else aligner) is None:
            raise ValueError(f"method {name!r} needs {'whole_aligner' if name == 'aligner' else 'aligner'}, "
                             f"got none.")
    models = {"strong": strong, "tuned": tuned, "untuned": untuned}
    templates = {"strong": strong_template, "tuned": tuned_template, "untuned": untuned_template}
    correctors = {who: m for who, m in (("aligner", aligner), ("whole_aligner", whole_aligner)) if m is not None}
    config = {"task_ids": [p["task_id"] for p in problems], "prompts": prompts, "max_new_tokens": max_new_tokens,
              **SAMPLING, **model_settings(models, templates), "guides": guides, "seeds": seeds, "methods": names,
              **{who: getattr(m, "name", getattr(m, "__name__", type(m).__name__)) for who, m in correctors.items()},
              "batch_size": batch_size, "chunk_length": CHUNK_LENGTH, "chunk_end": "line",
              "stop": list(code.STOP), "limits": {"timeout": limits.timeout, "memory_mb": limits.memory_mb,
                                                  "output_kb": limits.output_kb}}
    out = Path(out_dir)
    start_run(out, config, CHECKED)
    by_prompt = {p["prompt"]: p for p in problems}

    def gold(batch_prompts, responses):
        rows = code.gold([by_prompt[p] for p in batch_prompts], responses, limits)
        return [{"task_id": by_prompt[p]["task_id"], **g} for p, g in zip(batch_prompts, rows)]

    scorer = LogRatioScorer(tuned, untuned, tuned_template, untuned_template)
    corrected = aligned_runs(strong, strong_template, aligner, whole_aligner, aligner_template, max_new_tokens, gold)
    for name in names:
        if name in ALIGNER_RUNS:
            generate = corrected[name]
        else:
            search = make_search(name, CODE_RUNS[name], max_new_tokens, CHUNK_LENGTH, chunk_end="line",
                                 stop=code.STOP)
            who = name.removesuffix("-alone") if name.endswith("-alone") else "strong"

            def generate(batch, search=search, who=who, **kw):
                if search.method == "nudging":  # the tuned guide nudges the strong model
                    return search.generate(models["strong"], models["tuned"], batch, scorer=scorer,
                                           base_template=templates["strong"], nudger_template=templates["tuned"],
                                           **kw)
                return search.generate(models[who], scorer, batch, template=templates[who], **kw)

        for seed in seeds:
            run_prompts(out / "raw" / name / f"seed{seed}.jsonl", name, generate, prompts, seed, batch_size, progress,
                        gold)
    return rewrite_from_raw(out)


def aligned_runs(strong, strong_template: str, aligner, whole_aligner, aligner_template: str, max_new_tokens: int,
                 gold) -> dict:
    """The runs of :data:`ALIGNER_RUNS` as ``generate`` functions of :func:`evaluate_code`: the strong model
    (the upstream) completes the function as in every other run, sampled with the same settings, while the
    aligner explains it, a logical line at a time (``stream-aligner``, and ``-speculative``: the next line
    drafted meanwhile; at most ``max_new_tokens / 8`` lines of at most :data:`CHUNK_LENGTH` tokens) or the
    whole answer once (``aligner``, ``max_new_tokens``); under the code guard (a correction that changes
    code is refused) and the same stop rule.  ``sampled_tokens`` is the upstream answer's length in tokens.
    A record also keeps the upstream's own answer's verdict (``passed_original``), whether the final code
    differs from it token for token (``code_changed``), the corrections refused (``rejected``) and the time
    to the first corrected text."""
    from types import SimpleNamespace

    from ..aligner.stream import Aligner, StreamAligner
    from ..backends.base import SamplingParams

    sampling = SamplingParams(**SAMPLING, stop=code.STOP)
    lines = StreamAligner(max_sentences=max(max_new_tokens // 8, 1), max_sentence_tokens=CHUNK_LENGTH,
                          max_correction_tokens=128,
                          sampling=sampling, unit="line", guard="code", function_body=True)
    loops = {"stream-aligner": (lines, aligner), "stream-aligner-speculative": (replace(lines, speculative=True), aligner),
             "aligner": (Aligner(max_new_tokens=max_new_tokens, max_correction_tokens=2 * max_new_tokens,
                                 sampling=sampling, unit="line", guard="code"), whole_aligner)}

    def run(name, batch, seed=0, batch_size=None, start_index=0, progress=False):
        loop, corrector = loops[name]
        answers = loop.run(strong, corrector, batch, seed=seed, start_index=start_index,
                           upstream_template=strong_template, aligner_template=aligner_template)
        originals = [code.finish(a.original) for a in answers]
        before = gold(list(batch), originals)
        out = []
        for answer, original, verdict in zip(answers, originals, before):
            response = code.finish(answer.corrected)
            tokens = len(strong.encode(response)) if hasattr(strong, "encode") else len(response.split())
            rejected = sum(s.rejected is not None for s in answer.steps) + (answer.rejected is not None)
            out.append(SimpleNamespace(
                prompt=answer.question, response=response, score=None, num_tokens=tokens,
                sampled_tokens=len(strong.encode(original)) if hasattr(strong, "encode") else tokens,
                guide_tokens=answer.aligner_tokens, finished=True,
                extra={"passed_original": verdict["passed"], "rejected": rejected,
                       "code_changed": code_changed(original, response),
                       "first_seconds": answer.first_seconds}))
        return out

    return {name: (lambda batch, name=name, **kw: run(name, batch, **kw)) for name in loops}


def code_changed(original: str, response: str) -> bool:
    """Whether ``response``'s code differs from ``original``'s token for token; the same text never does, also
    where it does not tokenize (then any other text counts as changed)."""
    return response != original and code.changed_code(original, response) is not None


def rewrite_from_raw(out_dir) -> list[dict]:
    """Rewrite ``summary``, ``comparisons`` and the plot of ``out_dir`` from its ``config.json`` and raw files
    (each record keeps its executed verdict): every run whose seed files are complete, in the table's order."""
    out = Path(out_dir)
    config, runs, names, notes = report.read_table(out, "prompts", list(CODE_RUNS))
    rows = [_summary_row(n, runs[n], len(config["prompts"]), config["max_new_tokens"]) for n in names]
    write_summary(out, rows, COLUMNS, markdown_table(rows, config, notes))
    arms = {n: report.arm(n, runs[n], GETTERS, "response") for n in names}
    report.write_comparisons(out, report.compare(arms, comparisons(names)), GOLD_LABELS, item="problem")
    _plot(rows, out / "gold_vs_compute.png")
    return rows


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k of one problem from ``n`` samples of which ``c`` pass (Chen et al. 2021)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}.")
    return 1.0 if n - c < k else 1.0 - comb(n - c, k) / comb(n, k)


def _summary_row(name: str, run: dict, n_problems: int, max_new_tokens: int) -> dict:
    flat = report.flat(run)
    row = {"method": name, "compute_N": report.compute_n(name, CODE_RUNS), "problems": n_problems,
           "seeds": len(run)}
    for g in GOLD:
        row.update(report.gold_stats(run, GETTERS[g], g))
    seeds = sorted(run)
    row["pass_at_seeds"] = statistics.fmean(
        pass_at_k(len(seeds), sum(run[s][i]["passed"] for s in seeds), len(seeds)) for i in range(n_problems)
    ) if len(seeds) > 1 else None
    q = quality.summarize([r["response"] for r in flat], flat, max_new_tokens)
    row.update(comment_lines=statistics.fmean(r["comments"] for r in flat), looping=q["looping"],
               truncated=q["truncated"], timeouts=sum(r["status"] == "timeout" for r in flat),
               mean_tokens=statistics.fmean(r["num_tokens"] for r in flat),
               sampled_tokens=statistics.fmean(r["sampled_tokens"] for r in flat),
               guide_tokens=mean_of(flat, "guide_tokens"),
               seconds_per_problem=statistics.fmean(r["seconds"] for r in flat),
               first_seconds=mean_of(flat, "first_seconds"), code_changed=mean_of(flat, "code_changed"))
    # (an aligner's run) problems whose upstream answer passed and whose corrected one fails
    lost = [r["passed_original"] and not r["passed"] for r in flat if "passed_original" in r]
    row["pass_lost"] = statistics.fmean(lost) if lost else None
    return row


def markdown_table(rows: list[dict], config: dict, notes: Sequence[str] = ()) -> str:
    num = report.num
    lines = ["| method | compute N | pass [95% CI] | aligned [95% CI] | comment rule [95% CI] | pass seed sd "
             "| comment lines | loops | truncated | timeouts | response tokens | sampled tokens | small-model tokens "
             "| s / problem "
             "| first (s) | code changed | pass lost | problems | seeds |",
             "|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {num(r['compute_N'], 0)} | {report.gold_cell(r, 'pass')} "
                     f"| {report.gold_cell(r, 'aligned')} | {report.gold_cell(r, 'commented')} "
                     f"| {num(r['pass_seed_sd'])} | {r['comment_lines']:.2f} | {report.share(r['looping'])} "
                     f"| {report.share(r['truncated'])} | {r['timeouts']} | {r['mean_tokens']:.1f} "
                     f"| {r['sampled_tokens']:.0f} | {num(r['guide_tokens'], 0)} | {r['seconds_per_problem']:.2f} "
                     f"| {num(r['first_seconds'])} "
                     f"| {report.share(r['code_changed'])} | {report.share(r['pass_lost'])} | {r['problems']} "
                     f"| {r['seeds']} |")
    base = next((r for r in rows if r["method"] == "base"), None)
    lines += ["", "Pass: the problem's tests ran to their end in the sandbox (`w2s.tasks.sandbox`). Comment rule: "
              "at least one comment line, and one per four code lines. Aligned: both. " + report.GOLD_NOTE + " "
              "Comment lines: mean per completion. Loops and truncated: the shared quality rules (more than 30% "
              f"repeated word trigrams; all {config['max_new_tokens']} tokens used without finishing). Timeouts: "
              "completions stopped at the sandbox's time limit. Compute N: strong-model samples per problem per "
              f"step (W·K for CBS, with line chunks capped at {config['chunk_length']} tokens; n for Best-of-N). "
              "Sampled tokens: all the strong model drew per problem. Small-model tokens: the tokens the guides "
              "ran to score (search rows) or the aligner generated (aligner rows), per problem. First (s): seconds "
              "to the first corrected "
              "text, code changed: answers whose final code differs from the upstream's own token for token, pass "
              "lost: answers whose upstream version passed and corrected version fails (the aligners' runs; the "
              "code guard refuses corrections that change code). Paired differences: `comparisons.md`."]
    if base is not None and base["pass_at_seeds"] is not None:
        lines += ["", f"Base pass@{base['seeds']} over its {base['seeds']} seeds' samples: "
                      f"{base['pass_at_seeds']:.3f} (the headroom any selector of {base['seeds']} samples has)."]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: Path) -> None:
    got = {r["method"]: r for r in rows}
    fig = figure(10, 4.2)
    families = [(["base", "bon-4", "bon-16"], "o-", "Best-of-N"), (["base", "cbs-2x2", "cbs-4x4"], "s-", "CBS (line chunks)")]
    for i, (column, label) in enumerate((("pass", "pass rate"), ("aligned", "aligned rate"))):
        ax = fig.add_subplot(1, 2, i + 1)
        draw_lines(ax, got, families, column)
        for name, style in (("tuned-alone", "--"), ("untuned-alone", ":")):
            if name in got:
                ax.axhline(got[name][f"{column}_mean"], ls=style, color="gray", label=f"{name.replace('-', ' ')} (guide)")
        for name, marker in (("greedy", "kx"), ("base", "k*")):
            if name in got:
                ax.plot([got[name]["sampled_tokens"]], [got[name][f"{column}_mean"]], marker, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("strong-model tokens sampled per problem")
        ax.set_ylabel(f"{label}, 95% CI over problems")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("HumanEval held-out problems: gold vs compute")
    fig.savefig(path, dpi=120)
