"""Sentence segmentation for the Stream Aligner, offline and while the text is still being generated.

``split_sentences(text)`` cuts a whole text; ``first_sentence_end(prefix)`` says whether a growing prefix
already holds a complete first sentence and where it ends. Segments lose and add nothing:
``"".join(split_sentences(t)) == t``. Whitespace after a sentence belongs to that sentence, so every
segment but the first starts with a non-space character.

Where a sentence may end (outside protected spans, see below):

- after a run of ``. ! ? …`` plus closing quotes/brackets/emphasis (``" ' ” ’ ) ] } » * _``) plus
  whitespace, when the next character can start a sentence (anything but a lowercase letter or
  ``, ; : ) ] } %``) or the whitespace holds a newline. So ``"Why?" she asked`` and ``Well... maybe``
  do not split, ``Wait... Then`` does; ``3.14``, ``e.g.,``, ``example.com`` never do (no whitespace).
- a lone ``.`` does not end a sentence after a title or Latin abbreviation (Dr. Mr. Mrs. Ms. Prof. St.
  vs. cf. e.g. i.e. ...), after a single capital initial other than "I" (``J. R. R. Tolkien``), after
  Fig./No./Eq./p./... when a digit follows (``Fig. 3``; but ``No. I disagree.`` splits), nor as a list
  marker at the start of a line (``1.``, ``2.3.``, ``a.``, ``iv.``). Other abbreviations (etc., a.m.,
  U.S., Inc.) end a sentence only if the next word is capitalised: ``etc. and`` stays, ``etc. Then``
  splits (so does ``U.S. Army``, a known limit).
- right after CJK ``。！？｡．`` (plus closers and whitespace), with or without a space.
- at a blank line; at a single newline when the next line starts a list item (``- * + •``, ``1.``,
  ``1)``), a heading or a code fence, or when the line ending is a heading or a closing fence. A heading
  line is never split inside.

Protected spans are never split inside: fenced code (```` ``` ````, to the end of the text if left open),
inline code on one line, ``$$...$$``, ``\\[...\\]``, ``\\(...\\)`` (math may not hold a blank line), and
``$...$`` on one line with a non-space after the opening and before the closing ``$`` and no
``. ``/``! ``/``? `` inside (so ``$5. Then $3.`` are dollars, ``$\\boxed{42}$`` is math). An opener
that cannot close by those rules is ordinary text. A backslash escapes the next character.

Why "not yet confirmed": while streaming, a boundary once reported is cut and handed to the aligner, so
it must never move. Every rule above looks at what follows the candidate: ``is 3.`` may become
``3.14``, ``etc. `` may go on with ``and`` or ``Then``, ``Hello.\\n`` by more blank lines, ``item\\n2``
by ``2. ``, an open ``$`` or code fence may close later and swallow the candidate. So with ``final=False`` a
candidate is reported only when the characters it depends on are all there (in practice: the first
non-space character after it, a complete list marker, every earlier span resolved); otherwise the
answer is None, "wait". With ``final=True`` the end of the text also ends the last sentence, and
``split_sentences`` is exactly repeated ``first_sentence_end(rest, final=True)``. The start of ``text``
counts as the start of a line.
"""

from __future__ import annotations

import re

__all__ = ["first_sentence_end", "sentences_end", "split_sentences", "split_units", "units_end"]

TERMINATORS = ".!?…"
CJK_TERMINATORS = "。！？｡．"
CLOSERS = "\"')]}»”’*_"
OPENERS = "\"'([{«“‘*_"
NOT_STARTERS = ",;:)]}%"
# a "." after these never ends a sentence (compared lowercased)
NEVER_END = frozenset("mr mrs ms mx dr prof rev gen capt sgt lt col gov sen rep hon fr st mt vs cf viz e.g i.e".split())
# a "." after these does not end a sentence when a digit follows: "Fig. 3", "No. 5", "pp. 10"
BEFORE_NUMBER = frozenset("no nos fig figs eq eqs vol vols ch chap sec p pp art nr ref tab ex ver v approx ca c".split())

_WS = re.compile(r"\s+")
_CJK_END = re.compile(r"[。！？｡．]+[」』）】〕》〉〗＂＇\"'”’)\]]*\s*")
_TICKS = re.compile(r"`+")
_CODE_BODY = re.compile(r"[^`\n]*")
_DOLLAR = re.compile(r"\$(?=[^\s$])(?:[^$\n.!?]|[.!?](?!\s))*")
_BLANK = re.compile(r"\n[ \t\r\f\v]*\n")
_BLOCK = re.compile(r"(?:[-*+•]|\d{1,9}[.)]|#{1,6})(?:[ \t]|\Z)|```")
_PARTIAL_BLOCK = re.compile(r"(?:[-*+•]|\d{1,9}[.)]?|#{1,6}|`{1,2})")
_HEADING = re.compile(r"[ \t]*#{1,6}[ \t]")
_MARKER_PREFIX = re.compile(r"[ \t]*(?:(?:#{1,6}|[-*+•])[ \t]+)?")
_MARKER = re.compile(r"\d{1,3}(?:\.\d{1,3})*|[A-Za-z]|[ivx]+|[IVX]+")


def split_units(first_end, text: str) -> list[str]:
    """Split ``text`` into the units that ``first_end(text, final=True)`` finds one after another (a
    sentence, a logical line of code); lossless, and ``[]`` for ``""``."""
    out = []
    while text:
        end = first_end(text, final=True)
        out.append(text[:end])
        text = text[end:]
    return out


def units_end(first_end, text: str, n: int) -> int | None:
    """Index just after the ``n``-th complete unit (by ``first_end``) of a streamed ``text``, or None before
    it is complete."""
    end = 0
    for _ in range(n):
        step = first_end(text[end:])
        if step is None:
            return None
        end += step
    return end


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences; ``"".join(result) == text``, and ``[]`` for ``""``."""
    return split_units(first_sentence_end, text)


def sentences_end(text: str, n: int) -> int | None:
    """Index just after the ``n``-th complete sentence of a streamed ``text``, or None before it is complete."""
    return units_end(first_sentence_end, text, n)


def first_sentence_end(text: str, final: bool = False) -> int | None:
    """Index just after the first complete sentence of ``text`` (its trailing whitespace included).

    None when ``text`` holds no confirmed sentence yet. With ``final=False`` (a prefix of a stream) a
    reported index never changes however the text goes on; with ``final=True`` the text is complete and
    its end ends the last sentence (None only for ``""``).
    """
    n, i = len(text), 0
    while i < n:
        c = text[i]
        if c in "`$\\":
            i = _after_span(text, i, final)
            if i is None:
                return None
        elif c in CJK_TERMINATORS:
            end = _CJK_END.match(text, i).end()
            return end if end < n or final else None
        elif c.isspace():
            end = _WS.match(text, i).end()
            if i > 0:  # leading whitespace belongs to the first sentence
                ends = _ends_sentence(text, i, end, final)
                if ends is None:
                    return None
                if ends:
                    return end
            i = end
        else:
            i += 1
    return n if final and n else None


def _ends_sentence(text: str, s: int, e: int, final: bool) -> bool | None:
    """Does a sentence end at the whitespace run ``text[s:e]``? None: can't tell from this prefix."""
    if e == len(text):
        return True if final else None
    newline = "\n" in text[s:e]
    if text.count("\n", s, e) >= 2:
        return True
    line_start = text.rfind("\n", 0, s) + 1
    if _HEADING.match(text, line_start):
        return newline
    if newline and text.endswith("```", 0, s):
        return True
    if _terminated(text, s, text[e], newline):
        return True
    if not newline:
        return False
    if not final and _PARTIAL_BLOCK.fullmatch(text, e):
        return None  # "2" may become "2. ", "-" may become "- "
    return _BLOCK.match(text, e) is not None


def _terminated(text: str, s: int, nxt: str, newline: bool) -> bool:
    """Does ``text[:s]`` end a sentence, given the next non-space character ``nxt``?"""
    j = s
    while j and text[j - 1] in CLOSERS:
        j -= 1
    k = j
    while k and text[k - 1] in TERMINATORS:
        k -= 1
    if k and text[k - 1] == "\\":  # "1\." is an escaped, literal dot
        k += 1
    if k == j:
        return False
    starts = newline or not (nxt.islower() or nxt in NOT_STARTERS)
    if text[k:j] != ".":
        return starts  # ! ? ?! ... …
    w = k
    while w and not text[w - 1].isspace():
        w -= 1
    word = text[w:k].lstrip(OPENERS)
    low = word.lower()
    if low in NEVER_END or (len(word) == 1 and word.isupper() and word != "I"):
        return False
    if low in BEFORE_NUMBER and nxt.isdigit():
        return False
    line_start = text.rfind("\n", 0, w) + 1
    if _MARKER.fullmatch(word) and _MARKER_PREFIX.fullmatch(text, line_start, w):
        return False  # "1. First item"
    return starts


def _after_span(text: str, i: int, final: bool) -> int | None:
    """Where scanning resumes after the construct at ``text[i]`` (a backtick, ``$`` or backslash).

    A protected span is skipped whole; an opener that turns out to be plain text is stepped over.
    None (only when not ``final``): the construct is still open, so anything after it may be inside.
    """
    n = len(text)
    wait = i + 1 if final else None
    if text[i] == "`":
        run = _TICKS.match(text, i).end() - i
        if i + run == n:
            return wait if run < 3 else (n if final else None)
        if run >= 3:  # fenced code: up to the next run of as many backticks, or the end
            close = re.compile("`{%d,}" % run).search(text, i + run)
            return close.end() if close else (n if final else None)
        k = _CODE_BODY.match(text, i + run).end()  # inline code: one line, same number of backticks
        if k == n:
            return i + run if final else None
        if text[k] == "\n":
            return i + run
        closing = _TICKS.match(text, k).end() - k
        if k + closing == n and not final:
            return None
        return k + closing if closing == run else i + run
    if text[i] == "$":
        if text.startswith("$$", i):
            return _delimited(text, i, "$$", "$$", final)
        m = _DOLLAR.match(text, i)
        if m is None:  # "$ " or a "$" at the end
            return wait if i + 1 == n else i + 1
        j = m.end()
        if j == n:
            return wait
        return j + 1 if text[j] == "$" and not text[j - 1].isspace() else i + 1
    if i + 1 == n:  # a lone backslash at the end may become "\[" or "\("
        return wait
    if text[i + 1] in "[(":
        return _delimited(text, i, text[i : i + 2], "\\]" if text[i + 1] == "[" else "\\)", final)
    return i + 1 if text[i + 1].isspace() else i + 2  # an escape such as "\." or "\$"


def _delimited(text: str, i: int, opener: str, closer: str, final: bool) -> int | None:
    """Display/inline LaTeX: up to ``closer``, unless a blank line comes first (then plain text)."""
    start = i + len(opener)
    j = text.find(closer, start)
    if _BLANK.search(text, start, j if j >= 0 else len(text)):
        return start
    if j >= 0:
        return j + len(closer)
    return start if final else None

