"""``w2s demo``: a real pretrained model's plain output beside weak-to-strong output, with gold scores.

Two parts:

- **sentiment** (:func:`run_demo`): the strong model (SmolLM2-135M-Instruct) continues the opening words of
  sentences from a novel that no model here trained on; chunk-level beam search steers it with the project's
  small sentiment guides.  The gold reward is VADER's compound sentiment, which no model saw during search.
  Both rows sample with the evaluations' repetition control (:data:`REPETITION_CONTROL`), so that neither
  prints a looping continuation.
- **code** (:func:`run_code_demo`): Qwen2.5-Coder-0.5B-Instruct completes two held-out HumanEval problems,
  plainly and steered by the code style guides (CBS 2x2 with line chunks, the code evaluation's settings);
  the gold is the problem's tests, executed in the sandbox, and the comment rule of :mod:`w2s.tasks.code`.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from statistics import mean
from typing import Sequence

from .backends.base import SamplingParams
from .evaluation.common import REPETITION_CONTROL, SAMPLING, make_search
from .models import Models
from .scoring import LogRatioScorer
from .search import ChunkBeamSearch, Sampling
from .tasks import quality, sentiment

# the code part's problems, fixed by their shortness before any demo output was seen (both held out)
CODE_PROBLEMS = ("HumanEval/3", "HumanEval/13")
CODE_GUIDED = "cbs-2x2"  # the code evaluation's run the demo shows


def run_demo(models: Models, *, num_prompts: int = 6, max_new_tokens: int = 40, seed: int = 0,
             search: ChunkBeamSearch | None = None, out=sys.stdout) -> dict:
    """Print the side-by-side comparison; return the mean gold rewards ``{"plain": .., "w2s": ..}`` and the
    number of looping continuations of each (``"plain_loops"``, ``"w2s_loops"``: :func:`w2s.tasks.quality.loops`)."""
    prompts = sentiment.heldout_prompts(num_prompts, seed=1)
    strong, tuned, untuned = models.strong.model, models.tuned, models.untuned
    scorer = LogRatioScorer(tuned.model, untuned.model, tuned.template, untuned.template)
    sampling = SamplingParams(**SAMPLING, **REPETITION_CONTROL)
    search = search or ChunkBeamSearch(4, 4, 5, max_new_tokens=max_new_tokens, sampling=sampling)
    kw = dict(seed=seed, template=models.strong.template, batch_size=num_prompts, progress=True)
    plain = list(Sampling(max_new_tokens=search.max_new_tokens, sampling=search.sampling).generate(strong, None, prompts, **kw))
    steered = list(search.generate(strong, scorer, prompts, **kw))

    width = _width()
    rewards = {"plain": [], "w2s": []}
    for i, (prompt, a, b) in enumerate(zip(prompts, plain, steered), 1):
        print(f"\n[{i}] {prompt} ...", file=out)
        for label, key, result in (("plain sampling", "plain", a), ("weak-to-strong", "w2s", b)):
            reward = sentiment.gold_reward(result.response)
            rewards[key].append(reward)
            head = f"    {label:<15} (VADER {reward:+.2f}) "
            body = " ".join(result.response.split()) or "(empty)"
            print(textwrap.fill(body, width, initial_indent=head, subsequent_indent=" " * len(head)), file=out)
    means = {k: mean(v) for k, v in rewards.items()}
    loops = {f"{k}_loops": sum(quality.loops(r.response) for r in rows) for k, rows in (("plain", plain), ("w2s", steered))}
    print(f"\nMean gold reward (VADER compound, -1..1) over {len(prompts)} prompts: "
          f"plain {means['plain']:+.3f}  ->  weak-to-strong {means['w2s']:+.3f}; looping continuations: "
          f"{loops['plain_loops']} and {loops['w2s_loops']}", file=out)
    print(f"Strong model: {strong.name} ({strong.num_parameters / 1e6:.0f}M parameters); guides: "
          f"{tuned.model.num_parameters / 1e6:.1f}M each; search: CBS W={search.beam_width}, "
          f"K={search.successors_per_beam}, L={search.chunk_length}; repetition penalty "
          f"{search.sampling.repetition_penalty} in both rows.", file=out)
    return {**means, **loops}


def run_code_demo(coder, tuned, untuned, *, problems: Sequence[dict] | None = None, seed: int = 0,
                  max_new_tokens: int = 320, out=sys.stdout) -> list[dict]:
    """Print ``coder``'s plain and style-guided completions of :data:`CODE_PROBLEMS` (or ``problems``) with
    their test verdicts and comment counts; return one gold row per completion (:func:`w2s.tasks.code.gold`,
    plus ``task_id`` and ``row``: ``"plain"`` or ``"guided"``)."""
    from .evaluation.code import CHUNK_LENGTH
    from .tasks import code

    if problems is None:
        by_id = {p["task_id"]: p for p in code.split(code.load_problems(), "test")}
        problems = [by_id[t] for t in CODE_PROBLEMS]
    prompts = [p["prompt"] for p in problems]
    scorer = LogRatioScorer(tuned, untuned)
    kw = dict(seed=seed, batch_size=len(prompts), progress=True)
    rows = {}
    for label, name, compute in (("plain", "base", 1), ("guided", CODE_GUIDED, 4)):
        search = make_search(name, compute, max_new_tokens, CHUNK_LENGTH, chunk_end="line", stop=code.STOP)
        rows[label] = [code.finish(r.response) for r in search.generate(coder, scorer, prompts, **kw)]
    verdicts = {label: code.gold(problems, texts) for label, texts in rows.items()}

    found = []
    for i, problem in enumerate(problems):
        signature = next(line for line in problem["prompt"].splitlines() if line.startswith("def "))
        print(f"\n[{problem['task_id']}] {signature}", file=out)
        for label, heading in (("plain", "plain sampling"), ("guided", f"style-guided ({CODE_GUIDED})")):
            g = verdicts[label][i]
            verdict = "passes its tests" if g["passed"] else f"fails ({g['status']})"
            print(f"  {heading}: {verdict}; {g['comments']} comment lines, {g['code_lines']} code lines"
                  f"{' (comment rule met)' if g['commented'] else ''}", file=out)
            print(textwrap.indent(rows[label][i].rstrip() or "(empty)", "  | "), file=out)
            found.append({"task_id": problem["task_id"], "row": label, **g})
    for label in rows:
        mine = [r for r in found if r["row"] == label]
        print(f"{label}: {sum(r['passed'] for r in mine)} of {len(mine)} pass, "
              f"{sum(r['commented'] for r in mine)} of {len(mine)} meet the comment rule", file=out)
    return found


def _width() -> int:
    return min(shutil.get_terminal_size((100, 20)).columns, 110)
