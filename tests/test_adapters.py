"""LoRA adapters are merged into their base once: later loads read the merged copy from the w2s cache."""

import json
import sys
import warnings

import pytest
import torch

import w2s
from w2s.backends import adapters

IDS = torch.tensor([[5, 9, 13, 2, 7]])


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh w2s cache; returns the folder of the merged adapters."""
    monkeypatch.setenv("W2S_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "merged"


def save_adapter(base_dir, out, seed: int):
    """A random LoRA adapter of ``base_dir`` saved in ``out``; returns the PEFT model's logits on IDS."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    with warnings.catch_warnings():  # PEFT calls a transformers method that transformers 5 marks as deprecated
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir), config)
    model.save_pretrained(out)
    with torch.no_grad():
        return model(input_ids=IDS).logits


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model.model(input_ids=IDS).logits


def entries(cache) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_an_adapter_is_merged_once_then_loaded_from_the_cache(model_dirs, tmp_path, cache, monkeypatch):
    expected = save_adapter(model_dirs["shared_untuned"], tmp_path / "adapter", seed=0)
    first = w2s.load_model(tmp_path / "adapter")
    [entry] = entries(cache)
    manifest = json.loads((cache / entry / adapters.MANIFEST).read_text())
    assert entry.startswith("adapter-") and manifest["dtype"] == "torch.float32"
    assert (cache / entry / "model.safetensors").is_file() and (cache / entry / "tokenizer.json").is_file()

    def no_merge(*args):
        raise AssertionError("merged again")

    monkeypatch.setattr(adapters, "merge", no_merge)
    monkeypatch.setitem(sys.modules, "peft", None)  # importing PEFT now fails
    second = w2s.load_model(tmp_path / "adapter")
    assert torch.equal(logits(first), logits(second)) and torch.allclose(logits(second), expected, atol=1e-4)
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab() and second.name == str(tmp_path / "adapter")
    assert entries(cache) == [entry]


def test_a_changed_adapter_or_dtype_gets_its_own_entry(model_dirs, tmp_path, cache):
    save_adapter(model_dirs["shared_untuned"], tmp_path / "adapter", seed=0)
    old = logits(w2s.load_model(tmp_path / "adapter"))
    [old_entry] = entries(cache)
    expected = save_adapter(model_dirs["shared_untuned"], tmp_path / "adapter", seed=1)  # retrained in place
    new = logits(w2s.load_model(tmp_path / "adapter"))
    [new_entry] = entries(cache)  # the replaced entry is removed
    assert new_entry != old_entry and torch.allclose(new, expected, atol=1e-4) and not torch.allclose(new, old)
    w2s.load_model(tmp_path / "adapter", dtype="bfloat16")
    assert len(entries(cache)) == 2 and new_entry in entries(cache)


def test_an_interrupted_merge_leaves_no_cache_entry(model_dirs, tmp_path, cache, monkeypatch):
    from transformers import PreTrainedTokenizerBase

    expected = save_adapter(model_dirs["shared_untuned"], tmp_path / "adapter", seed=0)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(PreTrainedTokenizerBase, "save_pretrained", interrupted)
        with pytest.raises(KeyboardInterrupt):
            w2s.load_model(tmp_path / "adapter")
    assert entries(cache) == []  # neither an entry nor its temporary directory
    assert torch.allclose(logits(w2s.load_model(tmp_path / "adapter")), expected, atol=1e-4)
    assert len(entries(cache)) == 1


def test_an_unwritable_cache_warns_and_loads_the_merge(model_dirs, tmp_path, monkeypatch):
    expected = save_adapter(model_dirs["shared_untuned"], tmp_path / "adapter", seed=0)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("W2S_CACHE", str(tmp_path / "file"))
    with pytest.warns(UserWarning, match="could not cache the merged adapter"):
        model = w2s.load_model(tmp_path / "adapter")
    assert torch.allclose(logits(model), expected, atol=1e-4)


def test_an_adapter_without_a_base_is_a_clear_error(tmp_path, cache):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(ValueError, match="names no base_model_name_or_path"):
        w2s.load_model(tmp_path)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "none")}))
    with pytest.raises(ValueError, match="base model .* does not exist"):
        w2s.load_model(tmp_path)


def test_an_adapter_shipped_on_a_catalog_model_loads_on_that_models_set_up_checkpoint(model_dirs, tmp_path, cache):
    import shutil

    from w2s.backends import gguf

    expected = save_adapter(model_dirs["strong"], tmp_path / "trained", seed=3)
    (tmp_path / "trained" / "w2s_training.json").write_text("{}")
    (tmp_path / "shipped").mkdir()
    (tmp_path / "shipped" / "README.md").write_text("the model card")
    (tmp_path / "shipped" / "stale.bin").write_text("from an older build")
    adapters.ship_adapter(tmp_path / "trained", tmp_path / "shipped", base="qwen2.5-coder-0.5b-instruct")
    assert sorted(p.name for p in (tmp_path / "shipped").iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "w2s_training.json"]
    assert (tmp_path / "shipped" / "README.md").read_text() == "the model card"
    config = json.loads((tmp_path / "shipped" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "qwen2.5-coder-0.5b-instruct"
    with pytest.raises(ValueError, match="adapter in .*: qwen2.5-coder-0.5b-instruct is not set up yet: run `w2s setup qwen2.5-coder-0.5b-instruct`"):
        w2s.load_model(tmp_path / "shipped")
    checkpoint = cache.parent / "qwen2.5-coder-0.5b-instruct"  # where `w2s setup` converts it
    shutil.copytree(model_dirs["strong"], checkpoint)
    (checkpoint / gguf.MARKER).write_text(json.dumps(gguf.FORMAT))
    assert torch.allclose(logits(w2s.load_model(tmp_path / "shipped")), expected, atol=1e-4)
    with pytest.raises(ValueError, match="base must be 'w2s:default-strong' or one of"):
        adapters.ship_adapter(tmp_path / "trained", tmp_path / "other", base="no-such-model")
