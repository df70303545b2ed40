"""The model families users run w2s on (tests/zoo.py), end to end: the bugs byte-level test models hide.

Each test here failed before its fix: SentencePiece decoders dropping a response's leading space,
EFT on embedding matrices padded past the tokenizer, the end of a chat turn, added non-special tokens,
stop strings, the BOS rule, multi-turn chat, and sliding-window or recurrent caches.
"""

from __future__ import annotations

import functools

import pytest
import torch

import w2s
from conftest import chain, make_scripted
from w2s.backends.logprobs import common_prefix_length
from zoo import BUILDERS, llama2_tokenizer

FAMILIES = ["llama2", "mistral", "llama3", "qwen2", "gemma"]
# the token each family's chat template writes after an assistant turn
TURN_END = {"llama2": "</s>", "mistral": "</s>", "llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "gemma": "<end_of_turn>"}
PROMPTS = ["Tell me about the cat and the dog in the park today.", "What a terrible day at work",
           "Once upon a time there was a village by the sea, and"]
TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Tell me about cats."}]


@pytest.fixture(scope="module")
def models(zoo):
    return {f: w2s.load_model(zoo[f]) for f in FAMILIES}


def twin(family: str, seed: int) -> w2s.TransformersModel:
    """Another random model of ``family`` (same tokenizer, other weights): a guide for EFT."""
    model, tok = BUILDERS[family](seed=seed)
    return w2s.TransformersModel(model, tok, name=f"{family}-{seed}")


def reference_logprob(lm, template, prompt, response, finished, end_token):
    """The scoring definition the slow, obvious way, from the tokenizer alone: one forward, no cache."""
    tok = lm.tokenizer
    context = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                      add_generation_prompt=True) if template == "chat" else template.format(prompt=prompt)
    specials = template != "chat"  # a format string gets the tokenizer's BOS; a chat template writes its own
    ids = tok(context + response, add_special_tokens=specials)["input_ids"]
    start = common_prefix_length(ids, tok(context, add_special_tokens=specials)["input_ids"])
    ids = ids + ([tok.convert_tokens_to_ids(end_token)] if finished else [])
    if start == 0:
        ids, start = [lm.start_id] + ids, 1
    with torch.no_grad():
        logp = lm.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return sum(logp[i - 1, ids[i]].item() for i in range(start, len(ids)))


# -- response text: decoded relative to its context --------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_response_text_is_the_text_its_ids_add_to_the_context(models, family):
    lm = models[family]
    session = lm.open(PROMPTS, w2s.SamplingParams(temperature=1.0, top_k=0), seeds=[0, 1, 2])
    continuations = session.expand([0, 1, 2], n=6, max_tokens=6)
    for c in continuations:
        context = lm.encode_prompt(PROMPTS[c.prompt_index], "{prompt}")
        whole, head = lm.decode(context + c.token_ids), lm.decode(context)
        assert whole.startswith(head)
        expected = whole[len(head):]
        assert c.text == (expected if c.finished else expected.rstrip("\ufffd"))
    if family in ("llama2", "mistral", "gemma"):  # "▁word" tokens: the leading space is really there
        assert any(c.text.startswith(" ") for c in continuations)


@functools.cache
def scripted_llama2(text: str):
    """A Llama-2-tokenizer model that says ``text`` after any prompt, then ends."""
    tok = llama2_tokenizer()
    ids, script = chain(tok, text, end=tok.eos_token_id)
    return make_scripted(tok, script, default_next=ids[0]), tok


def test_stream_aligner_keeps_the_spaces_between_sentences_on_sentencepiece():
    upstream, _ = scripted_llama2(" Hello. How are you?")
    loop = w2s.StreamAligner(sampling=w2s.SamplingParams(temperature=0.0), max_sentence_tokens=8)
    answer = loop.run(upstream, lambda q, prefix, sentence: sentence, ["Hi"], upstream_template="{prompt}")[0]
    assert [s.original for s in answer.steps] == [" Hello.", " How are you?"]
    assert answer.corrected == answer.original == " Hello. How are you?"
    shout = loop.run(upstream, lambda q, prefix, sentence: sentence.upper(), ["Hi"], upstream_template="{prompt}")
    assert shout[0].corrected == " HELLO. HOW ARE YOU?"


# -- stop strings: one rule for CBS, the local generator and remote engines --------------------------

@pytest.mark.parametrize("chunk_length", [1, 2, None])
@pytest.mark.parametrize("stop,before", [(" How", " Hello."), (". How", " Hello"), ("you?", " Hello. How are ")])
def test_stop_strings_with_a_leading_space_or_across_chunks(stop, before, chunk_length):
    lm, _ = scripted_llama2(" Hello. How are you?")
    search = w2s.ChunkBeamSearch(beam_width=1, successors_per_beam=1, chunk_length=chunk_length, max_new_tokens=12,
                                 sampling=w2s.SamplingParams(temperature=0.0, stop=(stop,)))
    result = next(search.generate(lm, None, ["Hi"]))
    assert (result.response, result.finished) == (before, True)
    generator = lm.generator(1, w2s.SamplingParams(temperature=0.0, stop=(stop,)), [0])
    assert generator.generate({0: "Hi"}, 12) == {0: (before, True)}  # a stop string ends it, as remotely
    # a stop callable still cuts without ending; whichever comes first wins
    assert generator.generate({0: "Hi"}, 12, stop=lambda t: 3 if len(t) >= 3 else None) == {0: (" He", False)}


# -- EFT on embedding matrices padded past the tokenizer ---------------------------------------------

def test_eft_runs_when_embeddings_are_padded_and_widths_differ(models):
    strong = models["qwen2"]
    tuned, untuned = twin("qwen2", 21), twin("qwen2", 22)
    untuned.model.resize_token_embeddings(strong.num_logits + 64)  # another padded width, same vocabulary
    untuned = w2s.TransformersModel(untuned.model, untuned.tokenizer)
    n_real = len(strong.tokenizer)
    assert strong.num_logits > n_real and untuned.num_logits > strong.num_logits
    prompt = PROMPTS[0]
    beta = 1.5
    with torch.no_grad():
        logp = [m.model(torch.tensor([m.encode_prompt(prompt, "{prompt}")])).logits[0, -1, :n_real].log_softmax(-1)
                for m in (strong, tuned, untuned)]
    mixed = (logp[0] + beta * (logp[1] - logp[2]))
    mixed[torch.tensor([i for i in strong.banned_ids if i < n_real])] = float("-inf")
    eft = w2s.EmulatedFineTuning(beta=beta, max_new_tokens=1, sampling=w2s.SamplingParams(temperature=0.0))
    greedy = next(eft.generate(strong, tuned, untuned, [prompt]))
    token = mixed.argmax().item()
    assert greedy.response == strong.response_text(strong.encode_prompt(prompt, "{prompt}"), [token],
                                                   token in strong.eos_ids)
    sampled = list(w2s.EmulatedFineTuning(beta=beta, max_new_tokens=8,
                                                  sampling=w2s.SamplingParams(temperature=1.0, top_k=0)).generate(
        strong, tuned, untuned, PROMPTS, seed=3))
    assert all(r.num_tokens >= 1 for r in sampled)


# -- the end of a chat turn ------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_the_end_token_scored_under_chat_is_the_templates_end_of_turn(models, family):
    lm = models[family]
    turn_end = lm.tokenizer.convert_tokens_to_ids(TURN_END[family])
    assert lm.end_id("chat") == turn_end and turn_end in lm.eos_ids
    assert lm.end_id("{prompt}") == lm.eos_id
    scorer = lm.response_logprobs("chat")
    [(_, ids, _)] = scorer.sequences(["Hi"], [" Hello there."], [True])
    assert ids[-1] == turn_end
    for finished in (False, True):
        expected = reference_logprob(lm, "chat", "Hi", " Hello there.", finished, TURN_END[family])
        assert scorer(["Hi"], [" Hello there."], [finished])[0] == pytest.approx(expected, abs=1e-4)


def test_sampling_stops_at_the_end_of_turn_token(models):
    lm = models["llama3"]
    eot = lm.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    _, tok = BUILDERS["llama3"]()
    hello = tok(" Hello", add_special_tokens=False)["input_ids"]
    model = make_scripted(tok, {hello[-1]: [(eot, 1.0)]}, default_next=hello[0])
    greedy = w2s.Sampling(max_new_tokens=8, sampling=w2s.SamplingParams(temperature=0.0))
    result = next(greedy.generate(model, None, ["Hi"], template="chat"))
    assert (result.response, result.finished, result.num_tokens) == (" Hello", True, len(hello))


def test_aligner_sft_targets_end_with_an_end_token_even_when_the_template_writes_none(model_dirs):
    from transformers import AutoTokenizer

    from w2s.training.aligner import examples

    tok = AutoTokenizer.from_pretrained(model_dirs["strong"])  # its chat template writes no end of turn
    records = [{"question": "Q", "prefix": "", "sentence": "Bad.", "correction": "Good."}]
    chat = examples(records, "stream", tok)
    assert chat[0]["completion"][0]["content"] == "Good." + tok.eos_token
    _, llama3_tok = BUILDERS["llama3"]()  # <|eot_id|> closes the turn already: nothing is added
    assert examples(records, "stream", llama3_tok)[0]["completion"][0]["content"] == "Good."


# -- the banned set: special tokens are not text; added non-special tokens are -----------------------

def test_banned_tokens_are_special_ones_and_padded_columns(models):
    lm = models["qwen2"]
    tok = lm.tokenizer
    banned = set(lm.banned_ids)
    assert tok.convert_tokens_to_ids("<|im_start|>") in banned
    assert not {tok.convert_tokens_to_ids(t) for t in ("<think>", "</think>", "<tool_call>")} & banned
    assert set(range(len(tok), lm.num_logits)) <= banned  # padded embedding rows
    assert not set(lm.eos_ids) & banned
    custom = w2s.TransformersModel(lm.model, tok, banned_ids=[5, 7])
    assert custom.banned_ids == [5, 7]
    custom.banned_ids = []
    assert custom.banned_ids == []
    with pytest.raises(ValueError, match=r"banned_ids must be token ids in \[0, 640\)"):
        custom.banned_ids = [640]


# -- the BOS rule ------------------------------------------------------------------------------------

def test_one_bos_rule_for_the_strong_model_the_guides_and_eft(models):
    llama2, gemma, qwen2 = models["llama2"], models["gemma"], models["qwen2"]
    bos = llama2.tokenizer.bos_token_id
    assert llama2.encode_prompt("Hi", "{prompt}")[:1] == [bos]
    assert llama2.response_logprobs("{prompt}").sequences(["Hi"], [" there"], [False])[0][1][0] == bos
    assert llama2.encode_prompt(llama2.render("chat", "Hi"), "chat").count(bos) == 1  # the template's own
    gemma_chat = gemma.encode_prompt(gemma.render("chat", "Hi"), "chat")
    assert gemma_chat.count(gemma.tokenizer.bos_token_id) == 1
    assert qwen2.encode_prompt("Hi", "{prompt}") == qwen2.encode("Hi")  # no BOS in Qwen's tokenizer
    from w2s.search.eft import _EFTModel

    eft = _EFTModel(1.0, llama2, "{prompt}", (twin("llama2", 31), "{prompt}"), (twin("llama2", 32), "chat"))
    session = eft.open(["Hi"], w2s.SamplingParams(), [0])
    firsts = [rows.ids[0] for rows in session.stream_rows]
    assert firsts[0][0] == bos and firsts[1][0] == bos and firsts[2].count(bos) == 1


# -- search across families: the strong model of one, the guides of another --------------------------

PAIRS = [("llama2", "qwen2"), ("llama3", "gemma"), ("qwen2", "mistral"), ("gemma", "llama2"), ("mistral", "llama3")]


@pytest.mark.parametrize("strong_family,guide_family", PAIRS)
def test_search_with_guides_of_another_family_scores_by_the_definition(models, strong_family, guide_family):
    strong, tuned, untuned = models[strong_family], models[guide_family], twin(guide_family, 41)
    scorer = w2s.LogRatioScorer(tuned, untuned, "chat", "{prompt}")
    scratch = w2s.LogRatioScorer(tuned, untuned, "chat", "{prompt}", incremental=False)
    cbs = w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=2, chunk_length=5, max_new_tokens=15,
                              sampling=w2s.SamplingParams(temperature=1.0), return_beams=True)
    results = list(cbs.generate(strong, scorer, PROMPTS, template="chat", seed=1))
    for method in (w2s.BestOfN(n=3, max_new_tokens=6), w2s.Sampling(max_new_tokens=6)):
        assert len(list(method.generate(strong, scorer, PROMPTS[:2], template="chat"))) == 2
    for r in results:
        finished = [b for b in r.beams if b.finished]
        assert r.finished == bool(finished) and (not finished or r.response == finished[0].text)
        texts = [b.text for b in r.beams]
        again = scratch.score(r.prompt, texts, [b.finished for b in r.beams])
        assert [b.score for b in r.beams] == pytest.approx(again, abs=1e-4)
        end = TURN_END[guide_family]
        for b in r.beams:
            expected = (reference_logprob(tuned, "chat", r.prompt, b.text, b.finished, end)
                        - reference_logprob(untuned, "{prompt}", r.prompt, b.text, b.finished, untuned.tokenizer.eos_token))
            assert b.score == pytest.approx(expected, abs=1e-3)


# -- multi-turn chat: every family's template gets the real turns -------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_a_conversation_is_rendered_with_each_familys_chat_template(models, family):
    lm = models[family]
    expected = lm.tokenizer.apply_chat_template(TURNS, tokenize=False, add_generation_prompt=True)
    assert lm.render("chat", w2s.Conversation(TURNS)) == expected
    assert "Be brief." in expected and "Hello!" in expected
    assert lm.render("{prompt}\nAssistant:", w2s.Conversation(TURNS)).startswith("System: Be brief.\nUser: Hi\n")


def test_serve_chat_renders_the_turns_of_a_llama3_model(models):
    from test_serve import Recorder, bundle, client, serve
    from w2s.serve import ServeConfig

    strong = Recorder(models["llama3"])
    m = bundle(strong=(strong, "{prompt}"), tuned=(models["gemma"], "chat"), untuned=(twin("gemma", 51), "{prompt}"))
    server, thread, url = serve(ServeConfig(name="tiny", methods={"cbs": {"chunk_length": 4, "max_new_tokens": 8}},
                                            batch_window_ms=0), m)
    try:
        reply = client(url).chat.completions.create(model="tiny", messages=TURNS, seed=3)
    finally:
        server.should_exit = True
        thread.join(5)
    assert strong.seen == [models["llama3"].tokenizer.apply_chat_template(TURNS, tokenize=False,
                                                                         add_generation_prompt=True)]
    assert isinstance(reply.choices[0].message.content, str)


# -- caches that cannot be rolled back with a mask ---------------------------------------------------

def test_a_recurrent_model_is_refused_with_its_model_type(zoo):
    with pytest.raises(ValueError, match="mamba"):
        lm = w2s.load_model(zoo["recurrent"])
        next(w2s.Sampling(max_new_tokens=2).generate(lm, None, ["Hi"]))
