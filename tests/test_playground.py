"""Issue 28 item 5: the playground page ``w2s serve`` serves at ``/``.

Over HTTP (default suite): the page and its files are served from the package with a policy that loads
nothing from elsewhere, need no API key while the API does, go away with ``playground=False``; the choices
they show carry each method's score and tokens, streamed and not.  In headless Chromium (marked
``browser``, ``make test-browser``): the page runs three methods side by side through the server's own
endpoints, and each column shows what the API gives for the same request.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import openai
import pytest
from test_serve import CBS, STREAM, bundle, serve

import w2s
from w2s.cli import build_parser
from w2s.cli.serve import config_from_args
from w2s.serve import ServeConfig
from w2s.serve.app import PLAYGROUND, PLAYGROUND_FILES

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import playground_browser as page  # noqa: E402

METHODS = ["sampling", "cbs", "stream_aligner"]
KEY = "playground-test-key"
ALIGNER = {"max_new_tokens": 12, "max_correction_tokens": 12}
LENGTH = {"stream_aligner": {}, "aligner": {}}  # their lengths are the server's (a sentence count, two limits)


def start(model_dirs, **config):
    aligner = (w2s.load_model(model_dirs["shared_tuned"]), "chat")
    models = bundle(strong=(w2s.load_model(model_dirs["strong"]), "{prompt}"),
                    tuned=(w2s.load_model(model_dirs["shared_tuned"]), "{prompt}"),
                    untuned=(w2s.load_model(model_dirs["shared_untuned"]), "{prompt}"), aligner=aligner,
                    whole_aligner=aligner)
    return serve(ServeConfig(name="tiny", methods={"cbs": CBS, "stream_aligner": STREAM, "aligner": ALIGNER},
                             batch_window_ms=5,
                             **config), models)


@pytest.fixture(scope="module")
def keyed(model_dirs, monkeypatch_module):
    monkeypatch_module.setenv("W2S_PLAYGROUND_KEY", KEY)
    server, thread, url = start(model_dirs, server_api_key_env="W2S_PLAYGROUND_KEY")
    yield url
    server.should_exit = True
    thread.join(5)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_the_page_and_its_files_load_nothing_from_elsewhere(keyed):
    """Served from the package, open without the key (the API is not), under a policy of 'self' only."""
    html = httpx.get(keyed + "/")
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert html.headers["content-security-policy"] == "default-src 'self'"
    linked = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert sorted(linked) == ["/docs", "/playground/app.js", "/playground/favicon.svg", "/playground/style.css"]
    for name, kind in PLAYGROUND_FILES.items():
        served = httpx.get(f"{keyed}/playground/{name}")
        assert served.status_code == 200 and served.headers["content-type"] == kind
        assert served.content == (PLAYGROUND / name).read_bytes()
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", served.text), f"{name} names another origin"
    auth = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(keyed + "/playground/index.html").status_code == 401  # only the listed files are open
    assert httpx.get(keyed + "/playground/index.html", headers=auth).status_code == 404  # nor served
    assert httpx.get(keyed + "/playground/%2E%2E%2Fconfig.py", headers=auth).status_code == 404
    assert httpx.get(keyed + "/v1/models").status_code == 401
    assert httpx.get(keyed + "/v1/models", headers=auth).status_code == 200


def test_playground_off_leaves_no_page(model_dirs):
    server, thread, url = start(model_dirs, playground=False)
    try:
        assert httpx.get(url + "/").status_code == 404
        assert httpx.get(url + "/playground/app.js").status_code == 404
    finally:
        server.should_exit = True
        thread.join(5)
    assert config_from_args(build_parser().parse_args(["serve", "--no-playground"])).playground is False
    assert config_from_args(build_parser().parse_args(["serve"])).playground is True


def _choice_costs(c: openai.OpenAI, method: str, stream: bool) -> dict:
    kw = dict(model="tiny", messages=[{"role": "user", "content": "The cat"}], seed=3,
              extra_body={"w2s": {"method": method}}, **LENGTH.get(method, {"max_tokens": 12}))
    if not stream:
        choice = c.chat.completions.create(**kw).choices[0]
        return {"text": choice.message.content, **choice.model_extra["w2s"]}
    text, costs = "", None
    for chunk in c.chat.completions.create(stream=True, **kw):
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        if choice.finish_reason:
            costs = choice.model_extra["w2s"]
    return {"text": text, **costs}


@pytest.mark.parametrize("method", METHODS + ["bon", "aligner", "nudging", "tree"])
def test_each_choice_says_its_score_and_tokens_streamed_or_not(keyed, method):
    c = openai.OpenAI(base_url=keyed + "/v1", api_key=KEY, max_retries=0)
    whole, streamed = _choice_costs(c, method, stream=False), _choice_costs(c, method, stream=True)
    assert whole == streamed
    assert whole["sampled_tokens"] >= 1
    if method in ("cbs", "bon", "tree"):  # several samples of the large model, scored by both guides
        assert whole["sampled_tokens"] > len(whole["text"]) // 10 and whole["small_tokens"] > 0
        assert isinstance(whole["score"], float)
    elif method == "sampling":
        assert whole["score"] is None and whole["small_tokens"] == 0
    elif method == "nudging":  # the tuned model nudges the large one: the tokens it drew
        assert whole["score"] is None and whole["small_tokens"] > 0
    else:  # the aligners: the large model's answer, and the tokens the aligner wrote
        assert whole["score"] is None and whole["small_tokens"] > 0


browser = pytest.mark.skipif(page.missing() is not None, reason=str(page.missing()))


@pytest.mark.browser
@browser
def test_three_methods_stream_side_by_side_as_the_api_answers(keyed, tmp_path):
    driver = page.browser()
    try:
        shown = page.ask(driver, keyed + "/", "The cat", max_tokens=12, seed=5, methods=METHODS, key=KEY)
        driver.save_screenshot(str(tmp_path / "playground.png"))
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
                and "/v1/models" not in e["message"]]  # the first, keyless /v1/models is a 401: the page asks
    finally:
        driver.quit()
    assert not logs, logs  # no script error, nothing blocked by the page's policy
    assert [s["method"] for s in shown] == METHODS
    c = openai.OpenAI(base_url=keyed + "/v1", api_key=KEY, max_retries=0)
    for column in shown:
        assert column["state"] == "done", column
        answer = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "The cat"}], seed=5,
                                           extra_body={"w2s": {"method": column["method"]}},
                                           **LENGTH.get(column["method"], {"max_tokens": 12}))
        choice = answer.choices[0]
        costs = choice.model_extra["w2s"]
        assert column["text"] == choice.message.content
        assert column["sampled"] == str(costs["sampled_tokens"])
        assert column["small"] == str(costs["small_tokens"])
        assert column["tokens"] == str(answer.usage.completion_tokens)
        assert column["score"] == ("–" if costs["score"] is None else f"{costs['score']:.3f}")
        assert column["total"].endswith(" s") and column["first"].endswith(" s")
    assert (tmp_path / "playground.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.browser
@browser
def test_a_refused_request_shows_the_servers_error_in_its_column(keyed):
    driver = page.browser()
    try:
        driver.get(keyed + "/")
        from selenium.webdriver.common.by import By

        page.wait(lambda: driver.find_element(By.ID, "auth").is_displayed(), 10, "ask for the key")
        driver.find_element(By.ID, "key").send_keys(KEY)
        driver.find_element(By.ID, "use-key").click()
        page.wait(lambda: driver.find_element(By.ID, "model").text == "tiny", 10, "load the model")
        first = page.columns(driver)[0]
        first.find_element(By.TAG_NAME, "summary").click()
        first.find_element(By.CLASS_NAME, "params").send_keys('{"beam_width": 0}')
        driver.find_element(By.ID, "run").click()
        page.wait(lambda: all(c.get_attribute("data-state") in ("done", "error") for c in page.columns(driver)),
                  60, "finish")
        shown = [page.read_column(c) for c in page.columns(driver)]
    finally:
        driver.quit()
    assert shown[0]["state"] == "error" and "beam_width" in shown[0]["text"], shown[0]
    assert [s["state"] for s in shown[1:]] == ["done", "done"]
