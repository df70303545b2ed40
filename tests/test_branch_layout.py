"""Long continuations run as rows of their own, short ones as branches of their parent's row: both layouts
give the same responses and scores (seeded), and Best-of-N's cache grows with one answer, not with N."""

import pytest

import w2s
import w2s.backends.logprobs as logprobs
import w2s.backends.transformers as transformers
from conftest import load
from w2s.backends.kv_rows import KVRows, rows_beat_branches

PROMPTS = ["The cat", "I did not like the food, it was cold and", "What a"]


def test_the_rule_takes_rows_when_the_siblings_outnumber_the_prefix():
    assert rows_beat_branches([50, 60], [[512] * 16, [512] * 16])  # Best-of-16 of whole answers
    assert not rows_beat_branches([500, 520], [[16] * 4, [16] * 4])  # a search's chunk after its beams
    assert not rows_beat_branches([3], [[1000]])  # one continuation shares with nobody
    assert rows_beat_branches([10], [[4, 4, 4, 4]]) and not rows_beat_branches([12], [[4, 4, 4, 4]])


@pytest.fixture
def layout(monkeypatch):
    """Force one layout everywhere it is chosen; count the forwards run over branches."""
    calls = {"branches": 0}
    real = KVRows.forward_branches

    def counted(self, *args, **kwargs):
        calls["branches"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(KVRows, "forward_branches", counted)

    def force(rows: bool | None):
        rule = rows_beat_branches if rows is None else (lambda prefixes, tokens: rows)
        for module in (transformers, logprobs):
            monkeypatch.setattr(module, "rows_beat_branches", rule)
        calls["branches"] = 0
        return calls

    return force


METHODS = {
    "best-of-n": lambda: w2s.BestOfN(n=5, max_new_tokens=20),
    "cbs": lambda: w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=3, chunk_length=5, max_new_tokens=20),
    "sampling": lambda: w2s.Sampling(max_new_tokens=20),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_rows_and_branches_give_the_same_responses_and_scores(method, strong, tuned, untuned, layout):
    runs = {}
    for rows in (False, True):
        calls = layout(rows)
        scorer = w2s.LogRatioScorer(tuned, untuned)
        runs[rows] = [(r.response, r.score, r.finished) for r in METHODS[method]().generate(strong, scorer, PROMPTS,
                                                                                           seed=3)]
        assert (calls["branches"] == 0) == rows or method == "sampling"
    assert [(t, f) for t, _, f in runs[True]] == [(t, f) for t, _, f in runs[False]]
    assert [s for _, s, _ in runs[True]] == pytest.approx([s for _, s, _ in runs[False]], abs=1e-4)


def test_eft_gives_the_same_responses_in_both_layouts(strong, model_dirs, layout):
    t, u = load(model_dirs["shared_tuned"]), load(model_dirs["shared_untuned"])
    out = []
    for rows in (False, True):
        layout(rows)
        eft = w2s.EmulatedFineTuning(beta=1.0, max_new_tokens=16)
        out.append([r.response for r in eft.generate(strong, t, u, PROMPTS, seed=2)])
    assert out[0] == out[1]


def test_incremental_scores_are_the_same_in_both_layouts(tuned, untuned, layout):
    """Whole answers scored from scratch, then extended and re-scored incrementally (children of a group)."""
    prompts = ["The cat"] * 4 + ["What a"] * 4
    first = ["sat on the mat", "ran", "is asleep and dreams of", "ate the fish"] * 2
    second = [r + " and then it went home" for r in first]
    scores = {}
    for rows in (False, True):
        layout(rows)
        scorer = w2s.LogRatioScorer(tuned, untuned)
        scores[rows] = (scorer.score(prompts, first, [False] * 8), scorer.score(prompts, second, [True] * 8))
    fresh = w2s.LogRatioScorer(tuned, untuned, incremental=False).score(prompts, second, [True] * 8)
    for rows in (False, True):
        assert scores[rows][0] == pytest.approx(scores[False][0], abs=1e-4)
        assert scores[rows][1] == pytest.approx(fresh, abs=1e-4)


def test_best_of_n_cache_grows_with_one_answer_not_with_n(strong, scorer, layout, monkeypatch):
    """By default Best-of-N's samples are rows: the sampler's cache holds the prompt and one answer's columns,
    where branches of one row hold n answers' columns."""
    widest = {}
    real = KVRows._run

    def watched(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        if self.model is strong.model:
            widest[key] = max(widest.get(key, 0), self.num_columns)
        return out

    monkeypatch.setattr(KVRows, "_run", watched)
    n, tokens = 8, 40
    for key in (None, False):
        layout(key)
        results = list(w2s.BestOfN(n=n, max_new_tokens=tokens).generate(strong, scorer, PROMPTS, seed=0))
    prompt_tokens = max(len(strong.encode(p)) for p in PROMPTS)
    assert widest[None] <= prompt_tokens + tokens + 1
    assert widest[False] > 3 * widest[None]
    assert max(r.num_tokens for r in results) > tokens // 2  # the samples did run long


def test_scoring_holds_the_logits_of_a_bounded_number_of_positions(tuned, untuned, monkeypatch):
    """Every model call of a scoring forward returns the logits of at most ``KVRows.LOGIT_POSITIONS`` positions
    (rows times columns), and the scores are those of an unbounded run."""
    prompts, responses = ["The cat"] * 3 + ["What a"] * 3, ["sat on the mat and slept all day long"] * 6
    finished = [True, False] * 3
    want = w2s.LogRatioScorer(tuned, untuned).score(prompts, responses, finished)
    sizes = []
    hooks = [m.model.register_forward_hook(lambda module, args, kwargs, out: sizes.append(out.logits.shape[:2]),
                                           with_kwargs=True) for m in (tuned, untuned)]
    monkeypatch.setattr(KVRows, "LOGIT_POSITIONS", 8)
    try:
        got = w2s.LogRatioScorer(tuned, untuned).score(prompts, responses, finished)
    finally:
        for hook in hooks:
            hook.remove()
    assert got == pytest.approx(want, abs=1e-4)
    assert max(rows * columns for rows, columns in sizes) <= 8 and len(sizes) > 6
