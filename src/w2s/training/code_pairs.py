"""Preference pairs for the code guides, from a coder's own samples on HumanEval's *training* problems.

Both kinds label samples by the executed gold of :mod:`w2s.tasks.code`, by a rule fixed before any
held-out result:

- ``style`` (the style pair's tuned guide): the coder answers each problem ``samples`` times as it is and
  ``samples`` times after :data:`w2s.tasks.code.COMMENT_INSTRUCTION` (a comment line asking it to explain
  its steps), so that both kinds of completion occur.  *chosen*: a completion that passes its tests and
  meets the comment rule; *rejected*: one that passes and has no comment line.  The pair's prompt is the
  problem as it is (no instruction): the guide learns to prefer explained code for the plain problem.
- ``correct`` (the correctness pair's tuned guide): ``samples`` completions of the problem as it is;
  *chosen* passes, *rejected* fails.

A problem without both kinds gives no pair (recorded as skipped).  Per problem the pair is the first
chosen and the first rejected sample in sampling order (plain samples first), so the pairs are a pure
function of the samples.  Every sample is kept with its gold in ``samples.jsonl`` beside the pairs file;
both are appended problem batch by problem batch, and a rerun continues where they stop.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

from ..defaults import CODE_GUIDE_KINDS as KINDS
from ..jsonl import dumps, read_complete
from ..tasks import code
from ..validation import check_choice, check_range


def pair_of(kind: str, samples: Sequence[dict]) -> tuple[dict, dict] | None:
    """The (chosen, rejected) samples of one problem by ``kind``'s rule, or None."""
    if kind == "style":
        chosen = [s for s in samples if s["passed"] and s["commented"]]
        rejected = [s for s in samples if s["passed"] and s["comments"] == 0]
    else:
        chosen = [s for s in samples if s["passed"] and not s["instructed"]]
        rejected = [s for s in samples if not s["passed"] and not s["instructed"]]
    return (chosen[0], rejected[0]) if chosen and rejected else None


def build_code_pairs(model, problems: Sequence[dict], out_path: str | Path, *, kind: str = "style",
                     samples: int = 4, max_new_tokens: int = 256, temperature: float = 0.8, top_p: float = 0.95,
                     seed: int = 0, batch_size: int = 4, limits: code.Limits = code.Limits(), progress: bool = True
                     ) -> list[dict]:
    """Sample, execute and pair (module docstring) on ``problems`` (the training split: a held-out problem
    is refused); writes ``{prompt, chosen, rejected, task_id}`` lines to ``out_path`` and every sample to
    ``samples.jsonl`` beside it; returns the pairs."""
    from tqdm.auto import tqdm

    from ..backends.base import SamplingParams
    from ..search.cbs import prompt_seeds

    check_choice("kind", kind, KINDS)
    check_range("samples", samples, low=1, integer=True)
    check_range("batch_size", batch_size, low=1, integer=True)
    code.check_training(problems)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sample_path = out_path.with_name("samples.jsonl")
    done = read_complete(out_path)
    if sample_path.exists():  # samples of a batch whose pairs were not written (a stop mid-batch) go
        ids = {r["task_id"] for r in done}
        kept = [r for r in read_complete(sample_path) if r["task_id"] in ids]
        sample_path.write_text("".join(map(dumps, kept)), encoding="utf-8")
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=0, stop=code.STOP)
    variants = [False, True] if kind == "style" else [False]
    with open(out_path, "a", encoding="utf-8") as out, open(sample_path, "a", encoding="utf-8") as sample_file, \
            tqdm(total=len(problems), initial=len(done), disable=not progress, desc=f"{kind} pairs",
                 unit="problem") as bar:
        for start in range(len(done), len(problems), batch_size):
            batch = list(problems[start : start + batch_size])
            prompts = [(code.COMMENT_INSTRUCTION if instructed else "") + p["prompt"]
                       for p in batch for instructed in variants]
            seeds = prompt_seeds(seed, start * len(variants), len(prompts))
            drawn = model.open(prompts, params, seeds).expand(list(range(len(prompts))), samples, max_new_tokens)
            owners = [batch[i // (samples * len(variants))] for i in range(len(drawn))]
            texts = [code.finish(c.text) for c in drawn]
            golds = code.gold(owners, texts, limits)
            for j, problem in enumerate(batch):
                mine = []
                for k in range(j * samples * len(variants), (j + 1) * samples * len(variants)):
                    record = {"task_id": problem["task_id"], "instructed": (k // samples) % len(variants) == 1,
                              "completion": texts[k], "finished": drawn[k].finished, **golds[k]}
                    sample_file.write(dumps(record))
                    mine.append(record)
                pair = pair_of(kind, mine)
                record = ({"task_id": problem["task_id"], "prompt": problem["prompt"], "chosen": pair[0]["completion"],
                           "rejected": pair[1]["completion"]} if pair else
                          {"task_id": problem["task_id"], "prompt": problem["prompt"], "skipped": True})
                out.write(dumps(record))
                done.append(record)
            sample_file.flush()
            out.flush()
            bar.update(len(batch))
    return [r for r in done if not r.get("skipped")]


def data_hash(path: str | Path) -> str:
    """The SHA-256 of a pairs file, as a guide's model card and training record cite it."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
