"""Beyond fixed budgets: step-level chunks, schedules of successors, the adaptive stop, pruned Best-of-N,
and the compute each result records."""

import pytest
import torch

import w2s
from conftest import chain, make_scripted, strong_tokenizer
from w2s.search.adaptive import front_loaded
from w2s.search.cbs import chunk_end_rule

PROMPTS = ["The cat", "I did not like the food, it was cold and", "What a"]


class Recorded:
    """A large model whose sessions record every expansion: (parents' continuations, n, caps, results)."""

    def __init__(self, model):
        self.model, self.expansions = model, []

    def open(self, prompts, *args, **kwargs):
        session, owner = self.model.open(prompts, *args, **kwargs), self
        live = [w2s.backends.Continuation(p, p, "", False, 0) for p in range(len(prompts))]
        expand, select = session.expand, session.select

        def expanded(parents, n, max_tokens, **kw):
            got = expand(parents, n, max_tokens, **kw)
            ns = n if isinstance(n, list) else [n] * len(parents)
            caps = max_tokens if isinstance(max_tokens, list) else [max_tokens] * len(parents)
            owner.expansions.append(([live[i] for i in parents], ns, caps, got))
            session.last = got
            return got

        def selected(indices):
            live[:] = [session.last[i] for i in indices]
            return select(indices)

        session.expand, session.select = expanded, selected
        return session


def children(expansion):
    """(parent, cap, child) of each continuation of one recorded expansion."""
    parents, ns, caps, got = expansion
    pairs = [(p, cap) for p, n, cap in zip(parents, ns, caps) for _ in range(n)]
    return [(p, cap, c) for (p, cap), c in zip(pairs, got)]


# -- step-level chunks --------------------------------------------------------------------------------
def test_chunk_end_rules():
    sentence, line, own = chunk_end_rule("sentence"), chunk_end_rule("paragraph"), chunk_end_rule("Step")
    assert sentence(" It is good. Then") == len(" It is good.")  # before the space: the next token carries it
    assert sentence(" It is 3.") is None and sentence(" It is 3.14 and so") is None  # wait for what follows
    assert line("a\nb\n\nc") == len("a\nb\n\n") and line("a\nb") is None
    assert own("one Step two Step") == len("one Step")
    assert chunk_end_rule(None) is None
    with pytest.raises(ValueError, match="chunk_end"):
        w2s.ChunkBeamSearch(chunk_end="")


def test_sentence_chunks_end_exactly_at_sentence_ends_and_roll_back_the_lookahead():
    """A sentence is confirmed only when the next word has been sampled; that word is rolled back, and the
    next chunk samples it again from the right cache."""
    tok = strong_tokenizer()
    text = " I did not like it! The food was bland? Yes"
    ids, script = chain(tok, text, end=tok.eos_token_id)
    start = tok("a", add_special_tokens=False)["input_ids"][-1]
    script[start] = [(ids[0], 1.0)]
    model = Recorded(make_scripted(tok, script, default_next=tok.eos_token_id))
    search = w2s.ChunkBeamSearch(beam_width=1, successors_per_beam=2, chunk_length=20, chunk_end="sentence",
                                 max_new_tokens=40)
    steps = []
    result = next(search.generate(model, lambda p, r: float(len(r)), ["a"], on_step=lambda p, t: steps.append(t[0])))
    assert result.response == text and result.finished
    assert steps == [" I did not like it!", " I did not like it! The food was bland?", text]
    first = [c for _, _, c in children(model.expansions[0])]
    assert [(c.drawn, c.num_tokens) for c in first] == [(9, 8)] * 2  # " I" ... "!", then " The", rolled back
    assert result.num_tokens == len(ids)
    # the tokens drawn: every sample's, the rolled-back ones included
    assert result.sampled_tokens == sum(c.drawn for e in model.expansions for _, _, c in children(e))


def test_delimited_chunks_end_at_the_delimiter_or_the_cap_and_continue_from_the_right_cache(strong, scorer):
    model = Recorded(strong)
    search = w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=2, chunk_length=6, chunk_end=" ",
                                 max_new_tokens=18, sampling=w2s.SamplingParams(temperature=0.0, top_k=0))
    results = list(search.generate(model, scorer, PROMPTS, seed=0, batch_size=len(PROMPTS)))
    cuts = caps = 0
    hf = strong.model
    for expansion in model.expansions:
        for parent, cap, child in children(expansion):
            new = child.text[len(parent.text):]
            assert child.text.startswith(parent.text) and child.drawn <= cap
            if child.finished:
                continue
            if " " in new:  # ends exactly after its first delimiter (or the token holding it, where bytes that
                # are not valid UTF-8 keep the cut from re-encoding)
                assert new.index(" ") == len(new) - 1 or "\ufffd" in new
                cuts += new.index(" ") == len(new) - 1
            else:
                assert child.drawn == cap
                caps += 1
            # the ids decode to the text, and the chunk is what the model says after the parent's ids
            prompt_ids = strong.encode_prompt(PROMPTS[child.prompt_index], "{prompt}")
            assert strong.response_text(prompt_ids, child.token_ids, False) == child.text
            with torch.no_grad():
                out = hf.generate(torch.tensor([prompt_ids + parent.token_ids]), max_new_tokens=child.drawn,
                                  do_sample=False, pad_token_id=strong.tokenizer.pad_token_id)
            greedy = out[0, len(prompt_ids) + len(parent.token_ids):].tolist()
            assert strong.response_text(prompt_ids, parent.token_ids + greedy, False).startswith(child.text)
    assert cuts > 3 and caps > 0
    assert all(r.sampled_tokens == sum(c.drawn for e in model.expansions for _, _, c in children(e)
                                       if c.prompt_index == i) for i, r in enumerate(results))


def test_fixed_chunks_are_unchanged_by_the_step_machinery(strong, scorer):
    """CBS without chunk_end draws exactly what it drew before step chunks existed: chunks of L tokens."""
    model = Recorded(strong)
    list(w2s.ChunkBeamSearch(2, 2, 3, max_new_tokens=9).generate(model, scorer, PROMPTS, seed=4))
    for expansion in model.expansions:
        for parent, cap, child in children(expansion):
            assert cap == 3
            assert child.finished or child.num_tokens == parent.num_tokens + 3 == parent.num_tokens + child.drawn


# -- schedules and the adaptive stop ------------------------------------------------------------------
def test_front_loaded_schedule_spends_the_cbs_budget():
    assert front_loaded(4, 4) == (7, 5, 3, 1)
    for k, steps in [(4, 10), (3, 7), (2, 5), (1, 6), (5, 1)]:
        counts = front_loaded(k, steps)
        assert sum(counts) == k * steps and min(counts) >= 1 and list(counts) == sorted(counts, reverse=True)
    search = w2s.AdaptiveSearch(beam_width=2, successors_per_beam=4, chunk_length=5, max_new_tokens=20)
    assert search.schedule == (7, 5, 3, 1)
    with pytest.raises(ValueError, match="schedule"):
        w2s.AdaptiveSearch(schedule=(2, 0))
    with pytest.raises(ValueError, match="patience"):
        w2s.AdaptiveSearch(patience=0)


def test_a_constant_schedule_is_cbs(strong, scorer):
    cbs = w2s.ChunkBeamSearch(2, 3, 3, max_new_tokens=9, return_beams=True)
    same = w2s.AdaptiveSearch(2, 3, 3, max_new_tokens=9, return_beams=True, schedule=(3,))
    a, b = (list(s.generate(strong, scorer, PROMPTS, seed=7)) for s in (cbs, same))
    assert [(r.response, r.score, r.sampled_tokens, [x.text for x in r.beams]) for r in a] == \
        [(r.response, r.score, r.sampled_tokens, [x.text for x in r.beams]) for r in b]
    assert {r.method for r in b} == {"adaptive"}


def test_a_schedule_sets_the_successors_of_each_chunk(strong, scorer):
    model = Recorded(strong)
    search = w2s.AdaptiveSearch(beam_width=2, successors_per_beam=2, chunk_length=2, max_new_tokens=8,
                                schedule=(4, 3, 1))
    list(search.generate(model, scorer, ["The cat"], seed=1))
    ns = [e[1] for e in model.expansions]
    assert ns[0] == [2 * 4] and all(set(n) == {3} for n in ns[1:2]) and all(set(n) == {1} for n in ns[2:])


def test_patience_stops_a_settled_prompt_and_follows_its_best_beam(strong, scorer):
    model = Recorded(strong)
    search = w2s.AdaptiveSearch(beam_width=2, successors_per_beam=3, chunk_length=2, max_new_tokens=16,
                                schedule=(3,), patience=1)
    adaptive = list(search.generate(model, scorer, PROMPTS, seed=2, batch_size=len(PROMPTS)))
    cbs = list(w2s.ChunkBeamSearch(2, 3, 2, max_new_tokens=16).generate(strong, scorer, PROMPTS, seed=2,
                                                                      batch_size=len(PROMPTS)))
    settled_once = False
    for parents, ns, _, _ in model.expansions[1:]:
        for p in range(len(PROMPTS)):
            mine = [n for b, n in zip(parents, ns) if b.prompt_index == p]
            if mine == [1]:  # settled: one beam, one sample
                settled_once = True
            else:
                assert set(mine) <= {3}
    assert settled_once
    assert sum(r.sampled_tokens for r in adaptive) < sum(r.sampled_tokens for r in cbs)


# -- pruned Best-of-N ---------------------------------------------------------------------------------
def test_pruned_best_of_n_without_pruning_is_best_of_n(strong, scorer):
    bon = list(w2s.BestOfN(n=6, max_new_tokens=12).generate(strong, scorer, PROMPTS, seed=3))
    unpruned = w2s.PrunedBestOfN(n=6, max_new_tokens=12, checkpoints=(3, 7), prune_fraction=0.0)
    same = list(unpruned.generate(strong, scorer, PROMPTS, seed=3))
    assert [(r.response, r.finished, r.num_tokens, r.sampled_tokens) for r in same] == \
        [(r.response, r.finished, r.num_tokens, r.sampled_tokens) for r in bon]
    assert [r.score for r in same] == pytest.approx([r.score for r in bon], abs=1e-4)


def test_pruned_best_of_n_drops_the_lowest_scores_at_each_checkpoint(strong, scorer):
    model = Recorded(strong)
    search = w2s.PrunedBestOfN(n=8, max_new_tokens=12, checkpoints=(4, 8), prune_fraction=0.5)
    results = list(search.generate(model, scorer, PROMPTS, seed=5, batch_size=len(PROMPTS)))
    first, second, third = model.expansions
    assert set(first[1]) == {8} and set(first[2]) == {4}
    assert set(second[1]) == {1} and set(second[2]) == {4} and set(third[2]) == {4}
    for p in range(len(PROMPTS)):
        samples = [c for c in first[3] if c.prompt_index == p]
        kept = [b for b in second[0] if b.prompt_index == p]
        assert len(kept) <= 4 and not any(b.finished for b in kept)
        scores = dict(zip([c.text for c in samples], scorer.score(PROMPTS[p], [c.text for c in samples],
                                                                   [c.finished for c in samples])))
        cutoff = sorted(scores.values(), reverse=True)[3]  # the 4 best go on
        assert all(scores[b.text] >= cutoff - 1e-6 for b in kept)
    bon = list(w2s.BestOfN(n=8, max_new_tokens=12).generate(strong, scorer, PROMPTS, seed=5))
    assert all(r.sampled_tokens < b.sampled_tokens for r, b in zip(results, bon))
    assert {r.method for r in results} == {"pruned_bon"}


def test_pruned_best_of_n_checks_its_parameters():
    with pytest.raises(ValueError, match="prune_fraction"):
        w2s.PrunedBestOfN(prune_fraction=1.5)
    with pytest.raises(ValueError, match="checkpoints"):
        w2s.PrunedBestOfN(checkpoints=(0,))
    assert w2s.PrunedBestOfN(checkpoints=(8, 4, 8)).checkpoints == (4, 8)


# -- compute accounting -------------------------------------------------------------------------------
def test_guide_tokens_count_the_tokens_the_guides_ran(strong, tuned, untuned):
    scored = []

    class Recording(w2s.LogRatioScorer):
        def score(self, prompt, responses, finished):
            scored.extend(zip(prompt, responses, finished))
            return super().score(prompt, responses, finished)

    cbs = w2s.ChunkBeamSearch(2, 2, 3, max_new_tokens=9)
    scratch = list(cbs.generate(strong, Recording(tuned, untuned, incremental=False), PROMPTS, seed=1))
    # from scratch, a guide runs each response's tokens (and its end token) plus the context's last token
    for i, r in enumerate(scratch):
        mine = [(p, text, done) for p, text, done in scored if p == PROMPTS[i]]
        expected = 0
        for guide in (tuned, untuned):
            lp = guide.response_logprobs("{prompt}")
            for _, ids, start in lp.sequences(*zip(*mine)):
                expected += len(ids) - start + 1
        assert r.guide_tokens == expected
    incremental = list(cbs.generate(strong, w2s.LogRatioScorer(tuned, untuned), PROMPTS, seed=1))
    assert [r.response for r in incremental] == [r.response for r in scratch]
    assert all(0 < a.guide_tokens < b.guide_tokens for a, b in zip(incremental, scratch))  # the caches save
    assert all(r.guide_tokens is None for r in cbs.generate(strong, lambda p, r: float(len(r)), PROMPTS))
    assert all(r.guide_tokens == 0 for r in w2s.Sampling(max_new_tokens=4).generate(strong, None, PROMPTS))
