"""Search methods: CBS semantics, its special cases (Best-of-N, sampling), EFT, parameter validation."""

import pytest
import torch

import w2s
from conftest import llama, strong_tokenizer
from w2s.backends import Continuation, SamplingParams
from w2s.configs import build, flatten, param_names

GREEDY = SamplingParams(temperature=0.0)

PROMPTS = ["The cat", "I did not like the food, it was cold and", "What a"]


def fresh_scores(tuned, untuned, prompt, beams, finished=None):
    scratch = w2s.LogRatioScorer(tuned, untuned, incremental=False)
    return scratch.score(prompt, [b.text for b in beams], finished or [b.finished for b in beams])


def test_w1_k1_unlimited_chunk_is_plain_sampling(strong, scorer):
    cbs = w2s.ChunkBeamSearch(beam_width=1, successors_per_beam=1, chunk_length=None, max_new_tokens=12)
    a = list(cbs.generate(strong, scorer, PROMPTS, seed=5))
    b = list(w2s.Sampling(max_new_tokens=12).generate(strong, scorer, PROMPTS, seed=5))
    assert [(r.response, r.score) for r in a] == [(r.response, r.score) for r in b]
    assert {r.method for r in b} == {"sampling"}


def test_best_of_n_returns_the_argmax_of_its_candidates(strong, tuned, untuned, scorer):
    seen = []

    class Recording:
        def score(self, prompt, responses, finished):
            scores = scorer.score(prompt, responses, finished)
            seen.extend(zip(prompt, responses, finished, scores))
            return scores

    results = list(w2s.BestOfN(n=6, max_new_tokens=8).generate(strong, Recording(), PROMPTS, seed=1))
    for prompt, r in zip(PROMPTS, results):
        candidates = [(text, fin, s) for p, text, fin, s in seen if p == prompt]
        assert 2 <= len(candidates) <= 6 and len({c[0] for c in candidates}) == len(candidates)
        truth = fresh_scores(tuned, untuned, prompt, [w2s.Beam(t, f, 0) for t, f, _ in candidates])
        assert [c[2] for c in candidates] == pytest.approx(truth, abs=1e-4)
        best = max(candidates, key=lambda c: c[2])
        assert (r.response, r.finished, r.score) == best


def test_best_of_n_and_cbs_spend_equal_compute_at_equal_wk(strong, scorer):
    """Both sample W*K = N large-model rows per prompt per step."""
    rows_per_step = {}

    class Counting:
        def __init__(self, key):
            self.key = key

        def open(self, *args, **kwargs):
            session = strong.open(*args, **kwargs)
            expand = session.expand

            def counted(parents, n, max_tokens):
                rows_per_step.setdefault(self.key, []).append(len(parents) * n)
                return expand(parents, n, max_tokens)

            session.expand = counted
            return session

    list(w2s.BestOfN(n=4, max_new_tokens=9).generate(Counting("bon"), scorer, ["The cat"]))
    list(w2s.ChunkBeamSearch(2, 2, 3, max_new_tokens=9).generate(Counting("cbs"), scorer, ["The cat"]))
    assert rows_per_step["bon"] == [4]
    # W*K rows per step; fewer (K per live beam) only once a beam has finished
    assert rows_per_step["cbs"][0] == 4 and all(n in (2, 4) for n in rows_per_step["cbs"])


def test_sampled_tokens_count_every_large_model_token_drawn(strong, scorer):
    drawn = []

    class Counting:  # counts from each continuation's token ids less its parent beam's
        def open(self, prompts, *args, **kwargs):
            session, live = strong.open(prompts, *args, **kwargs), [[] for _ in prompts]
            expand, select = session.expand, session.select

            def counted(parents, n, max_tokens):
                got = expand(parents, n, max_tokens)
                for c in got:
                    drawn[-1][c.prompt_index] += len(c.token_ids) - len(live[c.parent])
                session.last = got
                return got

            def selected(indices):
                live[:] = [session.last[i].token_ids for i in indices]
                return select(indices)

            session.expand, session.select = counted, selected
            return session

    for search in (w2s.Sampling(max_new_tokens=7), w2s.BestOfN(n=4, max_new_tokens=7),
                   w2s.ChunkBeamSearch(2, 2, 3, max_new_tokens=8)):
        drawn.append([0] * len(PROMPTS))
        results = list(search.generate(Counting(), scorer, PROMPTS, seed=1, batch_size=len(PROMPTS)))
        assert [r.sampled_tokens for r in results] == drawn[-1]
        assert all(r.num_tokens <= r.sampled_tokens <= search.samples_per_step * 8 for r in results)
    assert all(r.sampled_tokens == r.num_tokens for r in w2s.Sampling(max_new_tokens=7).generate(strong, None, PROMPTS))


def test_cbs_beams_are_distinct_and_truncated_responses_are_scored_without_eos(strong, tuned, untuned, scorer):
    search = w2s.ChunkBeamSearch(beam_width=3, successors_per_beam=2, chunk_length=2, max_new_tokens=6,
                                 return_beams=True)
    for prompt, r in zip(PROMPTS, search.generate(strong, scorer, PROMPTS, seed=2)):
        assert len({(b.text, b.finished) for b in r.beams}) == len(r.beams) == 3
        assert [b.score for b in r.beams] == pytest.approx(fresh_scores(tuned, untuned, prompt, r.beams), abs=1e-4)
        for b in r.beams:
            if not b.finished:
                with_eos = fresh_scores(tuned, untuned, prompt, [b], [True])[0]
                assert b.score != pytest.approx(with_eos, abs=1e-6)
        assert r.score == max(b.score for b in r.beams)


def test_incremental_scores_equal_from_scratch_during_search(strong, tuned, untuned):
    incremental = w2s.LogRatioScorer(tuned, untuned)
    scratch = w2s.LogRatioScorer(tuned, untuned, incremental=False)
    calls = []

    class Checked:
        def score(self, prompt, responses, finished):
            got = incremental.score(prompt, responses, finished)
            assert got == pytest.approx(scratch.score(prompt, responses, finished), abs=1e-4)
            calls.append(len(responses))
            return got

    list(w2s.ChunkBeamSearch(2, 2, 2, max_new_tokens=12).generate(strong, Checked(), PROMPTS, seed=0))
    assert len(calls) >= 6


class ScriptedSearchSession:
    """A fake large model for search logic: continuations come from ``script[parent_text]``."""

    def __init__(self, script):
        self.script, self.live, self.candidates = script, [""], []

    def expand(self, parents, n, max_tokens):
        self.candidates = []
        for parent in parents:
            options = self.script[self.live[parent]]
            for k in range(n):
                text, finished = options[k % len(options)]
                self.candidates.append(Continuation(0, parent, text, finished, len(text)))
        return self.candidates

    def select(self, indices):
        assert not any(self.candidates[i].finished for i in indices)
        self.live = [self.candidates[i].text for i in indices]


class ScriptedModel:
    def __init__(self, script):
        self.script = script

    def open(self, prompts, params, seeds, template):
        return ScriptedSearchSession(self.script)


def test_finished_candidates_are_carried_once_and_not_rescored():
    script = {
        "": [("A.", True), ("b", False), ("c", False), ("d", False)],
        "b": [("b1", False), ("b2.", True)],
        "c": [("c1", False), ("c2", False)],
        "b1": [("b1!", True)],
        "b2.": [],
        "c1": [("c1x", False)],
        "c2": [("c2x", False)],
    }
    values = {"A.": 10, "b": 5, "c": 4, "d": 1, "b1": 3, "b2.": 2, "c1": 1, "c2": 0, "b1!": 20, "c1x": 0, "c2x": 0}
    scored = []

    def scorer(prompt, response):
        scored.append(response)
        return values[response]

    search = w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=2, chunk_length=1, max_new_tokens=3,
                                 return_beams=True)
    r = next(search.generate(ScriptedModel(script), scorer, ["p"]))
    assert [(b.text, b.score) for b in r.beams] == [("b1!", 20), ("A.", 10)]
    assert (r.response, r.finished) == ("b1!", True)
    assert scored.count("A.") == 1  # carried with its score, never duplicated or re-scored


def test_the_result_is_the_best_finished_beam_when_one_exists():
    script = {"": [("A.", True), ("b", False)], "b": [("bb", False)]}
    values = {"A.": 1.0, "b": 5.0, "bb": 9.0}
    search = w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=1, chunk_length=1, max_new_tokens=2,
                                 return_beams=True)
    r = next(search.generate(ScriptedModel(script), lambda p, x: values[x], ["p"]))
    assert [b.text for b in r.beams] == ["bb", "A."]  # the unfinished beam scores higher
    assert (r.response, r.score, r.finished) == ("A.", 1.0, True)
    unfinished = {"": [("a", False), ("b", False)], "a": [("aa", False)], "b": [("bb", False)]}
    r = next(search.generate(ScriptedModel(unfinished), lambda p, x: len(x) + (x[0] == "b"), ["p"]))
    assert (r.response, r.finished) == ("bb", False)  # none finished: the best unfinished one


def test_identical_continuations_collapse_to_one_beam():
    script = {"": [("same", False)], "same": [("same.", True)]}
    r = next(w2s.ChunkBeamSearch(4, 4, 1, max_new_tokens=5, return_beams=True).generate(
        ScriptedModel(script), lambda p, x: 0.0, ["p"]))
    assert [b.text for b in r.beams] == ["same."]


def test_eft_refuses_different_vocabularies(strong, tuned, untuned):
    with pytest.raises(ValueError, match="vocabulary"):
        next(w2s.EmulatedFineTuning().generate(strong, tuned, untuned, ["x"]))


def test_eft_compares_vocabularies_not_sizes(strong):
    tok = strong_tokenizer()
    from tokenizers import Tokenizer, models

    permuted = tok.get_vocab()
    permuted["a"], permuted["b"] = permuted["b"], permuted["a"]  # same tokens and size, two ids swapped
    other = type(tok)(tokenizer_object=Tokenizer(models.WordLevel(permuted, unk_token="<pad>")))
    fake = w2s.TransformersModel(llama(tok, 9), other)
    assert len(other.get_vocab()) == len(tok.get_vocab())
    with pytest.raises(ValueError, match="vocabulary"):
        next(w2s.EmulatedFineTuning().generate(strong, fake, fake, ["x"]))


def test_eft_next_token_is_strong_plus_beta_log_ratio(model_dirs, strong):
    t, u = w2s.load_model(model_dirs["shared_tuned"]), w2s.load_model(model_dirs["shared_untuned"])
    prompt = "The cat"
    ids = torch.tensor([strong.tokenizer(prompt)["input_ids"]])
    guide_ids = torch.tensor([strong.encode(prompt)])
    with torch.no_grad():
        s = strong.model(ids).logits[0, -1].log_softmax(-1)
        lt = t.model(guide_ids).logits[0, -1].log_softmax(-1)
        lu = u.model(guide_ids).logits[0, -1].log_softmax(-1)
    for beta in (0.0, 2.0):
        mixed = (s + beta * (lt - lu)).index_fill(0, torch.tensor(strong.banned_ids), float("-inf"))
        r = next(w2s.EmulatedFineTuning(beta=beta, max_new_tokens=1, sampling=GREEDY).generate(strong, t, u, [prompt]))
        token = mixed.argmax().item()
        assert r.response == strong.response_text(ids[0].tolist(), [token], token in strong.eos_ids) and r.method == "eft"
    greedy = next(w2s.Sampling(max_new_tokens=10, sampling=GREEDY).generate(strong, None, [prompt]))
    eft0 = next(w2s.EmulatedFineTuning(beta=0.0, max_new_tokens=10, sampling=GREEDY).generate(strong, t, u, [prompt]))
    assert eft0.response == greedy.response


INVALID = [
    (w2s.ChunkBeamSearch, {"beam_width": 0}, "beam_width"),
    (w2s.ChunkBeamSearch, {"beam_width": 2.5}, "beam_width"),
    (w2s.ChunkBeamSearch, {"successors_per_beam": 0}, "successors_per_beam"),
    (w2s.ChunkBeamSearch, {"chunk_length": 0}, "chunk_length"),
    (w2s.ChunkBeamSearch, {"max_new_tokens": 0}, "max_new_tokens"),
    (w2s.ChunkBeamSearch, {"temperature": -0.1}, "temperature"),
    (w2s.ChunkBeamSearch, {"top_p": 0.0}, "top_p"),
    (w2s.ChunkBeamSearch, {"top_p": 1.5}, "top_p"),
    (w2s.ChunkBeamSearch, {"top_k": -1}, "top_k"),
    (w2s.ChunkBeamSearch, {"stop": "."}, "stop"),
    (w2s.BestOfN, {"n": 0}, "n"),
    (w2s.BestOfN, {"max_new_tokens": -3}, "max_new_tokens"),
    (w2s.Sampling, {"temperature": float("nan")}, "temperature"),
    (w2s.EmulatedFineTuning, {"beta": -1.0}, "beta"),
    (w2s.EmulatedFineTuning, {"top_k": 1.5}, "top_k"),
    (SamplingParams, {"top_p": 2}, "top_p"),
]


@pytest.mark.parametrize("cls,kwargs,name", INVALID)
def test_invalid_parameters_name_themselves(cls, kwargs, name):
    """Given flat (as the command line and the server give them), each bad value names its parameter."""
    with pytest.raises(ValueError, match=rf"^{name} must .*got"):
        build(cls, kwargs)


def test_flat_parameters_build_the_config_and_its_embedded_sampling():
    cbs = build(w2s.ChunkBeamSearch, {"beam_width": 2, "temperature": 0.1, "stop": ["x"]})
    assert cbs == w2s.ChunkBeamSearch(beam_width=2, sampling=SamplingParams(temperature=0.1, stop=("x",)))
    assert flatten(cbs)["temperature"] == 0.1 and build(w2s.ChunkBeamSearch, flatten(cbs)) == cbs
    assert param_names(w2s.BestOfN) == ["max_new_tokens", "temperature", "top_p", "top_k", "stop", "repetition_penalty",
                                          "frequency_penalty", "presence_penalty", "no_repeat_ngram_size",
                                          "return_beams", "n"]
    with pytest.raises(ValueError, match="has no parameter beam_widht; its parameters are beam_width"):
        build(w2s.ChunkBeamSearch, {"beam_widht": 2})
    with pytest.raises(ValueError, match="sampling must be a w2s.SamplingParams"):
        w2s.BestOfN(sampling={"temperature": 0.5})


def test_invalid_generate_arguments(strong, tuned, untuned, scorer):
    cbs = w2s.ChunkBeamSearch()
    with pytest.raises(ValueError, match="batch_size"):
        next(cbs.generate(strong, scorer, ["x"], batch_size=0))
    with pytest.raises(ValueError, match="template"):
        next(cbs.generate(strong, scorer, ["x"], template="no placeholder"))
    with pytest.raises(ValueError, match="needs a scorer"):
        next(cbs.generate(strong, None, ["x"]))
    with pytest.raises(ValueError, match="prompts"):
        next(cbs.generate(strong, scorer, "a single string"))
    with pytest.raises(ValueError, match="tuned_template"):
        w2s.LogRatioScorer(tuned, untuned, tuned_template="{prompt")


def test_the_token_bound_per_forward_refuses_a_batch_before_work_and_splits_long_forwards(model_dirs, strong,
                                                                                          scorer):
    """A batch whose rows cannot fit one forward of the large model's max_tokens_per_forward is refused before
    anything runs; under the bound, prompts longer than it are run in several calls with the same result."""
    bounded = w2s.load_model(model_dirs["strong"], max_tokens_per_forward=4)
    cbs = w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=2, chunk_length=3, max_new_tokens=9)
    prompts = ["Tell me a story about a brave knight and a dragon.", "Why is the sky blue during the day?"]
    with pytest.raises(ValueError, match=r"max_tokens_per_forward=4 of .* is below the 8 rows one forward may hold "
                                         r"\(2 prompts x beam_width \* successors_per_beam = 4\)"):
        next(cbs.generate(bounded, scorer, prompts, batch_size=2))
    assert all(len(bounded.encode(p)) > 8 for p in prompts)  # every prefill is split
    got = list(cbs.generate(bounded, scorer, prompts, batch_size=1, seed=5))
    want = list(cbs.generate(strong, scorer, prompts, batch_size=1, seed=5))
    assert [r.response for r in got] == [r.response for r in want]
    assert [r.score for r in got] == pytest.approx([r.score for r in want], abs=1e-4)
    with pytest.raises(ValueError, match="max_tokens_per_forward must be"):
        w2s.load_model(model_dirs["strong"], max_tokens_per_forward=0)


def test_on_step_reports_each_prompts_kept_beams_and_can_stop_the_search(strong, scorer):
    """The hook ``w2s serve`` streams from: every later beam extends a reported one; raising stops."""
    cbs = w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=2, chunk_length=3, max_new_tokens=9)
    steps = []
    results = list(cbs.generate(strong, scorer, PROMPTS, seed=3, batch_size=2,
                                on_step=lambda p, texts: steps.append((p, list(texts)))))
    plain = list(cbs.generate(strong, scorer, PROMPTS, seed=3, batch_size=2))
    assert [r.response for r in results] == [r.response for r in plain]  # the hook changes nothing
    assert {p for p, _ in steps} == {0, 1, 2}  # indices into the whole prompt list, across batches
    for p, r in enumerate(results):
        reported = [texts for q, texts in steps if q == p]
        assert 1 <= len(reported) <= 3 and all(1 <= len(t) <= 2 for t in reported)
        for earlier, later in zip(reported, reported[1:] + [[r.response]]):
            assert all(any(b.startswith(a) for a in earlier) for b in later)

    class Stop(Exception):
        pass

    def stop(p, texts):
        raise Stop

    with pytest.raises(Stop):
        list(cbs.generate(strong, scorer, PROMPTS, seed=3, on_step=stop))
