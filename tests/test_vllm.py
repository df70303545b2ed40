"""The large model on vLLM, for real: vLLM's CPU build (its own venv, ``make vllm-venv``) serves the
checkpoint ``w2s setup`` writes (SmolLM2-135M-Instruct), on loopback, behind the fault-injecting proxy
(tests/remote_engine.py).  Marked ``vllm``: ``make test-vllm`` runs these (``.ci/run`` too); the default
suite leaves them out, since the engine's start alone takes minutes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import w2s
from w2s.aligner.segment import first_sentence_end
from w2s.backends.remote import RemoteModel

from remote_engine import completions, run_cli, start_vllm_server

pytestmark = pytest.mark.vllm

ROOT = Path(__file__).resolve().parent.parent
VLLM_PYTHON = os.environ.get("W2S_VLLM_PYTHON", str(ROOT / "build" / "vllm-venv" / "bin" / "python"))
NAME = "smollm2"
PROMPTS = ["The movie was", "My day started"]
GREEDY = w2s.SamplingParams(temperature=0.0)


@pytest.fixture(scope="session")
def strong_dir() -> str:
    from w2s.backends.gguf import strong_model_dir

    return str(strong_model_dir())


@pytest.fixture(scope="session")
def engine(strong_dir, tmp_path_factory):
    if not Path(VLLM_PYTHON).exists():
        pytest.fail(f"no vLLM venv at {VLLM_PYTHON}: build it with `make vllm-venv` (or set W2S_VLLM_PYTHON).")
    log = tmp_path_factory.mktemp("vllm") / "vllm_server.log"
    proc, url = start_vllm_server(VLLM_PYTHON, strong_dir, NAME, str(log), extra=("--enforce-eager",))
    yield url
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="session")
def local_strong(strong_dir):
    return w2s.load_model(strong_dir)


def remote(proxy, **kw) -> RemoteModel:
    return RemoteModel(proxy.url, NAME, **{"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 120.0, **kw})


def test_n_is_honoured_and_seeds_reproduce(proxy):
    strong = remote(proxy)
    session = strong.open(["Once upon a time"], w2s.SamplingParams(temperature=1.0), seeds=[5])
    out = session.expand([0], n=3, max_tokens=6)
    assert len(out) == 3 and len({c.text for c in out}) > 1
    assert strong.n_supported is True and [e["body"]["n"] for e in completions(proxy)] == [3]  # no fan-out
    body = lambda seed: {"model": NAME, "prompt": "Once upon a time", "max_tokens": 8,  # noqa: E731
                         "temperature": 1.0, "seed": seed}
    texts = [strong.run(strong.post("/completions", body(s)))["choices"][0]["text"] for s in (1, 2, 1, 2)]
    assert texts[0] == texts[2] and texts[1] == texts[3] and texts[0] != texts[1]
    strong.close()


def test_the_setup_checkpoint_gives_the_same_greedy_text_in_vllm_and_transformers(proxy, local_strong):
    strong = remote(proxy)
    greedy = w2s.Sampling(max_new_tokens=24, sampling=GREEDY)
    on_vllm = [r.response for r in greedy.generate(strong, None, PROMPTS)]
    local = [r.response for r in greedy.generate(local_strong, None, PROMPTS)]
    assert on_vllm == local and all(len(t.split()) >= 5 for t in local)
    strong.close()


@pytest.mark.parametrize("method", [
    w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=3, chunk_length=6, max_new_tokens=18),
    w2s.BestOfN(n=4, max_new_tokens=18),
    w2s.Sampling(max_new_tokens=18),
], ids=["cbs", "bon", "sampling"])
def test_search_methods_with_the_strong_model_on_vllm_and_local_guides(proxy, tuned, untuned, method):
    strong = remote(proxy)
    results = list(method.generate(strong, w2s.LogRatioScorer(tuned, untuned), PROMPTS, seed=3))
    assert [r.prompt for r in results] == PROMPTS
    assert all(r.error is None and r.response and 0 < r.num_tokens <= 18 for r in results)
    # one request per live beam, with n = its samples: vLLM samples them in one batch
    ns = [e["body"]["n"] for e in completions(proxy)]
    expected_first = method.samples_per_step
    assert ns[: len(PROMPTS)] == [expected_first] * len(PROMPTS) and set(ns[len(PROMPTS):]) <= {
        method.successors_per_beam}
    again = list(method.generate(strong, w2s.LogRatioScorer(tuned, untuned), PROMPTS, seed=3))
    assert [r.response for r in again] == [r.response for r in results]  # seeded requests reproduce
    strong.close()


def test_guides_served_by_vllm_score_as_local_ones(proxy, local_strong, strong_dir, tuned):
    served = remote(proxy, tokenizer=strong_dir)
    prompts = ["The capital of France is", "Once upon a time"]
    responses = [" Paris, and the sea is blue.", " there was a cat who liked the rain"]
    finished = [True, False]
    on_vllm = served.response_logprobs("{prompt}")(prompts, responses, finished)
    local = local_strong.response_logprobs("{prompt}")(prompts, responses, finished)
    assert all(abs(a - b) < 1e-3 for a, b in zip(on_vllm, local)), (on_vllm, local)
    # a guide pair with its tuned model on vLLM: the same scores as with the local copy
    remote_pair = w2s.LogRatioScorer(served, tuned).score(prompts[0], responses, finished)
    local_pair = w2s.LogRatioScorer(local_strong, tuned).score(prompts[0], responses, finished)
    assert all(abs(a - b) < 1e-3 for a, b in zip(remote_pair, local_pair))
    served.close()


def test_stream_aligner_with_a_vllm_upstream_stops_at_sentence_ends(proxy, strong_dir):
    upstream = remote(proxy, tokenizer=strong_dir)
    shout = lambda question, prefix, sentence: sentence.upper()  # noqa: E731  a rule in the aligner's place
    answers = w2s.StreamAligner(max_sentences=3, max_sentence_tokens=60).run(
        upstream, shout, ["Tell me about the sea.", "Describe a cat."], seed=1)
    for a in answers:
        assert len(a.steps) >= 2 and a.corrected == "".join(s.corrected for s in a.steps)
        for step in a.steps[:-1]:  # each round before the last was one whole sentence, cut at its end
            text = step.original.rstrip()
            assert first_sentence_end(text + " Next one.") == len(text) + 1, text
    # the upstream's requests streamed, and each was closed once its sentence had ended
    streamed = [e for e in completions(proxy) if e["body"].get("stream")]
    assert streamed and any(e.get("client_closed") for e in streamed)
    upstream.close()


def test_w2s_serve_with_a_vllm_strong_model(proxy, model_dirs):
    from test_serve import bundle, client, serve

    strong = remote(proxy)
    models = bundle(strong=(strong, "{prompt}"), tuned=(w2s.load_model(model_dirs["tuned"]), "{prompt}"),
                    untuned=(w2s.load_model(model_dirs["untuned"]), "{prompt}"))
    config = w2s.serve.ServeConfig(name="big", methods={"cbs": {"chunk_length": 4, "max_new_tokens": 12}})
    server, thread, url = serve(config, models)
    try:
        c = client(url)
        whole = c.completions.create(model="big", prompt="The movie was", seed=4)
        chunks = list(c.completions.create(model="big", prompt="The movie was", seed=4, stream=True))
        assert whole.choices[0].text and "".join(ch.choices[0].text for ch in chunks) == whole.choices[0].text
        bon = c.completions.create(model="big", prompt="The movie was", seed=4, extra_body={"w2s": {"method": "bon",
                                                                                                 "n": 3}})
        assert bon.choices[0].text
        proxy.log.clear()  # a repetition control of the request reaches vLLM under its name
        c.completions.create(model="big", prompt="The movie was", seed=4, max_tokens=4, frequency_penalty=0.5,
                             extra_body={"repetition_penalty": 1.3, "w2s": {"method": "sampling"}})
        body = completions(proxy)[-1]["body"]
        assert (body["repetition_penalty"], body["frequency_penalty"]) == (1.3, 0.5)
    finally:
        server.should_exit = True
        thread.join(5)
        strong.close()


def test_an_engine_killed_mid_search_leaves_an_error_record_and_resume_completes_it(proxy, model_dirs, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["The movie was", "My day started",
                                                                             "I did not like"]))
    args = ["search", "--strong", proxy.url, "--strong-model", NAME, "--tuned", model_dirs["tuned"],
            "--untuned", model_dirs["untuned"], "--method", "cbs", "--beam-width", "2", "--successors", "2",
            "--chunk-length", "4", "--max-new-tokens", "12", "--prompts", str(prompts), "--max-retries", "1",
            "--batch-size", "1"]
    clean = run_cli([*args, "--output", str(tmp_path / "clean.jsonl")], timeout=600)
    assert clean.returncode == 0, clean.stderr

    def killed_after_its_first_chunk(entry):  # the engine dies while the second prompt is being searched
        prompt = (entry["body"] or {}).get("prompt", "")
        return ("drop",) if prompt.startswith("My day started") and prompt != "My day started" else None

    proxy.reset()
    proxy.rules.append(killed_after_its_first_chunk)
    out = tmp_path / "out.jsonl"
    done = run_cli([*args, "--output", str(out)], timeout=600)
    assert done.returncode == 1 and "1 of 3 prompts failed" in done.stderr, done.stderr  # an error record
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[1].keys() == {"index", "prompt", "error", "error_kind", "error_code", "error_status"}
    assert rows[1]["index"] == 1 and (rows[1]["error_kind"], rows[1]["error_status"]) == ("engine", None)
    assert rows[0]["response"] and rows[2]["response"]  # the other prompts finished
    proxy.rules.clear()
    resumed = run_cli([*args, "--output", str(out), "--resume"], timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    # seeded requests: the resumed run gives what an uninterrupted one gives
    assert out.read_text() == (tmp_path / "clean.jsonl").read_text()


REPEATS = "Repeat after me: yes yes yes yes yes yes"  # greedy, the model says "yes" on and on


@pytest.mark.parametrize("control", [{"repetition_penalty": 1.5}, {"frequency_penalty": 1.0},
                                     {"presence_penalty": 1.5}], ids=lambda c: next(iter(c)))
def test_repetition_controls_reach_vllm_and_give_the_local_greedy_text(proxy, local_strong, control):
    strong = remote(proxy)  # engine "auto": vLLM answers GET /models with owned_by "vllm"
    greedy = lambda sampling, model: next(w2s.Sampling(max_new_tokens=16, sampling=sampling).generate(  # noqa: E731
        model, None, [REPEATS]))
    plain = greedy(GREEDY, strong)
    sampling = w2s.SamplingParams(temperature=0.0, **control)
    on_vllm, local = greedy(sampling, strong), greedy(sampling, local_strong)
    name, value = next(iter(control.items()))
    assert completions(proxy)[-1]["body"][name] == value
    assert on_vllm.response != plain.response, plain.response  # the control acts
    assert (on_vllm.response, on_vllm.num_tokens) == (local.response, local.num_tokens)  # as transformers' loop
    asked = [e["path"] for e in proxy.log if e["path"] != "/v1/completions"]
    assert asked == (["/v1/models"] if name == "repetition_penalty" else [])  # only the engine's own name asks
    assert strong.detected in (None, ("vllm", "owned_by 'vllm'"))
    strong.close()


@pytest.mark.parametrize("setting", ["auto", "vllm"])
def test_an_n_gram_ban_is_refused_before_vllm_sees_a_request(proxy, setting):
    strong = remote(proxy, engine=setting)
    search = w2s.Sampling(max_new_tokens=8, sampling=w2s.SamplingParams(temperature=0.0, no_repeat_ngram_size=2))
    with pytest.raises(ValueError, match="no_repeat_ngram_size must be 0 \\(off\\).*got 2"):
        list(search.generate(strong, None, PROMPTS))
    assert proxy.log == []
    strong.close()


def test_nudging_and_entropy_chunks_and_tree_search_on_vllm(proxy, local_strong, tuned, untuned):
    """Issue 29: the large model's top probabilities and entropies from vLLM's top log-probs (it returns the
    sampled token's entry beside the top ones: the highest is taken), against the same checkpoint locally."""
    strong = remote(proxy)
    own = w2s.Nudging(gamma=0.0, max_new_tokens=16, base_chunk_tokens=16)
    on_vllm = [r.response for r in own.generate(strong, tuned, PROMPTS, nudger_template="{prompt}")]
    local = [r.response for r in own.generate(local_strong, tuned, PROMPTS, nudger_template="{prompt}")]
    assert on_vllm == local  # gamma 0: the large model's own greedy answer, on both
    sure = strong.generator(1, GREEDY, [0]).generate_confident({0: PROMPTS[0]}, 8, 0.0)[0]
    here = local_strong.generator(1, GREEDY, [0]).generate_confident({0: PROMPTS[0]}, 8, 0.0)[0]
    assert sure.text == here.text and sure.top == pytest.approx(here.top, abs=1e-3)
    cut = strong.open(PROMPTS[:1], GREEDY, [0]).expand([0], 1, 12, entropy=0.0)[0]
    assert cut.drawn == 4 and not cut.finished  # every position reaches entropy 0: cut at the 4th token
    tree = w2s.TreeSearch(children=2, chunk_length=4, simulations=2, max_new_tokens=8)
    result = next(iter(tree.generate(strong, w2s.LogRatioScorer(tuned, untuned), PROMPTS[:1], seed=1)))
    assert result.error is None and 0 < result.num_tokens <= 8
    strong.close()
