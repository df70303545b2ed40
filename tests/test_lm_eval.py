"""lm-evaluation-harness integration: the ``w2s`` model (w2s.lm_eval) and ``w2s lm-eval`` (w2s.cli.lm_eval).

Offline: the tasks are tests/lm_eval_task (a JSONL of four prompts read by datasets' ``json`` builder, relative
to the working directory, which the runs set to that folder), the models the tiny random ones of conftest.
"""

from __future__ import annotations

import glob
import json
import logging
import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

import w2s  # noqa: E402
from w2s.cli import build_parser, main  # noqa: E402
from w2s.configs import params, parse_value  # noqa: E402

TASKS = Path(__file__).parent / "lm_eval_task"
PROMPTS = [json.loads(line)["question"] for line in (TASKS / "prompts.jsonl").read_text().splitlines()]
UNTIL = [".", "\n"]  # the generative task's stop strings
MAX_GEN_TOKS = 12  # and its answer length


def run_harness(monkeypatch, tmp_path, *args: str) -> int:
    """``w2s lm-eval ARGS`` in this process, in the task folder, writing into ``tmp_path``."""
    monkeypatch.chdir(TASKS)
    return main(["lm-eval", *args, "--include_path", str(TASKS), "--output_path", str(tmp_path), "--log_samples"])


def samples(tmp_path, task: str) -> list[dict]:
    (path,) = glob.glob(str(tmp_path / "*" / f"samples_{task}_*.jsonl"))
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def requests(kind: str, args: list[tuple]) -> list[Instance]:
    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


# -- the command --------------------------------------------------------------------------------------------------
def test_the_command_hands_every_argument_to_the_harness_unchanged():
    for argv in (["--model", "w2s", "--model_args", "strong=a,method=base", "--tasks", "t"],
                 ["run", "--model", "w2s", "-h"], ["ls", "tasks"], []):
        args = build_parser().parse_args(["lm-eval", *argv])
        assert args.args == tuple(argv) and args.func.__module__ == "w2s.cli.lm_eval"


def test_importing_the_module_registers_the_model_beside_the_harness_own():
    from lm_eval.api.registry import get_model

    import w2s.lm_eval

    assert get_model("w2s") is w2s.lm_eval.W2SLM
    assert get_model("hf").__name__ == "HFLM"  # registering first does not hide the built-in models


def test_model_arg_values_are_parsed_as_their_configs_declare():
    p = {x.name: x for x in params(w2s.AdaptiveSearch)}
    assert parse_value(p["beam_width"], "3") == 3 and parse_value(p["beam_width"], 3) == 3
    assert parse_value(p["chunk_length"], "inf") is None and parse_value(p["chunk_length"], "none") is None
    assert parse_value(p["chunk_length"], float("inf")) is None  # lm-eval parses "inf" itself
    assert parse_value(p["temperature"], 1) == 1.0 and isinstance(parse_value(p["temperature"], "1"), float)
    assert parse_value(p["schedule"], "4 2") == (4, 2) and parse_value(p["schedule"], [4, 2]) == (4, 2)
    assert parse_value(p["stop"], "\n\n") == ("\n\n",) and parse_value(p["stop"], ["a", "b"]) == ("a", "b")
    assert parse_value(p["return_beams"], "false") is False
    extra_body = next(x for x in params(w2s.ModelSpec) if x.name == "extra_body")
    assert parse_value(extra_body, {"min_p": 0}) == '{"min_p": 0}'  # JSON that lm-eval parsed
    for name, value, message in [("beam_width", "x", "beam_width must be an integer, got 'x'"),
                                 ("beam_width", 2.5, "beam_width must be an integer"),
                                 ("temperature", True, "temperature must be a number"),
                                 ("return_beams", "maybe", "return_beams must be true or false")]:
        with pytest.raises(ValueError, match=message):
            parse_value(p[name], value)


# -- generate_until ---------------------------------------------------------------------------------------------
def hf_greedy(path: str, prompt: str, lm) -> str:
    """Plain transformers greedy decoding of ``prompt`` (the tokens w2s never draws suppressed, its end tokens
    ending it), cut at the task's stop strings."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    ids = tok(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, do_sample=False, max_new_tokens=MAX_GEN_TOKS, suppress_tokens=lm.banned_ids,
                         eos_token_id=sorted(lm.eos_ids), pad_token_id=lm.pad_id)[0, ids.shape[1]:].tolist()
    ended = any(t in lm.eos_ids for t in out)
    new = [t for t in out if t not in lm.eos_ids]
    text = tok.decode(ids[0].tolist() + new)[len(tok.decode(ids[0].tolist())):]
    cut = [i for i in (text.find(s) for s in UNTIL) if i >= 0]
    if cut:
        return text[: min(cut)]
    # w2s holds back the bytes of a character cut in two by the token limit
    return text if ended else text.rstrip("\ufffd")


def test_base_greedy_is_transformers_greedy(model_dirs, strong, tmp_path, monkeypatch):
    """The legacy form (no ``run``), comma-separated model_args: method=base, greedy by the task's gen_kwargs,
    batched (4 prompts, 3 at a time), gives transformers' greedy answers cut at the stop strings."""
    rc = run_harness(monkeypatch, tmp_path, "--model", "w2s", "--model_args",
                     f"strong={model_dirs['strong']},method=base,dtype=float32", "--tasks", "w2s_tiny_gen",
                     "--batch_size", "3", "--device", "cpu")
    assert rc == 0
    rows = samples(tmp_path, "w2s_tiny_gen")
    assert [r["doc"]["question"] for r in rows] == PROMPTS
    got = {r["doc"]["question"]: r["resps"][0][0] for r in rows}
    assert got == {p: hf_greedy(model_dirs["strong"], p, strong) for p in PROMPTS}
    assert any(got.values())


def test_cbs_with_the_guides_runs_a_task_and_writes_its_results(model_dirs, tmp_path, monkeypatch, caplog):
    """``run`` with model_args as separate key=value words: CBS over the tiny guides finishes, honours the stop
    strings and records the method in the results."""
    d = model_dirs
    with caplog.at_level(logging.WARNING, logger="w2s.lm_eval"):
        rc = run_harness(monkeypatch, tmp_path, "run", "--model", "w2s", "--model_args", f"strong={d['strong']}",
                         f"tuned={d['tuned']}", f"untuned={d['untuned']}", "method=cbs", "beam_width=2",
                         "successors_per_beam=2", "chunk_length=4", "seed=3", "--tasks", "w2s_tiny_gen",
                         "--batch_size", "4")
    assert rc == 0
    assert "method=cbs searches over samples" in caplog.text  # the task's greedy request is not applied
    (results,) = glob.glob(str(tmp_path / "*" / "results_*.json"))
    results = json.loads(Path(results).read_text())
    assert "exact_match,none" in results["results"]["w2s_tiny_gen"]
    config = results["config"]
    assert config["w2s_method"] == "cbs" and config["w2s_seed"] == 3
    assert config["w2s_params"]["beam_width"] == 2 and config["w2s_params"]["temperature"] == 0.7
    assert set(config["w2s_models"]) == {"strong", "tuned", "untuned"}
    answers = [r["resps"][0][0] for r in samples(tmp_path, "w2s_tiny_gen")]
    assert len(answers) == 4 and not any(s in a for a in answers for s in UNTIL)


def test_a_bad_model_arg_is_w2s_error_naming_it(model_dirs, tmp_path, monkeypatch, capsys):
    from w2s.lm_eval import W2SLM

    strong = model_dirs["strong"]
    rc = run_harness(monkeypatch, tmp_path, "--model", "w2s", "--model_args", f"strong={strong},method=cbs,beam_width=x",
                     "--tasks", "w2s_tiny_gen")
    err = capsys.readouterr().err
    assert rc == 2 and "w2s lm-eval: error: beam_width must be an integer, got 'x'." in err
    for args, message in [  # (lm-eval builds the model from a string of model_args so)
        (f"strong={strong},method=cbs,beam_width=0", "beam_width must be in [1, inf), got 0"),
        (f"strong={strong},method=cbs,chunk_length=none,temperature=-1", "temperature must be in [0, inf), got -1.0"),
        (f"strong={strong},method=base,n=4", "method=base has no parameter n; its parameters are"),
        (f"pretrained={strong},method=base", "w2s model_args: unknown pretrained (w2s names the large model strong=PATH)"),
        (f"strong={strong}", "w2s model_args need a method: method=base|"),
        (f"strong={strong},method=cbz", "method must be one of .* Did you mean 'cbs'"),
        (f"strong={strong},method=base,dtype=float64", "dtype must be one of"),
        (f"strong={strong},method=base,batch_size=0", "batch_size must be in [1, inf), got 0"),
        (f"strong={strong},method=bon,n=64,max_rows=8", "n = 64 large-model rows per prompt at once, more than max_rows"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message) if ".*" not in message else message):
            W2SLM.create_from_arg_string(args, {"batch_size": 1, "device": "cuda:0"})


def test_gen_kwargs_map_onto_the_method(model_dirs, caplog):
    from w2s.lm_eval import W2SLM

    base = W2SLM(strong=model_dirs["strong"], method="base", stop="###")
    config, until = base.generation_config({"until": ["\n\n", ""], "do_sample": False, "max_gen_toks": 7})
    assert (config.sampling.temperature, config.max_new_tokens, until) == (0.0, 7, ["\n\n"])
    assert config.sampling.stop == ("###", "\n\n")
    config, _ = base.generation_config({"until": "Q:", "do_sample": True, "temperature": 0.9, "top_p": 0.5,
                                        "max_new_tokens": 3, "num_beams": 1})
    assert (config.sampling.temperature, config.sampling.top_p, config.max_new_tokens) == (0.9, 0.5, 3)
    assert base.generation_config({})[0].max_new_tokens == 256  # lm-eval's default length
    with pytest.raises(ValueError, match="gen_kwargs min_p=0.1 has no w2s meaning"):
        base.generation_config({"min_p": 0.1})
    with pytest.raises(ValueError, match="num_beams=4 has no w2s meaning"):
        base.generation_config({"num_beams": 4})
    with pytest.raises(ValueError, match="top_p must be in"):
        base.generation_config({"do_sample": True, "temperature": 1.0, "top_p": 2})

    mine = W2SLM(strong=model_dirs["strong"], method="base", temperature=0.3, max_new_tokens=9)
    config, _ = mine.generation_config({"do_sample": False})  # model_args' sampling over the task's
    assert (config.sampling.temperature, config.max_new_tokens) == (0.3, 9)

    d = model_dirs
    cbs = W2SLM(strong=d["strong"], tuned=d["tuned"], untuned=d["untuned"], method="cbs", beam_width=2,
                successors_per_beam=2, chunk_length=3, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="w2s.lm_eval"):
        assert cbs.generation_config({"do_sample": False})[0].sampling.temperature == 0.7
    assert "searches over samples" in caplog.text
    assert cbs.generation_config({"do_sample": True, "temperature": 1.2})[0].sampling.temperature == 1.2
    # batched across requests, grouped by gen_kwargs, reproducible by seed, each answer cut at its stop strings
    args = [(p, {"until": ["e"], "max_gen_toks": 6, "do_sample": True, "temperature": 1.0}) for p in PROMPTS[:3]]
    args.insert(1, (PROMPTS[3], {"until": ["a"], "max_gen_toks": 5, "do_sample": True, "temperature": 1.0}))
    first = cbs.generate_until(requests("generate_until", args))
    assert first == cbs.generate_until(requests("generate_until", args))
    assert len(first) == 4 and "a" not in first[1] and not any("e" in a for a in first[:1] + first[2:])


def test_templates_render_the_prompts_once(model_dirs, strong):
    from w2s.lm_eval import W2SLM

    chat = W2SLM(strong=model_dirs["strong"], method="base", template="chat")
    with pytest.raises(ValueError, match="template='chat' would render them again: give one of them"):
        chat.apply_chat_template([{"role": "user", "content": "Hi"}])
    plain = W2SLM(strong=model_dirs["strong"], method="base")
    turn = [{"role": "user", "content": "Hi"}]
    assert plain.apply_chat_template(turn) == strong.render("chat", "Hi") == "<|user|>Hi\n<|assistant|>"
    # a context is scored after the template's rendering of it
    (lp_chat, _), = chat.loglikelihood(requests("loglikelihood", [("Hi", " there")]))
    (lp_plain, _), = plain.loglikelihood(requests("loglikelihood", [(strong.render("chat", "Hi"), " there")]))
    assert lp_chat == pytest.approx(lp_plain, abs=1e-5)


# -- log-likelihoods ---------------------------------------------------------------------------------------------
PAIRS = [("The movie was", " wonderful"), ("The cat sat on the ", "mat and the dog"), ("", "The dog sat on the log."),
         ("What a terrible day!", " Everything went wrong at work.")]
TEXTS = ["The cat sat on the mat. The dog sat on the log.", "Once upon a time"]


def direct_logprobs(paths: list[str], weights: list[float], pairs) -> list[tuple[float, bool]]:
    """``(sum of log p, greedy)`` of each continuation under the normalized sum of the models' log-softmaxes
    (one model, weight 1: its own), tokens split as lm-eval does (trailing context whitespace to the continuation;
    the continuation is what the whole text adds to the context's tokens; an empty context is the EOS token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(paths[0])
    models = [AutoModelForCausalLM.from_pretrained(p).eval() for p in paths]
    width = max(tok.get_vocab().values()) + 1
    out = []
    for context, continuation in pairs:
        moved = context[len(context.rstrip()):]
        context, continuation = context[: len(context) - len(moved)], moved + continuation
        encode = lambda text: tok(text, add_special_tokens=False).input_ids  # noqa: E731
        head = encode(context) if context else [tok.eos_token_id]
        tokens = encode(context + continuation)[len(head):] if context else encode(continuation)
        ids = torch.tensor([head + tokens])
        with torch.no_grad():
            logits = [m(ids).logits[0, len(head) - 1 : -1] for m in models]
        mixed = sum(w * (x[:, :width] if len(models) > 1 else x).log_softmax(-1) for w, x in zip(weights, logits))
        mixed = mixed.log_softmax(-1)
        target = torch.tensor(tokens)
        out.append((float(mixed.gather(1, target[:, None]).sum()), bool((mixed.argmax(-1) == target).all())))
    return out


def test_base_loglikelihoods_are_the_strong_model_own_as_lm_eval_hf_computes_them(model_dirs, strong):
    from lm_eval.models.huggingface import HFLM

    from w2s.lm_eval import W2SLM

    path = model_dirs["strong"]
    lm = W2SLM(strong=path, method="base", batch_size=3)
    got = lm.loglikelihood(requests("loglikelihood", PAIRS))
    want = direct_logprobs([path], [1.0], PAIRS)
    assert [g for _, g in got] == [g for _, g in want]
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], abs=1e-4)
    hf = HFLM(pretrained=path, device="cpu", dtype="float32", batch_size=2)
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in hf.loglikelihood(requests("loglikelihood", PAIRS))],
                                                  abs=1e-4)
    rolling = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in TEXTS]))
    assert rolling == pytest.approx([lp for lp, _ in direct_logprobs([path], [1.0], [("", t) for t in TEXTS])], abs=1e-4)
    # a text longer than the context (512 tokens) is scored in windows, as lm-eval's hf model cuts them
    long = TEXTS + ["The cat sat on the mat. " * 120]
    assert len(strong.encode(long[-1])) > 2 * strong.context_length
    assert lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in long])) == pytest.approx(
        hf.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in long])), abs=1e-3)


def test_eft_loglikelihoods_are_its_mixed_distribution(model_dirs):
    from w2s.lm_eval import W2SLM

    d = model_dirs
    paths = [d["strong"], d["shared_tuned"], d["shared_untuned"]]
    lm = W2SLM(strong=paths[0], tuned=paths[1], untuned=paths[2], method="eft", beta=0.5, batch_size=2)
    got = lm.loglikelihood(requests("loglikelihood", PAIRS))
    want = direct_logprobs(paths, [1.0, 0.5, -0.5], PAIRS)
    assert [g for _, g in got] == [g for _, g in want]
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], abs=1e-4)
    rolling = lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(t,) for t in TEXTS]))
    assert rolling == pytest.approx([lp for lp, _ in direct_logprobs(paths, [1.0, 0.5, -0.5], [("", t) for t in TEXTS])],
                                    abs=1e-4)


def test_a_search_refuses_loglikelihood_requests_naming_the_method(model_dirs):
    from w2s.lm_eval import W2SLM

    d = model_dirs
    lm = W2SLM.create_from_arg_obj({"strong": d["strong"], "tuned": d["tuned"], "untuned": d["untuned"], "method": "bon",
                                    "n": 2}, {"batch_size": 1, "device": "cuda:0"})
    with pytest.raises(ValueError, match=r"loglikelihood requests .* method=bon has none: a search picks among"):
        lm.loglikelihood(requests("loglikelihood", PAIRS))
    with pytest.raises(ValueError, match=r"loglikelihood_rolling requests .* method=bon has none"):
        lm.loglikelihood_rolling(requests("loglikelihood_rolling", [(TEXTS[0],)]))
