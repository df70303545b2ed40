"""Stream Aligner and Aligner: sentence-level correction of a large model's answer."""

from .segment import first_sentence_end, split_sentences

__all__ = ["first_sentence_end", "split_sentences"]
