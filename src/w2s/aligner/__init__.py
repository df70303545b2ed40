"""Stream Aligner and Aligner: sentence-level correction of a large model's answer."""

from .segment import first_sentence_end, split_sentences
from .stream import (
    ALIGNER_TEMPLATE,
    STREAM_ALIGNER_TEMPLATE,
    AlignedAnswer,
    Aligner,
    StreamAligner,
    StreamStep,
    aligner_input,
    stream_aligner_input,
)

__all__ = [
    "ALIGNER_TEMPLATE",
    "STREAM_ALIGNER_TEMPLATE",
    "AlignedAnswer",
    "Aligner",
    "StreamAligner",
    "StreamStep",
    "aligner_input",
    "first_sentence_end",
    "split_sentences",
    "stream_aligner_input",
]
