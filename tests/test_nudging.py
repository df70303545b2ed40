"""Nudging (issue 29 item 1): the switch points on scripted bigram models with known top probabilities, and
the two ends of gamma on tiny random models of different tokenizers."""

from __future__ import annotations

import pytest
from conftest import make_scripted, strong_tokenizer

import w2s
from w2s.search.nudging import GREEDY, split_words

TOK = strong_tokenizer()


def ids(text: str) -> list[int]:
    return TOK(text, add_special_tokens=False)["input_ids"]


def script(text: str, after: str = ":", unsure: dict[str, list[str]] | None = None, end: bool = True) -> dict:
    """A bigram script that spells ``text`` after the prompt's last token ``after`` (strength 1: top
    probability ~1), with the tokens in ``unsure`` followed by an even choice (top probability ~1/n)."""
    chain = ids(after)[-1:] + ids(text)
    table = {a: [(b, 1.0)] for a, b in zip(chain, chain[1:])}
    if end:
        table[chain[-1]] = [(TOK.eos_token_id, 1.0)]
    for token, choices in (unsure or {}).items():
        table[ids(token)[0]] = [(ids(c)[0], 1.0 / len(choices)) for c in choices]
    return table


BASE = script("The cat sat on the dog.", unsure={" sat": [" on", " the"]})
NUDGER = {**script(" sat on the dog.", after="The cat", end=False), ids(":")[0]: [(ids("The")[0], 1.0)]}


def nudging(**kw) -> w2s.Nudging:
    return w2s.Nudging(**{"gamma": 0.6, "max_new_tokens": 40, **kw})


def run(base, nudger, config, prompt="Q:"):
    return next(iter(config.generate(base, nudger, [prompt], nudger_template="{prompt}")))


def test_words_split_on_single_spaces_and_join_back():
    assert split_words("  Hello big\\nworld  x") == ["  Hello", " big\\nworld", " ", " x"]
    for text in ["a", " a b", "a  b ", "x\\ny z"]:
        assert "".join(split_words(text)) == text


def test_the_base_writes_where_it_is_sure_and_hands_over_where_it_is_not():
    base = make_scripted(TOK, BASE, default_next=ids(".")[0])
    nudger = make_scripted(TOK, NUDGER, default_next=ids(" the")[0])
    result = run(base, nudger, nudging())
    # sure of "The cat sat", unsure after " sat" (top ~1/2 < 0.6): the nudger writes " on the dog. the..."; the
    # base is sure again before its second word, " the", and writes to its end token
    assert result.pieces == [("base", "The cat sat"), ("nudger", " on"), ("base", " the dog.")]
    assert result.response == "The cat sat on the dog." and result.finished
    assert result.nudge_tokens == 1 and result.base_tokens == len(ids("The cat sat the dog.")) + 1  # + its end
    assert result.sampled_tokens == result.base_tokens  # every probe was written
    assert result.guide_tokens == 16 and result.rounds == 1
    assert result.nudged_share == pytest.approx(1 / (1 + result.base_tokens))


def test_agreement_hands_over_where_the_nudgers_word_starts_with_the_bases_token():
    """After " on" the base is unsure between " the" and " d" (top ~1/2): it draws " the" (the first of the
    tie), which the nudger's next word starts with; without agreement it waits for a sure position."""
    table = {**BASE, ids(" on")[0]: [(ids(" the")[0], 0.5), (ids(" d")[0], 0.5)]}
    base = make_scripted(TOK, table, default_next=ids(".")[0])
    nudger = make_scripted(TOK, NUDGER, default_next=ids(" the")[0])
    agreed = run(base, nudger, nudging())
    assert agreed.pieces == [("base", "The cat sat"), ("nudger", " on"), ("base", " the dog.")]
    waited = run(base, nudger, nudging(agreement=False))
    assert waited.pieces[:3] == [("base", "The cat sat"), ("nudger", " on the"), ("base", " dog.")]
    assert waited.sampled_tokens == waited.base_tokens + 1  # the probe before " the" was drawn, not written


def test_gamma_zero_is_the_base_models_own_answer(model_dirs, strong, tuned):
    config = nudging(gamma=0.0, max_new_tokens=24, base_chunk_tokens=24)
    prompts = ["The cat", "Once upon a time"]
    alone = [r.response for r in w2s.Sampling(max_new_tokens=24, sampling=GREEDY).generate(strong, None, prompts)]
    nudged = list(config.generate(strong, tuned, prompts, nudger_template="{prompt}"))
    assert [r.response for r in nudged] == alone
    assert all(r.nudge_tokens == 0 and r.guide_tokens == 0 for r in nudged)


def test_gamma_one_without_agreement_is_the_nudgers_own_answer(strong, tuned):
    """The nudger (GPT-2 on another tokenizer) writes every word; the base is asked before each and never
    sure.  Rounds keep all words but the last, and the nudger goes on from its own tokens."""
    config = nudging(gamma=1.0, agreement=False, max_new_tokens=30, max_repeats=100)
    prompts = ["The cat", "She said"]
    alone = [r.response for r in w2s.Sampling(max_new_tokens=60, sampling=GREEDY).generate(tuned, None, prompts)]
    for result, reference in zip(config.generate(strong, tuned, prompts, nudger_template="{prompt}"), alone):
        assert result.base_tokens == 0 and result.response and reference.startswith(result.response)
        assert result.nudge_tokens >= 30 or result.finished
        assert result.sampled_tokens > 0  # the base was asked


def test_stop_strings_end_the_answer_across_the_two_models():
    base = make_scripted(TOK, BASE, default_next=ids(".")[0])
    nudger = make_scripted(TOK, NUDGER, default_next=ids(" the")[0])
    result = run(base, nudger, nudging(sampling=w2s.SamplingParams(temperature=0.0, top_k=0, stop=("sat on",))))
    assert result.response == "The cat " and result.finished


@pytest.mark.parametrize("field, value", [("gamma", 1.5), ("gamma", -0.1), ("nudge_tokens", 0),
                                          ("max_new_tokens", 0), ("base_chunk_tokens", 0), ("max_repeats", 0)])
def test_bad_parameters_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        w2s.Nudging(**{field: value})
