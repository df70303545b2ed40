"""Logical-line segmentation of code (w2s.aligner.lines): lossless, one unit per logical line, and stable
while the text streams."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from w2s.aligner.lines import first_line_end, lines_end, split_lines

RESULTS = Path(__file__).resolve().parents[1] / "results" / "code"

CASES = {
    "plain lines": ("    a = 1\n    return a\n", ["    a = 1\n", "    return a\n"]),
    "a call over lines": ("    x = f(a,\n          b)\n    y = 2\n", ["    x = f(a,\n          b)\n", "    y = 2\n"]),
    "a literal over lines": ("d = {\n  'a': [1,\n   2],\n}\nz\n", ["d = {\n  'a': [1,\n   2],\n}\n", "z\n"]),
    "a continuation": ("x = 1 + \\\n    2\ny\n", ["x = 1 + \\\n    2\n", "y\n"]),
    "a docstring": ('    """Doc (\n    more\' here\n    """\n    pass\n',
                    ['    """Doc (\n    more\' here\n    """\n', "    pass\n"]),
    "a string holding a newline escape": ("s = 'a\\nb)'\nt\n", ["s = 'a\\nb)'\n", "t\n"]),
    "an escaped quote": ('s = "say \\"(\\""\nt\n', ['s = "say \\"(\\""\n', "t\n"]),
    "a raw string ending in an escaped quote": ("s = r'\\''\nt\n", ["s = r'\\''\n", "t\n"]),
    "a decorator": ("@cache\ndef f(\n    x):\n    return x\n", ["@cache\n", "def f(\n    x):\n", "    return x\n"]),
    "a comment with an apostrophe and a bracket": ("# don't (\nx = 1\n", ["# don't (\n", "x = 1\n"]),
    "a trailing comment": ("x = [1,  # one (\n  2]\ny\n", ["x = [1,  # one (\n  2]\n", "y\n"]),
    "blank lines go with the next line": ("a\n\n   \nb\n", ["a\n", "\n   \nb\n"]),
    "blank lines at the end": ("a\n\n", ["a\n", "\n"]),
    "no final newline": ("a\nreturn b", ["a\n", "return b"]),
    "an unclosed one-quote string ends at its line": ("x = 'it\ny\n", ["x = 'it\n", "y\n"]),
    "an unclosed bracket runs to the end": ("f(a\nb\n", ["f(a\nb\n"]),
    "a stray closer": (")\nx\n", [")\n", "x\n"]),
    "an empty string then more": ('s = ""\nt = """a\n"""\n', ['s = ""\n', 't = """a\n"""\n']),
    "crlf": ("a\r\nb\r\n", ["a\r\n", "b\r\n"]),
}


@pytest.mark.parametrize("name", CASES)
def test_logical_lines(name):
    text, expected = CASES[name]
    assert split_lines(text) == expected
    assert "".join(split_lines(text)) == text


def test_streaming_waits_for_what_decides():
    assert first_line_end("x = 1") is None and first_line_end("x = 1", final=True) == 5
    assert first_line_end("f(a,\n") is None  # the bracket is still open
    assert first_line_end('s = ""') is None  # may become a triple quote
    assert first_line_end('s = """a\n') is None
    assert first_line_end("\n\n") is None and first_line_end("\n\n", final=True) == 2
    assert first_line_end("") is None and first_line_end("", final=True) is None
    assert lines_end("a\nb\nc", 2) == 4 and lines_end("a\nb", 2) is None


def _completions() -> list[str]:
    """Real completions of the coders (every committed raw record of the code experiment)."""
    texts = []
    for path in sorted(RESULTS.glob("*/raw/*/seed*.jsonl")):
        texts += [json.loads(line)["response"] for line in path.read_text().splitlines() if line.strip()]
    return texts


def _fuzz(rng: random.Random) -> str:
    pieces = ["a", " ", "\n", "(", ")", "[", "]", "'", '"', '"""', "'''", "\\", "#", "x = ", "    ", "\\\n"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))


def test_every_prefix_reports_only_ends_the_whole_text_keeps():
    """A unit reported for a prefix of a stream is the unit of the finished text (never moves), and the
    units of a text are lossless; on the coders' real completions and on fuzzed text."""
    rng = random.Random(0)
    texts = _completions()
    assert len(texts) > 300  # the committed raw records are there
    texts += [_fuzz(rng) for _ in range(3000)]
    for text in texts:
        units = split_lines(text)
        assert "".join(units) == text and all(units)
        ends = [sum(map(len, units[: k + 1])) for k in range(len(units))]
        for cut in range(len(text) + 1):
            found = first_line_end(text[:cut])
            assert found is None or found == ends[0], (text, cut)
        assert all(u.count("\n") >= 1 for u in units[:-1])


def test_the_units_of_real_completions_are_python_logical_lines():
    """On completions that parse, every unit but blank-line runs holds exactly one of tokenize's logical
    lines (NEWLINE tokens) or a comment line."""
    import io
    import tokenize

    checked = 0
    for text in _completions()[:200]:
        source = "def f():\n" + text + ("\n" if not text.endswith("\n") else "")
        try:
            newlines = sum(t.type == tokenize.NEWLINE for t in tokenize.generate_tokens(io.StringIO(source).readline))
        except (tokenize.TokenError, SyntaxError, IndentationError):
            continue
        units = split_lines(source)
        code_units = [u for u in units if u.strip() and not u.strip().startswith("#")]
        assert len(code_units) == newlines, source
        checked += 1
    assert checked > 100
