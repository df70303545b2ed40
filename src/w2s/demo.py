"""``w2s demo``: a real pretrained model's plain continuations beside weak-to-strong ones, with gold rewards.

The strong model (SmolLM2-135M-Instruct) continues the opening words of sentences from a novel that no
model here trained on; chunk-level beam search steers it with the project's small sentiment guides.
The gold reward is VADER's compound sentiment, which no model saw during search.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from statistics import mean

from .models import Models
from .scoring import LogRatioScorer
from .search import ChunkBeamSearch, Sampling
from .tasks import sentiment


def run_demo(models: Models, *, num_prompts: int = 6, max_new_tokens: int = 40, seed: int = 0,
             search: ChunkBeamSearch | None = None, out=sys.stdout) -> dict:
    """Print the side-by-side comparison; return the mean gold rewards ``{"plain": .., "w2s": ..}``."""
    prompts = sentiment.heldout_prompts(num_prompts, seed=1)
    strong, tuned, untuned = models.strong.model, models.tuned, models.untuned
    scorer = LogRatioScorer(tuned.model, untuned.model, tuned.template, untuned.template)
    search = search or ChunkBeamSearch(4, 4, 5, max_new_tokens=max_new_tokens)
    kw = dict(seed=seed, template=models.strong.template, batch_size=num_prompts, progress=True)
    plain = list(Sampling(max_new_tokens=search.max_new_tokens).generate(strong, None, prompts, **kw))
    steered = list(search.generate(strong, scorer, prompts, **kw))

    width = min(shutil.get_terminal_size((100, 20)).columns, 110)
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
    print(f"\nMean gold reward (VADER compound, -1..1) over {len(prompts)} prompts: "
          f"plain {means['plain']:+.3f}  ->  weak-to-strong {means['w2s']:+.3f}", file=out)
    print(f"Strong model: {strong.name} ({strong.num_parameters / 1e6:.0f}M parameters); guides: "
          f"{tuned.model.num_parameters / 1e6:.1f}M each; search: CBS W={search.beam_width}, "
          f"K={search.successors_per_beam}, L={search.chunk_length}.", file=out)
    return means
