"""Tree search over chunks scored by the weak-to-strong log-ratio (after W2S-AlignTree, AAAI 2026,
github.com/alexzdy/W2S-AlignTree, with plain UCT selection).

The answer grows one chunk per step.  At each step the answer so far is the root of a tree whose nodes are
its continuations, a chunk of the large model's samples at a time.  ``simulations`` times per step, for
every prompt at once:

1. **Select**: from the root, go down to a node with no children yet, at each node taking the child with the
   highest ``Q + c * sqrt(ln N_parent / N_child)``, where ``Q`` is the child's value min-max normalized among
   its siblings (1 for the best, 0 for the worst) and ``N`` counts visits.
2. **Expand**: the large model samples ``children`` chunks of ``chunk_length`` tokens from it (the same chunk
   twice counts once), and the scorer scores each child's whole text: its value, and one visit (no rollout).
   A child that ends the answer, or reaches ``max_new_tokens``, is never expanded.
3. **Back up**: every node on the path gains a visit, and its value becomes its best child's.

Then the root moves to its best-valued child, whose subtree is kept for the next step; the answer ends when
that child does.  With ``simulations=1`` each step expands the root once and keeps its best child: chunk-level
beam search with W=1, K=``children`` and L=``chunk_length``, sample for sample.  Each step samples at most
``simulations * children * chunk_length`` large-model tokens per prompt, as CBS samples ``W * K * L``: at
``simulations = W`` the two spend the same per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from ..backends.base import SamplingParams, check_sampling, context_error
from ..scoring import as_scorer
from ..validation import check_range, check_template
from .cbs import MAX_ROWS, SearchResult, in_batches


@dataclass(eq=False)
class Node:
    """A node of the tree: the whole answer text up to it."""

    text: str
    finished: bool
    num_tokens: int
    value: float = 0.0
    visits: int = 0
    children: list["Node"] = field(default_factory=list)

    def leaf(self, max_new_tokens: int) -> bool:
        """Whether it can never be expanded."""
        return self.finished or self.num_tokens >= max_new_tokens


@dataclass(frozen=True)
class TreeSearch:
    """Monte-Carlo tree search over chunks, scored by the log-ratio of the tuned and untuned guides.

    Attributes:
        children: K, chunks sampled from a node when it is expanded.
        chunk_length: L, large-model tokens per chunk.
        simulations: tree searches (select, expand, back up) per step, before the answer grows by one chunk.
        exploration: c, the weight of the exploration term of UCT selection.
        max_new_tokens: length limit of a response, in large-model tokens.
        sampling: the large model's sampling (the weak-to-strong preset by default: 0.7, 1.0, 50).
    """

    children: int = 4
    chunk_length: int = 5
    simulations: int = 4
    exploration: float = 1.5
    max_new_tokens: int = 50
    sampling: SamplingParams = field(default_factory=SamplingParams)

    method = "tree"

    def __post_init__(self) -> None:
        check_range("children", self.children, low=1, integer=True)
        check_range("chunk_length", self.chunk_length, low=1, integer=True)
        check_range("simulations", self.simulations, low=1, integer=True)
        check_range("exploration", self.exploration, low=0.0)
        check_range("max_new_tokens", self.max_new_tokens, low=1, integer=True)
        check_sampling(self.sampling)

    rows_formula = "children"  # what max_rows is, in the config's parameters

    @property
    def max_rows(self) -> int:
        """Large-model rows a prompt samples at once."""
        return self.children

    def check_rows(self, limit: int | None, allowance: str = "max_rows") -> None:
        """Refuse (ValueError), before any work, more than ``limit`` large-model rows per prompt at once."""
        if limit is not None and self.max_rows > limit:
            raise ValueError(f"children = {self.children} large-model rows per prompt at once, more than "
                             f"{allowance} = {limit}; lower children, or raise {allowance}.")

    def generate(self, model, scorer, prompts: Sequence[str], *, seed: int = 0, template: str = "{prompt}",
                 batch_size: int = 8, progress: bool = False, start_index: int = 0, on_step=None,
                 max_rows: int | None = MAX_ROWS) -> Iterator[SearchResult]:
        """Search for each prompt, ``batch_size`` prompts in lock step; yields results in input order.
        ``on_step(prompt_index, [answer])`` is called after each step with the answer so far; ``seed``,
        ``start_index`` and ``max_rows`` as for :meth:`ChunkBeamSearch.generate`."""
        if isinstance(prompts, str):
            raise ValueError("prompts must be a list of strings, got a single string.")
        check_template("template", template)
        check_range("batch_size", batch_size, low=1, integer=True)
        self.check_rows(max_rows)
        scorer = as_scorer(scorer)
        yield from in_batches(list(prompts), batch_size, seed, start_index, progress, type(self).__name__, on_step,
                              lambda batch, seeds, step: self._search(model, scorer, batch, seeds, template, step))

    def context_error(self, model, scorer, prompt: str, template: str = "{prompt}") -> str | None:
        """Why ``prompt`` and ``max_new_tokens`` would not fit the large model's context, or None."""
        return context_error(model, template, prompt, self.max_new_tokens, who="the large model")

    def _search(self, model, scorer, prompts: list[str], seeds: list[int], template: str, on_step
                ) -> list[SearchResult]:
        k, n = self.children, len(prompts)
        # row p*K + j samples prompt p's j-th child: its cache keeps the path it last continued
        rows = model.generator(n * k, self.sampling, [_child_seed(s, j) for s in seeds for j in range(k)], template)
        contexts = [model.render(template, p) for p in prompts]
        roots = [Node("", False, 0) for _ in prompts]
        sampled, guide = [0] * n, [0] * n
        live = [p for p in range(n)]
        while live:
            for _ in range(self.simulations):
                paths = {p: self._select(roots[p]) for p in live}
                leaves = {p: path[-1] for p, path in paths.items() if not path[-1].leaf(self.max_new_tokens)}
                self._expand(rows, scorer, prompts, contexts, leaves, sampled, guide)
                for path in paths.values():
                    _back_up(path)
            for p in list(live):
                if roots[p].children:
                    roots[p] = max(roots[p].children, key=lambda c: c.value)
                if on_step is not None:
                    on_step(p, [roots[p].text])
                if roots[p].leaf(self.max_new_tokens):
                    live.remove(p)
        return [SearchResult(prompts[p], r.text, r.value, r.finished, r.num_tokens, self.method,
                             sampled_tokens=sampled[p], guide_tokens=guide[p]) for p, r in enumerate(roots)]

    def _select(self, root: Node) -> list[Node]:
        """The path from ``root`` down to a node without children, by UCT."""
        path = [root]
        while path[-1].children:
            node = path[-1]
            values = [c.value for c in node.children]
            low, high = min(values), max(values)
            log_n = math.log(max(node.visits, 1))

            def uct(child: Node) -> float:
                q = (child.value - low) / (high - low) if high > low else 0.5
                return q + self.exploration * math.sqrt(log_n / child.visits)

            path.append(max(node.children, key=uct))
        return path

    def _expand(self, rows, scorer, prompts, contexts, leaves: dict[int, Node], sampled, guide) -> None:
        """Sample each leaf's children (one batched call over every prompt's rows) and score them."""
        if not leaves:
            return
        k, drawn = self.children, {}
        limits = {p: min(self.chunk_length, self.max_new_tokens - leaf.num_tokens) for p, leaf in leaves.items()}
        for limit in sorted(set(limits.values())):  # (one call, unless a leaf is near the length limit)
            asks = {p * k + j: contexts[p] + leaves[p].text for p in leaves if limits[p] == limit for j in range(k)}
            drawn.update(rows.generate_confident(asks, limit, 0.0))
        new = []
        for p, leaf in leaves.items():
            seen = set()
            for j in range(k):
                chunk = drawn[p * k + j]
                sampled[p] += chunk.tokens
                if (chunk.text, chunk.ended) in seen:
                    continue
                seen.add((chunk.text, chunk.ended))
                child = Node(leaf.text + chunk.text, chunk.ended, leaf.num_tokens + chunk.tokens, visits=1)
                leaf.children.append(child)
                new.append((p, child))
        scores = scorer.score([prompts[p] for p, _ in new], [c.text for _, c in new], [c.finished for _, c in new])
        counts = getattr(scorer, "last_tokens", None) or [None] * len(new)
        for (p, child), score, count in zip(new, scores, counts):
            child.value = float(score)
            guide[p] = None if guide[p] is None or count is None else guide[p] + count


def _back_up(path: list[Node]) -> None:
    for node in reversed(path):
        node.visits += 1
        if node.children:
            node.value = max(c.value for c in node.children)


def _child_seed(seed: int, j: int) -> int:
    return (seed * 1_000_003 + j) % 2**63
