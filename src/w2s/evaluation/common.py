"""What the evaluation harnesses share: the settings check of a resumed run, raw files and summary tables."""

from __future__ import annotations

import csv
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

from ..validation import check_range
from . import report

SAMPLING = dict(temperature=0.7, top_p=1.0, top_k=50)  # the authors' settings
# a run name ending in NO_REPEAT is that run sampled with REPETITION_CONTROL on top of the authors' settings;
# chosen on a pilot of CBS 4x4 over 40 of the sentiment prompts, 1 seed (looping answers: none 8/40, this 0/40)
NO_REPEAT = "-norepeat"
REPETITION_CONTROL = dict(repetition_penalty=1.2)


def start_run(out: Path, config: dict, checked: Sequence[str]) -> None:
    """Create ``out`` and write ``config.json``; a rerun into it must match the ``checked`` settings (those
    it records: a setting recorded only since a later version is checked from the run that records it)."""
    path = out / "config.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        for key in checked:
            if key in old and old[key] != config.get(key):
                was, now = (_short(v) for v in (old.get(key), config[key]))
                raise ValueError(f"{out} holds a run with a different {key} ({was} there, {now} now); "
                                 "use another output directory or the same settings to resume.")
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, config)


def write_config(out: Path, config: dict) -> None:
    """``out/config.json``, replaced in one step: runs side by side into one directory each rewrite it, and
    a reader (``--from-raw``) never sees a torn or interleaved file."""
    path = Path(out) / "config.json"
    tmp = path.with_name(f".config.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _short(value) -> str:
    if isinstance(value, list):
        return f"{len(value)} items starting {_short(value[0]) if value else '[]'}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def read_raw(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def write_summary(out: Path, rows: list[dict], columns: Sequence[str], markdown: str) -> None:
    with open(out / "summary.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    (out / "summary.md").write_text(markdown, encoding="utf-8")


def figure(width: float = 6.4, height: float = 4.2):
    """A matplotlib figure that draws without a display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def check_runs(runs: dict, methods, items: list, seeds: list, batch_size: int, max_new_tokens: int,
               always: tuple[str, ...] = (), what: str = "prompts") -> list[str]:
    """The run names of ``runs`` to do (``methods``, None: all; plus those ``always`` done), in order,
    once the arguments shared by the evaluations are checked (``what`` names the items)."""
    unknown = sorted(set(methods or ()) - set(runs))
    if unknown:
        raise ValueError(f"methods must be among {list(runs)}, got {unknown}.")
    names = [m for m in runs if methods is None or m in methods or m in always]
    if not items or not seeds or not names:
        raise ValueError(f"{what}, seeds and methods must not be empty.")
    check_range("batch_size", batch_size, low=1, integer=True)
    check_range("max_new_tokens", max_new_tokens, low=1, integer=True)
    return names


# the search models' settings (model_settings) a resumed run must share
SEARCH_MODELS_CHECKED = tuple(f"{who}{what}" for what in ("", "_template", "_dtype")
                              for who in ("strong", "tuned", "untuned"))


def model_settings(models: dict, templates: dict) -> dict:
    """The models' names, templates and (of a local model) weights' dtypes as a run's settings record them
    (``strong``, ``strong_template``, ``strong_dtype``, ...)."""
    dtypes = {who: getattr(getattr(m, "model", None), "dtype", None) for who, m in models.items()}
    return {**{who: getattr(m, "name", type(m).__name__) for who, m in models.items()},
            **{f"{who}_template": t for who, t in templates.items()},
            **{f"{who}_dtype": str(d).removeprefix("torch.") for who, d in dtypes.items() if d is not None}}


def make_search(name: str, compute: int, max_new_tokens: int, chunk_length: int, chunk_end: str | None = None,
                stop: tuple[str, ...] = ()):
    """The search of a compared run, with the authors' sampling (and the task's ``stop`` strings), by its name:

    - ``base``, ``*-alone``: plain sampling (of the strong model, or of the named small model); ``greedy``:
      greedy decoding of the strong model;
    - ``bon-N``: Best-of-N; ``pruned-bon-N``: Best-of-N pruned by half at :func:`prune_checkpoints`;
    - ``cbs-WxK``: CBS with chunks of ``chunk_length`` tokens (ending early at ``chunk_end`` when given:
      ``"line"`` for code); ``cbs-WxK-sentence``: step-level chunks that
      end at sentence ends, capped at twice that;
    - ``front-WxK``: CBS with the front-loaded schedule of successors (the same budget as ``cbs-WxK``);
      ``adaptive-WxK``: that, plus the adaptive stop after :data:`PATIENCE` chunks of a stable best beam;
    - ``cbs-WxK-entropy``: chunks that end where the strong model's entropy reaches :data:`CHUNK_ENTROPY`
      (CARDS' segments), capped at twice ``chunk_length``;
    - ``tree-WxK``: tree search with K children of ``chunk_length`` tokens and W simulations per step (the
      per-step budget of ``cbs-WxK``);
    - ``nudging``: Nudging by the tuned model, greedy as its authors ran it, gamma :data:`NUDGING_GAMMA`;
    - ``eft``: EFT with beta 1;
    - ``X-norepeat``: run ``X`` with :data:`REPETITION_CONTROL`.
    """
    from ..backends.base import SamplingParams
    from ..search import (AdaptiveSearch, BestOfN, ChunkBeamSearch, EmulatedFineTuning, Nudging, PrunedBestOfN,
                          Sampling, TreeSearch)

    sampling = SAMPLING
    if name.endswith(NO_REPEAT):  # the same run with the evaluations' repetition control
        name, sampling = name.removesuffix(NO_REPEAT), {**SAMPLING, **REPETITION_CONTROL}
    if name == "greedy":
        sampling = {**sampling, "temperature": 0.0}
    kw = dict(max_new_tokens=max_new_tokens, sampling=SamplingParams(**sampling, stop=stop))
    if name.startswith("bon-"):
        return BestOfN(n=compute, **kw)
    if name.startswith("pruned-bon-"):
        return PrunedBestOfN(n=compute, checkpoints=prune_checkpoints(max_new_tokens), prune_fraction=0.5, **kw)
    if name == "nudging":
        return Nudging(gamma=NUDGING_GAMMA, max_new_tokens=max_new_tokens,
                       sampling=SamplingParams(temperature=0.0, top_k=0, stop=stop))
    family, _, rest = name.partition("-")
    if family == "tree":
        width, successors = map(int, rest.split("x"))
        return TreeSearch(children=successors, simulations=width, chunk_length=chunk_length, **kw)
    if family in ("cbs", "front", "adaptive"):
        shape, _, chunks = rest.partition("-")
        width, successors = map(int, shape.split("x"))
        kw.update(beam_width=width, successors_per_beam=successors, chunk_length=chunk_length, chunk_end=chunk_end)
        if chunks == "sentence":
            kw.update(chunk_end="sentence", chunk_length=2 * chunk_length)
        if chunks == "entropy":
            kw.update(chunk_entropy=CHUNK_ENTROPY, chunk_length=2 * chunk_length)
        if family == "cbs":
            return ChunkBeamSearch(**kw)
        return AdaptiveSearch(patience=PATIENCE if family == "adaptive" else None, **kw)
    return EmulatedFineTuning(beta=1.0, **kw) if name == "eft" else Sampling(**kw)


PATIENCE = 2  # chunks of a stable best beam after which the evaluations' adaptive CBS stops searching
CHUNK_ENTROPY = 3.0  # nats: where the evaluations' entropy-cut chunks end (CARDS' threshold)
NUDGING_GAMMA = 0.4  # the evaluations' Nudging threshold (the paper's examples)


def prune_checkpoints(max_new_tokens: int) -> tuple[int, ...]:
    """Where the evaluations' pruned Best-of-N scores and halves its samples: at a fifth and two fifths of
    the length limit (16 samples: 8 go on after the first, 4 after the second)."""
    return tuple(sorted({max(1, max_new_tokens // 5), max(1, 2 * max_new_tokens // 5)}))


# the budget variants on the reward-against-tokens plots: run -> (marker, label)
VARIANT_MARKERS = {"pruned-bon-16": ("v", "pruned Best-of-16"), "cbs-4x4-sentence": ("P", "CBS 4x4, sentence chunks"),
                   "front-4x4": (">", "CBS 4x4, front-loaded"), "adaptive-4x4": ("X", "CBS 4x4, front-loaded + stop"),
                   "cbs-4x4-entropy": ("*", "CBS 4x4, entropy chunks"), "tree-4x4": ("D", "tree search 4x4"),
                   "nudging": ("s", "Nudging")}


def draw_lines(ax, got: dict, families, column: str) -> int:
    """A line per family ``(names, fmt, label)`` with at least two of its runs in ``got`` (run -> summary
    row): ``{column}_mean`` with its 95% interval (``_low``, ``_high``) against the mean strong-model tokens
    sampled per prompt; returns how many."""
    drawn = 0
    for names, fmt, label in families:
        pts = [got[n] for n in names if n in got]
        if len(pts) > 1:
            ax.errorbar([p["sampled_tokens"] for p in pts], [p[f"{column}_mean"] for p in pts],
                        yerr=report.yerr(pts, column), fmt=fmt, capsize=3, label=label)
            drawn += 1
    return drawn


def draw_points(ax, got: dict, names, column: str) -> None:
    """One marker per run of ``names`` present in ``got`` (run -> summary row): its ``{column}_mean`` with its
    95% interval against its mean strong-model tokens sampled per prompt."""
    for name in names:
        if name in got:
            p = got[name]
            marker, label = VARIANT_MARKERS.get(name, ("o", name))
            ax.errorbar([p["sampled_tokens"]], [p[f"{column}_mean"]], yerr=report.yerr([p], column), fmt=marker,
                        capsize=3, markersize=8, label=label)


def run_prompts(path: Path, name: str, generate, prompts: Sequence[str], seed: int, batch_size: int, progress: bool,
                gold: Callable[[list[str], list[str]], list[dict]]) -> None:
    """Generate the prompts that ``path`` does not hold yet (``generate(batch, seed=, batch_size=,
    start_index=, progress=)`` -> results), one line per prompt with ``gold(prompts, responses)``'s columns,
    appended batch by batch."""
    from ..jsonl import append_batches, finite

    def rows(batch, start):
        began = time.perf_counter()
        results = list(generate(batch, seed=seed, batch_size=len(batch), start_index=start, progress=False))
        seconds = (time.perf_counter() - began) / len(batch)
        golds = gold([r.prompt for r in results], [r.response for r in results])
        return [{"prompt": r.prompt, "response": r.response, **g, "score": finite(r.score), "num_tokens": r.num_tokens,
                 "sampled_tokens": r.sampled_tokens, "guide_tokens": r.guide_tokens, "finished": r.finished,
                 "seconds": seconds, **getattr(r, "extra", {})}
                for r, g in zip(results, golds)]

    append_batches(path, prompts, batch_size, rows, desc=f"{name} seed {seed}", unit="prompt", progress=progress)


def mean_of(records: list[dict], column: str) -> float | None:
    """The mean of ``column`` over ``records``, None when a record lacks it (a run older than the column)."""
    values = [r.get(column) for r in records]
    return None if not values or None in values else statistics.fmean(values)
