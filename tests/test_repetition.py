"""The repetition controls of SamplingParams in the local sampling loop: the same logits as
``transformers``' processors (repetition penalty, n-gram ban) and the OpenAI API's formula (frequency
and presence penalties), step after step, and the same greedy text as ``generate``."""

import re
from collections import Counter

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

import w2s
from w2s.backends.sampling import Penalties

VOCAB = 40


def _histories(rows=4, length=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 12, (rows, length), generator=g)  # few distinct ids: many repeats and n-grams


def _logits(rows=4, seed=1):
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


def _steps(penalties, histories, reference, steps=6):
    """Apply ``penalties`` and ``reference(input_ids, logits)`` on fresh logits for several steps, each
    row drawing the argmax of the penalised logits; they must agree at every step."""
    ids = histories.clone()
    for step in range(steps):
        logits = _logits(len(ids), seed=10 + step)
        ours = penalties.apply(logits.clone())
        theirs = reference(ids, logits.clone())
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        drawn = [int(t) for t in ours.argmax(-1)]
        penalties.add(drawn, list(range(len(ids))))
        ids = torch.cat([ids, torch.tensor(drawn).unsqueeze(1)], dim=1)


@pytest.mark.parametrize("control, processor", [
    *((dict(repetition_penalty=p), RepetitionPenaltyLogitsProcessor(p)) for p in (0.7, 1.3, 2.0)),
    *((dict(no_repeat_ngram_size=n), NoRepeatNGramLogitsProcessor(n)) for n in (1, 2, 3))])
def test_repetition_penalty_and_ngram_ban_match_transformers(control, processor):
    hist = _histories()
    penalties = Penalties(w2s.SamplingParams(**control), hist.tolist(), [[] for _ in hist], VOCAB, "cpu")
    _steps(penalties, hist, processor)


def test_frequency_and_presence_follow_the_openai_formula():
    """logit[j] -= count[j] * frequency_penalty + (count[j] > 0) * presence_penalty, counted over the
    response (the context before it is not counted)."""
    hist = _histories()
    context = 10  # the first 10 ids of each row are its context, the rest its response
    params = w2s.SamplingParams(frequency_penalty=0.6, presence_penalty=-0.4)
    penalties = Penalties(params, hist.tolist(), hist[:, context:].tolist(), VOCAB, "cpu")

    def reference(ids, logits):
        for i, row in enumerate(ids[:, context:].tolist()):
            for token, count in Counter(row).items():
                logits[i, token] -= count * 0.6 + (-0.4)
        return logits

    _steps(penalties, hist, reference)


def test_all_controls_together_in_transformers_order():
    hist = _histories(seed=3)
    params = w2s.SamplingParams(repetition_penalty=1.4, no_repeat_ngram_size=2, frequency_penalty=0.5)
    penalties = Penalties(params, hist.tolist(), hist.tolist(), VOCAB, "cpu")
    repetition, ngrams = RepetitionPenaltyLogitsProcessor(1.4), NoRepeatNGramLogitsProcessor(2)

    def reference(ids, logits):
        logits = repetition(ids, logits)
        for i, row in enumerate(ids.tolist()):
            for token, count in Counter(row).items():
                logits[i, token] -= count * 0.5
        return ngrams(ids, logits)

    _steps(penalties, hist, reference)


@pytest.mark.parametrize("controls", [dict(repetition_penalty=1.8), dict(no_repeat_ngram_size=1),
                                      dict(repetition_penalty=1.3, no_repeat_ngram_size=3)])
def test_greedy_with_controls_matches_transformers_generate(strong, controls):
    """Greedy sampling through the local loop (chunked, so the controls carry across chunks) gives
    ``generate``'s tokens with the same controls."""
    prompts = ["The cat", "I did not like the food, it was cold and"]
    sampling = w2s.SamplingParams(temperature=0.0, **controls)
    chunked = w2s.ChunkBeamSearch(beam_width=1, successors_per_beam=1, chunk_length=3, max_new_tokens=16,
                                  sampling=sampling)
    plain = w2s.Sampling(max_new_tokens=16, sampling=w2s.SamplingParams(temperature=0.0))
    unguided = [r.response for r in plain.generate(strong, None, prompts)]
    ours = list(chunked.generate(strong, lambda p, r: 0.0, prompts))
    tok = strong.tokenizer
    for prompt, result in zip(prompts, ours):
        ids = tok(prompt, return_tensors="pt")
        out = strong.model.generate(**ids, max_new_tokens=16, do_sample=False, suppress_tokens=strong.banned_ids,
                                    pad_token_id=strong.pad_id, **controls)
        new = out[0, ids["input_ids"].shape[1]:].tolist()
        if strong.eos_id in new:
            new = new[: new.index(strong.eos_id)]
        assert result.response == strong.response_text(ids["input_ids"][0].tolist(), new, strong.eos_id in new)
    assert [r.response for r in ours] != unguided  # the controls changed what greedy says


def test_no_repeat_ngram_leaves_no_repeated_ngram(strong):
    """Sampled (not greedy) branches of two prompts, over two chunks: no token bigram occurs twice in a
    row's prompt + response ids."""
    session = strong.open(["The cat sat on the mat. The", "The cat"], w2s.SamplingParams(no_repeat_ngram_size=2),
                          seeds=[1, 2])
    first = session.expand([0, 1], n=3, max_tokens=8)
    session.select([next(i for i, c in enumerate(first) if c.prompt_index == p and not c.finished) for p in (0, 1)])
    for c in first + session.expand([0, 1], n=3, max_tokens=8):
        context = session.contexts[c.prompt_index]
        ids = context + c.token_ids
        grams = list(zip(ids, ids[1:]))
        for j in range(len(context) - 1, len(grams)):  # each bigram that ends in the response is new
            assert grams[j] not in grams[:j], c.text


def test_off_by_default_and_validated():
    assert w2s.SamplingParams().repetition_controls == {}
    assert w2s.SamplingParams(frequency_penalty=1.2).repetition_controls == {"frequency_penalty": 1.2}
    for bad, message in [(dict(repetition_penalty=0.0), "repetition_penalty must be in (0, inf)"),
                         (dict(frequency_penalty=2.5), "frequency_penalty must be in [-2, 2]"),
                         (dict(presence_penalty="1"), "presence_penalty must be a number"),
                         (dict(no_repeat_ngram_size=1.5), "no_repeat_ngram_size must be an integer")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            w2s.SamplingParams(**bad)


def test_presets():
    params = w2s.SamplingParams.preset("stream-aligner")
    assert (params.temperature, params.top_p, params.top_k, params.frequency_penalty) == (0.7, 0.95, 40, 1.2)
    assert w2s.SamplingParams.preset("stream-aligner", temperature=0.0).temperature == 0.0
    assert w2s.SamplingParams.preset("weak-to-strong") == w2s.SamplingParams()
    with pytest.raises(ValueError, match="preset must be one of 'weak-to-strong', 'stream-aligner'"):
        w2s.SamplingParams.preset("stream_aligner")
