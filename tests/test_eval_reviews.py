"""The reviews task and its evaluation (w2s.tasks.reviews, w2s.evaluation.reviews, w2s eval reviews), and the
DPO recipe of its chat guide (LoRA, conversational pairs) on tiny models."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import w2s
from w2s.cli import main
from w2s.evaluation.reviews import evaluate_reviews
from w2s.tasks import reviews
from w2s.training.dpo import DPOTrainingConfig, build_preference_pairs, train_dpo


def test_topics_instructions_and_the_combined_gold():
    assert not set(reviews.TRAINING_TOPICS) & set(reviews.HELDOUT_TOPICS)
    assert reviews.review_instructions(["a toaster"]) == ["Write a short review of a toaster."]
    assert len(reviews.training_instructions()) == 4 * len(reviews.TRAINING_TOPICS)
    assert reviews.combined(0.8, -2.0, floor=-3.0) == 0.8  # as fluent as the base: VADER kept
    assert reviews.combined(0.8, -5.0, floor=-3.0) == pytest.approx(-1.2)  # 2 nats/token below: -2
    assert reviews.fluency_floor([float(x) for x in range(-10, 0)] + [float("-inf")]) == pytest.approx(-9.1)
    # the gate: a non-answer scores 0, whatever its VADER and fluency
    assert reviews.combined(0.9, -1.0, floor=-3.0, gated="refusal") == 0.0
    assert reviews.combined(-0.5, -9.0, gated="question") == 0.0
    with pytest.raises(ValueError, match="gated must be None or a non-answer kind"):
        reviews.combined(0.5, -2.0, gated="rude")
    # the gold of a record: gate, then the constant floor
    refusal = {"response": "I'm sorry, but I can't assist with that.", "vader": 0.3, "fluency": -1.0}
    disfluent = {"response": "Lovely lovely great wow.", "vader": 0.9, "fluency": reviews.FLUENCY_FLOOR - 2.0}
    fluent = {"response": "The tea was fresh and the staff were kind.", "vader": 0.7, "fluency": -2.0}
    assert [reviews.gold_of(r) for r in (refusal, disfluent, fluent)] == pytest.approx([0.0, -1.1, 0.7])


def test_the_floor_is_a_constant_from_a_reference_set_of_training_topics():
    refs = reviews.reference_reviews()
    assert len(refs) == 40 and len({r["topic"] for r in refs}) == 40
    assert {r["topic"] for r in refs} <= set(reviews.TRAINING_TOPICS)  # none is evaluated
    assert not {r["topic"] for r in refs} & set(reviews.HELDOUT_TOPICS)
    assert all(20 < len(r["review"].split()) < 60 for r in refs)
    assert reviews.FLUENCY_FLOOR == round(reviews.FLUENCY_FLOOR, 2)


@pytest.mark.slow
def test_the_fluency_floor_is_the_10th_percentile_of_gemma_on_the_reference_reviews():
    from w2s import defaults
    from w2s.models import ModelSpec, load

    if not (defaults.cache_dir() / "gemma-3-270m").exists():
        pytest.skip("needs Gemma-3-270M: `w2s setup gemma-3-270m`")
    fluency = reviews.Fluency(load(ModelSpec("gemma-3-270m")).model)
    assert reviews.reference_floor(fluency) == reviews.FLUENCY_FLOOR


def test_fluency_is_the_mean_log_likelihood_per_response_token(strong):
    fluency = reviews.Fluency(strong)
    instructions, responses = ["Write a short review of a cat."] * 2, [" The cat sat.", " What a day"]
    scorer = strong.response_logprobs("{prompt}", incremental=False)
    contexts = [reviews.FLUENCY_CONTEXT.format(instruction=i) for i in instructions]
    sums = scorer(contexts, responses, [False, False])
    expected = [s / len(strong.encode(r)) for s, r in zip(sums, responses)]
    assert fluency(instructions, responses) == pytest.approx(expected)
    assert all(math.isfinite(f) and f < 0 for f in expected)


def models(model_dirs):
    load = lambda role: w2s.load_model(model_dirs[role])  # noqa: E731
    return load("strong"), load("tuned"), load("untuned"), load("shared_untuned")


def test_evaluation_writes_every_run_resumes_and_scores_against_the_fixed_gold(model_dirs, tmp_path):
    strong, tuned, untuned, judge = models(model_dirs)
    kw = dict(seeds=(0, 1), max_new_tokens=6, methods=("bon-4", "cbs-2x2", "tuned-alone", "untuned-alone",
                                                       "pruned-bon-16", "adaptive-4x4"), batch_size=2, progress=False)
    instructions = reviews.review_instructions(["a cat", "a dog", "the park"])
    rows = evaluate_reviews(tmp_path, strong, tuned, untuned, judge, instructions, **kw)
    assert [r["method"] for r in rows] == ["base", "bon-4", "cbs-2x2", "tuned-alone", "untuned-alone", "pruned-bon-16",
                                           "adaptive-4x4"]
    base = [json.loads(line) for s in (0, 1) for line in (tmp_path / "raw" / "base" / f"seed{s}.jsonl").open()]
    raw = [json.loads(line) for line in (tmp_path / "raw" / "bon-4" / "seed0.jsonl").open()]
    assert [r["prompt"] for r in raw] == instructions and all({"vader", "fluency", "num_tokens"} <= set(r) for r in raw)
    for row in rows:
        assert row["prompts"] == 3 and row["seeds"] == 2 and 0 <= row["non_answers"] <= row["answers"] == 6
        assert row["note"] == ("trained on the old gold's VADER+fluency reward" if row["method"] == "tuned-alone" else "")
    by_name = {r["method"]: r for r in rows}
    seed_means = [sum(reviews.gold_of(r) for r in chunk) / 3 for chunk in (base[:3], base[3:])]
    assert by_name["base"]["combined_mean"] == pytest.approx(sum(seed_means) / 2)
    with open(tmp_path / "summary.csv") as f:
        assert [r["method"] for r in csv.DictReader(f)] == list(by_name)
    md = (tmp_path / "summary.md").read_text()
    assert "combined gold [95% CI]" in md and "| tuned-alone † |" in md and (tmp_path / "gold_vs_compute.png").exists()
    assert "| cbs-2x2 − bon-4 | combined gold |" in (tmp_path / "comparisons.md").read_text()
    from w2s.evaluation.reviews import rewrite_from_raw
    assert rewrite_from_raw(tmp_path) == rows  # the same table from the raw files alone
    # resumable: a torn file is completed with the same lines; other settings are refused
    path = tmp_path / "raw" / "cbs-2x2" / "seed1.jsonl"
    full = path.read_text()
    path.write_text(full.splitlines(keepends=True)[0])
    evaluate_reviews(tmp_path, strong, tuned, untuned, judge, instructions, **kw)
    assert [json.loads(line)["response"] for line in path.read_text().splitlines()] == \
        [json.loads(line)["response"] for line in full.splitlines()]
    with pytest.raises(ValueError, match="different max_new_tokens"):
        evaluate_reviews(tmp_path, strong, tuned, untuned, judge, instructions, **{**kw, "max_new_tokens": 7})


def test_eval_reviews_command(model_dirs, tmp_path, capsys):
    topics = tmp_path / "topics.txt"
    topics.write_text("a cat\na bird\na dog\na fish\n")
    status = main(["eval", "reviews", "--strong", model_dirs["strong"], "--tuned", model_dirs["tuned"], "--untuned",
                   model_dirs["untuned"], "--fluency", model_dirs["shared_untuned"], "--topics", str(topics),
                   "--prompts", "2", "--out", str(tmp_path / "out"), "--seeds", "0", "--max-new-tokens", "4",
                   "--methods", "bon-4"])
    assert status == 0
    table = capsys.readouterr().out
    assert "| base | 1 |" in table and "| bon-4 | 4 |" in table
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["instructions"] == ["Write a short review of a cat.", "Write a short review of a dog."]
    assert config["strong_template"] == config["tuned_template"] == "chat"
    assert main(["eval", "reviews", "--topics", str(topics), "--prompts", "5", "--out", str(tmp_path / "o2")]) == 2
    assert "prompts must be at most 4 (the topics), got 5" in capsys.readouterr().err


def test_chat_dpo_with_lora_trains_an_adapter_that_prefers_the_chosen_answers(model_dirs, strong, tmp_path):
    def reward(prompts, texts):
        return [float(t.count("a")) for t in texts]

    prompts = reviews.training_instructions(["a cat", "a dog"])
    pairs = build_preference_pairs(strong, prompts, reward, tmp_path / "pairs.jsonl", template="chat", samples=3,
                                   max_new_tokens=6, batch_size=4, progress=False)
    assert pairs and all(p["prompt"] in prompts for p in pairs)
    fixed = [{"prompt": p, "chosen": " happy and wonderful", "rejected": " cold and terrible"} for p in prompts] * 4
    config = DPOTrainingConfig(epochs=2, learning_rate=2e-2, batch_size=4, max_length=64, save_steps=100, lora_rank=4,
                               chat=True)
    out = train_dpo(model_dirs["strong"], fixed, tmp_path / "tuned", config, progress=False)
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    tuned = w2s.load_model(out)  # merged into its base
    ratio = w2s.LogRatioScorer(tuned, strong, "chat", "chat")
    chosen, rejected = ratio.score(prompts[0], [" happy and wonderful", " cold and terrible"], [True, True])
    assert chosen > rejected
    assert any(not torch.equal(a, b) for a, b in zip(tuned.model.state_dict().values(),
                                                     strong.model.state_dict().values()))
