"""The Stream Aligner demo task (positive rewrite) and ``w2s eval stream`` on tiny random models."""

import csv
import json

import pytest

from w2s.evaluation.stream import STREAM_SYSTEMS, evaluate_stream
from w2s.tasks import positive

QUESTIONS = ["What are the dangers of cats?", "Why is hiking so annoying?"]


def test_teacher_swaps_negative_words_for_antonyms_and_nothing_else():
    assert positive.rewrite("I hate the dangerous, Terrible traffic!") == "I love the safe, Terrible traffic!"
    assert positive.rewrite("It failed badly; they hated it. BAD") == "It succeeded well; they loved it. GOOD"
    assert positive.teacher("q", "prefix", "A neutral sentence.") == "A neutral sentence."
    assert positive.vader(positive.rewrite("The dangerous, difficult road.")) > positive.vader(
        "The dangerous, difficult road.")


def test_overlap_is_word_f1():
    assert positive.overlap("a b c d", "a b c d") == 1.0
    assert positive.overlap("a b c d", "") == 0.0 and positive.overlap("", "") == 1.0
    assert positive.overlap("a b c d", "a b") == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_inversions_flag_antonyms_and_negations_and_beyond_teacher_keeps_what_the_teacher_would_not_do():
    """Issue 26 item 5: "fear of being misunderstood" -> "fearlessness of being understood" inverts twice, and
    only the second swap is not the teacher's."""
    original, corrected = "I fear being misunderstood.", "I fearlessness being understood."
    assert positive.inversions(original, corrected) == ["fear -> fearlessness", "misunderstood -> understood"]
    assert positive.beyond_teacher(original, corrected) == ["misunderstood -> understood"]
    assert positive.inversions("It is safe.", "It is not safe.") == ["+not"]
    assert positive.inversions("They don't care.", "They do care.") == ["don't -> do"]
    assert positive.inversions("Those who don't have time", "Those who can't make time") == []  # still negated
    assert positive.inversions("It is hopeless.", "It is hopeful.") == ["hopeless -> hopeful"]
    assert positive.inversions("Good. It is not easy to say why.", "Good.") == []  # a passage left out
    assert positive.inversions("The plan failed.", "The plan was a bold one.") == []  # rewritten, not inverted
    assert positive.beyond_teacher("It is dangerous.", positive.rewrite("It is dangerous.")) == []
    assert positive.beyond_teacher("It is not dangerous.", "It is safe.") == ["-not"]


def test_question_splits_share_no_topic():
    train, heldout = positive.questions("train"), positive.questions("heldout")
    assert len(train) == 360 and len(heldout) == 120 and not set(train) & set(heldout)
    assert not any(topic in q for topic in positive.HELDOUT_TOPICS for q in train)
    with pytest.raises(ValueError, match="split"):
        positive.questions("test")


def raw(out, method, seed=0):
    return [json.loads(line) for line in (out / "raw" / method / f"seed{seed}.jsonl").read_text().splitlines()]


@pytest.fixture
def models(strong, model_dirs):
    import w2s

    aligner = w2s.load_model(model_dirs["shared_tuned"])
    return dict(upstream=strong, stream_aligner=aligner, whole_aligner=aligner)


SETTINGS = dict(upstream_template="{prompt}", aligner_template="{prompt}", max_sentences=2, max_sentence_tokens=4,
                progress=False)


def test_tiny_run_writes_gold_metrics_latency_table_and_plot(models, tmp_path):
    rows = evaluate_stream(tmp_path, **models, questions=QUESTIONS, **SETTINGS)
    assert [r["method"] for r in rows] == list(STREAM_SYSTEMS)
    with open(tmp_path / "summary.csv", newline="") as f:
        assert [r["method"] for r in csv.DictReader(f)] == list(STREAM_SYSTEMS)
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("| method | VADER [95% CI] | seed sd |") and "| Stream Aligner |" in md and "teacher (reference)" in md
    assert (tmp_path / "quality_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in STREAM_SYSTEMS:
        records = raw(tmp_path, name)
        assert [r["question"] for r in records] == QUESTIONS
        for r in records:
            assert r["vader"] == positive.vader(r["corrected"])
            assert r["content_f1"] == positive.overlap(r["original"], r["corrected"])
            assert 0 < r["first_seconds"] <= r["total_seconds"]
    # the upstream alone changes nothing; the teacher's output is its rewrite; speculation changes no answer
    assert all(r["original"] == r["corrected"] and r["changed"] == 0 for r in raw(tmp_path, "upstream"))
    assert all(r["corrected"] == positive.rewrite(r["original"]) for r in raw(tmp_path, "teacher"))
    same = ("original", "corrected")
    assert [[r[k] for k in same] for r in raw(tmp_path, "stream-aligner-speculative")] == \
        [[r[k] for k in same] for r in raw(tmp_path, "stream-aligner")]
    by = {r["method"]: r for r in rows}
    assert by["upstream"]["content_f1_mean"] == 1.0 and by["upstream"]["drafts_kept"] is None
    assert by["upstream"]["truncated"] is None and 0 <= by["aligner"]["looping"] <= 1
    assert by["teacher"]["vader_low"] <= by["teacher"]["vader_mean"] <= by["teacher"]["vader_high"]
    assert by["upstream"]["inverted"] == 0 and by["teacher"]["inverted_beyond_teacher"] == 0
    assert by["teacher"]["inverted"] == sum(bool(positive.inversions(r["original"], r["corrected"]))
                                            for r in raw(tmp_path, "teacher")) / len(QUESTIONS)
    assert "| inverted | beyond teacher |" in md
    comparisons = (tmp_path / "comparisons.md").read_text()
    assert "| stream-aligner − stream-aligner (its upstream answer) | VADER |" in comparisons
    from w2s.evaluation.stream import rewrite_from_raw
    assert rewrite_from_raw(tmp_path) == rows
    assert 0 <= by["stream-aligner-speculative"]["drafts_kept"] <= 1


def test_rerun_resumes_and_refuses_other_settings(models, tmp_path):
    evaluate_stream(tmp_path, **models, questions=QUESTIONS, methods=["upstream", "teacher"], **SETTINGS)
    path = tmp_path / "raw" / "teacher" / "seed0.jsonl"
    whole = path.read_text()
    path.write_text(whole.splitlines(keepends=True)[0] + '{"question": "torn')  # a run killed mid-write
    evaluate_stream(tmp_path, **models, questions=QUESTIONS, methods=["upstream", "teacher"], **SETTINGS)
    assert [r["question"] for r in raw(tmp_path, "teacher")] == QUESTIONS
    assert [r["corrected"] for r in raw(tmp_path, "teacher")] == [json.loads(x)["corrected"]
                                                                  for x in whole.splitlines()]
    with pytest.raises(ValueError, match="max_sentences"):
        evaluate_stream(tmp_path, **models, questions=QUESTIONS, methods=["upstream"],
                        **{**SETTINGS, "max_sentences": 3})
    with pytest.raises(ValueError, match="methods must be among"):
        evaluate_stream(tmp_path, **models, questions=QUESTIONS, methods=["nope"], **SETTINGS)
