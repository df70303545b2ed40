"""``w2s serve`` under faults, bad input and load (issue 13): live servers on loopback, tiny models.

Servers:
- ``guarded``: local models behind an API key, small limits, no /docs; its strong model waits on a gate
  (tests/test_serve.py's ``Gated``), so that batching and queueing are deterministic.
- ``down``: the large model is an engine URL that refuses connections.
- ``hung``: the large model is an engine that accepts connections and never answers; a 2 s deadline.
- ``loaded``: local models, a queue of 64, for the concurrent clients.

Every bad input answers in OpenAI's error schema and never disturbs another request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import w2s
from test_serve import CBS, STREAM, Gated, _wait, bundle, serve
from test_serve import metric as _metric
from w2s.serve import ServeConfig

KEY = "test-key-123"
KEY_ENV = "W2S_TEST_SERVER_KEY"
AUTH = {"Authorization": f"Bearer {KEY}"}
GREEDY = {"temperature": 0.0}
# a prompt that fits the strong model and the guides before the search, and whose greedy response (10
# guide tokens for 8 strong ones) outgrows the guides' 512 positions while it is scored
OUTGROWS = "x" * 503


def metric(url: str, name: str, **labels) -> float:
    return _metric(url, name, headers=AUTH, **labels)


class Faulty(Gated):
    """The gated strong model, failing every batch that holds a prompt with :data:`FAIL` in it; a batch with
    :data:`LATE` fails at its second chunk, after drawing hotter with other seeds (its rerun goes another way)."""

    def open(self, prompts, params, seeds, template="{prompt}"):
        late = any(LATE in p for p in prompts)
        if late:  # draws that its rerun will not draw again
            params, seeds = dataclasses.replace(params, temperature=5.0), [s + 1 for s in seeds]
        session = super().open(prompts, params, seeds, template)
        if any(FAIL in p for p in prompts):
            raise RuntimeError("injected failure")
        if not late:
            return session

        class FailsLate:
            chunks = 0

            def expand(self, *args):
                self.chunks += 1
                if self.chunks == 2:
                    raise RuntimeError("injected late failure")
                return session.expand(*args)

            def select(self, indices):
                session.select(indices)

        return FailsLate()


FAIL, LATE = "<fail>", "<late-fail>"


def _close(server, thread):
    server.should_exit = True
    thread.join(5)


@pytest.fixture(scope="module")
def guarded(model_dirs):
    os.environ[KEY_ENV] = KEY
    gate = Faulty(w2s.load_model(model_dirs["strong"]))
    m = bundle(strong=(gate, "{prompt}"), tuned=(w2s.load_model(model_dirs["tuned"]), "{prompt}"),
               untuned=(w2s.load_model(model_dirs["untuned"]), "{prompt}"),
               aligner=(w2s.load_model(model_dirs["shared_tuned"]), "{prompt}"))
    config = ServeConfig(name="tiny", methods={"cbs": CBS, "stream_aligner": STREAM}, queue_size=8, max_batch_size=4,
                         batch_window_ms=50, max_prompts=8, max_rows=64, max_body_bytes=2 << 20,
                         server_api_key_env=KEY_ENV, docs=False)
    server, thread, url = serve(config, m)
    yield url, gate
    gate.gate.set()
    _close(server, thread)


def _free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _remote_server(model_dirs, base_url: str, **config):
    remote = w2s.RemoteModel(base_url, "engine-model", timeout=60.0, **config.pop("remote", {}))
    m = bundle(strong=(remote, "{prompt}"), tuned=(w2s.load_model(model_dirs["tuned"]), "{prompt}"),
               untuned=(w2s.load_model(model_dirs["untuned"]), "{prompt}"))
    return serve(ServeConfig(name="tiny", methods={"cbs": CBS}, **config), m)


@pytest.fixture(scope="module")
def down(model_dirs):
    server, thread, url = _remote_server(model_dirs, f"http://127.0.0.1:{_free_port()}/v1",
                                         remote={"max_retries": 1, "backoff_base": 0.01})
    yield url
    _close(server, thread)


@pytest.fixture(scope="module")
def hung(model_dirs):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted = []

    def accept():  # accept and never answer
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    server, thread, url = _remote_server(model_dirs, base, request_timeout_s=2.0)  # the engine: 60 s x 6 tries
    yield url
    _close(server, thread)
    listener.close()
    for conn in accepted:
        conn.close()


@pytest.fixture(scope="module")
def loaded(model_dirs):
    aligner = (w2s.load_model(model_dirs["shared_tuned"]), "{prompt}")
    m = bundle(strong=(w2s.load_model(model_dirs["strong"]), "{prompt}"),
               tuned=(w2s.load_model(model_dirs["tuned"]), "{prompt}"),
               untuned=(w2s.load_model(model_dirs["untuned"]), "{prompt}"), aligner=aligner, whole_aligner=aligner)
    config = ServeConfig(name="tiny", methods={"cbs": CBS, "stream_aligner": STREAM,
                                               "aligner": {"max_new_tokens": 12, "max_correction_tokens": 12}},
                         batch_window_ms=20, queue_size=64, max_batch_size=8)
    server, thread, url = serve(config, m)
    yield url
    _close(server, thread)


def post(url: str, body=None, *, path="/v1/completions", headers=AUTH, content=None, timeout=60.0) -> httpx.Response:
    if body is not None:
        content = json.dumps(body)
    return httpx.post(url + path, content=content, headers={"Content-Type": "application/json", **headers},
                      timeout=timeout)


def body(prompt="The cat", seed=7, **fields) -> dict:
    """A completion request; ``max_tokens=None`` leaves it out (the aligners have their own limits)."""
    fields = {"max_tokens": 8, **fields}
    return {"model": "tiny", "prompt": prompt, "seed": seed, **{k: v for k, v in fields.items() if v is not None}}


def error(response: httpx.Response, status: int) -> dict:
    """The response's OpenAI-schema error, checked to have this status and the schema's four keys."""
    assert response.status_code == status, (response.status_code, response.text)
    found = response.json()["error"]
    assert set(found) == {"message", "type", "param", "code"} and found["message"], found
    return found


def send_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda b: post(url, b), bodies))


def hold_worker(url: str, gate: Gated):
    """Close the gate and start a request whose batch then holds the worker; returns its thread."""
    gate.gate.clear()
    opened = gate.opened
    blocker = threading.Thread(target=post, args=(url, body("Once", seed=0, w2s=GREEDY)))
    blocker.start()
    _wait(lambda: gate.opened > opened)
    return blocker


def batched_behind_worker(url: str, gate: Gated, bodies: list[dict]) -> list[httpx.Response]:
    """Send ``bodies`` while the worker is held, so that they queue and then run as one batch; their responses."""
    blocker = hold_worker(url, gate)
    with ThreadPoolExecutor(len(bodies)) as pool:
        futures = [pool.submit(post, url, b) for b in bodies]
        _wait(lambda: metric(url, "w2s_queue_depth") == len(bodies))
        gate.gate.set()
        responses = [f.result() for f in futures]
    blocker.join(30)
    return responses


# -- 1, 2: context lengths and isolation ------------------------------------------------------------

def test_every_model_the_method_uses_is_checked_against_its_context_with_the_whole_budget(guarded):
    url, _ = guarded
    cbs = error(post(url, body("x" * 504, w2s=GREEDY)), 400)  # fits the large model: 504 + 8 <= 512
    assert cbs["code"] == "context_length_exceeded" and cbs["param"] == "prompt"
    assert "the tuned guide's context is 512 tokens" in cbs["message"]
    assert error(post(url, body("x" * 504, w2s={"method": "bon", "n": 2})), 400)["code"] == "context_length_exceeded"
    assert post(url, body("x" * 504, w2s={"method": "sampling"})).status_code == 200  # no guide: it fits
    big = error(post(url, body("x" * 600, w2s={"method": "sampling"})), 400)
    assert "the large model's context" in big["message"]
    # one sentence fits, but the Stream Aligner runs max_sentences of them: its whole budget is checked
    question = "x" * 380
    one_sentence = {"method": "stream_aligner", "max_sentences": 1, "max_sentence_tokens": 8, "max_correction_tokens": 8}
    assert post(url, body(question, max_tokens=None, w2s=one_sentence)).status_code == 200
    many = error(post(url, body(question, max_tokens=None, w2s={**one_sentence, "max_sentences": 12})), 400)
    assert many["code"] == "context_length_exceeded" and "context is 512 tokens" in many["message"]
    listed = error(post(url, body(["The cat", "x" * 600], w2s={"method": "sampling"})), 400)
    assert listed["param"] == "prompt.1"


def test_a_bad_request_never_fails_the_requests_batched_with_it(guarded):
    url, gate = guarded
    good = [body(p, seed=s, w2s=GREEDY) for p, s in (("The cat", 1), ("What a", 2), ("She said", 3))]
    alone = [post(url, b).json()["choices"][0]["text"] for b in good]
    batches = metric(url, "w2s_batches_total", method="cbs")
    # a request that only fails inside the batch (its response outgrows a guide's context while scored)
    responses = batched_behind_worker(url, gate, [*good, body(OUTGROWS, seed=4, w2s=GREEDY)])
    assert [r.json()["choices"][0]["text"] for r in responses[:3]] == alone
    failed = error(responses[3], 400)
    assert failed["code"] == "context_length_exceeded" and "/" not in failed["message"]  # no model path
    assert metric(url, "w2s_batches_total", method="cbs") == batches + 2  # the blocker, then the four together
    # a request whose batch fails: the batch is run again request by request, and only that one fails
    responses = batched_behind_worker(url, gate, [*good, body(f"The {FAIL}", seed=4, w2s=GREEDY)])
    assert [r.json()["choices"][0]["text"] for r in responses[:3]] == alone
    internal = error(responses[3], 500)
    assert (internal["type"], internal["code"]) == ("server_error", "internal_error")
    assert "injected" not in internal["message"]  # the log has it
    assert metric(url, "w2s_batches_total", method="cbs") == batches + 2 + 2 + 4
    # a request refused before it is queued (seed out of range) next to good ones
    responses = send_all(url, [*good, body("The cat", seed=-1, w2s=GREEDY)])
    assert [r.json()["choices"][0]["text"] for r in responses[:3]] == alone
    assert error(responses[3], 400)["param"] == "seed"
    assert error(post(url, body(seed=2**63, w2s=GREEDY)), 400)["param"] == "seed"


def test_a_rerun_never_contradicts_what_a_stream_was_sent(guarded):
    """Issue 25 item 9: after a failed batch each request runs again; a streamed one had kept its deltas and
    got a final answer that differed from them. Now its stream continues only what was sent, or ends with
    an error event; a request that streamed nothing is simply answered by its rerun."""
    url, gate = guarded
    one_beam = {"method": "cbs", "beam_width": 1, "successors_per_beam": 1, "chunk_length": 2}
    streamed = body("The cat", seed=5, stream=True, w2s=one_beam)
    plain, late = body("What a", seed=6, w2s=one_beam), body(f"The {LATE}", seed=7, w2s=one_beam)
    alone = post(url, plain).json()["choices"][0]["text"]
    responses = batched_behind_worker(url, gate, [streamed, plain, late])
    events = [json.loads(line[6:]) for line in responses[0].text.splitlines()
              if line.startswith("data: {")]
    sent = "".join(e["choices"][0]["text"] for e in events if "choices" in e)
    assert sent and "error" in events[-1], events  # it had its first chunk, then its stream ended with an error
    assert responses[1].json()["choices"][0]["text"] == alone  # nothing streamed: the rerun answers it
    assert error(responses[2], 500)["type"] == "server_error"


# -- 3, 4: engines that are down or hang ------------------------------------------------------------

@pytest.mark.parametrize("method", ["cbs", "bon", "sampling"])
def test_an_engine_that_is_down_is_a_502_and_health_says_so(down, method):
    start = time.monotonic()
    found = error(post(down, body(w2s={"method": method}), headers={}), 502)
    assert time.monotonic() - start < 10
    assert found["code"] == "engine_error" and found["type"] == "upstream_error"
    assert "http" not in found["message"] and "ConnectError" not in found["message"]  # no URL, no exception type
    health = httpx.get(down + "/health")
    assert health.status_code == 503 and health.json()["status"] == "the engine does not answer"


def test_a_failed_stream_is_an_error_event_counted_as_a_failure(down):
    before = metric(down, "w2s_requests_total", endpoint="/v1/completions", method="cbs", status="502")
    c = openai.OpenAI(base_url=down + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIError) as caught:
        for _ in c.completions.create(model="tiny", prompt="The cat", max_tokens=8, stream=True):
            pass
    assert "engine failed" in str(caught.value)
    _wait(lambda: metric(down, "w2s_requests_total", endpoint="/v1/completions", method="cbs", status="502")
          == before + 1)


def test_a_hung_engine_is_a_504_at_the_deadline_and_frees_the_worker(hung):
    for stream in (False, True):
        start = time.monotonic()
        response = post(hung, body(stream=stream), headers={})
        waited = time.monotonic() - start
        if stream:
            assert response.status_code == 200 and '"code": "timeout"' in response.text
        else:
            assert error(response, 504)["code"] == "timeout"
        assert 1.5 < waited < 8, waited  # the deadline (2 s), not the engine's 60 s x 6 attempts
    assert httpx.get(hung + "/health").status_code == 503
    # the worker is free: a queued request is not stuck behind the hung one
    assert metric(hung, "w2s_queue_depth") == 0


# -- 5: limits ----------------------------------------------------------------------------------------

def test_limits_on_rows_prompts_and_body_size(guarded):
    url, _ = guarded
    assert error(post(url, body(w2s={"beam_width": 10**6})), 400)["param"] == "w2s.beam_width"
    assert error(post(url, body(w2s={"method": "bon", "n": 10**6})), 400)["param"] == "w2s.n"
    # issue 25 items 1 and 11: adaptive samples W * schedule[t] rows at chunk t, not W * K
    for block, rows in (({"beam_width": 1, "successors_per_beam": 1, "schedule": [100000]}, 100000),
                        ({"beam_width": 2, "successors_per_beam": 1, "schedule": [10000]}, 20000),
                        ({"beam_width": 8, "successors_per_beam": 8}, 120)):  # front-loaded: 8 * (2 * 8 - 1)
        failed = error(post(url, body(w2s={"method": "adaptive", **block})), 400)
        assert failed["param"] == "w2s.beam_width" and f"= {rows} large-model rows" in failed["message"]
    # W = K = 1 with a schedule that samples more than one row gets its scorer (a 500 before)
    ranked = post(url, body(w2s={"method": "adaptive", "beam_width": 1, "successors_per_beam": 1, "schedule": [3, 1]}))
    assert ranked.status_code == 200 and ranked.json()["choices"][0]["text"]
    assert "at most 8" in error(post(url, body(["The cat"] * 9)), 400)["message"]
    too_big = error(post(url, body("x" * (3 << 20))), 413)
    assert too_big["code"] == "body_too_large"


def test_a_long_request_is_split_into_batches_and_answers_as_solo_runs(guarded):
    url, _ = guarded
    prompts = ["The cat", "What a", "She said", "He is", "Once upon", "The dog"]
    alone = [post(url, body(p, seed=5, w2s=GREEDY)).json()["choices"][0]["text"] for p in prompts]
    batches = metric(url, "w2s_batches_total", method="cbs")
    together = post(url, body(prompts, seed=5, w2s=GREEDY)).json()["choices"]
    assert metric(url, "w2s_batches_total", method="cbs") == batches + 2  # max_batch_size 4: 4 + 2
    # prompt i of a request draws from the request's seed and i, wherever it is batched
    assert [c["index"] for c in together] == list(range(6))
    seeded = [post(url, body([p] * 1, seed=5, w2s=GREEDY)).json()["choices"][0]["text"] for p in prompts]
    assert seeded == alone == [c["text"] for c in together]


def test_a_huge_prompt_is_tokenized_off_the_event_loop(guarded):
    url, _ = guarded
    done = {}

    def big():
        post(url, body("word " * 300_000))  # 1.5 MB: refused for its length, after tokenizing it
        done["big"] = time.monotonic()

    thread = threading.Thread(target=big)
    thread.start()
    time.sleep(0.2)
    health = httpx.get(url + "/health", timeout=10)
    answered = time.monotonic()
    thread.join(60)
    assert health.status_code == 200 and answered < done["big"]


# -- 6, 8, 9: error schema, security, strict types ----------------------------------------------------

def test_every_error_is_in_openai_schema(guarded):
    url, _ = guarded
    assert error(post(url, content=json.dumps(body("a \ud800 b"))), 400)["param"] == "prompt"  # lone surrogate
    malformed = error(post(url, content='{"model": "tiny", "prompt": '), 400)
    assert malformed["param"] is None and malformed["code"] == "invalid_json"
    assert error(httpx.get(url + "/v1/nothing", headers=AUTH), 404)["code"] == "not_found"
    assert error(httpx.get(url + "/v1/completions", headers=AUTH), 405)["code"] == "method_not_allowed"
    assert error(post(url, content=b'{"model": "tiny", "prompt": "\xff\xfe"}'), 400)["code"] == "invalid_body"


def test_queue_full_is_a_503_with_retry_after(guarded):
    url, gate = guarded
    blocker = hold_worker(url, gate)
    with ThreadPoolExecutor(64) as pool:
        futures = [pool.submit(post, url, body(seed=i, w2s=GREEDY)) for i in range(64)]
        _wait(lambda: sum(f.done() for f in futures) >= 56, timeout=30)  # 8 queued, the rest refused at once
        gate.gate.set()
        responses = [f.result() for f in futures]
    blocker.join(30)
    refused = [r for r in responses if r.status_code == 503]
    assert len(refused) == 56 and all(r.headers["Retry-After"] == "1" for r in refused)
    assert all(error(r, 503)["code"] == "queue_full" for r in refused)
    assert sum(r.status_code == 200 for r in responses) == 8
    assert post(url, body(w2s=GREEDY)).status_code == 200  # recovered


def test_api_key_hidden_paths_and_optional_docs(guarded, model_dirs):
    url, _ = guarded
    for headers, what in (({}, "no API key"), ({"Authorization": "Bearer wrong"}, "not valid")):
        found = error(post(url, body(), headers=headers), 401)
        assert found["code"] == "invalid_api_key" and what in found["message"]
    c = openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()
    assert httpx.get(url + "/health").status_code == 200  # open
    assert httpx.get(url + "/metrics").status_code == 401 and httpx.get(url + "/metrics", headers=AUTH).status_code == 200
    models = httpx.get(url + "/v1/models", headers=AUTH).text
    assert not any(path in models for path in model_dirs.values()) and "/tmp" not in models
    assert httpx.get(url + "/docs", headers=AUTH).status_code == 404
    assert httpx.get(url + "/openapi.json", headers=AUTH).status_code == 404


@pytest.mark.parametrize("field, value", [("max_tokens", "10"), ("max_tokens", True), ("temperature", "Infinity"),
                                          ("temperature", True), ("top_p", "NaN"), ("seed", 1.5), ("stream", 1)])
def test_loosely_typed_values_are_refused(guarded, field, value):
    url, _ = guarded
    raw = json.dumps({"model": "tiny", "prompt": "The cat", field: value})
    if value in ("Infinity", "NaN"):
        raw = raw.replace(f'"{value}"', value)  # the JSON extension Python reads as a float
    assert error(post(url, content=raw), 400)["param"] == field


def test_stream_options_and_messages_are_strict(guarded):
    """Issue 25 item 18: "false" as include_usage sent usage, and unknown keys were accepted."""
    url, _ = guarded
    for options in ({"include_usage": "false"}, {"include_usage": True, "continuous": True}):
        failed = error(post(url, body(stream=True, stream_options=options)), 400)
        assert failed["param"].startswith("stream_options"), failed
    chat = {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "The cat", "mood": "sad"}]}
    assert error(post(url, chat, path="/v1/chat/completions"), 400)["param"].startswith("messages")


def test_a_key_no_client_can_send_is_refused_at_start_up(model_dirs, monkeypatch):
    from w2s.serve.app import create_app

    monkeypatch.setenv("W2S_TEST_ODD_KEY", "clé-secrète")
    m = bundle(strong=(w2s.load_model(model_dirs["strong"]), "{prompt}"))
    with pytest.raises(ValueError, match="W2S_TEST_ODD_KEY.*cannot send in an HTTP header"):
        create_app(ServeConfig(name="tiny", server_api_key_env="W2S_TEST_ODD_KEY"), m)


def test_w2s_parameters_must_be_finite(guarded):
    url, _ = guarded
    raw = json.dumps(body(w2s={"temperature": "X"})).replace('"X"', "Infinity")
    assert "finite" in error(post(url, content=raw), 400)["message"]
    # issue 25 item 12: integers for float parameters are floats, or a 400 when no float holds them
    assert post(url, body(w2s={**GREEDY, "temperature": 10**30})).status_code == 200
    too_big = error(post(url, body(w2s={"temperature": 10**400})), 400)
    assert too_big["param"] == "temperature" and "integer of 401 digits" in too_big["message"]


@pytest.mark.parametrize("chat", [False, True])
def test_a_method_that_is_not_a_name_is_a_400_naming_it(guarded, chat):
    url, _ = guarded
    request = body(w2s={"method": [1]})
    if chat:
        request = {**{k: v for k, v in request.items() if k != "prompt"},
                   "messages": [{"role": "user", "content": "The cat"}]}
    failed = error(post(url, request, path="/v1/chat/completions") if chat else post(url, request), 400)
    assert failed["param"] == "w2s.method" and "got [1]" in failed["message"]


# -- load: concurrent clients, killed clients -------------------------------------------------------

MIXED = [{"method": "cbs"}, {"method": "bon", "n": 3}, {"method": "sampling"}, {"method": "stream_aligner"},
         {"method": "aligner"}]


async def _stream_text(c: openai.AsyncOpenAI, prompt: str, seed: int, block: dict) -> tuple[str, str]:
    limit = {} if "aligner" in block["method"] else {"max_tokens": 12}
    stream = await c.completions.create(model="tiny", prompt=prompt, seed=seed, stream=True,
                                        extra_body={"w2s": block}, **limit)
    text, finish = "", None
    async for chunk in stream:
        text += chunk.choices[0].text
        finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_32_concurrent_streams_of_mixed_methods_equal_their_solo_runs(loaded):
    requests = [("The cat" if i % 2 else "What a", i, MIXED[i % len(MIXED)]) for i in range(32)]

    async def run(concurrent: bool):
        c = openai.AsyncOpenAI(base_url=loaded + "/v1", api_key="unused", max_retries=0, timeout=120)
        try:
            if concurrent:
                return await asyncio.gather(*(_stream_text(c, *r) for r in requests))
            return [await _stream_text(c, *r) for r in requests]
        finally:
            await c.close()

    solo = asyncio.run(run(False))
    together = asyncio.run(run(True))
    assert all(finish in ("stop", "length") for _, finish in together)  # every stream complete
    assert together == solo
    assert metric(loaded, "w2s_batch_prompts_sum", method="cbs") > metric(loaded, "w2s_batches_total", method="cbs")


def test_clients_killed_mid_stream_are_cancelled_and_the_server_serves_on(loaded):
    before = metric(loaded, "w2s_cancelled_requests_total", stage="running")

    def kill_after_first_chunk():
        with httpx.stream("POST", loaded + "/v1/completions", json=body(stream=True, max_tokens=60,
                                                                         w2s={"chunk_length": 1, "beam_width": 1}),
                          timeout=30) as response:
            for line in response.iter_lines():
                if '"text": "' in line and '"text": ""' not in line:
                    return  # the connection closes here

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: kill_after_first_chunk(), range(4)))
    _wait(lambda: metric(loaded, "w2s_cancelled_requests_total", stage="running") > before, timeout=30)
    assert post(loaded, body(), headers={}).status_code == 200
    assert httpx.get(loaded + "/health").json()["status"] == "ok"


def test_queue_depth_waits_for_the_worker_to_let_go_of_the_queue():
    """Issue 25 item 2: /health read the queue while the worker changed it ("deque mutated during
    iteration" under load). The depth is now read under the worker's lock: while another thread holds it,
    a read waits."""
    from w2s.serve.batching import Batcher

    batcher = Batcher(None, queue_size=4, batch_window=0.0, max_batch_size=2)
    try:
        read = []
        with batcher._cond:  # as the worker holds it while it takes parts off the queue
            reader = threading.Thread(target=lambda: read.append(batcher.depth))
            reader.start()
            reader.join(0.3)
            assert reader.is_alive() and not read
        reader.join(5)
        assert read == [0]
    finally:
        batcher.close()


class SlowCheck:
    """The strong model, whose tokenizing of a prompt holding :data:`SLOW` waits for ``gate`` (the check stage)."""

    def __init__(self, model):
        self.model, self.gate = model, threading.Event()

    def __getattr__(self, name):
        return getattr(self.model, name)

    def encode_prompt(self, text, template):
        if SLOW in text:
            self.gate.wait(20)
        return self.model.encode_prompt(text, template)


SLOW = "<slow-check>"


def test_the_check_stage_shares_the_queue_bound_the_deadline_and_a_body_timeout(model_dirs):
    """Issue 25 item 13: requests waiting to be checked were neither bounded nor timed, /health said the
    queue was empty, and a client could hold a connection open by never finishing its body."""
    strong = SlowCheck(w2s.load_model(model_dirs["strong"]))
    m = bundle(strong=(strong, "{prompt}"), tuned=(w2s.load_model(model_dirs["tuned"]), "{prompt}"),
               untuned=(w2s.load_model(model_dirs["untuned"]), "{prompt}"))
    config = ServeConfig(name="tiny", queue_size=3, request_timeout_s=3, header_timeout_s=1, body_timeout_s=0.5,
                         batch_window_ms=0)
    server, thread, url = serve(config, m)
    try:
        with ThreadPoolExecutor(3) as pool:
            waiting = [pool.submit(post, url, body(f"The {SLOW} {i}", w2s=GREEDY), headers={}) for i in range(3)]
            _wait(lambda: httpx.get(url + "/health").json()["queue_depth"] == 3)
            full = error(post(url, body("The cat", w2s=GREEDY), headers={}), 503)  # not left to wait behind them
            assert full["code"] == "queue_full"
            late = [error(f.result(), 504) for f in waiting]  # still being checked at the deadline
            assert all(e["code"] == "timeout" for e in late)
        strong.gate.set()
        assert post(url, body("The cat", w2s=GREEDY), headers={}).status_code == 200
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100\r\n\r\n{\"model\": ")  # and then nothing
            sock.settimeout(10)
            started = time.perf_counter()
            reply = b""
            while b"body_timeout" not in reply and (part := sock.recv(4096)):
                reply += part
            assert reply.startswith(b"HTTP/1.1 408") and b"body_timeout" in reply
            assert time.perf_counter() - started < 5
        # a request line, then a header one byte every 0.1 s, never finished: uvicorn resets its keep-alive
        # timer on every byte and no ASGI code runs before the headers are in, so nothing closed it
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) as sock:
            started = time.perf_counter()
            sock.sendall(b"GET /health HTTP/1.1\r\n")
            assert _trickled_until_closed(sock, within=6) < config.header_timeout_s + 1
        assert httpx.get(url + "/health").status_code == 200  # the server goes on
    finally:
        strong.gate.set()
        _close(server, thread)


def _trickled_until_closed(sock, within: float) -> float:
    """Send one byte every 0.1 s until the server closes the connection; the seconds that took."""
    started = time.perf_counter()
    sock.setblocking(False)
    while time.perf_counter() - started < within:
        try:
            sock.sendall(b"X")
            if sock.recv(1) == b"":
                return time.perf_counter() - started
        except BlockingIOError:
            pass
        except OSError:  # reset or broken pipe: closed
            return time.perf_counter() - started
        time.sleep(0.1)
    raise AssertionError(f"the connection was still open after {within} s")


def test_errors_are_typed_not_read_from_their_text(model_dirs):
    """Issue 25 item 3: an engine's 500 whose body says "Gateway Timeout" became a 504, by matching text."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Failing(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            body = b"Gateway Timeout (HTTP 504 upstream)"
            self.send_response(500)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    engine = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=engine.serve_forever, daemon=True).start()
    server, thread, url = _remote_server(model_dirs, f"http://127.0.0.1:{engine.server_port}/v1",
                                         remote={"max_retries": 1, "backoff_base": 0.01})
    try:
        failed = error(post(url, body(w2s=GREEDY), headers={}), 502)
        assert failed["code"] == "engine_error" and "it answered HTTP 500" in failed["message"]
        result = next(w2s.Sampling(max_new_tokens=4).generate(
            w2s.RemoteModel(f"http://127.0.0.1:{engine.server_port}/v1", "m", max_retries=0), None, ["The cat"]))
        assert (result.error_kind, result.error_code, result.error_status) == ("engine", "engine_error", 500)
    finally:
        _close(server, thread)
        engine.shutdown()
    with socket.socket() as silent:  # an engine that accepts and never answers: a timeout, by its type
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        slow = w2s.RemoteModel(f"http://127.0.0.1:{silent.getsockname()[1]}/v1", "m", timeout=0.3, max_retries=0)
        result = next(w2s.Sampling(max_new_tokens=4).generate(slow, None, ["The cat"]))
        assert (result.error_kind, result.error_code, result.error_status) == ("timeout", "engine_timeout", None)


def test_every_error_has_one_kind_with_its_code_and_status():
    """Issue 25: one table of kinds (context, engine, timeout, cancelled, internal) from the exceptions to the
    results, the records and the server's statuses."""
    from w2s.backends.base import ERROR_KINDS, Cancelled, ContextLengthError, RemoteError, error_kind
    from w2s.serve.app import error_of

    assert set(ERROR_KINDS) == {"context", "engine", "timeout", "cancelled", "internal"}
    cases = [(ContextLengthError("too long"), "context", 400), (RemoteError("down", status=503), "engine", 502),
             (RemoteError("slow", kind="timeout"), "timeout", 504), (Cancelled(), "cancelled", 499),
             (KeyboardInterrupt(), "cancelled", 499), (RuntimeError("Gateway Timeout"), "internal", 500),
             (RemoteError("odd", kind="bogus"), "internal", 500)]
    hide = type("Server", (), {"hide": staticmethod(lambda text: text)})()
    for err, kind, status in cases:
        assert error_kind(err) == kind, err
        answer = error_of(hide, err)
        assert (answer.status, answer.code) == (status, ERROR_KINDS[kind][0]), err


def test_rows_a_batch_may_hold_beyond_the_token_bound_are_refused_at_start_up(model_dirs):
    """Issue 25, a token bound per forward: the server's batches must fit one forward of the large model."""
    from w2s.serve.app import create_app

    m = bundle(strong=(w2s.load_model(model_dirs["strong"], max_tokens_per_forward=100), "{prompt}"))
    with pytest.raises(ValueError, match=r"max_batch_size x max_rows = 8 x 16 rows .* max_tokens_per_forward=100"):
        create_app(ServeConfig(name="tiny", max_rows=16), m)
    assert create_app(ServeConfig(name="tiny", max_rows=12), m) is not None
