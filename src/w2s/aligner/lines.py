"""Line segmentation for code, offline and while it is being generated: the Stream Aligner's unit when it
corrects code line by line (``unit="line"``, beside :mod:`.segment`'s sentences).

A unit is one *logical* line of Python (the other C-like languages mostly agree): it ends at a newline
that is outside brackets, outside strings and not escaped by a trailing backslash, so a call or a
literal spread over lines, a backslash continuation and a docstring each stay one unit. Blank lines
belong to the unit that follows them (a unit ends at the newline of a line with something on it), and a
comment line is a unit of its own, as is a decorator. Units lose and add nothing:
``"".join(split_lines(t)) == t``; text after the last newline (or only blank lines at the end of a
finished text) is the last unit.

The scan knows strings (``'``, ``"``, their triple forms, backslash escapes in all of them, so a raw
string's ``\\'`` does not close it, as in Python) and comments (a quote or bracket after ``#`` counts for
nothing). A one-quote string still open at the end of its line is closed there (it is invalid code,
and most often an apostrophe in prose), so a stray quote cannot swallow the rest of the text; an
unclosed bracket or triple quote does, until it closes.

Streaming: every decision about a newline depends only on the text before it, so with ``final=False``
a reported end never moves however the text goes on, and ``split_lines`` is exactly repeated
``first_line_end(rest, final=True)``.
"""

from __future__ import annotations

from .segment import split_units, units_end

__all__ = ["first_line_end", "lines_end", "split_lines"]

OPEN, CLOSE = "([{", ")]}"


def split_lines(text: str) -> list[str]:
    """Split ``text`` into logical lines; ``"".join(result) == text``, and ``[]`` for ``""``."""
    return split_units(first_line_end, text)


def lines_end(text: str, n: int) -> int | None:
    """Index just after the ``n``-th complete logical line of a streamed ``text``, or None before that."""
    return units_end(first_line_end, text, n)


def first_line_end(text: str, final: bool = False) -> int | None:
    """Index just after the first complete logical line of ``text`` (its newline included).

    None when ``text`` holds no complete line yet. With ``final=False`` (a prefix of a stream) a reported
    index never changes however the text goes on; with ``final=True`` the text is complete and its end
    ends the last unit (None only for ``""``).
    """
    n, i, depth, content = len(text), 0, 0, False
    while i < n:
        c = text[i]
        if c == "\n":
            if content and depth == 0:
                return i + 1
            i += 1
            continue
        if not c.isspace():
            content = True
        if c == "#":
            newline = text.find("\n", i)
            i = n if newline < 0 else newline
        elif c in OPEN:
            depth, i = depth + 1, i + 1
        elif c in CLOSE:
            depth, i = max(0, depth - 1), i + 1
        elif c in "'\"":
            if text.startswith(c * 3, i):
                i = _string_end(text, i + 3, c * 3)
            elif not final and len(text) - i < 3 and text[i:] == c * (n - i):
                return None  # '"' or '""' at the end may still become a triple quote
            else:
                i = _string_end(text, i + 1, c)
        elif c == "\\" and text.startswith("\n", i + 1):
            i += 2  # a continuation: the next line is part of this one
        else:
            i += 1
    return n if final and n else None


def _string_end(text: str, i: int, quote: str) -> int:
    """Where scanning resumes after a string whose body starts at ``text[i]``: after its closing quote; at
    the newline that ends its line for an unclosed one-quote string; the end of the text when it is
    still open there (a later newline, when one comes, is then judged with the string closed)."""
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
        elif text.startswith(quote, i):
            return i + len(quote)
        elif c == "\n" and len(quote) == 1:
            return i
        else:
            i += 1
    return n
