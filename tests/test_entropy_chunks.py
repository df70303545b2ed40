"""Entropy-cut chunks (issue 29 item 2): a chunk ends before the token at which the large model's next-token
entropy reaches ``chunk_entropy``, once it has 4 tokens; on scripted bigram models whose entropies are known."""

from __future__ import annotations

import math

import pytest
from conftest import make_scripted, strong_tokenizer
from test_nudging import ids, script

import w2s
from w2s.backends.base import ENTROPY_MIN_TOKENS, top_entropy

TOK = strong_tokenizer()
GREEDY = w2s.SamplingParams(temperature=0.0, top_k=0)
# an even choice of four (entropy ~1.4-1.6 nats with the rest of the vocabulary; sure positions ~0); greedy
# takes the lowest id of a tie, " the", which the script goes on from
FOUR = [" the", " d", "og", " sat"]


def model(unsure_after: str):
    return make_scripted(TOK, script("The cat sat on the dog.", unsure={unsure_after: FOUR}), ids(".")[0])


def expand(lm, **kw):
    session = lm.open(["Q:"], GREEDY, [0])
    return session.expand([0], 1, 12, **kw)[0]


def test_a_chunk_ends_where_the_entropy_rises():
    lm = model(" on")  # "The", " c", "at", " sat", " on": sure; then four even choices
    assert expand(lm, entropy=1.0).text == "The cat sat on"
    assert expand(lm, entropy=1.0).finished is False
    assert expand(lm, entropy=2.0).text.startswith("The cat sat on ")  # under the threshold: no cut
    assert expand(lm).text == expand(lm, entropy=2.0).text


def test_no_cut_before_the_chunks_fourth_token():
    lm = model(" c")  # unsure after 2 tokens: too early to cut; sure again after
    assert ENTROPY_MIN_TOKENS == 4
    uncut = expand(lm, entropy=1.0)
    assert uncut.text == "The c the dog." and uncut.finished


def test_cbs_chunks_follow_the_entropy():
    lm = model(" on")
    steps = []
    search = w2s.ChunkBeamSearch(beam_width=1, successors_per_beam=1, chunk_length=12, chunk_entropy=1.0,
                                 max_new_tokens=24, sampling=GREEDY)
    result = next(iter(search.generate(lm, None, ["Q:"], on_step=lambda row, texts: steps.append(texts[0]))))
    assert steps[0] == "The cat sat on" and result.response.startswith("The cat sat on ")
    plain = next(iter(w2s.ChunkBeamSearch(beam_width=1, successors_per_beam=1, chunk_length=12, max_new_tokens=24,
                                          sampling=GREEDY).generate(lm, None, ["Q:"])))
    assert result.response == plain.response  # greedy, one beam: the cuts move chunk ends, not the text


def test_top_entropy_of_a_known_distribution():
    assert top_entropy([math.log(0.25)] * 4) == pytest.approx(math.log(4))
    # two outcomes known (0.5, 0.3): the other 0.2 counted as one outcome
    assert top_entropy([math.log(0.5), math.log(0.3)]) == pytest.approx(
        -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2)))


@pytest.mark.parametrize("value", [-0.5, float("nan")])
def test_a_negative_threshold_is_named(value):
    with pytest.raises(ValueError, match="chunk_entropy"):
        w2s.ChunkBeamSearch(chunk_entropy=value)
