"""``w2s serve`` through the official ``openai`` client against a live server on loopback (tiny models).

Three servers: ``main`` (guides that share the strong tokenizer, so EFT runs; an aligner; a chat
template), ``gated`` (guides on another tokenizer, no aligner, no chat template, a queue of 2, and a
strong model whose sessions wait on a gate, so that queueing, batching and cancelling are deterministic)
and ``recorded`` (models that record the text they are conditioned on, for chat conversations).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time

import httpx
import openai
import pytest
import uvicorn

import w2s
from w2s.cli import build_parser
from w2s.cli.serve import config_from_args
from w2s.models import LoadedModel, ModelSpec, Models, load
from w2s.serve import ServeConfig, load_served_models, parse_config, uvicorn_config
from w2s.serve.app import (APIError, ChatMessage, CompletionRequest, chat_conversation, chat_template, create_app,
                           resolve_method)
from w2s.serve.batching import common_prefix

CBS = {"chunk_length": 4, "max_new_tokens": 12}
STREAM = {"max_sentences": 3, "max_sentence_tokens": 8, "max_correction_tokens": 8}


class Gated:
    """The strong model, but each session waits for ``gate`` and each chunk takes ``delay`` seconds."""

    def __init__(self, model):
        self.model, self.gate, self.delay, self.opened = model, threading.Event(), 0.0, 0
        self.gate.set()

    def __getattr__(self, name):
        return getattr(self.model, name)

    def open(self, prompts, params, seeds, template="{prompt}"):
        self.opened += 1
        self.gate.wait(10)
        session, owner = self.model.open(prompts, params, seeds, template), self

        class Slow:
            def expand(self, parents, n, max_tokens):
                time.sleep(owner.delay)
                return session.expand(parents, n, max_tokens)

            def select(self, indices):
                session.select(indices)

        return Slow()


class Recorder:
    """A model that records the texts it is conditioned on: its rendered prompts (search sessions), its
    contexts (Stream Aligner generators) and, as a guide, its scoring contexts."""

    def __init__(self, model):
        self.model, self.seen = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def open(self, prompts, params, seeds, template="{prompt}"):
        self.seen += [self.model.render(template, p) for p in prompts]
        return self.model.open(prompts, params, seeds, template)

    def generator(self, n_rows, params, seeds, template="{prompt}"):
        generator, seen = self.model.generator(n_rows, params, seeds, template), self.seen

        class Recorded:
            def __getattr__(self, name):
                return getattr(generator, name)

            def generate(self, contexts, max_new_tokens, stop=None):
                seen.extend(contexts.values())
                return generator.generate(contexts, max_new_tokens, stop=stop)

        return Recorded()

    def response_logprobs(self, template, **kw):
        scorer, owner = self.model.response_logprobs(template, **kw), self

        class Recorded:
            def __getattr__(self, name):
                return getattr(scorer, name)

            def __call__(self, prompts, responses, finished):
                owner.seen.extend(owner.model.render(template, p) for p in prompts)
                return scorer(prompts, responses, finished)

        return Recorded()


def bundle(**roles) -> Models:
    """The served models from ``role=(model, template)`` (or None)."""
    return Models(**{role: None if given is None else LoadedModel(*given, ModelSpec(role=role))
                     for role, given in roles.items()})


def serve(config: ServeConfig, models: Models):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn_config(create_app(config, models), config, port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def main(model_dirs):
    aligner = (w2s.load_model(model_dirs["shared_tuned"]), "chat")
    m = bundle(strong=(w2s.load_model(model_dirs["strong"]), "{prompt}"),
               tuned=(w2s.load_model(model_dirs["shared_tuned"]), "{prompt}"),
               untuned=(w2s.load_model(model_dirs["shared_untuned"]), "{prompt}"), aligner=aligner,
               whole_aligner=aligner)
    config = ServeConfig(name="tiny", methods={"cbs": CBS, "stream_aligner": STREAM, "aligner": {
        "max_new_tokens": 12, "max_correction_tokens": 12}}, batch_window_ms=20)
    server, thread, url = serve(config, m)
    yield url
    server.should_exit = True
    thread.join(5)


@pytest.fixture(scope="module")
def gated(model_dirs):
    strong = w2s.load_model(model_dirs["strong"])
    strong.tokenizer.chat_template = None  # chat requests use the plain fallback format
    gate = Gated(strong)
    m = bundle(strong=(gate, "{prompt}"), tuned=(w2s.load_model(model_dirs["tuned"]), "{prompt}"),
               untuned=(w2s.load_model(model_dirs["untuned"]), "{prompt}"))
    config = ServeConfig(name="tiny", methods={"cbs": CBS}, queue_size=2, batch_window_ms=50)
    server, thread, url = serve(config, m)
    yield url, gate
    gate.gate.set()
    server.should_exit = True
    thread.join(5)


@pytest.fixture(scope="module")
def recorded(model_dirs):
    """The strong model (chat template) and two guides on its tokenizer: ``tuned`` renders with ``"chat"``,
    ``untuned`` with ``"{prompt}"``; each records what it saw."""
    m = {"strong": Recorder(w2s.load_model(model_dirs["strong"])),
         "tuned": Recorder(w2s.load_model(model_dirs["shared_tuned"])),
         "untuned": Recorder(w2s.load_model(model_dirs["shared_untuned"]))}
    served = bundle(strong=(m["strong"], "{prompt}"), tuned=(m["tuned"], "chat"), untuned=(m["untuned"], "{prompt}"),
                    aligner=(w2s.load_model(model_dirs["shared_tuned"]), "chat"))
    config = ServeConfig(name="tiny", methods={"cbs": CBS, "stream_aligner": STREAM}, batch_window_ms=0)
    server, thread, url = serve(config, served)
    yield url, m
    server.should_exit = True
    thread.join(5)


def client(url: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, **kw)


def metric(url: str, name: str, headers=None, **labels) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    text = httpx.get(url + "/metrics", headers=headers).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{name}{{{re.escape(want)}}} (\S+)$" if labels else rf"^{name} (\S+)$"
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


def complete(c, prompt="The cat", **w2s_block):
    extra = {"w2s": w2s_block} if w2s_block else {}
    seed = extra.get("w2s", {}).pop("seed", 7)
    return c.completions.create(model="tiny", prompt=prompt, seed=seed, extra_body=extra)


# -- handler-level tests (no model) ----------------------------------------------------------------

def test_parameters_take_request_then_server_config_then_method_default():
    config = ServeConfig(methods={"cbs": {"beam_width": 3, "max_new_tokens": 20}})
    body = CompletionRequest(model="w2s", prompt="x", max_tokens=9, temperature=0.5, stop="\n",
                             w2s={"beam_width": 2})
    method, params = resolve_method(body, config)
    assert method == "cbs"
    assert params == {"beam_width": 2, "max_new_tokens": 9, "temperature": 0.5, "stop": ("\n",)}
    _, params = resolve_method(CompletionRequest(model="w2s", prompt="x"), config)
    assert params == {"beam_width": 3, "max_new_tokens": 20}  # the rest: ChunkBeamSearch's defaults
    _, params = resolve_method(CompletionRequest(model="w2s", prompt="x", w2s={"method": "bon"}), config)
    assert params == {}


def test_config_file_rejects_unknown_keys_by_name():
    config = parse_config({"method": "bon", "models": {"strong": {"path": "p", "template": "chat"}},
                           "methods": {"bon": {"n": 4}}, "server": {"port": 9000, "queue_size": 3}})
    assert (config.method, config.models["strong"].template, config.methods, config.queue_size) == (
        "bon", "chat", {"bon": {"n": 4}}, 3)
    with pytest.raises(ValueError, match=r"unknown keys \['beam_widht'\]"):
        parse_config({"methods": {"cbs": {"beam_widht": 2}}})
    with pytest.raises(ValueError, match="Did you mean 'cbs'"):
        parse_config({"method": "cbd"})
    with pytest.raises(ValueError, match=r"unknown keys \['prot'\]"):
        parse_config({"server": {"prot": 1}})
    # engine-specific request fields: a TOML table (or JSON text), sent with every request
    remote = {"path": "http://127.0.0.1:9/v1", "model": "m", "extra_body": {"min_p": 0, "repeat_penalty": 1.0}}
    spec = parse_config({"models": {"strong": remote}}).models["strong"]
    assert spec.body() == {"min_p": 0, "repeat_penalty": 1.0}
    assert w2s.load(spec).model.extra_body == {"min_p": 0, "repeat_penalty": 1.0}
    for bad in ('{"min_p": ', "[1]"):
        with pytest.raises(ValueError, match=r"extra_body must be a JSON object, got"):
            parse_config({"models": {"strong": {**remote, "extra_body": bad}}})


def test_chat_messages_become_a_conversation_and_the_fallback_format_and_common_prefix():
    user = [ChatMessage(role="user", content="Hi")]
    talk = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]
    lone, conversation = chat_conversation(user), chat_conversation(talk)
    assert isinstance(conversation, w2s.Conversation) and (lone, conversation) == ("Hi", "System: Be brief.\nUser: Hi")
    assert conversation.messages == ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    parts = [ChatMessage(role="developer", content="Be brief."),
             ChatMessage(role="user", content=[{"type": "text", "text": "H"}, {"type": "text", "text": "i"}])]
    assert [m["role"] for m in chat_conversation(parts).messages] == ["system", "user"]  # developer: the system role
    assert chat_conversation(parts) == conversation and chat_conversation(parts).messages[1]["content"] == "Hi"

    class NoTemplate:
        tokenizer = None

    class Knows:
        class tokenizer:
            chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"

    assert chat_template(NoTemplate(), lone).format(prompt=lone) == "User: Hi\nAssistant:"
    assert chat_template(NoTemplate(), conversation).format(prompt=conversation) == \
        "System: Be brief.\nUser: Hi\nAssistant:"
    assert chat_template(Knows(), lone) == "chat"
    for messages, param in [([], "messages"), ([*talk, ChatMessage(role="assistant", content="Hello")], "messages"),
                            ([talk[0], ChatMessage(role="user", content="")], "messages.1.content"),
                            ([ChatMessage(role="user", content=[])], "messages.0.content")]:
        with pytest.raises(APIError) as caught:
            chat_conversation(messages)
        assert (caught.value.status, caught.value.param) == (400, param) and "messages" in caught.value.message
    assert common_prefix(["abcd", "abx", "abcz"]) == "ab" and common_prefix(["same"]) == "same"


def test_flags_override_the_config_file_and_load_the_named_models(model_dirs, tmp_path):
    path = tmp_path / "serve.toml"
    path.write_text(f'''method = "bon"
[models.strong]
path = "{model_dirs["strong"]}"
template = "Q: {{prompt}}"
[models.aligner]
path = "{model_dirs["shared_tuned"]}"
[methods.bon]
n = 3
[server]
port = 9001
''')
    args = build_parser().parse_args(["serve", "--config", str(path), "--tuned", model_dirs["tuned"],
                                      "--untuned", model_dirs["untuned"], "--port", "9002"])
    config = config_from_args(args)
    assert (config.method, config.port, config.methods) == ("bon", 9002, {"bon": {"n": 3}})
    models = load_served_models(config)
    assert models.strong.name == model_dirs["strong"] and models.strong.template == "Q: {prompt}"
    assert models.tuned.name == model_dirs["tuned"] and models.tuned.template == "{prompt}"
    assert models.whole_aligner.model is models.aligner.model and models.aligner.template == "chat"


# -- live server -----------------------------------------------------------------------------------

def test_models_health_and_each_method(main, model_dirs):
    c = client(main)
    [model] = c.models.list().data
    methods = ("cbs", "bon", "sampling", "eft", "stream_aligner", "aligner", "adaptive", "pruned_bon", "nudging", "tree")
    assert model.id == "tiny" and set(model.model_extra["w2s"]["methods"]) == set(methods)
    assert httpx.get(main + "/health").json()["status"] == "ok"
    extra = {"bon": {"n": 3}, "pruned_bon": {"n": 4, "checkpoints": [2], "prune_fraction": 0.5},
             "adaptive": {"schedule": [3, 1], "patience": 1}, "cbs": {"chunk_end": " "},
             "tree": {"children": 2, "simulations": 2, "chunk_length": 4}, "nudging": {"max_new_tokens": 12}}
    for method in methods:
        block = {"method": method, **extra.get(method, {})}
        r = complete(c, **block)
        assert r.object == "text_completion" and r.model_extra["w2s"]["method"] == method
        assert r.choices[0].text and r.choices[0].finish_reason in ("stop", "length")
        assert complete(c, **block).choices[0].text == r.choices[0].text  # the seed makes it reproducible
        chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "The cat"}], seed=7,
                                         extra_body={"w2s": block})
        assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
        assert chat.choices[0].message.content
    # the library gives the same answer: the server adds nothing to the method
    strong, tuned, untuned = (w2s.load_model(model_dirs[k]) for k in ("strong", "shared_tuned", "shared_untuned"))
    ref = next(w2s.ChunkBeamSearch(**CBS).generate(strong, w2s.LogRatioScorer(tuned, untuned), ["The cat"], seed=7))
    assert complete(c).choices[0].text == ref.response


def test_precedence_on_the_live_server(main):
    c = client(main)
    assert complete(c).usage.completion_tokens <= 12  # server config: max_new_tokens 12
    r = c.completions.create(model="tiny", prompt="The cat", seed=7, max_tokens=5)
    assert r.usage.completion_tokens <= 5 and r.choices[0].finish_reason in ("stop", "length")
    bon = complete(c, method="bon", n=2)  # no server config for bon: its own default, 50
    assert 12 < bon.usage.completion_tokens <= 50 or bon.choices[0].finish_reason == "stop"


def test_streamed_cbs_is_the_final_prefix_then_the_rest(main):
    c = client(main)
    for block in ({"beam_width": 2, "successors_per_beam": 2}, {"beam_width": 1, "chunk_length": 3}):
        whole = c.completions.create(model="tiny", prompt="The cat", seed=3, extra_body={"w2s": block})
        chunks = list(c.completions.create(model="tiny", prompt="The cat", seed=3, stream=True,
                                           extra_body={"w2s": block}))
        texts = [ch.choices[0].text for ch in chunks]
        assert "".join(texts) == whole.choices[0].text
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert len([t for t in texts[:-1] if t]) >= 3  # one beam: every chunk is final at once, 12 tokens / 3
    chat = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "The cat"}], seed=3,
                                          stream=True))
    assert chat[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chat) == c.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "The cat"}], seed=3).choices[0].message.content


def test_stream_aligner_streams_one_chunk_per_corrected_sentence(main, model_dirs):
    c = client(main)
    chunks = list(c.completions.create(model="tiny", prompt="The cat", seed=5, stream=True,
                                       extra_body={"w2s": {"method": "stream_aligner"}}))
    texts = [ch.choices[0].text for ch in chunks[:-1]]
    upstream, aligner = w2s.load_model(model_dirs["strong"]), w2s.load_model(model_dirs["shared_tuned"])
    steps = [s.corrected for s in w2s.StreamAligner(**STREAM).stream(upstream, aligner, "The cat", seed=5,
                                                                     upstream_template="{prompt}")]
    assert texts == [s for s in steps if s] and len(texts) >= 2
    whole = complete(c, method="stream_aligner", seed=5)
    assert whole.choices[0].text == "".join(steps)


def test_errors_follow_openai_schema(main, gated):
    c = client(main)
    cases = [
        (openai.NotFoundError, dict(model="gpt-4"), "model", "model_not_found"),
        (openai.BadRequestError, dict(top_p=1.5), "top_p", None),
        (openai.BadRequestError, dict(extra_body={"w2s": {"beam_widht": 2}}), "w2s.beam_widht", None),
        (openai.BadRequestError, dict(extra_body={"w2s": {"beam_width": 0}}), "beam_width", None),
        (openai.BadRequestError, dict(extra_body={"w2s": {"method": "cbd"}}), "w2s.method", None),
        (openai.BadRequestError, dict(extra_body={"w2s": {"method": "stream_aligner", "max_sentences": -1}}),
         "max_sentences", None),
        (openai.BadRequestError, dict(n=2), "n", None),
        (openai.BadRequestError, dict(logprobs=1), "logprobs", None),
        (openai.BadRequestError, dict(prompt="word " * 600), "prompt", "context_length_exceeded"),
    ]
    for error, kw, param, code in cases:
        with pytest.raises(error) as caught:
            c.completions.create(**{"model": "tiny", "prompt": "The cat", **kw})
        body = caught.value.body
        assert (body["param"], body["code"], body["type"]) == (param, code, "invalid_request_error"), body
        assert body["message"]
    assert "got 1.5" in _message(c, top_p=1.5) and "beam_widht" in _message(c, extra_body={"w2s": {"beam_widht": 2}})
    g = client(gated[0])
    assert "needs an aligner" in _message(g, extra_body={"w2s": {"method": "stream_aligner"}})
    assert "shared vocabulary" in _message(g, extra_body={"w2s": {"method": "eft"}})


def _message(c, **kw) -> str:
    with pytest.raises(openai.APIStatusError) as caught:
        c.completions.create(**{"model": "tiny", "prompt": "The cat", **kw})
    return caught.value.body["message"]


def test_queue_full_is_503_and_queued_requests_batch_together(gated):
    url, strong = gated
    c = client(url, timeout=30)
    alone = {p: complete(c, p, seed=s).choices[0].text for p, s in (("The cat", 1), ("What a", 2))}
    batches, prompts = metric(url, "w2s_batches_total", method="cbs"), metric(url, "w2s_batch_prompts_sum", method="cbs")
    strong.gate.clear()
    results = {}

    def send(name, prompt, seed):
        results[name] = complete(c, prompt, seed=seed).choices[0].text

    blocker = threading.Thread(target=send, args=("blocker", "Once", 0))
    opened = strong.opened
    blocker.start()
    _wait(lambda: strong.opened > opened)  # the blocker's batch is running
    queued = [threading.Thread(target=send, args=(p, p, s)) for p, s in (("The cat", 1), ("What a", 2))]
    for t in queued:
        t.start()
    _wait(lambda: metric(url, "w2s_queue_depth") == 2)
    with pytest.raises(openai.APIStatusError) as caught:
        complete(c)
    assert caught.value.status_code == 503 and caught.value.body["code"] == "queue_full"
    strong.gate.set()
    for t in [blocker, *queued]:
        t.join(30)
    assert metric(url, "w2s_batches_total", method="cbs") == batches + 2  # the blocker, then both together
    assert metric(url, "w2s_batch_prompts_sum", method="cbs") == prompts + 3  # 1 + 2
    assert {p: results[p] for p in alone} == alone  # batching changes no answer
    text = httpx.get(url + "/metrics").text
    assert 'w2s_requests_total{endpoint="/v1/completions",method="cbs",status="503"} 1.0' in text
    assert 'w2s_request_latency_seconds_bucket{endpoint="/v1/completions",le="+Inf"}' in text
    assert metric(url, "w2s_generated_tokens_total", method="cbs") > 0


def _wait(condition, timeout=10.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_disconnected_clients_cancel_their_work(gated):
    url, strong = gated
    # a queued request whose client goes away is dropped
    strong.gate.clear()
    blocker = threading.Thread(target=lambda: complete(client(url, timeout=30), "Once", seed=0))
    opened = strong.opened
    blocker.start()
    _wait(lambda: strong.opened > opened)
    with pytest.raises(openai.APITimeoutError):
        complete(client(url, timeout=0.5), "What a", seed=4)
    _wait(lambda: metric(url, "w2s_cancelled_requests_total", stage="queued") == 1)
    assert metric(url, "w2s_queue_depth") == 0
    strong.gate.set()
    blocker.join(30)

    # a running streaming request stops at the next chunk once its client has gone
    strong.delay = 0.2  # 30 chunks: 6 s if it ran to the end

    async def read_one_chunk():
        c = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        stream = await c.completions.create(model="tiny", prompt="The cat", seed=1, stream=True, max_tokens=30,
                                            extra_body={"w2s": {"beam_width": 1, "chunk_length": 1}})
        async for chunk in stream:
            if chunk.choices[0].text:
                break
        await stream.close()
        await c.close()

    start = time.monotonic()
    asyncio.run(read_one_chunk())
    _wait(lambda: metric(url, "w2s_cancelled_requests_total", stage="running") == 1)
    strong.delay = 0.0
    assert time.monotonic() - start < 4
    assert httpx.get(url + "/health").json()["status"] == "ok"


def test_chat_without_a_chat_template_uses_the_plain_format(gated):
    c, sampling = client(gated[0]), {"w2s": {"method": "sampling"}}  # no guides: the strong model's text only
    chat = c.chat.completions.create(model="tiny", seed=2, messages=[{"role": "user", "content": "Hi"}],
                                     extra_body=sampling)
    plain = c.completions.create(model="tiny", prompt="User: Hi\nAssistant:", seed=2, extra_body=sampling)
    assert chat.choices[0].message.content == plain.choices[0].text
    chat = c.chat.completions.create(model="tiny", seed=2, messages=TALK, extra_body=sampling)
    plain = c.completions.create(model="tiny", prompt=TRANSCRIPT + "\nAssistant:", seed=2, extra_body=sampling)
    assert chat.choices[0].message.content == plain.choices[0].text


def test_a_remote_strong_model_needs_its_engine_name():
    with pytest.raises(ValueError, match="give the engine's model name"):
        load(ModelSpec("http://127.0.0.1:9/v1", role="strong"))
    remote = load(ModelSpec("http://127.0.0.1:9/v1", model="big", concurrency=2)).model
    assert isinstance(remote, w2s.RemoteModel) and remote.concurrency == 2
    config = parse_config({"models": {"strong": {"path": "http://127.0.0.1:9/v1", "model": "big",
                                                 "remote": {"concurrency": 3}}}})
    assert config.models["strong"].concurrency == 3  # the older spelling: a remote = {...} table


# -- chat conversations ------------------------------------------------------------------------------

TALK = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Tell me "}, {"type": "text", "text": "about cats."}]}]
TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Tell me about cats."}]
# conftest's STRONG_CHAT over TURNS, and the plain transcript
RENDERED = "<|system|>Be brief.\n<|user|>Hi\n<|assistant|>Hello!\n<|user|>Tell me about cats.\n<|assistant|>"
TRANSCRIPT = "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Tell me about cats."


def test_a_conversation_reaches_the_models_with_its_turns(recorded, model_dirs):
    url, m = recorded
    strong, tuned, untuned = m["strong"], m["tuned"], m["untuned"]
    assert strong.tokenizer.apply_chat_template(TURNS, tokenize=False, add_generation_prompt=True) == RENDERED
    c = client(url)
    answers = []
    for stream in (False, True):
        for model in (strong, tuned, untuned):
            model.seen.clear()
        reply = c.chat.completions.create(model="tiny", messages=TALK, seed=7, stream=stream)
        answers.append("".join(ch.choices[0].delta.content or "" for ch in reply) if stream
                       else reply.choices[0].message.content)
        assert strong.seen == [RENDERED]  # one search session: the chat template over every turn and role
        assert tuned.seen and set(tuned.seen) == {RENDERED}  # the "chat" guide: the turns too
        assert untuned.seen and set(untuned.seen) == {TRANSCRIPT}  # the "{prompt}" guide: the transcript
    assert answers[0] == answers[1] and answers[0]
    # the library, given the same conversation, gives the same answer
    ref_strong, ref_tuned, ref_untuned = (w2s.load_model(model_dirs[k]) for k in ("strong", "shared_tuned",
                                                                                   "shared_untuned"))
    scorer = w2s.LogRatioScorer(ref_tuned, ref_untuned, "chat", "{prompt}")
    ref = next(w2s.ChunkBeamSearch(**CBS).generate(ref_strong, scorer, [w2s.Conversation(TURNS)], template="chat",
                                                   seed=7))
    assert answers[0] == ref.response

    # a developer message is the system turn (this chat template knows no developer role)
    strong.seen.clear()
    c.chat.completions.create(model="tiny", seed=1, messages=[{"role": "developer", "content": "Be brief."},
                                                              {"role": "user", "content": "Hi"}],
                              extra_body={"w2s": {"method": "sampling"}})
    assert strong.seen == ["<|system|>Be brief.\n<|user|>Hi\n<|assistant|>"]

    # the Stream Aligner's upstream starts from the turns too
    strong.seen.clear()
    c.chat.completions.create(model="tiny", messages=TALK, seed=5, extra_body={"w2s": {"method": "stream_aligner"}})
    assert strong.seen and strong.seen[0] == RENDERED and all(s.startswith(RENDERED) for s in strong.seen)


def test_bad_chat_messages_answer_400_naming_messages(recorded):
    c = client(recorded[0])
    cases = [
        ([{"role": "tool", "content": "Hi"}], "messages.0.role"),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": ""}], "messages.1.content"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages.0.content"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}], "messages"),
        ([], "messages"),
    ]
    for messages, param in cases:
        with pytest.raises(openai.BadRequestError) as caught:
            c.chat.completions.create(model="tiny", messages=messages)
        body = caught.value.body
        assert body["param"].startswith(param) and body["type"] == "invalid_request_error", body
        assert "messages" in body["message"], body
    assert "assistant" in _chat_message(c, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "H"}])
    refusing = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}"
                "{% endif %}{{ m['content'] }}{% endfor %}")
    for role, who in (("strong", "the large model"), ("tuned", "the tuned guide")):
        tokenizer = recorded[1][role].tokenizer
        saved, tokenizer.chat_template = tokenizer.chat_template, refusing
        try:  # a chat template that refuses the turns: 400 before the request is queued
            assert _chat_message(c, TALK) == f"{who}'s chat template refuses these messages: no system role"
        finally:
            tokenizer.chat_template = saved


def _chat_message(c, messages) -> str:
    with pytest.raises(openai.APIStatusError) as caught:
        c.chat.completions.create(model="tiny", messages=messages)
    return caught.value.body["message"]


# -- repetition controls and sampling presets ---------------------------------------------------------

def test_repetition_controls_as_request_fields_change_the_answer(main):
    c = client(main)
    greedy = dict(model="tiny", prompt="The cat sat on the mat. The cat", max_tokens=12, temperature=0, seed=1,
                  extra_body={"w2s": {"method": "sampling"}})
    plain = c.completions.create(**greedy).choices[0].text
    assert c.completions.create(**greedy).choices[0].text == plain
    # the official client's own fields, and vLLM's extra ones (extra_body: top-level fields of the request)
    changed = {
        "frequency_penalty": c.completions.create(**greedy, frequency_penalty=2.0),
        "presence_penalty": c.completions.create(**greedy, presence_penalty=2.0),
        "repetition_penalty": c.completions.create(**{**greedy, "extra_body": {**greedy["extra_body"],
                                                                               "repetition_penalty": 10.0}}),
        "no_repeat_ngram_size": c.completions.create(**{**greedy, "extra_body": {**greedy["extra_body"],
                                                                                 "no_repeat_ngram_size": 1}}),
    }
    for field, reply in changed.items():
        assert reply.choices[0].text != plain, field
    chat = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "The cat"}], max_tokens=8,
                                     temperature=0, seed=1, frequency_penalty=2.0,
                                     extra_body={"w2s": {"method": "sampling"}, "no_repeat_ngram_size": 1})
    assert chat.choices[0].message.content is not None
    # a field and the w2s block that say the same thing agree; two values are a 400
    same = c.completions.create(**{**greedy, "extra_body": {"w2s": {"method": "sampling", "frequency_penalty": 2.0}}})
    assert same.choices[0].text == changed["frequency_penalty"].choices[0].text
    with pytest.raises(openai.BadRequestError) as caught:
        c.completions.create(**{**greedy, "frequency_penalty": 1.0,
                                "extra_body": {"w2s": {"method": "sampling", "frequency_penalty": 2.0}}})
    assert caught.value.body["param"] == "frequency_penalty"


@pytest.mark.parametrize("fields, param, said", [
    ({"frequency_penalty": 3.0}, "frequency_penalty", "frequency_penalty must be in [-2, 2], got 3"),
    ({"presence_penalty": -2.5}, "presence_penalty", "presence_penalty must be in [-2, 2], got -2.5"),
    ({"repetition_penalty": 0.0}, "repetition_penalty", "repetition_penalty must be in (0, "),
    ({"no_repeat_ngram_size": -1}, "no_repeat_ngram_size", "no_repeat_ngram_size must be"),
    ({"no_repeat_ngram_size": 1.5}, "no_repeat_ngram_size", "no_repeat_ngram_size"),
    ({"repetition_penalty": "2"}, "repetition_penalty", "repetition_penalty"),
], ids=["frequency", "presence", "repetition", "ngram", "ngram-float", "repetition-text"])
def test_bad_repetition_controls_are_400s_naming_the_field(main, fields, param, said):
    extra = {k: v for k, v in fields.items() if k in ("repetition_penalty", "no_repeat_ngram_size")}
    kw = {k: v for k, v in fields.items() if k not in extra}
    with pytest.raises(openai.BadRequestError) as caught:
        client(main).completions.create(model="tiny", prompt="The cat", max_tokens=4, extra_body=extra, **kw)
    body = caught.value.body
    assert body["param"] == param and said in body["message"], body


def test_a_remote_engine_that_lacks_a_control_is_a_400_before_any_request(model_dirs):
    """A large model on an engine that has no n-gram ban (nothing listens on its port: no request is sent)."""
    strong = w2s.RemoteModel("http://127.0.0.1:9/v1", "big", engine="llama.cpp", max_retries=0)
    served = bundle(strong=(strong, "{prompt}"), tuned=(w2s.load_model(model_dirs["tuned"]), "{prompt}"),
                    untuned=(w2s.load_model(model_dirs["untuned"]), "{prompt}"))
    server, thread, url = serve(ServeConfig(name="tiny"), served)
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            client(url).completions.create(model="tiny", prompt="The cat", max_tokens=4,
                                           extra_body={"no_repeat_ngram_size": 2})
        body = caught.value.body
        assert body["param"] == "no_repeat_ngram_size" and "127.0.0.1" not in body["message"]
        assert "with engine 'llama.cpp', which has no such control, got 2" in body["message"], body
    finally:
        server.should_exit = True
        thread.join(5)


def test_a_sampling_preset_gives_the_servers_defaults(tmp_path):
    config = parse_config({"sampling_preset": "stream-aligner", "methods": {"cbs": {"top_k": 5}}})
    _, params = resolve_method(CompletionRequest(model="w2s", prompt="x"), config)
    # the preset's values, under [methods.cbs]'s own
    assert params == {"temperature": 0.7, "top_p": 0.95, "top_k": 5, "frequency_penalty": 1.2}
    _, params = resolve_method(CompletionRequest(model="w2s", prompt="x", top_p=0.5, frequency_penalty=0.0,
                                                 w2s={"method": "stream_aligner"}), config)
    assert (params["top_p"], params["top_k"], params["frequency_penalty"]) == (0.5, 40, 0.0)  # the request's first
    assert parse_config({}).method_defaults("cbs") == {}
    with pytest.raises(ValueError, match=r"sampling_preset must be one of 'weak-to-strong', 'stream-aligner', got "
                                         r"'stream_aligner'"):
        parse_config({"sampling_preset": "stream_aligner"})
    # the same key from a file, and the flag over it
    path = tmp_path / "serve.toml"
    path.write_text('sampling_preset = "stream-aligner"\n[models.strong]\npath = "http://127.0.0.1:9/v1"\n'
                    'model = "m"\nengine = "vllm"\n')
    parser = build_parser()
    args = parser.parse_args(["serve", "--config", str(path)])
    config = config_from_args(args)
    assert config.sampling_preset == "stream-aligner" and config.models["strong"].engine == "vllm"
    assert w2s.load(config.models["strong"]).model.engine == "vllm"
    args = parser.parse_args(["serve", "--config", str(path), "--sampling-preset", "weak-to-strong",
                              "--engine", "llama.cpp", "--strong", "http://127.0.0.1:9/v1", "--strong-model", "m"])
    config = config_from_args(args)
    assert config.sampling_preset == "weak-to-strong" and config.models["strong"].engine == "llama.cpp"
