"""The Stream Aligner demo task: make a model's answers positive without changing what they say.

The upstream (SmolLM2-135M-Instruct) answers questions that invite negative answers ("What are the
dangers of airports?").  The *teacher* that builds the aligner's training data rewrites a sentence
word by word: a word VADER's lexicon rates negative becomes its WordNet antonym when VADER rates that
one positive ("dangerous" -> "safe", "hate" -> "love"); nothing else changes.  The aligner learns
this from (question, corrected prefix, sentence) -> correction records of the upstream's own answers.

Gold metrics, computed on the whole answer:
- ``vader``: VADER's compound sentiment in [-1, 1] (higher is more positive);
- ``overlap``: word-level F1 between the answer and the upstream's original answer (1 = same words;
  an aligner that writes something else entirely, or nothing, scores low).
Neither is optimized directly: the aligner only imitates the teacher's word substitutions, and the
teacher never looks at the compound score of a sentence.

Questions are templates x topics; the held-out topics never appear in training questions.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from difflib import SequenceMatcher
from functools import lru_cache
from importlib import resources

TEMPLATES = (
    "What are the worst things about {topic}?",
    "Why do some people hate {topic}?",
    "What are the dangers of {topic}?",
    "What problems can {topic} cause?",
    "Why is {topic} so annoying?",
    "Describe a bad experience with {topic}.",
    "What makes {topic} difficult?",
    "Why might someone be afraid of {topic}?",
)
TRAIN_TOPICS = (
    "winter", "traffic", "homework", "rainy weather", "public transport", "social media", "fast food",
    "online shopping", "city life", "camping", "exams", "airports", "smartphones", "video games",
    "working from home", "loud neighbours", "long meetings", "spiders", "the dentist", "hospitals", "taxes",
    "Mondays", "crowded beaches", "noise", "pollution", "the internet", "school", "cooking", "gardening",
    "running", "dogs", "snow", "heat waves", "flying", "trains", "waiting in line", "television",
    "advertising", "email", "passwords", "printers", "shopping malls", "the news", "politics", "moving house",
)
HELDOUT_TOPICS = (
    "cats", "hiking", "job interviews", "public speaking", "online dating", "mosquitoes", "the gym",
    "family holidays", "tax forms", "self-driving cars", "night shifts", "group projects", "road trips",
    "hotel rooms", "customer service",
)
WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")


def questions(split: str) -> list[str]:
    """``"train"`` (360 questions) or ``"heldout"`` (120, on topics no training question mentions)."""
    topics = {"train": TRAIN_TOPICS, "heldout": HELDOUT_TOPICS}.get(split)
    if topics is None:
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}.")
    return [t.format(topic=topic) for topic in topics for t in TEMPLATES]


@lru_cache(maxsize=1)
def antonyms() -> dict[str, str]:
    """Negative word -> positive antonym (WordNet 3.0 pointers filtered by VADER; scripts/build_antonyms.py)."""
    path = resources.files("w2s.tasks") / "data" / "antonyms.json"
    return json.loads(path.read_text(encoding="utf-8"))["antonyms"]


def _positive(word: str) -> str | None:
    table = antonyms()
    lower = word.lower()
    if lower in table:
        return table[lower]
    for suffix in ("s", "es", "d", "ed", "ing", "ly"):  # simple inflections of a listed word
        base = lower[: -len(suffix)]
        if lower.endswith(suffix) and base in table:
            antonym = table[base]
            if suffix in ("ed", "ing") and antonym.endswith("e"):
                antonym = antonym[:-1]
            if suffix == "s" and antonym.endswith("y") and antonym[-2:-1] not in "aeiou":
                return antonym[:-1] + "ies"
            return antonym + suffix
    return None


def _same_case(word: str, replacement: str) -> str:
    if word.isupper() and len(word) > 1:
        return replacement.upper()
    if word[0].isupper():
        return replacement[0].upper() + replacement[1:]
    return replacement


def rewrite(text: str) -> str:
    """The teacher's rewrite: negative words -> positive antonyms, everything else unchanged."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        replacement = _positive(word)
        return word if replacement is None else _same_case(word, replacement)

    return WORD.sub(swap, text)


def teacher(question: str, prefix: str, sentence: str) -> str:
    """The Stream Aligner teacher (``w2s data corrections --teacher py:w2s.tasks.positive:teacher``)."""
    return rewrite(sentence)


def whole_teacher(question: str, answer: str) -> str:
    """The same rewrite for a whole answer (the Aligner baseline's function form)."""
    return rewrite(answer)


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader(text: str) -> float:
    """VADER compound sentiment of ``text`` in [-1, 1]; 0 for an empty text."""
    return _vader().polarity_scores(text)["compound"] if text.strip() else 0.0


def overlap(original: str, corrected: str) -> float:
    """Word-level F1 (bag of lower-cased words) between ``corrected`` and ``original``; 1 when both are empty."""
    a = Counter(w.lower() for w in WORD.findall(original))
    b = Counter(w.lower() for w in WORD.findall(corrected))
    if not a and not b:
        return 1.0
    common = sum((a & b).values())
    if not common:
        return 0.0
    precision, recall = common / sum(b.values()), common / sum(a.values())
    return 2 * precision * recall / (precision + recall)


NEGATIONS = frozenset({"not", "no", "never", "nor", "without", "none", "nothing", "cannot"})
NEGATING_PREFIXES = ("un", "in", "im", "ir", "il", "dis", "mis", "non")


def _opposite(a: str, b: str) -> bool:
    """Whether lower-cased words ``a`` and ``b`` are antonyms: by the teacher's table (either way, simple
    inflections included), by a negating prefix (``misunderstood``/``understood``), by ``-less``/``-ful``, or
    as a negated contraction and its verb (``don't``/``do``)."""
    if _positive(a) == b or _positive(b) == a:
        return True
    for x, y in ((a, b), (b, a)):
        if any(x == p + y for p in NEGATING_PREFIXES) or (x.endswith("less") and y == x[:-4] + "ful"):
            return True
        if x.endswith("n't") and y in (x[:-3], {"won't": "will", "can't": "can", "shan't": "shall"}.get(x)):
            return True
    return False


def inversions(original: str, corrected: str) -> list[str]:
    """The changes by which ``corrected`` says the opposite of ``original``, word for word: a word replaced
    by its antonym (:func:`_opposite`), or a negation (:data:`NEGATIONS`, ``n't``) added or removed where
    words were replaced (one negation for another, ``don't`` for ``can't``, is none) or where at most two
    words came or went (a passage left out is not an inversion).  Each is ``"a -> b"`` (``"+not"`` /
    ``"-not"`` for a negation added or removed)."""
    a = [w.lower() for w in WORD.findall(original)]
    b = [w.lower() for w in WORD.findall(corrected)]
    found = []
    for op, i1, i2, j1, j2 in SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        old, new = a[i1:i2], b[j1:j2]
        if len(old) == len(new):
            pairs = [(x, y) for x, y in zip(old, new) if _opposite(x, y)]
            found += [f"{x} -> {y}" for x, y in pairs]
            paired = {x for x, _ in pairs} | {y for _, y in pairs}
            old, new = [w for w in old if w not in paired], [w for w in new if w not in paired]
        if op == "replace" or len(old) + len(new) <= 2:  # not a passage left out or added
            gone, came = [w for w in old if _negation(w)], [w for w in new if _negation(w)]
            found += [f"-{w}" for w in gone[len(came):]] + [f"+{w}" for w in came[len(gone):]]
    return found


def _negation(word: str) -> bool:
    return word in NEGATIONS or word.endswith("n't")


def beyond_teacher(original: str, corrected: str) -> list[str]:
    """:func:`inversions` of ``corrected`` that the teacher's rewrite of ``original`` does not make (the
    task's own swaps, ``dangerous -> safe``, are what the teacher asks for; these are not)."""
    allowed = Counter(inversions(original, rewrite(original)))
    out = []
    for change in inversions(original, corrected):
        if allowed[change]:
            allowed[change] -= 1
        else:
            out.append(change)
    return out


def whole_answer_records(sentence_records: list[dict]) -> list[dict]:
    """Aligner (whole-answer) records from the sentence records of the same answers: the answer is the
    upstream's sentences, the correction the teacher's corrections, joined."""
    answers: dict[int, dict] = {}
    for r in sentence_records:
        a = answers.setdefault(r["question_index"], {"question": r["question"], "answer": [], "correction": []})
        a["answer"].append(r["sentence"])
        a["correction"].append(r["correction"])
    return [{"question_index": i, "question": a["question"], "answer": " ".join(a["answer"]),
             "correction": " ".join(a["correction"])} for i, a in sorted(answers.items())]


def austen_records(n: int, seed: int = 0, max_prefix_sentences: int = 1, whole: bool = False) -> list[dict]:
    """Extra records on Austen's training novels, half of them with a word for the teacher to change: more
    examples of copying text with a few words swapped than the upstream's answers give.  The question is a
    random training question.  Sentence records: the prefix is the teacher's rewrite of up to
    ``max_prefix_sentences`` sentences before.  With ``whole``, Aligner records whose answer is 2-4
    consecutive sentences."""
    import random

    from .sentiment import split_plain_sentences, training_texts

    rng = random.Random(seed)
    train_questions = questions("train")
    changing, unchanged = [], []
    for paragraph in training_texts():
        sentences = [s for s in split_plain_sentences(paragraph) if 4 <= len(s.split()) <= 20]
        for k, sentence in enumerate(sentences):
            question = rng.choice(train_questions)
            if whole:
                answer = " ".join(sentences[k : k + rng.randint(2, 4)])
                record = {"question": question, "answer": answer, "correction": rewrite(answer)}
                changed = record["correction"] != answer
            else:
                prefix = " ".join(rewrite(s) for s in sentences[max(0, k - rng.randint(0, max_prefix_sentences)):k])
                record = {"question": question, "prefix": prefix, "sentence": sentence, "correction": rewrite(sentence)}
                changed = record["correction"] != sentence
            (changing if changed else unchanged).append(record)
    rng.shuffle(changing)
    rng.shuffle(unchanged)
    out = changing[: n // 2] + unchanged[: n - min(n // 2, len(changing))]
    rng.shuffle(out)
    return out


def _main(argv: list[str] | None = None) -> None:
    """``python -m w2s.tasks.positive questions SPLIT OUT`` | ``records CORRECTIONS... OUT_DIR`` |
    ``ship TRAINED TARGET``: the data and shipping steps of ``make aligners``."""
    import argparse

    from ..jsonl import dumps, read_complete

    p = argparse.ArgumentParser(prog="python -m w2s.tasks.positive")
    sub = p.add_subparsers(dest="step", required=True)
    q = sub.add_parser("questions", help="write a split's questions as JSONL")
    q.add_argument("split", choices=["train", "heldout"])
    q.add_argument("out")
    r = sub.add_parser("records", help="aligner training records from `w2s data corrections` output")
    r.add_argument("corrections", nargs="+", help="sentence records (JSONL)")
    r.add_argument("out_dir")
    r.add_argument("--austen", type=int, default=800, help="extra sentence records from Austen's novels")
    r.add_argument("--austen-whole", type=int, default=264, help="extra whole-answer records from Austen's novels")
    c = sub.add_parser("ship", help="copy a trained adapter into the package, its base the default strong model")
    c.add_argument("trained")
    c.add_argument("target")
    args = p.parse_args(argv)
    if args.step == "ship":
        from ..backends.adapters import ship_adapter

        ship_adapter(args.trained, args.target)
        return
    if args.step == "questions":
        with open(args.out, "w", encoding="utf-8") as f:
            f.writelines(dumps({"question": x}) for x in questions(args.split))
        return
    from pathlib import Path

    upstream = []
    for path in args.corrections:  # files of several runs: question indices are made distinct
        offset = 1 + max((x["question_index"] for x in upstream), default=-1)
        # the teacher is applied again: records stay those of the shipped teacher if its table changed
        upstream += [{**x, "question_index": x["question_index"] + offset, "prefix": rewrite(x["prefix"]),
                      "correction": rewrite(x["sentence"])} for x in read_complete(Path(path))]
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stream = upstream + austen_records(args.austen)
    whole = whole_answer_records(upstream) + austen_records(args.austen_whole, whole=True)
    (out / "stream.jsonl").write_text("".join(map(dumps, stream)), encoding="utf-8")
    (out / "whole.jsonl").write_text("".join(map(dumps, whole)), encoding="utf-8")
    print(f"{len(stream)} sentence records, {len(whole)} whole-answer records in {out}")


if __name__ == "__main__":
    _main()
