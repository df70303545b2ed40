"""The controlled-sentiment task of Zhou et al. 2024 (arXiv 2405.19262, Sec. 5.1), rebuilt offline.

The paper continues IMDB review openings and scores them with a sentiment classifier as the gold
reward; its guide pair is gpt2 fine-tuned on IMDB (untuned) and a DPO-tuned copy trained on preference
pairs labelled by that classifier with a Bradley–Terry model.  Here, with nothing from a model hub:

- corpus: Jane Austen's novels (public domain, extracted from Debian's ``r-cran-janeaustenr``), five
  for training, *Persuasion* held out; prompts are the opening words of held-out sentences;
- gold reward: VADER's compound sentiment score of the continuation, in [-1, 1];
- guides: a small LM trained from scratch on the five novels (untuned) and its DPO-tuned copy on pairs
  of its own continuations, the preferred one drawn from Bradley–Terry on VADER.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from functools import lru_cache
from importlib import resources

HELDOUT_BOOK = "Persuasion"


@lru_cache(maxsize=1)
def austen() -> tuple[tuple[str, str], ...]:
    """``(book, paragraph)`` pairs of the six novels."""
    path = resources.files("w2s.tasks") / "data" / "austen.jsonl.gz"
    with gzip.open(path.open("rb"), "rt", encoding="utf-8") as f:
        return tuple((r["book"], r["text"]) for r in map(json.loads, f))


def split_plain_sentences(paragraph: str) -> list[str]:
    """A paragraph of the novels cut after ``.``, ``!`` or ``?`` and whitespace: the simple split the task
    data was built with (unlike :func:`w2s.split_sentences`, it keeps no whitespace and knows no
    abbreviations)."""
    return re.split(r"(?<=[.!?])\s+", paragraph)


def training_texts() -> list[str]:
    """Paragraphs of the five training novels (never *Persuasion*)."""
    return [text for book, text in austen() if book != HELDOUT_BOOK]


def _sentence_openings(book_filter, n: int, seed: int, min_words: int = 4, max_words: int = 8) -> list[str]:
    rng = random.Random(seed)
    sentences = []
    for book, text in austen():
        if book_filter(book):
            sentences += [s for s in split_plain_sentences(text) if len(s.split()) >= 12 and s[0].isupper()]
    rng.shuffle(sentences)
    if len(sentences) < n:
        raise ValueError(f"n must be at most {len(sentences)} (sentences available), got {n}.")
    return [" ".join(s.split()[: rng.randint(min_words, max_words)]) for s in sentences[:n]]


def heldout_prompts(n: int = 120, seed: int = 0) -> list[str]:
    """Opening words (4-8) of sentences from *Persuasion*, which no model here trained on."""
    return _sentence_openings(lambda b: b == HELDOUT_BOOK, n, seed)


def training_prompts(n: int = 3000, seed: int = 0) -> list[str]:
    """Opening words of training-novel sentences: the prompts of the DPO preference pairs."""
    return _sentence_openings(lambda b: b != HELDOUT_BOOK, n, seed)


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def gold_reward(response: str) -> float:
    """VADER compound score of the response alone, in [-1, 1]."""
    return _vader().polarity_scores(response)["compound"]
