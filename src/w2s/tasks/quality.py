"""Quality rules shared by every evaluation: looping text, lexical variety, answers cut at the token cap,
and (for instruction tasks) answers that do not do the task.

One rule set, so that a "looping" answer means the same thing in every table:

- **Words**: an answer's words are its lower-cased, whitespace-separated tokens (:func:`words`;
  punctuation stays attached: "happy." and "happy" differ).  This is the tokenisation that reproduces the
  loop shares quoted in issue 23 on ``results/sentiment`` (lower-casing merges "The" and "the"; splitting
  on ``\\w+`` instead counts more answers as looping, since stripping punctuation makes more trigrams equal).
- **Repeated trigrams** (:func:`repeated_share`): ``1 - distinct / total`` over the answer's word
  trigrams, 0 when it has fewer than 3 words.  An answer **loops** when that share exceeds
  :data:`LOOP_THRESHOLD` (0.3).
- **Distinct-2** (:func:`distinct`): distinct word bigrams / total word bigrams of one answer, None when
  it has fewer than 2 words.  A table's distinct-2 is the mean of the per-answer values over the answers
  that have one (not the pooled ratio over all answers, which would fall with the number of answers).
- **Padded** (:func:`padded`): the answer holds a run of at least :data:`PAD_RUN` (8) spaces or tabs.  A
  repetition penalty pushes some answers from repeated words into whitespace padding ("I'm the Liar!"
  indented by 14 spaces, "(Laughs)" by 32), which the trigram rule cannot see: whitespace is no word.
- **Truncated** (:func:`truncated`): the answer did not finish by itself and used the whole token budget
  (``not finished and num_tokens >= max_new_tokens``).
- **Non-answers** (:func:`non_answer`): a refusal, an AI disclaimer or a question back instead of the
  requested text; the kind, or None.  The patterns were read off the committed reviews answers
  (``results/reviews/*/raw``); they look at the answer's opening for apologies (so "I'm sorry to say the
  soup was cold" is a review) and anywhere for assistant phrases no review contains.
"""

from __future__ import annotations

import re
import statistics
from typing import Iterable, Sequence

LOOP_THRESHOLD = 0.3  # an answer loops when more than this share of its word trigrams are repeats
PAD_RUN = 8  # an answer is padded when it holds this many spaces or tabs in a row
NON_ANSWER_KINDS = ("refusal", "disclaimer", "question")
_PADDING = re.compile(rf"[ \t]{{{PAD_RUN},}}")


def words(text: str) -> list[str]:
    """The words the rules count: lower-cased whitespace-separated tokens."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__} ({text!r:.60}).")
    return text.lower().split()


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer of at least 1, got {n!r}.")


def repeated_share(text: str, n: int = 3) -> float:
    """``1 - distinct / total`` over the word ``n``-grams of ``text``: 0 for no repeats (or fewer than ``n``
    words), near 1 for a phrase said over and over."""
    _check_n(n)
    grams = _ngrams(words(text), n)
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0  # repeats / total: 3/10 is 0.3 exactly


def loops(text: str, threshold: float = LOOP_THRESHOLD) -> bool:
    """Whether more than ``threshold`` of the answer's word trigrams are repeats."""
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold < 1:
        raise ValueError(f"threshold must be a number in [0, 1), got {threshold!r}.")
    return repeated_share(text, 3) > threshold


def distinct(text: str, n: int = 2) -> float | None:
    """Distinct word ``n``-grams / total word ``n``-grams of one answer; None below ``n`` words."""
    _check_n(n)
    grams = _ngrams(words(text), n)
    return len(set(grams)) / len(grams) if grams else None


def padded(text: str) -> bool:
    """Whether the answer holds a run of at least :data:`PAD_RUN` spaces or tabs (newlines not counted)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__} ({text!r:.60}).")
    return _PADDING.search(text) is not None


def truncated(record: dict, max_new_tokens: int) -> bool:
    """Whether a raw record's answer stopped at the token cap: not finished, ``num_tokens >= max_new_tokens``."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer of at least 1, got {max_new_tokens!r}.")
    missing = [k for k in ("finished", "num_tokens") if k not in record]
    if missing:
        raise ValueError(f"record must have 'finished' and 'num_tokens' to tell truncation, it lacks {missing} "
                         f"(keys: {sorted(record)}).")
    return not record["finished"] and record["num_tokens"] >= max_new_tokens


# --- non-answers -------------------------------------------------------------------------------------------
_I = r"(?:i'm|i am|i’m)"
_CANT = (r"(?:can't|can’t|cannot|can not|am unable to|am not able to|'m unable to|'m not able to|’m unable to"
         r"|’m not able to)")
# the answer's opening (after quotes and spaces): an apology that declines, not one inside a review
_REFUSAL_OPENING = re.compile(
    rf"^(?:{_I} (?:really |so |very )?sorry|sorry)\s*[,.!]?\s*(?:but\b|as an?\b|i\b|i'm\b|i’m\b)"
    rf"|^i (?:sincerely )?apologi[sz]e\b"
    rf"|^unfortunately,? (?:as an? [\w ]+?, )?i {_CANT}"
    rf"|^(?:as an? [\w ]+?, )?i {_CANT} (?:write|provide|create|give|offer|review|assist|help|do that|fulfil)",
    re.IGNORECASE)
# anywhere: what an assistant declining says, never a reviewer
_REFUSAL_ANYWHERE = re.compile(rf"\bi {_CANT} (?:assist|help) with (?:that|this|your request)"
                               rf"|\b{_I} not (?:able|capable|allowed) (?:to|of) (?:assist|writ|help|provid)",
                               re.IGNORECASE)
_DISCLAIMER = re.compile(
    r"\bas an? (?:ai|artificial intelligence|language model|large language model|virtual assistant|ai assistant)\b"
    r"|\bas an? (?:ai|artificial intelligence) (?:language )?model\b"
    r"|\bi(?:'m| am|’m) (?:just )?an? (?:ai|artificial intelligence|language model)\b"
    r"|\bi (?:don't|do not|don’t) have (?:any )?"
    r"(?:personal (?:experiences?|opinions?|preferences|feelings|emotions|tastes)"
    r"|the (?:ability|capability|capacity) to|access to (?:real-time|specific|any|personal))",
    re.IGNORECASE)
# a request for what the instruction left open, addressed to the user
_QUESTION = re.compile(
    r"\b(?:could|can|would) you (?:please )?(?:provide|tell|give|share|specify|clarify|let me know|describe)\b"
    r"|\bplease (?:provide|let me know|specify|tell me|share|clarify)\b"
    r"|\bwhich (?:one|\w+(?: \w+)?) (?:would|do) you (?:like|want|mean|have in mind|prefer)\b"
    r"|\bwhat (?:kind|type|sort) of [\w' ]{1,40} do you have in mind\b",
    re.IGNORECASE)


def non_answer(text: str) -> str | None:
    """The kind of non-answer ``text`` is (``"refusal"``, ``"disclaimer"``, ``"question"``: checked in that
    order), or None for an answer that does the task.

    - refusal: opens by declining ("I'm sorry, but ...", "Sorry, but I can't ...", "I apologize ...",
      "Unfortunately, I cannot ...", "I can't write ..."), or says "I can't assist with that" anywhere;
    - disclaimer: "As an AI ...", "As a language model ...", "I'm an AI", "I don't have personal
      experiences/opinions ...", "I don't have the ability to ..." anywhere (also when a review follows:
      the answer speaks as an assistant, not a reviewer);
    - question: asks the user for what the instruction left open ("Could you please provide ...",
      "Please let me know which ...", "Which one would you like ...").
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__} ({text!r:.60}).")
    opening = text.strip().lstrip("\"'“‘*#").strip()
    if _REFUSAL_OPENING.search(opening) or _REFUSAL_ANYWHERE.search(text):
        return "refusal"
    if _DISCLAIMER.search(text):
        return "disclaimer"
    if _QUESTION.search(text):
        return "question"
    return None


# --- per-run summary ---------------------------------------------------------------------------------------
def summarize(texts: Iterable[str], records: Sequence[dict] | None = None, max_new_tokens: int | None = None,
              gate: bool = False) -> dict:
    """The quality columns of one run's answers: ``looping`` (share of answers that loop), ``padded`` (share
    padded with whitespace), ``distinct2``
    (mean per-answer distinct-2), ``truncated`` (share cut at the cap; None without ``records`` and
    ``max_new_tokens``, or when a record lacks the fields), ``answers``, and with ``gate`` ``non_answers``
    (count) and ``non_answer_kinds`` (kind -> count)."""
    texts = list(texts)
    if not texts:
        raise ValueError("texts must not be empty: a run's quality needs at least one answer.")
    d2 = [d for d in map(distinct, texts) if d is not None]
    out = {"answers": len(texts), "looping": sum(map(loops, texts)) / len(texts),
           "padded": sum(map(padded, texts)) / len(texts),
           "distinct2": statistics.fmean(d2) if d2 else None, "truncated": None}
    if records is not None and max_new_tokens is not None:
        if len(records) != len(texts):
            raise ValueError(f"records must match texts one to one, got {len(records)} records for {len(texts)} "
                             "texts.")
        if all("finished" in r and "num_tokens" in r for r in records):
            out["truncated"] = sum(truncated(r, max_new_tokens) for r in records) / len(records)
    if gate:
        kinds = [k for k in map(non_answer, texts) if k]
        out["non_answers"] = len(kinds)
        out["non_answer_kinds"] = {k: kinds.count(k) for k in NON_ANSWER_KINDS if k in kinds}
    return out
