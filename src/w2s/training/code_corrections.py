"""Stream Aligner data for code: a coder's answers to HumanEval's *training* problems, corrected logical line
by logical line by a coder teacher that explains each step in a comment.

The loop is the Stream Aligner's (:func:`w2s.aligner.data.build_corrections`) with ``unit="line"`` and
``guard="code"``: the upstream continues the problem's text (raw completion, :mod:`w2s.tasks.code`'s prompt
format and stop rule); each logical line goes to the teacher with the code written so far; the corrected
line is what the upstream continues from.

The teacher (:class:`CommentTeacher`) is asked, in its chat template, for one short sentence saying what the
line does, and the recipe puts that sentence as a comment line above the line, at its indentation.  Asked
instead to return the line with a comment and nothing else changed, Qwen2.5-Coder-0.5B-Instruct changed
the code (a fenced whole function, a lost indentation) in 2 of 5 lines tried and returned the other 3
without a comment; given the authors' input format, it changed the code in 6 of 6 (the first two training
problems, greedy, 2026-12-07): the line is therefore never the teacher's to write.  Every record is still checked (:func:`w2s.aligner.stream.accept`: the correction's code tokens
equal the line's), and a refused correction keeps the line as it was, with the reason in ``rejected``.

A problem that is held out (odd task number) is refused.  The records' SHA-256 is printed and goes into the
aligner's model card (:func:`w2s.training.code_pairs.data_hash`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

from ..tasks import code

ASK = ("Here is a Python function being written:\n```python\n{code}```\nIts next line is:\n```python\n{line}\n```\n"
       "In at most fifteen words, say what this line does. Reply with those words only.")
MAX_NOTE_CHARS = 120  # a longer explanation is cut at a word boundary
# what a coder puts before its sentence, taken off: "The line `x = 1` is used to", "This line is", "Comment:"
_OPENERS = re.compile(r"^(?:(?:the|this) (?:line|code)(?: `[^`]*`)?\s*|comment:\s*)"
                      r"(?:is (?:intended|used|designed|meant) to\s+|is\s+(?=\w+ing\b))?", re.I)


def note_of(reply: str) -> str:
    """The comment's text from a teacher's reply: the first sentence of its first line with words (quotes,
    backticks, a leading ``#`` and an opener naming the line taken off), capitalised, cut at a word
    boundary to :data:`MAX_NOTE_CHARS`."""
    parts = (part.strip().strip("`\"' ").lstrip("#").strip() for part in reply.splitlines())
    line = _OPENERS.sub("", next((part for part in parts if part), "")).strip()
    line = re.split(r"(?<=\.)\s", line, maxsplit=1)[0]
    if len(line) > MAX_NOTE_CHARS:
        line = line[:MAX_NOTE_CHARS].rsplit(" ", 1)[0]
    return line[:1].upper() + line[1:]


class CommentTeacher:
    """A coder as the teacher of the Stream Aligner loop: ``teacher(question, prefix, line)`` returns ``line``
    with a comment line above it whose text the coder wrote (module docstring); a line that is a comment
    already, or blank, comes back as it is.  Greedy; each of the last ``slots`` questions keeps a cache row,
    so a call runs only the tokens after what it shares with that question's previous call."""

    def __init__(self, model, max_tokens: int = 32, slots: int = 8):
        from ..backends.base import SamplingParams

        self.model, self.max_tokens, self.slots = model, max_tokens, slots
        self.rows = model.generator(slots, SamplingParams(temperature=0.0), [0] * slots, "chat")
        self.row_of: dict[str, int] = {}  # question -> its row, the oldest first
        self.calls = 0

    def _row(self, question: str) -> int:
        if question not in self.row_of:
            free = set(range(self.slots)) - set(self.row_of.values())
            self.row_of[question] = free.pop() if free else self.row_of.pop(next(iter(self.row_of)))
        return self.row_of[question]

    def __call__(self, question: str, prefix: str, line: str) -> str:
        return self.many({0: (question, prefix, line)})[0]

    def many(self, asks: dict) -> dict:
        """``{key: (question, prefix, line)}`` -> ``{key: correction}``, the questions' lines in one batch
        (what the Stream Aligner loop calls with a round's lines)."""
        out, todo = {}, {}
        for key, (question, prefix, line) in asks.items():
            if not line.strip() or code.only_comments(line):
                out[key] = line
            else:
                ask = ASK.format(code=(question + prefix).rstrip("\n") + "\n", line=line)
                todo[self._row(question)] = (key, line, self.model.render("chat", ask))
        replies = self.rows.generate({row: context for row, (_, _, context) in todo.items()}, self.max_tokens)
        self.calls += len(todo)
        for row, (key, line, _) in todo.items():
            note = note_of(replies[row][0])
            indent = line[: len(line) - len(line.lstrip())]
            out[key] = f"{indent}# {note}\n{line}" if note else line
        return out


def build_code_corrections(upstream, teacher, problems: Sequence[dict], out_path: str | Path, *,
                           train_out_path: str | Path | None = None, whole_out_path: str | Path | None = None,
                           max_lines: int = 24, max_line_tokens: int = 64,
                           temperature: float = 0.8, seed: int = 0, batch_size: int = 4, progress: bool = True) -> int:
    """Write the sentence-level (line-level) records of the Stream Aligner loop over ``problems`` (training
    problems only) to ``out_path``, and the training records made of them (:func:`training_records`) to
    ``train_out_path`` and ``whole_out_path`` when given; ``teacher`` is a model (wrapped in
    :class:`CommentTeacher`) or a function ``(question, prefix, line) -> correction``.  Returns the number of
    line records."""
    from ..aligner.data import build_corrections
    from ..aligner.stream import StreamAligner
    from ..backends.base import SamplingParams

    code.check_training(problems)
    loop = StreamAligner(max_sentences=max_lines, max_sentence_tokens=max_line_tokens, max_correction_tokens=64,
                         sampling=SamplingParams(temperature=temperature, top_p=0.95, top_k=0, stop=code.STOP),
                         unit="line", guard="code", function_body=True)
    if hasattr(teacher, "generator"):  # a model
        teacher = CommentTeacher(teacher, slots=batch_size)
    n = build_corrections(upstream, teacher, [p["prompt"] for p in problems], out_path, loop=loop,
                          upstream_template="{prompt}", seed=seed, batch_size=batch_size, progress=progress)
    if train_out_path is not None or whole_out_path is not None:
        training_records(out_path, train_out_path, whole_out_path)
    return n


def under_a_comment(record: dict) -> bool:
    """Whether the line of ``record`` comes right under a comment line (the prefix's last non-blank line)."""
    lines = [line for line in record["prefix"].split("\n") if line.strip()]
    return bool(lines) and lines[-1].lstrip().startswith("#")


def explained_once(records: Sequence[dict]) -> list[dict]:
    """The line records as the aligners learn them: where the teacher put a comment above a line that
    already comes right under one (the upstream, continuing a commented prefix, writes comment lines of its
    own), the correction is the line unchanged, so that no line gets two comments."""
    return [{**r, "correction": r["sentence"]} if r["correction"] != r["sentence"] and under_a_comment(r) else r
            for r in records]


def training_records(lines_path: str | Path, train_out_path: str | Path | None = None,
                     whole_out_path: str | Path | None = None) -> tuple[int, int]:
    """Write the training records made of the loop's line records (:func:`explained_once`): the line
    aligner's to ``train_out_path`` (the lines with code: under the code guard the loop keeps a line of
    comments only without asking the aligner) and the whole-answer aligner's (:func:`whole_records`, of all
    lines) to ``whole_out_path``; returns how many of each."""
    from ..jsonl import dumps, read_complete

    lines = explained_once(list(read_complete(Path(lines_path))))
    asked = [r for r in lines if not code.only_comments(r["sentence"])]
    whole = whole_records(lines)
    for path, records in ((train_out_path, asked), (whole_out_path, whole)):
        if path is not None:
            Path(path).write_text("".join(map(dumps, records)), encoding="utf-8")
    return len(asked), len(whole)


def whole_records(lines: Sequence[dict]) -> list[dict]:
    """Whole-answer records (the Aligner's) from line records: per question, ``answer`` is its lines as the
    upstream wrote them and ``correction`` the same lines as corrected, each joined by newlines (blank lines
    between them are not kept).  No second teacher pass: the answer is the one the loop streamed, written
    after the corrected lines before each of its own."""
    by_question: dict[int, list[dict]] = {}
    for record in lines:
        by_question.setdefault(record["question_index"], []).append(record)
    return [{"question_index": i, "question": records[0]["question"],
             "answer": "\n".join(r["sentence"] for r in records),
             "correction": "\n".join(r["correction"] for r in records)} for i, records in sorted(by_question.items())]
