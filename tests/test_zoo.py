"""The fixture zoo (tests/zoo.py): each family loads, and its tokenizer/config quirks are the real family's."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import w2s

from zoo import FAMILIES, RECURRENT_CANDIDATES

TRANSFORMERS = [f for f in FAMILIES if f != "recurrent"]
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def toks(zoo):
    return {family: AutoTokenizer.from_pretrained(path) for family, path in zoo.items()}


def test_zoo_has_every_family(zoo):
    assert sorted(zoo) == sorted(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_reloads_with_auto_classes_and_logits_are_not_flat(zoo, toks, family):
    model = AutoModelForCausalLM.from_pretrained(zoo[family]).eval()
    ids = torch.tensor([toks[family]("The cat sat on the mat.")["input_ids"]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape[:2] == ids.shape
    assert logits.shape[-1] == model.get_output_embeddings().weight.shape[0]
    assert logits[0, -1].std() > 0.5  # initializer_range 0.3: random, but peaked


def test_recurrent_is_a_recurrent_architecture(zoo, toks):
    config = AutoConfig.from_pretrained(zoo["recurrent"])
    assert config.architectures[0] in RECURRENT_CANDIDATES
    model = AutoModelForCausalLM.from_pretrained(zoo["recurrent"]).eval()
    ids = torch.tensor([toks["recurrent"]("Hello world")["input_ids"]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                         pad_token_id=toks["recurrent"].pad_token_id)
    assert out.shape == (1, ids.shape[1] + 4)


@pytest.mark.parametrize("family", TRANSFORMERS)
def test_loads_with_w2s(zoo, family):
    lm = w2s.load_model(zoo[family])
    ids = lm.encode("Hello world")
    assert lm.decode(ids) == "Hello world"


# -- chat templates ---------------------------------------------------------------------------------
GENERATION_PROMPT = {
    "llama2": "<s>[INST] hi [/INST]",
    "mistral": "<s>[INST] hi [/INST]",
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "qwen2": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "gemma": "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
}


@pytest.mark.parametrize("family", TRANSFORMERS)
def test_chat_template_renders_as_the_real_family(toks, family):
    assert toks[family].apply_chat_template(HI, add_generation_prompt=True, tokenize=False) == GENERATION_PROMPT[family]


CONVERSATION = [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "again"}]
CONVERSATION_RENDERED = {
    "llama2": "<s>[INST] <<SYS>>\nBe nice.\n<</SYS>>\n\nhi [/INST] Hello! </s><s>[INST] again [/INST]",
    "mistral": "<s>[INST] Be nice.\n\nhi [/INST]Hello!</s>[INST] again [/INST]",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe nice.<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
              "<|start_header_id|>user<|end_header_id|>\n\nagain<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "qwen2": "<|im_start|>system\nBe nice.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
             "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n",
    "gemma": "<bos><start_of_turn>user\nBe nice.\n\nhi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
             "<start_of_turn>user\nagain<end_of_turn>\n<start_of_turn>model\n",
}


@pytest.mark.parametrize("family", TRANSFORMERS)
def test_chat_template_system_and_turn_ends(toks, family):
    """Llama-2: <<SYS>> in the first turn, `` content </s>`` after answers, BOS at each turn; Mistral and
    Gemma merge the system prompt into the first user turn; Llama-3 ends every turn with <|eot_id|>."""
    rendered = toks[family].apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    assert rendered == CONVERSATION_RENDERED[family]


def test_llama3_eot_ends_turns_but_is_not_the_tokenizer_eos(zoo, toks):
    tok = toks["llama3"]
    end_of_text, eot = tok.convert_tokens_to_ids(["<|end_of_text|>", "<|eot_id|>"])
    assert tok.eos_token == "<|end_of_text|>"
    model = AutoModelForCausalLM.from_pretrained(zoo["llama3"])
    assert model.generation_config.eos_token_id == [end_of_text, eot]
    answer = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]
    assert tok.apply_chat_template(answer, tokenize=False).endswith("<|end_header_id|>\n\nHello!<|eot_id|>")
    # special in added_tokens_decoder, yet (as on the hub) not listed in all_special_tokens
    added = {t.content: t for t in tok.added_tokens_decoder.values()}
    for t in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|reserved_special_token_0|>"):
        assert added[t].special and t not in tok.all_special_tokens


def test_qwen_chat_template_can_disable_thinking(toks):
    rendered = toks["qwen2"].apply_chat_template(HI, add_generation_prompt=True, tokenize=False, enable_thinking=False)
    assert rendered.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


# -- tokenization quirks ----------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama2", "mistral"])
def test_sentencepiece_decode_drops_the_first_space_of_a_lone_continuation(toks, family):
    """The bug class w2s must cope with: decoding a response's ids alone loses its leading space (the
    decoder's Strip(left=1) undoes the dummy prefix), so text must be decoded in context."""
    tok = toks[family]
    ids = tok("Hello world", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["▁Hello", "▁world"]
    assert tok.decode(ids) == "Hello world"
    assert tok.decode(ids[1:]) == "world"  # not " world"
    assert "Strip" in str(tok.backend_tokenizer.decoder)
    assert 'prepend_scheme=first' in str(tok.backend_tokenizer.pre_tokenizer)


@pytest.mark.parametrize("family", ["llama3", "qwen2", "gemma", "recurrent"])
def test_other_families_keep_the_space_of_a_lone_continuation(toks, family):
    tok = toks[family]
    ids = tok("Hello world", add_special_tokens=False)["input_ids"]
    assert len(ids) == 2
    assert tok.decode(ids[1:]) == " world"


@pytest.mark.parametrize("family,first", [("llama2", 1), ("mistral", 1), ("gemma", 2), ("llama3", None), ("qwen2", None)])
def test_bos_from_the_post_processor(toks, family, first):
    tok = toks[family]
    ids = tok("hi")["input_ids"]
    if family == "llama3":
        first = tok.convert_tokens_to_ids("<|begin_of_text|>")
    if family == "qwen2":
        assert tok.bos_token is None
        assert ids == tok("hi", add_special_tokens=False)["input_ids"]
    else:
        assert ids[0] == first == tok.bos_token_id
        assert ids[1:] == tok("hi", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("family", ["llama2", "mistral", "gemma"])
def test_sentencepiece_byte_fallback(toks, family):
    tok = toks[family]
    ids = tok("é", add_special_tokens=False)["input_ids"]
    assert "<0xC3>" in tok.convert_ids_to_tokens(ids) and "<0xA9>" in tok.convert_ids_to_tokens(ids)
    assert tok.decode(ids) == "é"
    if family != "gemma":
        assert tok.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<0x00>", "<0xFF>"]) == [0, 1, 2, 3, 258]


def test_qwen_padded_embeddings_and_non_special_added_tokens(zoo, toks):
    tok = toks["qwen2"]
    model = AutoModelForCausalLM.from_pretrained(zoo["qwen2"])
    assert model.get_output_embeddings().weight.shape[0] > len(tok)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (None, "<|im_end|>", "<|endoftext|>")
    added = {t.content: t for t in tok.added_tokens_decoder.values()}
    for t in ("<think>", "</think>", "<tool_call>", "</tool_call>"):
        assert not added[t].special and t not in tok.all_special_tokens
        assert len(tok(t)["input_ids"]) == 1  # still one token, and kept by decode(skip_special_tokens=True)
    assert "<think>" in tok.decode(tok("<think>x</think>")["input_ids"], skip_special_tokens=True)
    for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert added[t].special


def test_gemma_specials(zoo, toks):
    tok = toks["gemma"]
    assert tok.convert_tokens_to_ids(["<pad>", "<eos>", "<bos>", "<unk>"]) == [0, 1, 2, 3]
    added = {t.content: t for t in tok.added_tokens_decoder.values()}
    assert added["<start_of_turn>"].special and added["<end_of_turn>"].special and added["<start_of_image>"].special
    assert not added["<unused0>"].special  # as in Gemma's tokenizer.json
    model = AutoModelForCausalLM.from_pretrained(zoo["gemma"])
    assert model.generation_config.eos_token_id == [1, tok.convert_tokens_to_ids("<end_of_turn>")]


# -- sliding windows --------------------------------------------------------------------------------
def test_sliding_window_configs(zoo):
    mistral, gemma = AutoConfig.from_pretrained(zoo["mistral"]), AutoConfig.from_pretrained(zoo["gemma"])
    assert mistral.sliding_window == 16 and mistral.max_position_embeddings > 4 * 16
    assert gemma.sliding_window == 16 and set(gemma.layer_types) == {"sliding_attention", "full_attention"}


def test_mistral_sliding_window_is_in_effect(zoo):
    """With 2 layers of window 16, the last of 64 positions cannot see the first token."""
    model = AutoModelForCausalLM.from_pretrained(zoo["mistral"]).eval()
    ids = torch.randint(3, model.config.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    other = ids.clone()
    other[0, 0] = 3 if ids[0, 0] != 3 else 4
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=other).logits
    assert not torch.allclose(a[0, 1], b[0, 1])
    assert torch.allclose(a[0, -1], b[0, -1], atol=1e-5)
