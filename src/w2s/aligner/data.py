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

from tqdm.auto import tqdm

from ..jsonl import dumps, read_complete
from .segment import split_sentences
from .stream import Aligner, StreamAligner


def _resume_point(path: Path, batch_size: int) -> int:
    """Index of the first question to (re)do: the start of the batch of the file's last question (which
    may be incomplete), so that every question is answered in the batch of an uninterrupted run."""
    records = read_complete(path)
    if not records:
        return 0
    last = records[-1]["question_index"]
    start = last - last % batch_size
    path.write_text("".join(dumps(r) for r in records if r["question_index"] < start), encoding="utf-8")
    return start


def build_corrections(upstream, teacher, questions: Sequence[str], out_path: str | Path, *,
                      whole_out_path: str | Path | None = None, max_sentences: int = 16,
                      max_sentence_tokens: int = 96, upstream_template: str = "chat", teacher_template: str = "chat",
                      temperature: float = 0.7, top_p: float = 1.0, top_k: int = 50, seed: int = 0,
                      batch_size: int = 8, progress: bool = True) -> int:
    """Write sentence-level records to ``out_path`` (and whole-answer records to ``whole_out_path``);
    returns the number of sentence records."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sampling = dict(upstream_template=upstream_template, temperature=temperature, top_p=top_p, top_k=top_k)
    loop = StreamAligner(upstream, teacher, max_sentences=max_sentences, max_sentence_tokens=max_sentence_tokens,
                         aligner_template=teacher_template, **sampling)
    _write(out_path, questions, batch_size, progress, "sentence records",
           lambda batch, start: _sentence_records(loop, batch, start, seed))
    if whole_out_path is not None:
        whole = Aligner(upstream, lambda question, answer: answer, **sampling)  # the upstream's own answers
        _write(Path(whole_out_path), questions, batch_size, progress, "whole-answer records",
               lambda batch, start: _whole_records(whole, loop, batch, start, seed))
    return len(read_complete(out_path))


def _write(path: Path, questions, batch_size, progress, desc, make) -> None:
    start = _resume_point(path, batch_size)
    with open(path, "a", encoding="utf-8") as out, tqdm(total=len(questions), initial=start, desc=desc,
                                                         unit="question", disable=not progress) as bar:
        for first in range(start, len(questions), batch_size):
            batch = list(questions[first : first + batch_size])
            for records in make(batch, first):  # one question's records per write
                out.write("".join(dumps(r) for r in records))
                out.flush()
            bar.update(len(batch))


def _sentence_records(loop: StreamAligner, batch, start: int, seed: int) -> list[list[dict]]:
    per_question = [[] for _ in batch]
    for answer_index, answer in enumerate(loop.run(batch, seed=seed, start_index=start)):
        prefix = ""
        for step in answer.steps:
            per_question[answer_index].append({"question_index": start + answer_index, "question": answer.question,
                                               "prefix": prefix, "sentence": step.original.strip(),
                                               "correction": step.corrected.strip()})
            prefix += step.corrected
    return per_question


def _whole_records(whole: Aligner, loop: StreamAligner, batch, start: int, seed: int) -> list[list[dict]]:
    out = []
    for i, answer in enumerate(whole.run(batch, seed=seed, start_index=start)):
        corrected = ""
        for piece in split_sentences(answer.original):  # the teacher corrects it sentence by sentence
            sentence = piece.strip()
            if sentence:
                fixed = loop.correct_sentence(answer.question, corrected, sentence)
                piece = piece[: len(piece) - len(piece.lstrip())] + fixed + piece[len(piece.rstrip()):]
            corrected += piece
        out.append([{"question_index": start + i, "question": answer.question, "answer": answer.original.strip(),
                     "correction": corrected.strip()}])
    return out
