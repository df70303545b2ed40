"""A fixture zoo: one tiny random model per model family users run w2s on, built offline.

Each family reproduces the tokenizer and config quirks of the real family that matter to w2s
(how text round-trips through ids, which tokens end a turn, special vs. added tokens, padded
embedding rows, sliding windows).  Tokenizers are trained here with the ``tokenizers`` library on
a small corpus and wrapped in the family's own ``transformers`` tokenizer class (built from the
trained vocab and merges, so the class sets up the real pipeline); models are 2-layer random
configs.  ``build_zoo(root)`` saves them all and returns ``{family: directory}``.

Families (and the quirks they pin):

- ``llama2``: SentencePiece-style BPE (Metaspace ``▁``, prepend "first", byte fallback with
  ``<0x00>``..``<0xFF>``, decoder ``Replace/ByteFallback/Fuse/Strip(left=1)``), ``<unk>``/``<s>``/``</s>``
  = 0/1/2, BOS added by the post-processor, the Llama-2 ``[INST]``/``<<SYS>>`` chat template.
  Decoding a lone continuation drops its leading space.
- ``mistral``: the same tokenizer style, the Mistral-Instruct template (system merged into the first
  user turn), ``MistralForCausalLM`` with a 16-token sliding window.
- ``llama3``: byte-level BPE with the Llama-3 split regex, ``<|begin_of_text|>`` added by the
  post-processor, ``<|eot_id|>`` ending turns while the tokenizer's EOS is ``<|end_of_text|>`` and
  ``generation_config.eos_token_id`` lists both (as the original Llama-3-Instruct release).
- ``qwen2``: Qwen2 byte-level BPE, no BOS, EOS ``<|im_end|>``, pad ``<|endoftext|>``, *non-special*
  added tokens ``<think>``/``</think>``/``<tool_call>``/``</tool_call>``, ChatML (Qwen3-style, with
  ``enable_thinking``), embedding rows padded beyond ``len(tokenizer)``, tied embeddings.
- ``gemma``: Gemma's BPE (normalizer ``" "`` -> ``"▁"``, no prefix space, decoder without Strip, so a
  lone ``▁world`` decodes to ``" world"``), ``<pad>``/``<eos>``/``<bos>``/``<unk>``/``<mask>`` = 0..4,
  non-special ``<unusedN>``, special ``<start_of_turn>``/``<end_of_turn>`` and image tokens, the Gemma-3
  chat template (its own ``bos_token`` on top of the post-processor's), ``Gemma3ForCausalLM`` with a
  16-token sliding window on alternating layers, ``generation_config.eos_token_id = [<eos>, <end_of_turn>]``.
- ``recurrent``: the first of ``RECURRENT_CANDIDATES`` that builds and runs on CPU, on a GPT-NeoX-style
  byte-level tokenizer (``<|endoftext|>`` = 0 is BOS/EOS/UNK), no chat template.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

FAMILIES = ("llama2", "mistral", "llama3", "qwen2", "gemma", "recurrent")
RECURRENT_CANDIDATES = ("MambaForCausalLM", "Lfm2ForCausalLM", "JambaForCausalLM")

# words the chat tests and examples use, so that they are whole tokens ("▁Hello", "▁world")
EXTRA_CORPUS = [
    "Hello world! Hello there, hi, how are you? I am fine, thank you.",
    "You are a helpful assistant. Answer the question: what is the capital of France? Paris.",
    "hi hello world user assistant system model question answer",
] * 6

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]

LLAMA2_CHAT = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
MISTRAL_CHAT = (
    "{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}{%- else %}{%- set loop_messages = messages %}{%- endif %}"
    "{{- bos_token }}{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{%- endif %}"
    "{%- if message['role'] == 'user' %}{%- if loop.first and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{%- else %}{{- '[INST] ' + message['content'] + ' [/INST]' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}{{- message['content'] + eos_token }}"
    "{%- else %}{{- raise_exception('Only user and assistant roles are supported, with the exception of an "
    "initial optional system message!') }}{%- endif %}{%- endfor %}"
)
LLAMA3_CHAT = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_CHAT = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)
GEMMA_CHAT = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def corpus() -> list[str]:
    from conftest import CORPUS

    return list(CORPUS) + EXTRA_CORPUS


# -- tokenizer training -------------------------------------------------------------------------------
def train_bpe(pre_tokenizer, vocab_size: int, alphabet=(), texts=None) -> tuple[list[str], list[tuple[str, str]]]:
    """Tokens (in id order) and merges of a BPE trained on ``texts`` with ``pre_tokenizer``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=list(alphabet), show_progress=False)
    tok.train_from_iterator(texts or corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return tokens, merges


def vocab_of(*groups) -> dict[str, int]:
    vocab: dict[str, int] = {}
    for group in groups:
        for t in group:
            vocab.setdefault(t, len(vocab))
    return vocab


def sentencepiece_bpe(vocab_size: int, alphabet=(), prepend: str = "always") -> tuple[list[str], list[tuple[str, str]]]:
    """A BPE over ``▁``-prefixed words (merges never cross a word boundary).  ``prepend``: whether the
    first word of a text gets a ``▁`` too (Llama's dummy prefix) or not (Gemma)."""
    return train_bpe(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend, split=True),
                     vocab_size, alphabet)


def llama2_tokenizer(chat_template: str = LLAMA2_CHAT):
    from transformers import LlamaTokenizer

    tokens, merges = sentencepiece_bpe(420)
    vocab = vocab_of(["<unk>", "<s>", "</s>"], BYTE_TOKENS, tokens)
    # legacy=False: Metaspace prepend_scheme "first", as the Llama-2 / Mistral hub tokenizers load
    tok = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, legacy=False)
    tok.chat_template = chat_template
    return tok


def gemma_tokenizer():
    from transformers import GemmaTokenizer

    tokens, merges = sentencepiece_bpe(420, alphabet=["\n", "\t"], prepend="never")
    head = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]"]
    unused = [f"<unused{i}>" for i in range(8)]
    turns = ["<start_of_turn>", "<end_of_turn>"]
    images = ["<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    vocab = vocab_of(head, unused, turns, BYTE_TOKENS, tokens, images)
    tok = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    # as in the hub's tokenizer.json: <unusedN> are added but not special; turn and image markers are special
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in unused + ["[multimodal]"]])
    tok.add_special_tokens({"additional_special_tokens": turns + images}, replace_extra_special_tokens=False)
    tok.chat_template = GEMMA_CHAT
    return tok


def byte_level_bpe(vocab_size: int, split_regex: str) -> tuple[list[str], list[tuple[str, str]]]:
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return train_bpe(pre, vocab_size, alphabet=pre_tokenizers.ByteLevel.alphabet())


def llama3_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tokens, merges = byte_level_bpe(560, LLAMA3_SPLIT)
    reserved = [f"<|reserved_special_token_{i}|>" for i in range(10)]
    specials = (["<|begin_of_text|>", "<|end_of_text|>"] + reserved[:4]
                + ["<|start_header_id|>", "<|end_header_id|>", reserved[4], "<|eot_id|>"] + reserved[5:])
    vocab = vocab_of(tokens)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    bos = backend.token_to_id("<|begin_of_text|>")
    backend.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>",
                                  eos_token="<|end_of_text|>", clean_up_tokenization_spaces=True)
    tok.chat_template = LLAMA3_CHAT
    return tok


def qwen2_tokenizer():
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tokens, merges = byte_level_bpe(520, PRETOKENIZE_REGEX)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>"]
    vocab = vocab_of(tokens, specials)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, bos_token=None, eos_token="<|im_end|>",
                         pad_token="<|endoftext|>", unk_token=None, errors="replace")
    tok.add_special_tokens({"additional_special_tokens": specials[1:]}, replace_extra_special_tokens=False)
    # Qwen2.5/Qwen3: tool and thinking markers are added tokens that are *not* special
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t in ["<tool_call>", "</tool_call>", "<think>", "</think>"]])
    tok.chat_template = CHATML_CHAT
    return tok


def neox_tokenizer():
    from transformers import PreTrainedTokenizerFast

    tokens, merges = byte_level_bpe(400, LLAMA3_SPLIT)
    vocab = vocab_of(["<|endoftext|>", "<|padding|>"], tokens)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ["<|endoftext|>", "<|padding|>"]])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|padding|>")


# -- models -------------------------------------------------------------------------------------------
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512, initializer_range=0.3)


def ids_of(tok) -> dict:
    return dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def build(model_class, config, seed: int):
    torch.manual_seed(seed)
    return model_class(config).eval()


def llama2(seed=10):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = llama2_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, **ids_of(tok), **TINY)
    return build(LlamaForCausalLM, config, seed), tok


def mistral(seed=11):
    from transformers import MistralConfig, MistralForCausalLM

    tok = llama2_tokenizer(MISTRAL_CHAT)
    config = MistralConfig(vocab_size=len(tok), tie_word_embeddings=False, sliding_window=16, **ids_of(tok), **TINY)
    return build(MistralForCausalLM, config, seed), tok


def llama3(seed=12):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = llama3_tokenizer()
    config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=False, **ids_of(tok), **TINY)
    model = build(LlamaForCausalLM, config, seed)
    model.generation_config.bos_token_id = tok.bos_token_id
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|end_of_text|>"),
                                            tok.convert_tokens_to_ids("<|eot_id|>")]
    return model, tok


def padded_vocab(n: int) -> int:
    return -(-n // 64) * 64 + 64


def qwen2(seed=13):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = qwen2_tokenizer()
    config = Qwen2Config(vocab_size=padded_vocab(len(tok)), tie_word_embeddings=True, use_sliding_window=False,
                         bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TINY)
    model = build(Qwen2ForCausalLM, config, seed)
    model.generation_config.eos_token_id = [tok.convert_tokens_to_ids("<|im_end|>"),
                                            tok.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok


def gemma(seed=14):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    tok = gemma_tokenizer()
    config = Gemma3TextConfig(vocab_size=len(tok), head_dim=8, query_pre_attn_scalar=8, sliding_window=16,
                              layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True,
                              **ids_of(tok), **TINY)
    model = build(Gemma3ForCausalLM, config, seed)
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids("<end_of_turn>")]
    return model, tok


def recurrent_config(name: str, tok):
    import transformers

    vocab = padded_vocab(len(tok))
    common = dict(vocab_size=vocab, initializer_range=0.3, **ids_of(tok))
    if name == "MambaForCausalLM":
        return transformers.MambaConfig(hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4,
                                        time_step_rank=4, **common)
    if name == "Lfm2ForCausalLM":
        return transformers.Lfm2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2, max_position_embeddings=512,
                                       layer_types=["conv", "full_attention"], **common)
    if name == "JambaForCausalLM":
        return transformers.JambaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, max_position_embeddings=512, attn_layer_period=2,
                                        attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
                                        num_experts=2, mamba_d_state=8, mamba_dt_rank=4, use_mamba_kernels=False,
                                        **common)
    raise ValueError(name)


def recurrent(seed=15):
    """The first recurrent/hybrid architecture that builds and runs a forward (and one cached step) on CPU."""
    import transformers

    tok = neox_tokenizer()
    failures = {}
    for name in RECURRENT_CANDIDATES:
        try:
            model = build(getattr(transformers, name), recurrent_config(name, tok), seed)
            ids = torch.tensor([tok("Hello world, the cat sat")["input_ids"]])
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False,
                               pad_token_id=tok.pad_token_id)
            RECURRENT_FAILURES.clear()
            RECURRENT_FAILURES.update(failures)
            return model, tok
        except Exception as err:  # noqa: BLE001 - any failure means "try the next architecture"
            failures[name] = f"{type(err).__name__}: {err}"
    raise RuntimeError(f"no recurrent architecture builds offline: {failures}")


RECURRENT_FAILURES: dict[str, str] = {}  # candidates tried before the one that built, and why they failed
BUILDERS = {"llama2": llama2, "mistral": mistral, "llama3": llama3, "qwen2": qwen2, "gemma": gemma,
            "recurrent": recurrent}
BUILD_SECONDS: dict[str, float] = {}


# ``tokenizer_class`` as the hub's tokenizer_config.json spells it, where the saved name differs
HUB_TOKENIZER_CLASS = {"llama3": "PreTrainedTokenizerFast"}


def save(model, tokenizer, path: Path, tokenizer_class: str | None = None) -> str:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if tokenizer_class:
        config_file = Path(path) / "tokenizer_config.json"
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["tokenizer_class"] = tokenizer_class
        config_file.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return str(path)


def build_zoo(root: str | os.PathLike, families=FAMILIES) -> dict[str, str]:
    """Build and save each family under ``root/<family>``; returns ``{family: directory}``."""
    root = Path(root)
    dirs = {}
    for family in families:
        start = time.perf_counter()
        model, tok = BUILDERS[family]()
        dirs[family] = save(model, tok, root / family, HUB_TOKENIZER_CLASS.get(family))
        BUILD_SECONDS[family] = time.perf_counter() - start
    return dirs
