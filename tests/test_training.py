"""Training recipes at tiny sizes: the LM trains and resumes, DPO moves the log-ratio, pairs are labelled."""

import json

import pytest
import torch

import w2s
from conftest import CORPUS, canonical_keys, checkpoint_keys, llama, strong_tokenizer
from w2s.training.dpo import DPOTrainingConfig, build_preference_pairs, train_dpo
from w2s.training.lm import LMTrainingConfig, pack, train_lm

TINY_LM = LMTrainingConfig(vocab_size=300, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                           context_length=32, epochs=5, batch_size=4, save_steps=4, learning_rate=1e-2)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    train_lm(CORPUS, out, TINY_LM, progress=False)
    return out


def test_lm_recipe_trains_a_loadable_model(tiny_lm):
    assert checkpoint_keys(tiny_lm) == canonical_keys(tiny_lm)  # what other engines load too
    model = w2s.load_model(tiny_lm)
    assert model.num_parameters < 100_000
    meta = json.loads((tiny_lm / "w2s_training.json").read_text())
    assert meta["recipe"] == "lm" and meta["hidden_size"] == 32
    result = next(w2s.Sampling(max_new_tokens=5).generate(model, None, ["The cat"]))
    assert result.num_tokens == 5 or result.finished
    # training lowered the loss below a fresh model's
    tok = model.tokenizer
    ids = torch.tensor(pack(tok, CORPUS[:5], 32))
    fresh = w2s.training.lm.build_model(tok, TINY_LM)
    with torch.no_grad():
        assert model.model(input_ids=ids, labels=ids).loss < fresh(input_ids=ids, labels=ids).loss - 0.5


def test_lm_recipe_resumes_from_its_last_checkpoint(tiny_lm, tmp_path):
    import shutil

    copy = tmp_path / "lm"
    shutil.copytree(tiny_lm, copy)
    (copy / "model.safetensors").unlink()  # as if interrupted after the last checkpoint
    train_lm(CORPUS, copy, TINY_LM, progress=False)
    a, b = w2s.load_model(tiny_lm).model, w2s.load_model(copy).model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_pack_joins_documents_with_eos():
    tok = strong_tokenizer()
    blocks = pack(tok, ["a b", "c"], 3)
    flat = [t for b in blocks for t in b]
    assert all(len(b) == 3 for b in blocks) and tok.eos_token_id in flat


def test_dpo_step_changes_parameters_and_moves_the_log_ratio_toward_chosen(tmp_path):
    tok = strong_tokenizer()
    base_dir = tmp_path / "base"
    llama(tok, 5).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    pairs = [{"prompt": p, "chosen": " happy and wonderful", "rejected": " cold and terrible"}
             for p in ["The cat was", "I was", "The day was", "What a"]] * 4
    config = DPOTrainingConfig(beta=0.1, epochs=2, learning_rate=5e-3, batch_size=4, max_length=32, save_steps=100)
    out = train_dpo(base_dir, pairs, tmp_path / "tuned", config, progress=False)
    assert checkpoint_keys(out) == canonical_keys(out)
    base, tuned = w2s.load_model(base_dir), w2s.load_model(out)
    before, after = weights(base.model), weights(tuned.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    ratio = w2s.LogRatioScorer(tuned, base)
    chosen, rejected = ratio.score("The day was", [" happy and wonderful", " cold and terrible"], [False, False])
    assert chosen > 0 > rejected


def test_preference_pairs_follow_bradley_terry_and_resume(strong, tmp_path):
    prompts = ["The cat", "What a", "I did not like", "Once upon", "She said", "The dog"]
    def reward(prompts, texts):
        assert len(prompts) == len(texts) and set(prompts) <= set(batch_prompts)
        return [float(t.count("e")) for t in texts]

    batch_prompts = prompts
    path = tmp_path / "pairs.jsonl"
    pairs = build_preference_pairs(strong, prompts, reward, path, max_new_tokens=8, bt_scale=50.0, batch_size=4,
                                   progress=False)
    assert pairs and all(p["chosen_reward"] >= p["rejected_reward"] for p in pairs)  # scale 50: near-deterministic
    assert all(reward([p["prompt"]], [p["chosen"]])[0] == p["chosen_reward"] for p in pairs)
    full = path.read_text()
    path.write_text("".join(full.splitlines(keepends=True)[:2]) + '{"prompt": "torn')
    assert build_preference_pairs(strong, prompts, reward, path, max_new_tokens=8, bt_scale=50.0, batch_size=4,
                                  progress=False) == pairs
    assert path.read_text() == full


@pytest.mark.parametrize("cls,kwargs,name", [
    (LMTrainingConfig, {"hidden_size": 30, "num_heads": 4}, "hidden_size"),
    (LMTrainingConfig, {"learning_rate": 0}, "learning_rate"),
    (DPOTrainingConfig, {"beta": 0}, "beta"),
    (DPOTrainingConfig, {"batch_size": 0}, "batch_size"),
])
def test_training_configs_validate(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)


def test_train_lm_cli_takes_the_config_fields_as_flags(tmp_path):
    import os
    import subprocess
    import sys

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(CORPUS))
    out = tmp_path / "lm"
    proc = subprocess.run(
        [sys.executable, "-m", "w2s.cli", "train", "lm", "--corpus", str(corpus), "--out", str(out),
         "--vocab-size", "280", "--hidden-size", "16", "--num-layers", "1", "--num-heads", "2",
         "--intermediate-size", "32", "--context-length", "16", "--epochs", "1", "--batch-size", "8"],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "w2s_training.json").read_text())
    assert (meta["hidden_size"], meta["vocab_size"], meta["texts"]) == (16, 280, len(CORPUS))
    assert w2s.load_model(out).model.config.hidden_size == 16
