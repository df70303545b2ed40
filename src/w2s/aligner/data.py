"""Training data for the aligners: the Stream Aligner loop with a *teacher* in the aligner's place.

Lou et al. 2025 build Stream Aligner data by running the same loop with a stronger model correcting
each sentence.  Here the teacher is any model (its input is the authors' format) or a Python function
``teacher(question, prefix, sentence) -> correction``.  Records:

- sentence level (Stream Aligner): ``{question, prefix, sentence, correction}``, where ``prefix`` is
  the corrected answer so far, exactly what the aligner sees at inference;
- whole answer (Aligner): ``{question, answer, correction}``, the upstream's own uncorrected answer
  and its teacher correction, sentence by sentence.

Both files are written question by question; a rerun drops the last (possibly incomplete) question
and continues from it, drawing the same randomness as an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from ..jsonl import append_batches, read_complete
from .segment import split_units
from .stream import UNITS, Aligner, StreamAligner, shown


def build_corrections(upstream, teacher, questions: Sequence[str], out_path: str | Path, *,
                      whole_out_path: str | Path | None = None, loop: StreamAligner | None = None,
                      upstream_template: str = "chat", teacher_template: str = "chat", seed: int = 0,
                      batch_size: int = 8, progress: bool = True) -> int:
    """Write sentence-level records to ``out_path`` (and whole-answer records to ``whole_out_path``);
    returns the number of sentence records.  ``loop`` sets the rounds and the upstream's sampling
    (default: :class:`StreamAligner`'s defaults); the teacher takes the aligner's place in it."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    loop = loop or StreamAligner()
    models = dict(upstream_template=upstream_template, aligner_template=teacher_template)
    _write(out_path, questions, batch_size, progress, "sentence records",
           lambda batch, start: _sentence_records(loop, upstream, teacher, models, batch, start, seed))
    if whole_out_path is not None:
        whole = Aligner(sampling=loop.sampling)  # the upstream's own answers
        _write(Path(whole_out_path), questions, batch_size, progress, "whole-answer records",
               lambda batch, start: _whole_records(whole, loop, upstream, teacher, models, batch, start, seed))
    return len(read_complete(out_path))


def _write(path: Path, questions, batch_size, progress, desc, make) -> None:
    """Append each batch's records (``make(batch, start)``: one list per question); a rerun drops the
    last question's batch (its records may be incomplete) and goes on from there."""
    def rows(batch, start):
        return [record for records in make(batch, start) for record in records]

    append_batches(path, questions, batch_size, rows, item_of=lambda r: r["question_index"], desc=desc,
                   unit="question", progress=progress)


def _sentence_records(loop: StreamAligner, upstream, teacher, models: dict, batch, start: int, seed: int
                      ) -> list[list[dict]]:
    per_question = [[] for _ in batch]
    for answer_index, answer in enumerate(loop.run(upstream, teacher, batch, seed=seed, start_index=start, **models)):
        prefix = ""
        for step in answer.steps:
            if not shown(loop.unit, step.original):  # whitespace only: nothing to correct
                prefix += step.corrected
                continue
            record = {"question_index": start + answer_index, "question": answer.question, "prefix": prefix,
                      "sentence": shown(loop.unit, step.original), "correction": shown(loop.unit, step.corrected)}
            if loop.guard is not None:  # the teacher's correction was checked; a refused one is the original
                record["rejected"] = step.rejected
            per_question[answer_index].append(record)
            prefix += step.corrected
    return per_question


def _whole_records(whole: Aligner, loop: StreamAligner, upstream, teacher, models: dict, batch, start: int,
                   seed: int) -> list[list[dict]]:
    out = []
    own_answer = lambda question, answer: answer  # noqa: E731 - the upstream's answer, uncorrected
    for i, answer in enumerate(whole.run(upstream, own_answer, batch, seed=seed, start_index=start,
                                         upstream_template=models["upstream_template"])):
        corrected = ""
        for piece in split_units(UNITS[loop.unit], answer.original):  # the teacher corrects it unit by unit
            if piece.strip():
                fixed = loop.correct_sentence(teacher, answer.question, corrected, piece,
                                              aligner_template=models["aligner_template"])
                piece = fixed + piece[len(piece.rstrip()):]
            corrected += piece
        out.append([{"question_index": start + i, "question": answer.question,
                     "answer": shown(loop.unit, answer.original), "correction": shown(loop.unit, corrected)}])
    return out
