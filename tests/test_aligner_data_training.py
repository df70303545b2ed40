"""The aligners' data builder (a teacher in the loop) and the masked SFT recipe, at tiny sizes."""

import json

import pytest
import torch

import w2s
from conftest import canonical_keys, checkpoint_keys, llama, strong_tokenizer
from test_stream_aligner import ANSWER, scripted_upstream  # noqa: F401  (fixture)
from w2s.aligner import STREAM_ALIGNER_TEMPLATE, stream_aligner_input
from w2s.aligner.data import build_corrections
from w2s.training.aligner import AlignerTrainingConfig, build_trainer, examples, train_aligner


def teacher(question, prefix, sentence):
    return sentence.upper()


def test_builder_writes_sentence_and_whole_answer_records_and_resumes(scripted_upstream, tmp_path):  # noqa: F811
    out, whole = tmp_path / "stream.jsonl", tmp_path / "whole.jsonl"
    n = build_corrections(scripted_upstream, teacher, ["Q", "Q"], out, whole_out_path=whole,
                          upstream_template="{prompt}", batch_size=1, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert n == len(records) == 6
    first = [r for r in records if r["question_index"] == 0]
    assert [r["sentence"] for r in first] == ["The movie was wonderful!", "I did not like it?", "Great."]
    assert [r["prefix"] for r in first] == ["", " THE MOVIE WAS WONDERFUL!", " THE MOVIE WAS WONDERFUL! I DID NOT LIKE IT?"]
    assert all(r["correction"] == r["sentence"].upper() for r in records)
    wholes = [json.loads(line) for line in whole.read_text().splitlines()]
    assert [(w["answer"], w["correction"]) for w in wholes] == [(ANSWER.strip(), ANSWER.strip().upper())] * 2
    # interrupted in the middle of question 1: rerunning redoes it and ends identical
    full = out.read_text()
    out.write_text("".join(full.splitlines(keepends=True)[:4]) + '{"question_ind')
    build_corrections(scripted_upstream, teacher, ["Q", "Q"], out, upstream_template="{prompt}", batch_size=1,
                      progress=False)
    assert out.read_text() == full


def test_examples_use_the_shared_template():
    record = {"question": "Q?", "prefix": "A.", "sentence": "b", "correction": "B."}
    from zoo import llama3_tokenizer

    chat = examples([record], "stream", llama3_tokenizer())[0]  # its template ends the turn with <|eot_id|>
    assert chat["prompt"][0]["content"] == stream_aligner_input("Q?", "A.", "b") and chat["completion"][0]["content"] == "B."
    no_template = strong_tokenizer()
    no_template.chat_template = None
    plain = examples([record], "stream", no_template)[0]
    assert plain["prompt"].startswith(STREAM_ALIGNER_TEMPLATE.split("{")[0]) and plain["completion"] == "B."
    whole = examples([{"question": "Q?", "answer": "a.", "correction": "A."}], "whole", no_template)[0]
    assert whole["prompt"] == "##Question: Q?\n##Answer: a.\n##Correction: "


def test_aligner_sft_learns_the_correction_and_masks_the_prompt(tmp_path):
    tok = strong_tokenizer()
    base = tmp_path / "base"
    llama(tok, 6).save_pretrained(base)
    tok.save_pretrained(base)
    records = [{"question": "What a day", "prefix": "", "sentence": "it was cold", "correction": " It was great."}] * 8
    config = AlignerTrainingConfig(epochs=3, learning_rate=1e-2, batch_size=4, max_length=128, save_steps=100)
    out = train_aligner(base, records, tmp_path / "aligner", config, progress=False)
    assert checkpoint_keys(out) == canonical_keys(out)

    def logprob(model, context, text):
        ids = model.tokenizer(context + text, add_special_tokens=False)["input_ids"]
        n = len(model.tokenizer(context, add_special_tokens=False)["input_ids"])
        with torch.no_grad():
            lp = model.model(torch.tensor([ids])).logits[0].log_softmax(-1)
        return sum(lp[i - 1, ids[i]].item() for i in range(max(n, 1), len(ids)))

    before, after = w2s.load_model(base), w2s.load_model(out)
    # inference renders the prompt as training did: the chat template with a generation prompt
    prompt = before.render("chat", stream_aligner_input("What a day", "", "it was cold"))
    assert logprob(after, prompt, " It was great.") - logprob(before, prompt, " It was great.") > 5.0
    assert json.loads((out / "w2s_training.json").read_text())["records"] == 8
    # the loss sees only the correction (and its end-of-turn): every prompt token is masked
    trainer = build_trainer(base, records[:1], tmp_path / "check", config, progress=False)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    text = tok.decode(ids)
    assert text.startswith(prompt + " It was great.")
    assert tok.decode([i for i, label in zip(ids, labels) if label != -100]).startswith(" It was great.")


def test_aligner_config_validates():
    with pytest.raises(ValueError, match="kind"):
        AlignerTrainingConfig(kind="sentence")


def test_a_lora_adapter_loads_merged_into_its_base(model_dirs, tmp_path, monkeypatch):
    """load_model on a PEFT adapter directory gives the base with the adapter merged in."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dirs["shared_untuned"])
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))  # random B: the adapter changes logits
    peft_model.save_pretrained(tmp_path)
    monkeypatch.setenv("W2S_CACHE", str(tmp_path / "cache"))  # the merged copy (tests/test_adapters.py)
    ids = torch.tensor([[5, 9, 13, 2, 7]])
    with torch.no_grad():
        expected = peft_model(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(model_dirs["shared_untuned"])(input_ids=ids).logits
    loaded = w2s.load_model(tmp_path)
    with torch.no_grad():
        got = loaded.model(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-4) and not torch.allclose(got, plain, atol=1e-3)
    assert loaded.tokenizer.get_vocab() == w2s.load_model(model_dirs["shared_untuned"]).tokenizer.get_vocab()
    [merged] = [p.parent for p in (tmp_path / "cache" / "merged").glob("*/config.json")]
    assert checkpoint_keys(merged) == canonical_keys(merged)  # the merged copy other engines can load
