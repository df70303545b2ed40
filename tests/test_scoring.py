"""Scorers: the exact log-ratio definition, incremental = from scratch, reward models, callables."""

import random

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

import w2s
from w2s.backends.logprobs import common_prefix_length
from conftest import guide_tokenizer


def reference_logprob(lm, template, prompt, response, finished):
    """The issue's definition, computed the slow, obvious way: one forward over the whole sequence."""
    context = lm.render(template, prompt)
    tok = lm.tokenizer
    ids = tok(context + response, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if finished else [])
    start = common_prefix_length(ids, tok(context, add_special_tokens=False)["input_ids"])
    if start == 0:  # nothing of the context is left: the first token is scored after a start token
        ids, start = [lm.start_id] + ids, 1
    with torch.no_grad():
        logp = lm.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return sum(logp[i - 1, ids[i]].item() for i in range(start, len(ids)))


CASES = [
    ("The cat", " sat on the mat.", False),
    ("The cat", " sat on the mat.", True),
    ("I did not like", "", True),
    ("What a", " wonderful day", False),
    ("Say", " 日本 é", False),
]


@pytest.mark.parametrize("prompt,response,finished", CASES)
@pytest.mark.parametrize("templates", [("{prompt}", "{prompt}"), ("chat", "Q: {prompt}\nA:")])
def test_log_ratio_matches_definition(tuned, untuned, prompt, response, finished, templates):
    scorer = w2s.LogRatioScorer(tuned, untuned, *templates)
    got = scorer.score(prompt, [response], [finished])[0]
    want = reference_logprob(tuned, templates[0], prompt, response, finished) - reference_logprob(
        untuned, templates[1], prompt, response, finished
    )
    assert got == pytest.approx(want, abs=1e-4)


def test_finished_adds_exactly_the_eos_term(tuned, untuned):
    scorer = w2s.LogRatioScorer(tuned, untuned)
    open_, done = scorer.score("The cat", [" sat", " sat"], [False, True])
    assert open_ != pytest.approx(done)
    eos = tuned.tokenizer.eos_token_id
    ids = tuned.encode("The cat sat")
    with torch.no_grad():
        t = tuned.model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)[eos].item()
        u = untuned.model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)[eos].item()
    assert done - open_ == pytest.approx(t - u, abs=1e-4)


def test_prompt_boundary_merge_counts_only_tokens_after_the_common_prefix(tuned, untuned):
    """'Th' + 'e cat': the response merges with the prompt's last token; only later tokens count."""
    scorer = w2s.LogRatioScorer(tuned, untuned)
    got = scorer.score("Th", ["e cat"], [False])[0]
    want = reference_logprob(tuned, "{prompt}", "Th", "e cat", False) - reference_logprob(
        untuned, "{prompt}", "Th", "e cat", False
    )
    assert got == pytest.approx(want, abs=1e-4)


def test_empty_context_uses_a_start_token(tuned, untuned):
    scorer = w2s.LogRatioScorer(tuned, untuned)
    assert len(scorer.score("", ["hello there"], [False])) == 1


def test_incremental_equals_from_scratch_over_growing_responses(tuned, untuned):
    """Responses grow chunk by chunk (with re-tokenization merges at the boundaries, e.g. ' s' + 'at')."""
    inc = w2s.LogRatioScorer(tuned, untuned)
    scratch = w2s.LogRatioScorer(tuned, untuned, incremental=False)
    rng = random.Random(0)
    words = [" The", " cat", " s", "at", " on", " mat", ".", " é", "中", " happy", "!"]
    prompts = ["The cat", "What a", "Once upon"]
    beams = {p: [""] * 3 for p in prompts}
    for step in range(6):
        batch_p, batch_r, batch_f = [], [], []
        for p in prompts:
            for b in beams[p]:
                for _ in range(2):
                    batch_p.append(p)
                    batch_r.append(b + "".join(rng.choice(words) for _ in range(rng.randint(0, 3))))
                    batch_f.append(step == 5 and rng.random() < 0.5)
        got, want = inc.score(batch_p, batch_r, batch_f), scratch.score(batch_p, batch_r, batch_f)
        assert got == pytest.approx(want, abs=1e-4)
        for p in prompts:  # keep three random children as the next beams
            children = [r for q, r in zip(batch_p, batch_r) if q == p]
            beams[p] = rng.sample(children, 3)
    assert len(inc._tuned.groups) >= 1  # rows were kept for the next call


def test_scores_read_their_logits_one_bounded_call_at_a_time(model_dirs, tuned, untuned, monkeypatch):
    """Issue 27 item 2 with item 3's bound: the guides' logits are read call by call, never more positions at
    once than max_tokens_per_forward, and the scores (incremental or not) are those of an unbounded forward."""
    from w2s.backends import logprobs

    shapes, calls = [], []
    read = logprobs._Reader.read
    monkeypatch.setattr(logprobs._Reader, "read", lambda self, logits, column: (shapes.append(logits.shape[:2]),
                                                                                 read(self, logits, column))[1])
    small = [w2s.load_model(model_dirs[r], max_tokens_per_forward=6) for r in ("tuned", "untuned")]
    bounded, full = w2s.LogRatioScorer(*small), w2s.LogRatioScorer(tuned, untuned, incremental=False)
    prompts = ["The cat sat on the mat and", "Once upon a time"] * 2
    for responses in (["", " a", " happy cat", " é中 "], [" happy", " a dog", " happy cat is here", " é中 ok"]):
        finished = [False, True, False, True]
        want, before = full.score(prompts, responses, finished), len(shapes)
        assert bounded.score(prompts, responses, finished) == pytest.approx(want, abs=1e-4)
        calls += shapes[before:]  # the bounded guides' calls only
    assert calls and max(rows * columns for rows, columns in calls) <= 6
    assert len(calls) > 8  # forwards were split


def test_incremental_forwards_only_new_tokens(tuned, untuned):
    scorer = w2s.LogRatioScorer(tuned, untuned)
    scratch = w2s.LogRatioScorer(tuned, untuned, incremental=False)
    calls = []
    forward = tuned.model.forward

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    def run(response):
        score = scorer.score("The cat", [response], [False])
        forwarded = calls[-1]
        assert score == pytest.approx(scratch.score("The cat", [response], [False]), abs=1e-4)
        return forwarded

    text = " sat on the mat and the dog sat on the log"
    tuned.model.forward = counting
    try:
        full = run(text)
        # the old last token is unchanged: its kept next-token distribution scores the first new token
        added = len(tuned.encode("The cat" + text + " today")) - len(tuned.encode("The cat" + text))
        assert run(text + " today") == added < full
        # ' s' + 'at' re-tokenizes into ' sat': the last shared token is re-run, then the new one
        assert tuned.encode("The cat s")[:-1] == tuned.encode("The cat sat")[:-1]
        run(" s")
        assert run(" sat") == 2
    finally:
        tuned.model.forward = forward


def test_score_argument_errors(scorer):
    with pytest.raises(ValueError, match="finished"):
        scorer.score("p", ["a", "b"], [False])
    with pytest.raises(ValueError, match="prompt"):
        scorer.score(["p"], ["a", "b"], [False, False])
    assert scorer.score("p", [], []) == []


def test_reward_model_scorer_matches_a_manual_forward():
    tok = guide_tokenizer()
    tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    model = GPT2ForSequenceClassification(
        GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, num_labels=1, pad_token_id=tok.pad_token_id)
    ).eval()
    scorer = w2s.RewardModelScorer(model, tok, template="Q: {prompt} A:")
    got = scorer.score("The cat", [" sat.", " is a happy little cat"], [True, False])
    with torch.no_grad():
        want = [model(**tok("Q: The cat A:" + r, return_tensors="pt")).logits[0, 0].item() for r in [" sat.", " is a happy little cat"]]
    assert got == pytest.approx(want, abs=1e-4)


def test_reward_model_scorer_batches_a_model_with_no_pad_id_and_refuses_to_cut_a_text():
    """Issue 25 item 6: a Llama-family reward model whose config has no pad_token_id failed on batches of
    more than one, and truncation cut the end of the response it scored."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = guide_tokenizer()
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, num_labels=1, pad_token_id=None)).eval()
    scorer = w2s.RewardModelScorer(model, tok, batch_size=2)
    responses = [" sat.", " is a happy little cat"]
    together = scorer.score("The cat", responses, [True, True])
    assert together == pytest.approx([scorer.score("The cat", [r], [True])[0] for r in responses], abs=1e-4)
    with pytest.raises(ValueError, match=r"longer than the reward model's 64 positions"):
        scorer.score("The cat", [" and the dog" * 40], [True])


def test_callable_scorer():
    scorer = w2s.CallableScorer(lambda prompt, response: len(prompt) + len(response))
    assert scorer.score("ab", ["", "xyz"], [False, True]) == [2.0, 5.0]
    assert scorer.score(["a", "abc"], ["x", "x"], [False, False]) == [2.0, 4.0]


def test_a_guide_pair_with_one_tokenizer_tokenizes_each_response_once(tuned, untuned, monkeypatch):
    """tuned and untuned are loaded apart but share their tokenizer: one tokenizer call per score, and the
    scores equal those of a scorer that tokenizes for each model."""
    shared = w2s.LogRatioScorer(tuned, untuned)
    apart = w2s.LogRatioScorer(tuned, untuned)
    apart._same_tokens = False
    assert shared._same_tokens and tuned.tokenizer is not untuned.tokenizer
    calls = []
    for lm in (tuned, untuned):
        encode = lm.encode_many
        monkeypatch.setattr(lm, "encode_many", lambda texts, encode=encode: calls.append(len(texts)) or encode(texts))
    prompts, responses = ["The movie was"] * 3, [" good", " bad and", " fine."]
    got = shared.score(prompts, responses, [False, False, True])
    assert len(calls) == 2  # the context once, the responses once
    assert got == pytest.approx(apart.score(prompts, responses, [False, False, True]), abs=1e-6)


def test_a_models_context_length_is_the_bound_its_rows_keep(model_dirs):
    """The model's ``context_length`` (its config's unless set) bounds every row it runs, scoring included:
    setting it lifts or lowers the bound (bench_long.py runs the 1024-position guides past it)."""
    guide = w2s.load_model(model_dirs["shared_tuned"])
    scorer = w2s.LogRatioScorer(guide, w2s.load_model(model_dirs["shared_untuned"]))
    text = " the cat sat on the mat" * 4
    assert scorer.score("The cat", [text], [False])  # fits the config's context
    guide.context_length = 8
    with pytest.raises(w2s.ContextLengthError, match="context is 8 tokens"):
        w2s.LogRatioScorer(guide, w2s.load_model(model_dirs["shared_untuned"])).score("The cat", [text], [False])
