"""The remote backend against a real engine on loopback: llama.cpp's OpenAI-compatible server
(``llama-cpp-python[server]``) serving the default strong model's GGUF (SmolLM2-135M-Instruct), with a
fault-injecting proxy (tests/remote_engine.py) in front of it for request logs and faults."""

from __future__ import annotations

import json
import math
import random
import time
from email.utils import formatdate
from pathlib import Path

import pytest

import w2s
from w2s.aligner.segment import first_sentence_end
from w2s.backends.remote import (RemoteError, RemoteModel, backoff_delay, check_echo_logprobs, derive_seed,
                                 parse_retry_after)

from remote_engine import completions, run_cli, start_llama_server

PROMPTS = ["The movie was", "My day started"]


@pytest.fixture(scope="session")
def gguf() -> str:
    from w2s import defaults

    try:
        return str(defaults.strong_gguf())
    except ValueError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def engine(gguf, tmp_path_factory):
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is installed by `make test`")
    proc, url = start_llama_server(gguf, str(tmp_path_factory.mktemp("engine") / "llama_server.log"))
    yield url
    proc.kill()
    proc.wait()


def remote(proxy, **kw) -> RemoteModel:
    kw = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 30.0, **kw}
    return RemoteModel(proxy.url, "smollm2", **kw)


# -- pure logic ----------------------------------------------------------------------------------------
def test_backoff_is_full_jitter_under_an_exponential_cap():
    rng = random.Random(0)
    for attempt in range(8):
        cap = min(30.0, 0.5 * 2**attempt)
        draws = [backoff_delay(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0.0 <= d <= cap for d in draws)
        assert max(draws) > 0.8 * cap and min(draws) < 0.2 * cap  # spread over the whole range


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    now = time.time()
    assert parse_retry_after(formatdate(now + 20, usegmt=True), now=now) == pytest.approx(20, abs=1)
    assert parse_retry_after(formatdate(now - 20, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None and parse_retry_after("") is None
    assert parse_retry_after("99999") == 600.0  # capped


def test_token_counts_of_choices():
    from w2s.backends.remote import parse_choices

    one = parse_choices({"choices": [{"text": " a b", "finish_reason": "stop"}], "usage": {"completion_tokens": 2}},
                        8)
    assert [(c.text, c.finish_reason, c.num_tokens) for c in one] == [(" a b", "stop", 2)]
    # n > 1 (vLLM): usage covers all choices; cut ones have max_tokens, the finished ones share the rest
    many = parse_choices({"choices": [{"index": 1, "text": "x", "finish_reason": "length"},
                                      {"index": 0, "text": "y", "finish_reason": "stop"}],
                          "usage": {"completion_tokens": 11}}, 8)
    assert [(c.text, c.num_tokens) for c in many] == [("y", 3), ("x", 8)]
    with pytest.raises(RemoteError, match="no choices"):
        parse_choices({"choices": []}, 8)


def test_derived_seeds_are_deterministic_and_distinct():
    assert derive_seed(7, 0, 0, 1) == derive_seed(7, 0, 0, 1)
    seeds = {derive_seed(7, step, row, k) for step in range(4) for row in range(4) for k in range(4)}
    assert len(seeds) == 64 and all(0 <= s < 2**31 for s in seeds)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="base_url must start with http"):
        RemoteModel("localhost:8000/v1", "m")
    with pytest.raises(ValueError, match="concurrency must be in"):
        RemoteModel("http://h/v1", "m", concurrency=0)
    with pytest.raises(ValueError, match="model must be"):
        RemoteModel("http://h/v1", "")
    with pytest.raises(ValueError, match="tokenizer=PATH"):
        RemoteModel("http://h/v1", "m").render("chat", "hi")


def test_request_bodies_per_engine():
    """The sampling settings under each engine's names (pure: no request is sent to the unreachable port)."""
    P = w2s.SamplingParams
    sampling = lambda engine, params, **kw: RemoteModel("http://127.0.0.1:9/v1", "m", engine=engine,  # noqa: E731
                                                         **kw).completion_body("x", params, 4, 2, 7)
    base = {"model": "m", "prompt": "x", "max_tokens": 4, "n": 2, "seed": 7, "temperature": 0.7, "top_p": 1.0}
    controls = P(repetition_penalty=1.3, frequency_penalty=0.5, presence_penalty=-0.25, stop=("\n",))
    assert sampling("vllm", P()) == {**base, "top_k": 50}
    assert sampling("vllm", P(top_k=0)) == base  # vLLM's own default is no top-k
    assert sampling("vllm", controls) == {**base, "stop": ["\n"], "top_k": 50, "repetition_penalty": 1.3,
                                          "frequency_penalty": 0.5, "presence_penalty": -0.25}
    # llama.cpp: always repeat_penalty (1.0 when off), min_p 0 and top_k (0 when off): its server defaults
    # to 1.1, 0.05 and 40; extra_body still overrides them
    neutral = {"repeat_penalty": 1.0, "min_p": 0.0}
    assert sampling("llama.cpp", P()) == {**base, "top_k": 50, **neutral}
    assert sampling("llama.cpp", P(top_k=0)) == {**base, "top_k": 0, **neutral}
    assert sampling("llama.cpp", controls) == {**base, "stop": ["\n"], "top_k": 50, "repeat_penalty": 1.3,
                                               "min_p": 0.0, "frequency_penalty": 0.5, "presence_penalty": -0.25}
    assert sampling("llama.cpp", P(), extra_body={"min_p": 0.1})["min_p"] == 0.1
    # the hosted API: no top_k, only its own two penalties; also when told by its address
    assert sampling("openai", P(frequency_penalty=1.0)) == {**base, "frequency_penalty": 1.0}
    hosted = RemoteModel("https://api.openai.com/v1", "gpt").completion_body("x", P(presence_penalty=1.0), 4, 1, 0)
    assert "top_k" not in hosted and hosted["presence_penalty"] == 1.0
    # auto: the shared names without asking the engine (nothing listens on port 9)
    assert sampling("auto", P(frequency_penalty=1.0)) == {**base, "top_k": 50, "frequency_penalty": 1.0}
    # the older send_top_k still decides when given
    assert "top_k" not in sampling("vllm", P(), send_top_k=False)
    assert sampling("openai", P(), send_top_k=True)["top_k"] == 50


@pytest.mark.parametrize("engine, params, said", [
    ("openai", {"repetition_penalty": 1.3}, r"repetition_penalty must be 1.0 \(off\) with engine 'openai', which "
                                            r"has no such control, got 1.3; it takes frequency_penalty, presence_penalty"),
    ("vllm", {"no_repeat_ngram_size": 2}, r"no_repeat_ngram_size must be 0 \(off\) with engine 'vllm'.*got 2; it "
                                          r"takes repetition_penalty, frequency_penalty, presence_penalty"),
    ("llama.cpp", {"no_repeat_ngram_size": 3}, r"no_repeat_ngram_size .* engine 'llama.cpp'.*got 3; it takes "
                                               r"repetition_penalty \(as repeat_penalty\)"),
    ("auto", {"no_repeat_ngram_size": 2}, r"no_repeat_ngram_size must be 0 \(off\) on a remote engine, got 2: none "
                                          r"of 'vllm', 'llama.cpp', 'openai' has it"),
])
def test_a_control_the_engine_lacks_is_refused_by_name(engine, params, said):
    strong = RemoteModel("http://127.0.0.1:9/v1", "m", engine=engine)
    with pytest.raises(ValueError, match=said):
        strong.open(["x"], w2s.SamplingParams(**params), [0])
    with pytest.raises(ValueError, match=said):
        strong.generator(1, w2s.SamplingParams(**params), [0])


def test_engine_and_send_top_k_are_checked():
    with pytest.raises(ValueError, match=r"engine must be one of 'auto', 'vllm', 'llama.cpp', 'openai', got 'vlm'"):
        RemoteModel("http://h/v1", "m", engine="vlm")
    with pytest.raises(ValueError, match="send_top_k must be True, False or None"):
        RemoteModel("http://h/v1", "m", send_top_k="yes")
    with pytest.raises(ValueError, match="engine must be one of"):
        w2s.ModelSpec("http://h/v1", model="m", engine="tgi")
    spec = w2s.ModelSpec("http://h/v1", role="strong", model="m", engine="llama.cpp")
    assert w2s.load(spec).model.engine == "llama.cpp"


# -- against the engine --------------------------------------------------------------------------------
def test_cbs_and_best_of_n_with_a_remote_strong_model(proxy, tuned, untuned):
    strong = remote(proxy)
    scorer = w2s.LogRatioScorer(tuned, untuned)
    cbs = w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=2, chunk_length=4, max_new_tokens=12,
                              return_beams=True)
    results = list(cbs.generate(strong, scorer, PROMPTS, seed=3))
    assert [r.prompt for r in results] == PROMPTS
    for r in results:
        assert r.error is None and r.response and math.isfinite(r.score)
        assert 0 < r.num_tokens <= 12 and len(r.beams) == 2
        # the reported score is the scorer's value of the response
        assert r.score == pytest.approx(scorer.score(r.prompt, [r.response], [r.finished])[0], abs=1e-4)
    # every request continues the prompt with a kept beam's text, in chunks of L tokens
    bodies = [e["body"] for e in completions(proxy)]
    assert all(b["max_tokens"] == 4 and b["model"] == "smollm2" and b["top_k"] == 50 for b in bodies)
    assert all(any(b["prompt"].startswith(p) for p in PROMPTS) for b in bodies)
    assert any(len(b["prompt"]) > max(map(len, PROMPTS)) for b in bodies)  # later chunks carry a prefix
    # seeds are derived per (prompt seed, step, row, sample): a rerun sends the same seeds
    again_proxy_start = len(proxy.log)
    list(cbs.generate(strong, scorer, PROMPTS, seed=3))
    first_step = lambda entries: sorted(e["body"]["seed"] for e in entries  # noqa: E731
                                        if e["path"] == "/v1/completions" and e["body"]["prompt"] in PROMPTS)
    assert first_step(proxy.log[again_proxy_start:]) == first_step(proxy.log[:again_proxy_start])
    assert len(set(first_step(proxy.log[:again_proxy_start]))) == 2 * 4  # W*K distinct seeds per prompt

    bon = list(w2s.BestOfN(n=3, max_new_tokens=10).generate(strong, scorer, PROMPTS, seed=0))
    assert all(r.error is None and r.response and math.isfinite(r.score) and r.num_tokens <= 10 for r in bon)
    strong.close()


def test_stop_strings_across_chunks_end_remote_responses_as_local_ones_do(proxy):
    """The engine checks stop strings only in one request's text; one spanning two chunks is caught by w2s,
    and the result is what one whole request with that stop string gives (greedy, so comparable)."""
    strong = remote(proxy)
    steps = []
    greedy = dict(beam_width=1, successors_per_beam=1, max_new_tokens=12)
    one_token_chunks = w2s.ChunkBeamSearch(chunk_length=1, sampling=w2s.SamplingParams(temperature=0.0), **greedy)
    text = next(one_token_chunks.generate(strong, None, ["Once upon a time"], on_step=lambda p, t: steps.append(t[0])))
    text = text.response
    boundary = next(len(t) for t in steps if 2 <= len(t) <= len(text) - 2)  # a chunk boundary inside the text
    stop = text[boundary - 2 : boundary + 2]
    expected = text[: text.find(stop)]
    for chunk_length in (1, None):  # the stop string spans two chunks / lies inside one request
        sampling = w2s.SamplingParams(temperature=0.0, stop=(stop,))
        search = w2s.ChunkBeamSearch(chunk_length=chunk_length, sampling=sampling, **greedy)
        result = next(search.generate(strong, None, ["Once upon a time"]))
        assert (result.response, result.finished) == (expected, True), (stop, chunk_length)
    generator = strong.generator(1, w2s.SamplingParams(temperature=0.0, stop=(stop,)), [0])
    assert generator.generate({0: "Once upon a time"}, 12) == {0: (expected, True)}
    strong.close()


def test_llama_cpp_honours_seed(proxy):
    strong = remote(proxy)
    body = lambda seed: {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 8,  # noqa: E731
                         "temperature": 1.0, "seed": seed}
    texts = [strong.run(strong.post("/completions", body(s)))["choices"][0]["text"] for s in (1, 2, 1, 2)]
    assert texts[0] == texts[2] and texts[1] == texts[3] and texts[0] != texts[1]
    strong.close()


def test_n_is_fanned_out_when_the_engine_ignores_it(proxy):
    strong = remote(proxy)
    beams = strong.open(["Once upon a time"], w2s.SamplingParams(temperature=1.0), seeds=[5])
    out = beams.expand([0], n=3, max_tokens=6)
    assert len(out) == 3 and all(c.prompt_index == 0 and c.parent == 0 for c in out)
    assert len({c.text for c in out}) > 1  # three different samples, not one repeated
    assert strong.n_supported is False  # llama.cpp returned one choice for n=3
    bodies = [e["body"] for e in completions(proxy)]
    assert [b["n"] for b in bodies] == [3, 1, 1] and len({b["seed"] for b in bodies}) == 3
    # known now: the next expansion sends K single requests at once
    beams.select([i for i, c in enumerate(out) if not c.finished][:1])
    proxy.log.clear()
    nxt = beams.expand([0], n=2, max_tokens=3)
    assert [e["body"]["n"] for e in completions(proxy)] == [1, 1]
    assert all(c.text.startswith(out[0].text) for c in nxt)
    strong.close()


def test_step_chunks_of_a_remote_strong_model_end_at_sentence_ends(proxy, tuned, untuned):
    """Each sample streams, and the stream is closed where its first sentence ends: the chunk's text ends
    exactly there (the lookahead sent back is dropped), or the chunk reached its token cap."""
    from test_budgets import Recorded, children
    from w2s.search.cbs import chunk_end_rule

    strong = Recorded(remote(proxy))
    search = w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=2, chunk_length=24, chunk_end="sentence",
                                 max_new_tokens=60)
    results = list(search.generate(strong, w2s.LogRatioScorer(tuned, untuned), ["The sea is deep. It"], seed=2))
    sentence = chunk_end_rule("sentence")
    cuts = 0
    for expansion in strong.expansions:
        for parent, cap, child in children(expansion):
            new = child.text[len(parent.text):]
            assert child.text.startswith(parent.text) and 0 <= child.drawn <= cap  # (0: an end token at once)
            if not child.finished and child.drawn < cap:  # cut: one whole sentence, nothing after it
                assert sentence(new + " Next.") == len(new), new
                cuts += 1
    assert cuts >= 2 and results[0].error is None and results[0].sampled_tokens == sum(
        c.drawn for e in strong.expansions for _, _, c in children(e))
    streams = [e for e in completions(proxy) if e["body"].get("stream")]
    assert streams and all(e["body"]["n"] == 1 and e["body"]["max_tokens"] <= 24 for e in streams)
    assert any(e.get("client_closed") for e in streams)
    strong.model.close()


def test_all_requests_of_a_step_are_in_flight_at_once_within_the_limit(proxy, tuned, untuned):
    scorer = w2s.LogRatioScorer(tuned, untuned)
    cbs = w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=3, chunk_length=3, max_new_tokens=9)
    strong = remote(proxy)
    strong.n_supported = False  # as learnt from llama.cpp: every sample is one request
    list(cbs.generate(strong, scorer, PROMPTS, seed=0))
    assert proxy.max_in_flight == 2 * 2 * 3  # W*K rows of both prompts, all at once
    strong.close()

    proxy.reset()
    limited = remote(proxy, concurrency=3)
    limited.n_supported = False
    list(cbs.generate(limited, scorer, PROMPTS, seed=0))
    assert proxy.max_in_flight == 3
    limited.close()


def test_chat_template_from_a_local_tokenizer(proxy, gguf):
    from transformers import AutoTokenizer

    strong = remote(proxy, tokenizer=gguf)
    tok = AutoTokenizer.from_pretrained(Path(gguf).parent, gguf_file=Path(gguf).name)
    expected = tok.apply_chat_template([{"role": "user", "content": "Hi!"}], tokenize=False, add_generation_prompt=True)
    assert strong.render("chat", "Hi!") == expected and "<|im_start|>assistant" in expected
    out = list(w2s.Sampling(max_new_tokens=8).generate(strong, None, ["Say hello."], template="chat"))
    assert out[0].error is None and out[0].response
    assert completions(proxy)[0]["body"]["prompt"] == strong.render("chat", "Say hello.")
    strong.close()


def test_stream_aligner_with_a_remote_upstream_stops_at_sentence_ends(proxy, gguf):
    upstream = remote(proxy, tokenizer=gguf)
    marked = lambda question, prefix, sentence: sentence.upper()  # noqa: E731  a rule in the aligner's place
    loop = w2s.StreamAligner(max_sentences=3, max_sentence_tokens=60)
    answers = loop.run(upstream, marked, ["Tell me about the sea.", "Describe a cat."], seed=1)
    for a in answers:
        assert a.steps
        assert len(a.steps) >= 2
        for step in a.steps[:-1]:
            # each upstream round before the last was exactly one whole sentence: cut at its end
            text = step.original.rstrip()
            assert first_sentence_end(text + " Next one.") == len(text) + 1, text
        assert a.corrected == "".join(s.corrected for s in a.steps)
        assert a.corrected.strip() and a.corrected == a.corrected.upper()
    streams = [e for e in completions(proxy) if e["body"].get("stream")]
    assert streams and all(e["body"]["max_tokens"] == 60 for e in streams)
    # the client closed streams at the sentence end, before the engine had finished them
    cut = [e for e in streams if e.get("client_closed")]
    assert cut and all(not e.get("finished_upstream") for e in cut)
    # rounds after the first continue question + corrected prefix
    assert any("TELL" in e["body"]["prompt"] or "CAT" in e["body"]["prompt"].upper() for e in streams[2:])
    upstream.close()


def test_stream_generator_cut_mid_way_is_retried(proxy):
    upstream = remote(proxy)
    params = w2s.SamplingParams(temperature=0.0)
    clean = upstream.generator(1, params, [0]).generate({0: "The capital of France is"}, 12)
    proxy.log.clear()
    cuts = iter([("cut", 2)])  # the first request after this: two events, then the connection drops
    proxy.rules.append(lambda e: next(cuts, None))
    faulty = upstream.generator(1, params, [0]).generate({0: "The capital of France is"}, 12)
    assert faulty == clean  # the broken stream was retried from the start
    entries = completions(proxy)
    assert len(entries) == 2 and entries[0].get("cut")
    upstream.close()


def test_429_with_retry_after_is_waited_for(proxy):
    strong = remote(proxy)
    proxy.rules.append(lambda e: ("status", 429, {"Retry-After": "1"}, '{"error": "slow down"}') if e["n"] == 0 else None)
    beams = strong.open(["Hello"], w2s.SamplingParams(), [0])
    out = beams.expand([0], n=1, max_tokens=3)
    entries = completions(proxy)
    assert len(entries) == 2 and entries[0]["action"][1] == 429
    assert entries[1]["start"] - entries[0]["end"] >= 0.95  # backoff alone would be <= 0.05 s
    assert out[0].error is None and out[0].text
    strong.close()


def test_500_then_success_is_retried(proxy):
    strong = remote(proxy)
    proxy.rules.append(lambda e: ("status", 500, {}, '{"error": "boom"}') if e["n"] < 2 else None)
    out = strong.open(["Hello"], w2s.SamplingParams(), [0]).expand([0], n=1, max_tokens=3)
    assert out[0].error is None and len(completions(proxy)) == 3 and strong.stats["retries"] == 2
    strong.close()


def test_a_timeout_is_retried(proxy):
    strong = remote(proxy, timeout=1.0)
    proxy.rules.append(lambda e: ("delay", 3.0) if e["n"] == 0 else None)
    out = strong.open(["Hello"], w2s.SamplingParams(), [0]).expand([0], n=1, max_tokens=3)
    assert out[0].error is None and out[0].text and len(completions(proxy)) == 2
    strong.close()


def test_a_client_error_is_not_retried_and_names_the_status(proxy):
    strong = remote(proxy)
    proxy.rules.append(lambda e: ("status", 400, {}, '{"error": "prompt too long"}'))
    out = strong.open(["Hello"], w2s.SamplingParams(), [0]).expand([0], n=2, max_tokens=3)
    assert all(c.error and "HTTP 400" in c.error and "prompt too long" in c.error for c in out)
    assert len(completions(proxy)) == 1
    strong.close()


def poison(entry):
    return ("status", 503, {}, '{"error": "overloaded"}') if "POISON" in (entry["body"] or {}).get("prompt", "") else None


def test_a_failing_prompt_ends_with_an_error_while_the_others_complete(proxy, tuned, untuned):
    strong = remote(proxy, max_retries=2)
    proxy.rules.append(poison)
    cbs = w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=2, chunk_length=4, max_new_tokens=8)
    results = list(cbs.generate(strong, w2s.LogRatioScorer(tuned, untuned), ["The movie was", "POISON here",
                                                                            "My day started"], seed=0))
    assert [r.prompt for r in results] == ["The movie was", "POISON here", "My day started"]
    bad = results[1]
    assert bad.error and "3 attempt(s)" in bad.error and "HTTP 503" in bad.error and bad.response == ""
    assert all(r.error is None and r.response for r in (results[0], results[2]))
    strong.close()


def test_cli_search_with_a_remote_strong_model_error_records_and_resume(proxy, model_dirs, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n"
                               for i, p in enumerate(["The movie was", "POISON here", "My day started"])))
    out = tmp_path / "out.jsonl"
    proxy.rules.append(poison)
    args = ["search", "--strong", proxy.url, "--strong-model", "smollm2", "--tuned", model_dirs["tuned"],
            "--untuned", model_dirs["untuned"], "--method", "cbs", "--beam-width", "2", "--successors", "2",
            "--chunk-length", "4", "--max-new-tokens", "8", "--prompts", str(prompts), "--output", str(out),
            "--max-retries", "1", "--concurrency", "4", "--api-key-env", "MY_ENGINE_KEY", "--batch-size", "1"]
    done = run_cli(args, {"MY_ENGINE_KEY": "sk-test-123", "OPENAI_API_KEY": "wrong"})
    assert done.returncode == 1 and "1 of 3 prompts failed" in done.stderr, done.stderr  # an error record
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    assert rows[1].keys() == {"index", "prompt", "error", "error_kind", "error_code", "error_status"}
    assert rows[1]["index"] == 1 and "HTTP 503" in rows[1]["error"]
    assert (rows[1]["error_kind"], rows[1]["error_code"], rows[1]["error_status"]) == ("engine", "engine_error", 503)
    assert rows[0]["response"] and rows[2]["response"] and rows[0]["id"] == 0 and rows[2]["method"] == "cbs"
    # the key came from the named variable, as a bearer token, on every request
    assert {e["headers"].get("authorization") for e in completions(proxy)} == {"Bearer sk-test-123"}

    # --resume retries from the first error record (the engine works now): the line before it is kept (a
    # whole batch, with --batch-size 1), that prompt and the ones after it run again (llama.cpp's KV-cache reuse may change their text)
    proxy.rules.clear()
    proxy.log.clear()
    resumed = run_cli(args + ["--resume"], {"MY_ENGINE_KEY": "sk-test-123"})
    assert resumed.returncode == 0, resumed.stderr
    rows2 = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows2) == 3 and rows2[0] == rows[0] and rows2[1]["response"] and rows2[2]["response"]
    assert [r["prompt"] for r in rows2] == [r["prompt"] for r in rows] and "error" not in rows2[1]
    asked = {e["body"]["prompt"] for e in completions(proxy)}
    assert "POISON here" in asked and "My day started" in asked and "The movie was" not in asked


def test_cli_stream_with_a_remote_upstream_writes_error_records(proxy, model_dirs, gguf, tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "Tell me about the sea."}\n{"question": "POISON question"}\n')
    out = tmp_path / "answers.jsonl"
    proxy.rules.append(poison)
    done = run_cli(["stream", "--upstream", proxy.url, "--upstream-model", "smollm2", "--upstream-tokenizer", gguf,
                    "--aligner", model_dirs["tuned"], "--aligner-template", "{prompt}", "--max-sentences", "2",
                    "--questions", str(questions), "--output", str(out), "--max-retries", "0"])
    assert done.returncode == 1 and "1 of 2 questions failed" in done.stderr, done.stderr  # an error record
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["original"] and rows[0]["sentences"]
    assert rows[1]["index"] == 1 and rows[1]["question"] == "POISON question" and "HTTP 503" in rows[1]["error"]


def test_cli_refuses_a_url_without_a_model_name(proxy, tmp_path):
    (tmp_path / "p.txt").write_text("The cat\n")
    done = run_cli(["search", "--strong", proxy.url, "--method", "sampling", "--max-new-tokens", "4",
                    "--prompts", str(tmp_path / "p.txt"), "--output", "-"])
    assert done.returncode == 2 and "--strong-model NAME" in done.stderr


def test_echo_logprobs_checked_against_a_local_computation(proxy, gguf):
    """llama.cpp 0.3.36 lists, at each echoed prompt token, the log-probability that the distribution
    computed *after* that token gives to it, instead of the distribution before it (right only for
    models whose tokenizer adds a BOS token; SmolLM2's does not).  Verified against transformers on
    the same GGUF; the backend's self-check must refuse such an engine instead of returning wrong sums."""
    import torch

    from w2s.backends.remote import echo_logprobs

    local = w2s.load_model(gguf)
    strong = remote(proxy, tokenizer=gguf)
    text = "The capital of France is Paris. The capital of Italy is Rome, and the sea is blue."
    tokens, values, offsets = strong.run(echo_logprobs(strong, text))
    ids = local.encode(text)
    assert [local.decode([i]) for i in ids] == tokens[: len(ids)]  # same tokenization (no BOS added)
    with torch.no_grad():
        logp = local.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    right = [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]  # log p(t_i | t_<i)
    listed = [logp[i, ids[i]].item() for i in range(1, len(ids))]  # the distribution after t_i, at t_i
    echoed = [float(v) for v in values[1 : len(ids)]]
    mean_abs = lambda xs, ys: sum(abs(x - y) for x, y in zip(xs, ys)) / len(xs)  # noqa: E731
    # llama.cpp runs the Q4_1 weights with quantized activations, transformers their float32 copy:
    # agreement is within 0.15 nats on average (measured), the misalignment costs about 10
    print(f"echo vs misaligned {mean_abs(echoed, listed):.3f}, vs right {mean_abs(echoed, right):.3f} nats")
    assert mean_abs(echoed, listed) < 0.3 and mean_abs(echoed, right) > 2.0

    # the generated tokens' logprobs are right: they agree with the local model
    body = {"model": "smollm2", "prompt": text, "max_tokens": 3, "temperature": 0.0, "logprobs": 1}
    choice = strong.run(strong.post("/completions", body))["choices"][0]
    gen_ids = ids + local.encode(choice["text"])
    with torch.no_grad():
        logp = local.model(torch.tensor([gen_ids])).logits[0].float().log_softmax(-1)
    local_gen = [logp[i - 1, gen_ids[i]].item() for i in range(len(ids), len(gen_ids))]
    print(f"generated logprobs vs local {mean_abs(choice['logprobs']['token_logprobs'], local_gen):.3f} nats")
    assert mean_abs(choice["logprobs"]["token_logprobs"], local_gen) < 0.15

    # so the backend refuses to score texts on this engine, with a clear error, every time
    scorer = strong.response_logprobs("{prompt}")
    for _ in range(2):
        with pytest.raises(RemoteError, match="cannot score texts: its echoed log-probabilities differ"):
            scorer(["The capital of France is"], [" Paris."], [False])
    with pytest.raises(RemoteError, match="echo"):
        strong.run(check_echo_logprobs(strong))
    strong.close()


# -- the repetition controls on llama.cpp ---------------------------------------------------------------
REPEATS = "The cat sat on the mat. The cat sat on the mat. The cat sat on the mat. The cat"


def _greedy(strong, **controls) -> str:
    sampling = w2s.SamplingParams(temperature=0.0, **controls)
    return next(w2s.Sampling(max_new_tokens=24, sampling=sampling).generate(strong, None, [REPEATS])).response


def test_repeat_penalty_reaches_llama_cpp_and_acts(proxy):
    strong = remote(proxy, engine="llama.cpp")
    plain = _greedy(strong)
    assert completions(proxy)[-1]["body"]["repeat_penalty"] == 1.0  # its 1.1 default turned off
    penalised = _greedy(strong, repetition_penalty=1.8)
    assert completions(proxy)[-1]["body"]["repeat_penalty"] == 1.8
    assert penalised != plain, plain
    frequency = _greedy(strong, frequency_penalty=2.0)
    assert completions(proxy)[-1]["body"]["frequency_penalty"] == 2.0 and frequency != plain
    strong.close()


def test_auto_asks_llama_cpp_which_engine_it_is_once(proxy):
    strong = remote(proxy)  # engine "auto"
    _greedy(strong, frequency_penalty=1.0)  # a shared name: nothing asked
    assert [e["path"] for e in proxy.log] == ["/v1/completions"] and "repeat_penalty" not in proxy.log[0]["body"]
    _greedy(strong, repetition_penalty=1.8)
    _greedy(strong, repetition_penalty=1.5)
    assert [e["path"] for e in proxy.log if e["path"] != "/v1/completions"] == ["/v1/models"]  # cached
    assert strong.detected[0] == "llama.cpp" and "'me'" in strong.detected[1]
    bodies = [e["body"] for e in completions(proxy)]
    assert bodies[1]["repeat_penalty"] == 1.8 and bodies[2]["repeat_penalty"] == 1.5
    assert "repetition_penalty" not in bodies[1]
    named = remote(proxy, engine="llama.cpp")  # once detected, a request goes as with the engine named
    _greedy(named, repetition_penalty=1.8)
    assert completions(proxy)[-1]["body"] == bodies[1]
    named.close()
    strong.close()


def test_a_refused_control_never_reaches_llama_cpp(proxy):
    strong = remote(proxy, engine="llama.cpp")
    with pytest.raises(ValueError, match="no_repeat_ngram_size must be 0 .*'llama.cpp'.*got 2"):
        _greedy(strong, no_repeat_ngram_size=2)
    upstream = w2s.StreamAligner(max_sentences=1, sampling=w2s.SamplingParams(no_repeat_ngram_size=2))
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        upstream.run(strong, lambda q, p, s: s, ["Hi"], upstream_template="{prompt}")
    assert proxy.log == []
    strong.close()


def test_cli_engine_preset_and_controls_reach_llama_cpp(proxy, tmp_path):
    out, prompts = tmp_path / "out.jsonl", tmp_path / "prompts.txt"
    prompts.write_text("The movie was\n")
    args = ["search", "--strong", proxy.url, "--strong-model", "smollm2", "--engine", "llama.cpp", "--method",
            "sampling", "--max-new-tokens", "6", "--prompts", str(prompts), "--output", str(out)]
    done = run_cli(args + ["--sampling-preset", "stream-aligner", "--top-k", "7", "--repetition-penalty", "1.3"])
    assert done.returncode == 0, done.stderr
    body = completions(proxy)[0]["body"]
    # the preset's values (top_p 0.95, frequency_penalty 1.2), the flags given over it (top_k 7)
    assert (body["temperature"], body["top_p"], body["top_k"], body["frequency_penalty"], body["repeat_penalty"],
            body["min_p"]) == (0.7, 0.95, 7, 1.2, 1.3, 0.0)
    proxy.log.clear()
    refused = run_cli(args + ["--no-repeat-ngram-size", "2", "--overwrite"])
    assert refused.returncode == 2 and "no_repeat_ngram_size must be 0 (off) with engine 'llama.cpp'" in refused.stderr
    assert proxy.log == []


# -- Nudging's large model over an engine's top log-probs (issue 29 item 1) -----------------------------
def test_confident_continuations_from_the_engines_top_logprobs(proxy):
    lm = remote(proxy)
    greedy = w2s.SamplingParams(temperature=0.0, top_k=0)
    alone = lm.generator(1, greedy, [0]).generate({0: "The capital of France is"}, 12)[0][0]
    sure = lm.generator(1, greedy, [0]).generate_confident({0: "The capital of France is"}, 12, 0.0)[0]
    assert sure.text == alone and sure.tokens == 12 and 0.0 < sure.top <= 1.0 and not sure.ended
    first = lm.generator(1, greedy, [0]).generate_confident({0: "The capital of France is"}, 12, 1.0)[0]
    assert first.tokens == 1 and alone.startswith(first.text) and first.text  # only the first token is kept
    none = lm.generator(1, greedy, [0]).generate_confident({0: "The capital of France is"}, 12, 1.0,
                                                           keep_first=False)[0]
    assert (none.text, none.tokens) == ("", 0)


def test_an_engine_without_top_logprobs_is_refused_by_name():
    lm = RemoteModel("http://127.0.0.1:9/v1", "plain-engine")
    rows = lm.generator(1, w2s.SamplingParams(), [0])
    with pytest.raises(ValueError, match="'plain-engine' returned no top log-probs"):
        rows._confident({"choices": [{"text": "x", "finish_reason": "length", "logprobs": None}]}, 0.4, True)


def test_nudging_a_remote_base_with_a_local_nudger(proxy, tuned):
    """The engine's SmolLM2 nudged by the shipped positive-review guide (SmolLM2-135M tuned, local)."""
    from w2s import defaults

    lm = remote(proxy)
    prompt = ["The movie was"]
    greedy = w2s.SamplingParams(temperature=0.0, top_k=0)
    alone = lm.generator(1, greedy, [0]).generate({0: prompt[0]}, 24)[0][0]
    own = next(iter(w2s.Nudging(gamma=0.0, max_new_tokens=24, base_chunk_tokens=24).generate(
        lm, tuned, prompt, nudger_template="{prompt}")))
    assert own.response == alone and own.nudge_tokens == 0  # gamma 0: the engine's own greedy answer
    nudger = w2s.load_model(str(defaults.guide_dir("tuned")))
    mixed = next(iter(w2s.Nudging(gamma=0.4, max_new_tokens=32).generate(lm, nudger, prompt,
                                                                         nudger_template="{prompt}")))
    assert {who for who, _ in mixed.pieces} == {"base", "nudger"}
    assert mixed.response == "".join(text for _, text in mixed.pieces) != alone
    assert mixed.base_tokens > 0 and mixed.nudge_tokens > 0 and mixed.sampled_tokens >= mixed.base_tokens


def test_entropy_cut_chunks_from_the_engines_top_logprobs(proxy):
    """Entropy 0 is reached at every position: each chunk ends at its 4th token; a threshold no distribution
    over the top 20 log-probs reaches (ln 21 < 3.1) never cuts."""
    from w2s.backends.base import ENTROPY_MIN_TOKENS

    lm = remote(proxy)
    params = w2s.SamplingParams(temperature=0.0, top_k=0)
    cut = lm.open(["The movie was"], params, [0]).expand([0], 2, 12, entropy=0.0)
    assert [c.drawn for c in cut] == [ENTROPY_MIN_TOKENS] * 2 and not any(c.finished for c in cut)
    whole = lm.open(["The movie was"], params, [0]).expand([0], 1, 12, entropy=3.1)[0]
    assert whole.drawn == 12 and whole.text.startswith(cut[0].text)


def test_tree_search_over_a_remote_large_model(proxy, scorer):
    lm = remote(proxy)
    search = w2s.TreeSearch(children=2, chunk_length=4, simulations=2, max_new_tokens=8)
    result = next(iter(search.generate(lm, scorer, ["The movie was"], seed=1)))
    assert result.error is None and 0 < result.num_tokens <= 8 and result.response
    assert result.sampled_tokens <= 2 * 2 * 2 * 4 and result.score == pytest.approx(
        scorer.score("The movie was", [result.response], [result.finished])[0], abs=1e-4)
