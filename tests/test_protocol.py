"""A backend written only from w2s's model protocol (w2s.backends.base: LanguageModel, SearchSession,
ResponseLogProbs) runs through CBS, Best-of-N and the server (issue 25 item 6: the code must call a backend
with what the protocol declares, and nothing else)."""

from __future__ import annotations

import math
import random

import httpx

import w2s
from test_serve import bundle, serve
from w2s.backends.base import Continuation, LanguageModel, SearchSession
from w2s.serve import ServeConfig

LETTERS = "ab."  # "." ends a response


class LetterSession:
    def __init__(self, prompts, seeds, bias):
        self.seeds, self.bias = list(seeds), bias
        self.live = [Continuation(p, p, "", False, 0) for p in range(len(prompts))]
        self.steps, self.candidates = [0] * len(prompts), []

    def expand(self, parents, n, max_tokens, end=None):
        ns = [n] * len(parents) if isinstance(n, int) else list(n)
        limits = [max_tokens] * len(parents) if isinstance(max_tokens, int) else list(max_tokens)
        self.candidates = []
        for parent, k, limit in zip(parents, ns, limits):
            beam = self.live[parent]
            for branch in range(k):
                rng = random.Random(f"{self.seeds[beam.prompt_index]}/{beam.text}/{branch}")
                new, finished = "", False
                while len(new) < limit and not finished:
                    new += rng.choices(LETTERS, weights=self.bias)[0]
                    finished = new.endswith(".")
                    if end is not None and not finished and (cut := end(new)) is not None:
                        new = new[:cut]
                        break
                self.candidates.append(Continuation(beam.prompt_index, parent, beam.text + new, finished,
                                                    beam.num_tokens + len(new), drawn=len(new)))
        return self.candidates

    def select(self, indices):
        self.live = [self.candidates[i] for i in indices]


class LetterModel:
    """Draws letters with weights ``bias`` and scores each character by its log-probability."""

    def __init__(self, name, bias=(1.0, 1.0, 0.2)):
        self.name, self.bias = name, bias

    def render(self, template, prompt):
        if template == "chat":
            raise ValueError("the letter model has no chat template")
        return template.format(prompt=prompt)

    def open(self, prompts, params, seeds, template="{prompt}"):
        return LetterSession([self.render(template, p) for p in prompts], seeds, self.bias)

    def response_logprobs(self, template, incremental=True, batch_size=32):
        total = sum(self.bias)
        logp = {c: math.log(w / total) for c, w in zip(LETTERS, self.bias)}
        return lambda prompts, responses, finished: [sum(logp[c] for c in r) for r in responses]

    def generator(self, n_rows, params, seeds, template="{prompt}"):
        raise NotImplementedError("not used here")


def test_a_backend_written_from_the_protocol_runs_every_search_and_the_server(tmp_path):
    strong = LetterModel("strong")
    tuned, untuned = LetterModel("tuned", bias=(3.0, 1.0, 0.2)), LetterModel("untuned")
    assert isinstance(strong, LanguageModel) and isinstance(strong.open(["x"], None, [0]), SearchSession)
    scorer = w2s.LogRatioScorer(tuned, untuned)  # prefers "a": log(3/4.2) - log(1/2.2) > 0 per "a"
    prompts = ["one", "two", "three", "four"]
    for search in (w2s.ChunkBeamSearch(beam_width=2, successors_per_beam=3, chunk_length=3, max_new_tokens=12),
                   w2s.BestOfN(n=6, max_new_tokens=12), w2s.Sampling(max_new_tokens=12)):
        results = list(search.generate(strong, scorer, prompts, seed=1, batch_size=2))
        assert [r.prompt for r in results] == prompts and all(r.error is None for r in results)
        assert all(set(r.response) <= set(LETTERS) and r.num_tokens <= 12 for r in results)
    guided = list(w2s.BestOfN(n=6, max_new_tokens=12).generate(strong, scorer, prompts, seed=1))
    plain = list(w2s.Sampling(max_new_tokens=12).generate(strong, scorer, prompts, seed=1))
    assert sum(r.response.count("a") for r in guided) > sum(r.response.count("a") for r in plain)
    config = ServeConfig(name="letters", batch_window_ms=0)
    server, thread, url = serve(config, bundle(strong=(strong, "{prompt}"), tuned=(tuned, "{prompt}"),
                                               untuned=(untuned, "{prompt}")))
    try:
        for block in ({"method": "cbs", "beam_width": 2, "successors_per_beam": 2, "chunk_length": 3},
                      {"method": "bon", "n": 3}, {"method": "sampling"}):
            reply = httpx.post(url + "/v1/completions", json={"model": "letters", "prompt": "one", "max_tokens": 9,
                                                               "seed": 3, "w2s": block}, timeout=30)
            assert reply.status_code == 200, reply.text
            assert set(reply.json()["choices"][0]["text"]) <= set(LETTERS)
    finally:
        server.should_exit = True
        thread.join(5)
