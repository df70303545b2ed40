"""Tree search over chunks (issue 29 item 3): one simulation per step is chunk-level beam search with W=1,
sample for sample (on a scripted text model, a unit test of the logic); on tiny real models it keeps its
budget and its scores; on the command line and the server it is ``tree``."""

from __future__ import annotations

import hashlib

import pytest

import w2s
from w2s.backends.base import Confident, Continuation

WORDS = ["a", "cat", "sat", "on", "the", "mat", "and", "ran", "away", "fast"]


def chunk(context: str, j: int, tokens: int) -> tuple[str, bool]:
    """A chunk of ``tokens`` words that depends only on the text it continues and the sample's index."""
    digest = hashlib.sha256(f"{context}|{j}".encode()).digest()
    words = [" " + WORDS[b % len(WORDS)] for b in digest[:tokens]]
    ended = digest[-1] % 5 == 0
    return "".join(words), ended


class TextModel:
    """A large model whose samples are :func:`chunk`s: the same through a search session (CBS) and through
    generator rows (tree search)."""

    name = "text"

    def render(self, template, prompt):
        return template.format(prompt=prompt)

    def open(self, prompts, params, seeds, template="{prompt}"):
        model = self

        class Session:
            live = [Continuation(p, p, "", False, 0) for p in range(len(prompts))]

            def expand(self, parents, n, max_tokens, end=None, entropy=None):
                self.candidates = []
                for parent in parents:
                    beam = self.live[parent]
                    for j in range(n):
                        text, ended = chunk(model.render(template, prompts[beam.prompt_index]) + beam.text, j,
                                            max_tokens)
                        self.candidates.append(Continuation(beam.prompt_index, parent, beam.text + text, ended,
                                                            beam.num_tokens + max_tokens, drawn=max_tokens))
                return self.candidates

            def select(self, indices):
                self.live = [self.candidates[i] for i in indices]

        return Session()

    def generator(self, n_rows, params, seeds, template="{prompt}"):
        class Rows:
            def generate_confident(self, contexts, max_new_tokens, threshold, keep_first=True):
                out = {}
                for row, context in contexts.items():
                    text, ended = chunk(context, row % K, max_new_tokens)
                    out[row] = Confident(text, ended, 1.0, max_new_tokens)
                return out

        return Rows()


K = 3


def score(prompt: str, response: str) -> float:
    return response.count(" a") + 0.5 * response.count("at") - 0.01 * len(response)


def test_one_simulation_per_step_is_beam_search_with_one_beam():
    model, prompts = TextModel(), ["Q1:", "Q2:", "Q3:"]
    tree = w2s.TreeSearch(children=K, chunk_length=4, simulations=1, max_new_tokens=24)
    cbs = w2s.ChunkBeamSearch(beam_width=1, successors_per_beam=K, chunk_length=4, max_new_tokens=24)
    searched = list(tree.generate(model, score, prompts))
    beamed = list(cbs.generate(model, score, prompts))
    assert [(r.response, r.finished, r.num_tokens) for r in searched] == [
        (r.response, r.finished, r.num_tokens) for r in beamed]
    assert [r.score for r in searched] == pytest.approx([r.score for r in beamed])
    assert [r.sampled_tokens for r in searched] == [r.sampled_tokens for r in beamed]


def test_more_simulations_look_deeper_before_each_step():
    model = TextModel()
    steps = []
    deep = w2s.TreeSearch(children=K, chunk_length=4, simulations=6, max_new_tokens=24)
    result = next(iter(deep.generate(model, score, ["Q1:"], on_step=lambda p, texts: steps.append(texts[0]))))
    assert all(b.startswith(a) for a, b in zip(steps, steps[1:])) and steps[-1] == result.response
    # six expansions per step at most: K chunks of 4 tokens each
    assert result.sampled_tokens <= len(steps) * 6 * K * 4 and result.sampled_tokens > len(steps) * K * 4


def test_tree_search_on_tiny_models_keeps_its_budget_and_scores(strong, scorer):
    search = w2s.TreeSearch(children=2, chunk_length=3, simulations=2, max_new_tokens=9)
    for result in search.generate(strong, scorer, ["The cat", "What a"], seed=3):
        assert 0 < result.num_tokens <= 9 and result.method == "tree"
        assert result.score == pytest.approx(scorer.score(result.prompt, [result.response], [result.finished])[0],
                                             abs=1e-4)
        assert result.sampled_tokens <= 3 * 2 * 2 * 3 and result.guide_tokens > 0
    again = [r.response for r in search.generate(strong, scorer, ["The cat", "What a"], seed=3)]
    assert again == [r.response for r in search.generate(strong, scorer, ["The cat", "What a"], seed=3)]


@pytest.mark.parametrize("field, value", [("children", 0), ("chunk_length", 0), ("simulations", 0),
                                          ("exploration", -1.0), ("max_new_tokens", 0)])
def test_bad_parameters_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        w2s.TreeSearch(**{field: value})


def test_rows_over_the_bound_are_refused_before_any_work():
    with pytest.raises(ValueError, match="children = 8 .* max_rows = 4"):
        list(w2s.TreeSearch(children=8).generate(TextModel(), score, ["Q:"], max_rows=4))
