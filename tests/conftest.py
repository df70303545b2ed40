"""Offline fixtures: tiny tokenizers trained here, tiny random models built from configs, saved to disk.

- ``strong``: a 2-layer Llama with a byte-level BPE tokenizer (EOS ``<|endoftext|>``, a non-text special
  token ``<start_of_image>``, a chat template).
- ``tuned`` / ``untuned``: 2-layer GPT-2 guides with a *different* tokenizer (EOS ``</s>``).
- ``shared_tuned`` / ``shared_untuned``: guides on the strong model's tokenizer (for EFT).
- ``make_scripted``: a real Llama whose weights make it a deterministic bigram model, for tests that
  need to know exactly what the large model will say.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import w2s

CORPUS = [
    "The movie was wonderful and the actors were great.",
    "I did not like the food, it was cold and bland.",
    "She said that the weather is nice today, so we went to the park.",
    "The cat sat on the mat. The dog sat on the log.",
    "What a terrible day! Everything went wrong at work.",
    "He is a good friend and a kind person who helps everyone.",
    "The results were surprising: the small model guided the large one.",
    "Once upon a time there was a happy little village by the sea.",
    "Numbers like 3.14 and 42 appear in the text, as do words like e.g. and i.e.",
    "This product is amazing, I love it and would buy it again.",
] * 4

STRONG_CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
GUIDE_CHAT = "{{ bos_token }}{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"


def train_tokenizer(texts, vocab_size, specials, **tokens) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **tokens)


def strong_tokenizer() -> PreTrainedTokenizerFast:
    tok = train_tokenizer(
        CORPUS, 400, ["<|endoftext|>", "<pad>", "<start_of_image>", "<|user|>", "<|assistant|>"],
        eos_token="<|endoftext|>", pad_token="<pad>",
        additional_special_tokens=["<start_of_image>", "<|user|>", "<|assistant|>"],
    )
    tok.chat_template = STRONG_CHAT
    return tok


def guide_tokenizer() -> PreTrainedTokenizerFast:
    # different corpus order and size: different merges and ids than the strong tokenizer
    tok = train_tokenizer(list(reversed(CORPUS)) + ["sat", "sat", "sat"], 330, ["<s>", "</s>"],
                          bos_token="<s>", eos_token="</s>")
    tok.chat_template = GUIDE_CHAT
    return tok


def llama(tokenizer, seed: int, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        initializer_range=0.3, **overrides,
    )
    return LlamaForCausalLM(config).eval()


def gpt2(tokenizer, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=512,
                        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, initializer_range=0.3)
    return GPT2LMHeadModel(config).eval()


def checkpoint_keys(path) -> set[str]:
    """The tensor names a checkpoint directory's safetensors files hold."""
    from safetensors import safe_open

    keys = set()
    for file in Path(path).glob("*.safetensors"):
        with safe_open(str(file), "pt") as f:
            keys |= set(f.keys())
    return keys


def canonical_keys(path) -> set[str]:
    """The names the checkpoint's architecture gives its tensors: its own ``state_dict()``, with tied
    weights once, under the input embedding's name (what transformers, vLLM and llama.cpp expect)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    tied = set(getattr(model, "_tied_weights_keys", None) or ()) if config.tie_word_embeddings else set()
    return set(model.state_dict()) - tied


def save(model, tokenizer, path) -> str:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    st, gt = strong_tokenizer(), guide_tokenizer()
    return {
        "strong": save(llama(st, 0), st, root / "strong"),
        "tuned": save(gpt2(gt, 1), gt, root / "tuned"),
        "untuned": save(gpt2(gt, 2), gt, root / "untuned"),
        "shared_tuned": save(llama(st, 3), st, root / "shared_tuned"),
        "shared_untuned": save(llama(st, 4), st, root / "shared_untuned"),
    }


# the device and precision of the models the fixtures load (the GPU check sets them; CPU float32 here)
DEVICE, DTYPE = os.environ.get("W2S_TEST_DEVICE", "cpu"), os.environ.get("W2S_TEST_DTYPE", "float32")


def load(path) -> w2s.TransformersModel:
    return w2s.load_model(path, device=DEVICE, dtype=DTYPE)


@pytest.fixture(scope="session")
def strong(model_dirs):
    return load(model_dirs["strong"])


@pytest.fixture(scope="session")
def tuned(model_dirs):
    return load(model_dirs["tuned"])


@pytest.fixture(scope="session")
def untuned(model_dirs):
    return load(model_dirs["untuned"])


@pytest.fixture(scope="module")
def proxy_server(engine):
    """The fault-injecting proxy (tests/remote_engine.py) in front of the module's own ``engine`` fixture
    (llama.cpp in test_remote.py, vLLM in test_vllm.py): one per module, so each sees its own engine."""
    from remote_engine import FaultProxy

    proxy = FaultProxy(engine.removesuffix("/v1"))
    yield proxy
    proxy.close()


@pytest.fixture
def proxy(proxy_server):
    proxy_server.reset()
    yield proxy_server
    proxy_server.reset()


@pytest.fixture
def scorer(tuned, untuned):
    return w2s.LogRatioScorer(tuned, untuned)


def make_scripted(tokenizer, script: dict[int, list[tuple[int, float]]], default_next: int) -> w2s.TransformersModel:
    """A real Llama that is a bigram model: after token t it prefers ``script[t]`` (id, strength) pairs.

    Attention and MLP outputs are zeroed, so the last hidden state is the RMS-normalized one-hot embedding
    of the last token, and the LM head is the transition table.
    """
    vocab = len(tokenizer)
    hidden = vocab + vocab % 2  # RoPE needs an even head dimension
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, head_dim=hidden,
                         max_position_embeddings=512, tie_word_embeddings=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        model.model.norm.weight.fill_(1.0)
        table = torch.zeros(vocab, vocab)  # [next, previous]
        table[default_next, :] = 1.0
        for prev, nexts in script.items():
            table[:, prev] = 0.0
            for nxt, strength in nexts:
                table[nxt, prev] = strength
        # hidden = one_hot * sqrt(vocab) after RMSNorm; scale so that strength 1 is a logit of 30
        model.lm_head.weight[:, :vocab].copy_(table * 30.0 / hidden**0.5)
    return w2s.TransformersModel(model, tokenizer, name="scripted")


def chain(tokenizer, text: str, end: int | None = None) -> dict[int, list[tuple[int, float]]]:
    """A script that, from the prompt's last token, spells ``text`` token by token then goes to ``end``."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(set(ids)) == len(ids), f"script tokens must be distinct: {ids}"
    script = {a: [(b, 1.0)] for a, b in zip(ids, ids[1:])}
    if end is not None:
        script[ids[-1]] = [(end, 1.0)]
    return ids, script


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> dict[str, str]:
    """One tiny random model per model family (llama2, mistral, llama3, qwen2, gemma, recurrent): family ->
    saved directory.  See tests/zoo.py for the tokenizer and config quirks each reproduces."""
    from zoo import build_zoo

    return build_zoo(tmp_path_factory.mktemp("zoo"))
