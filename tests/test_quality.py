"""The shared quality rules (w2s.tasks.quality) on real answers from results/."""

import json
import re
from pathlib import Path

import pytest

from w2s.tasks import quality

RESULTS = Path(__file__).resolve().parents[1] / "results"


def answers(path: str) -> list[dict]:
    files = sorted((RESULTS / path).glob("seed*.jsonl"))
    assert files, f"no raw files under results/{path}"
    return [json.loads(line) for f in files for line in f.read_text(encoding="utf-8").splitlines()]


def loop_share(records, tokenise=None) -> float:
    if tokenise is None:
        flags = [quality.loops(r["response"]) for r in records]
    else:  # the same rule over another tokenisation
        def share(text):
            grams = [tuple(w[i : i + 3]) for w in [tokenise(text)] for i in range(len(w) - 2)]
            return 1 - len(set(grams)) / len(grams) if grams else 0.0
        flags = [share(r["response"]) > quality.LOOP_THRESHOLD for r in records]
    return 100 * sum(flags) / len(flags)


# issue 23's figures on results/sentiment (percent of the 360 answers of each run that loop)
ISSUE_LOOPS = {"cbs-4x4": 16, "front-4x4": 22, "cbs-4x4-sentence": 14, "adaptive-4x4": 12, "cbs-2x2": 6, "base": 2}


@pytest.mark.parametrize("run,percent", ISSUE_LOOPS.items())
def test_loop_rule_reproduces_the_issues_figures_on_the_committed_sentiment_answers(run, percent):
    records = answers(f"sentiment/raw/{run}")
    assert len(records) == 360
    assert abs(loop_share(records) - percent) <= 0.5  # quoted as whole percents


def test_the_lowercase_whitespace_split_is_the_tokenisation_that_reproduces_them():
    got = {run: answers(f"sentiment/raw/{run}") for run in ISSUE_LOOPS}
    assert quality.words("The A.P.S. to the") == ["the", "a.p.s.", "to", "the"]
    for other in (str.split, lambda t: re.findall(r"\w+", t.lower())):  # case kept / punctuation stripped
        assert any(abs(loop_share(got[r], other) - p) > 0.5 for r, p in ISSUE_LOOPS.items())


def test_repeated_trigram_share_and_the_loop_threshold_on_real_answers():
    records = {r["response"]: r for r in answers("sentiment/raw/cbs-4x4")}
    looping = next(t for t in records if t.startswith(" example, I'm not sure if you have one"))
    assert quality.repeated_share(looping) > 0.5 and quality.loops(looping)
    # the issue's "A.P.S." answer repeats 5 of its 17 trigrams: just under the threshold
    aps = next(t for t in records if t.startswith(" a member of the A.P.S."))
    assert quality.repeated_share(aps) == pytest.approx(5 / 17) and not quality.loops(aps)
    # hand count: 9 words -> 7 trigrams, 3 distinct: "so happy. i'm" / "happy. i'm so" / "i'm so happy." repeat
    assert quality.repeated_share("I'm so happy. I'm so happy. I'm so happy.") == pytest.approx(4 / 7)
    assert quality.repeated_share("one two") == 0.0 and quality.repeated_share("a b c d") == 0.0
    plain = answers("reviews/qwen1.5b-llamacpp/raw/base")[0]["response"]
    assert not quality.loops(plain) and quality.repeated_share(plain) < 0.1
    # exactly at the threshold is not a loop
    text = "a b c d a b c d a x y z"  # 10 trigrams, 7 distinct: 3 repeats
    assert quality.repeated_share(text) == pytest.approx(0.3) and not quality.loops(text)


def test_distinct_2_per_answer():
    assert quality.distinct("a b a b") == pytest.approx(2 / 3)  # ab, ba, ab
    assert quality.distinct("The cat. the cat.") == pytest.approx(2 / 3)  # lower-cased
    assert quality.distinct("one") is None and quality.distinct("") is None
    s = quality.summarize(["a b a b", "one", "x y z"])
    assert s["distinct2"] == pytest.approx((2 / 3 + 1) / 2)  # the answer without a bigram is left out
    assert s["looping"] == 0 and s["truncated"] is None and s["answers"] == 3


def test_padding_rule_on_real_answers_of_the_repetition_penalised_search():
    """repetition_penalty 1.2 pushes some answers into runs of spaces, which the trigram rule cannot see."""
    records = answers("sentiment/raw/cbs-4x4-norepeat")
    liar = next(r["response"] for r in records if r["response"].startswith("'d be ready to make a joke"))
    assert quality.padded(liar) and not quality.loops(liar)
    assert sum(quality.padded(r["response"]) for r in records) == 16  # of 360; none in the rows without the control
    assert not any(quality.padded(r["response"]) for r in answers("sentiment/raw/cbs-4x4"))
    assert not quality.padded("seven  " + " " * 5 + "spaces\n\n\n\n\n\n\n\n\n") and quality.padded("a\t" + " " * 7 + "b")
    assert quality.summarize(["x" + " " * 8, "y"])["padded"] == 0.5
    with pytest.raises(TypeError, match="text must be a str"):
        quality.padded(None)


def test_truncated_at_the_token_cap_on_real_records():
    base = answers("sentiment/raw/base")  # 50 new tokens
    capped = [r for r in base if quality.truncated(r, 50)]
    assert capped and all(not r["finished"] and r["num_tokens"] == 50 for r in capped)
    assert all(r["finished"] or r["num_tokens"] < 50 for r in base if not quality.truncated(r, 50))
    assert quality.summarize([r["response"] for r in base], base, 50)["truncated"] == len(capped) / len(base)
    with pytest.raises(ValueError, match=r"max_new_tokens must be an integer of at least 1, got 0"):
        quality.truncated(base[0], 0)
    with pytest.raises(ValueError, match=r"lacks \['finished'\]"):
        quality.truncated({"num_tokens": 3}, 5)


def response(run: str, seed: int, index: int, model: str = "qwen1.5b-llamacpp") -> str:
    path = RESULTS / "reviews" / model / "raw" / run / f"seed{seed}.jsonl"
    return json.loads(path.read_text(encoding="utf-8").splitlines()[index])["response"]


@pytest.mark.parametrize("where,kind", [
    (("base", 0, 1), "refusal"),  # "I'm sorry, but as an AI language model, ..."
    (("base", 0, 3), "refusal"),  # "I am sorry, as an AI language model, ..."
    (("bon-4", 0, 3), "refusal"),  # "Unfortunately, I cannot provide a short review ..."
    (("cbs-2x2", 0, 5), "refusal"),  # "I apologize, but as an AI language model, ..."
    (("base", 0, 2), "disclaimer"),  # "As an AI language model, I don't have personal experiences ..."
    (("base", 0, 4), "disclaimer"),  # "As an AI developed by Alibaba Cloud, I am committed to ..."
    (("cbs-2x2", 0, 4), "disclaimer"),  # a disclaimer, then a general review
    (("bon-16", 0, 5), "question"),  # "Sure, I'd be happy to help with that! Could you please provide ...?"
    (("cbs-2x2", 0, 6), "question"),
    (("cbs-4x4", 0, 6), "question"),  # "... Please let me know which road trip you would like me to write about."
])
def test_non_answers_from_the_committed_reviews(where, kind):
    assert quality.non_answer(response(*where)) == kind


@pytest.mark.parametrize("where", [("base", 0, 0), ("base", 0, 6), ("cbs-4x4", 0, 4), ("tuned-alone", 0, 1)])
def test_real_reviews_pass_the_gate(where):
    assert quality.non_answer(response(*where)) is None


def test_real_reviews_of_the_0_5b_pass_and_its_refusals_do_not():
    assert quality.non_answer(response("cbs-4x4", 0, 4, "qwen0.5b")) is None  # "Sure, ... Here's a sample review"
    assert quality.non_answer(response("cbs-2x2", 1, 7, "qwen0.5b")) is None  # "I believe that is an interesting ..."
    assert quality.non_answer(response("cbs-2x2", 1, 0, "qwen0.5b")) == "refusal"  # "Sorry, but I can't assist ..."
    assert quality.non_answer(response("bon-16", 0, 2, "qwen0.5b")) == "refusal"  # sorry ... "What kind of ...?"


def test_text_that_says_sorry_inside_a_story_is_not_a_refusal():
    """Real generations from results/sentiment in which someone apologises, and reviews that regret."""
    texts = [r["response"] for r in answers("sentiment/raw/base") + answers("sentiment/raw/cbs-4x4")]
    sorry = [t for t in texts if "sorry" in t.lower() and "as an ai" not in t.lower() and "i'm an ai" not in t.lower()]
    assert sorry
    inside = [t for t in sorry if not t.strip().lower().startswith(("i'm sorry", "sorry"))]
    assert inside and [quality.non_answer(t) for t in inside] == [None] * len(inside)
    assert quality.non_answer("I'm sorry to say the soup was cold and the waiter was rude.") is None
    assert quality.non_answer("I can't recommend this café enough! What are you waiting for?") is None


@pytest.mark.parametrize("run,count", [("base", 5), ("cbs-2x2", 5), ("cbs-4x4", 4)])
def test_the_issues_non_answer_counts_on_the_1_5b_run(run, count):
    records = answers(f"reviews/qwen1.5b-llamacpp/raw/{run}")
    assert len(records) == 8
    assert quality.summarize([r["response"] for r in records], gate=True)["non_answers"] == count


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="text must be a str, got NoneType"):
        quality.non_answer(None)
    with pytest.raises(ValueError, match="n must be an integer of at least 1, got 0"):
        quality.distinct("a b", n=0)
    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\), got 1.5"):
        quality.loops("a b c", threshold=1.5)
    with pytest.raises(ValueError, match="texts must not be empty"):
        quality.summarize([])
    with pytest.raises(ValueError, match="records must match texts one to one, got 1 records for 2 texts"):
        quality.summarize(["a", "b"], [{"finished": True, "num_tokens": 1}], 5)
