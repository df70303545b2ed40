"""Nudging (Fei et al., ACL 2025, arXiv 2410.09300): a small aligned model writes where the large base model
is unsure.

Both models continue the same growing answer, each after its own prompt.  The base starts when it is sure
of its first token (step 3); otherwise, and after each of its turns, a round:

1. The nudger writes up to ``nudge_tokens`` tokens; if that ends its answer, it is appended and the answer
   ends.
2. Its text is split into words on single spaces (leading spaces kept, newlines inside words).  The first
   word is kept.  Before each later word ``k`` the base model is asked for its next token after the answer
   and the words before ``k``: it takes over there when the top probability of its raw next-token
   distribution is at least ``gamma``, or (``agreement``) when word ``k`` starts with the token it drew.  The
   words before the take-over are appended (all words but the last, which may be cut, when it never does).
3. The base writes while it is sure: token by token, stopping before the first token at which its top
   probability falls below ``gamma`` (the token it drew at the take-over is always kept), in pieces of
   ``base_chunk_tokens``; a piece of more than five words that repeats text already in the answer is dropped
   and ends the base's turn.  An end token the base is sure of ends the answer.

The answer also ends when the same nudge comes ``max_repeats`` rounds in a row, at a stop string, or at
``max_new_tokens``.  The models meet only as text, so they may come from different families; the base must
give its top probabilities (local models, or an engine's top log-probs).  The authors run both greedily
(:attr:`Nudging.sampling`'s default).  Two choices differ from the authors' code, which always starts with
the nudger and hands back to it when the base writes its end token: here the base also writes where it is
sure at the start and at its end, so that ``gamma=0`` gives the base model's own answer, token for token, and
``gamma=1`` without ``agreement`` the nudger's.  Each model goes on from its own tokens, not its text encoded
again (``IncrementalGenerator.own_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence

from ..backends.base import SamplingParams, check_sampling, context_error, stop_index
from ..scoring import as_scorer
from ..validation import check_range, check_template
from .cbs import SearchResult, in_batches

GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0)
REPEAT_WORDS = 5  # a base piece of more words than this that the answer already holds is a loop (the authors')


@dataclass
class NudgingResult(SearchResult):
    """A :class:`SearchResult` with what each model wrote: ``sampled_tokens`` counts every large-model token
    drawn (take-over probes included), ``guide_tokens`` every nudger token drawn (words after a take-over
    included); ``base_tokens`` and ``nudge_tokens`` count the tokens of the answer each model wrote (each in
    its own tokenizer, whitespace words for a model without one); ``pieces`` is the answer as
    ``(writer, text)`` pairs in order (writer ``"base"`` or ``"nudger"``); ``rounds`` counts the nudges."""

    base_tokens: int = 0
    nudge_tokens: int = 0
    rounds: int = 0
    pieces: list[tuple[str, str]] = field(default_factory=list, repr=False)

    @property
    def extra(self) -> dict:
        """What an output line adds for Nudging (the command line's and the evaluations')."""
        return {"base_tokens": self.base_tokens, "nudge_tokens": self.nudge_tokens, "rounds": self.rounds}

    @property
    def nudged_share(self) -> float:
        """The share of the answer's tokens the nudger wrote."""
        total = self.base_tokens + self.nudge_tokens
        return self.nudge_tokens / total if total else 0.0


@dataclass(frozen=True)
class Nudging:
    """Nudging: the large base model writes, a small aligned model nudges it where it is unsure.

    Attributes:
        gamma: the base takes over (and keeps writing) while the top probability of its next-token
            distribution is at least this; 0 leaves every token after the first word to the base, 1 (nearly)
            every token to the nudger.  The paper's examples use 0.4, its code 0.3.
        nudge_tokens: tokens the nudger writes per round (the paper's 16).
        base_chunk_tokens: tokens the base writes per piece between its repetition checks (and per request to
            a remote engine).
        max_new_tokens: length limit of an answer: the tokens the large model wrote and the nudger's words
            (in its own tokens, counted again from their text) together; no turn starts past it, and a nudge
            asks for no more tokens than are left (its words, counted again, may come to a few more).
        max_repeats: the answer ends when the same nudge comes this many rounds in a row.
        agreement: the base also takes over before a nudger's word that starts with the token the base drew
            there, however unsure it is (the authors' rule); off, only ``gamma`` decides.
        sampling: how both models sample (greedy by default, as the authors ran it; stop strings end the
            answer wherever they appear).
    """

    gamma: float = 0.4
    nudge_tokens: int = 16
    base_chunk_tokens: int = 16
    max_new_tokens: int = 512
    max_repeats: int = 3
    agreement: bool = True
    sampling: SamplingParams = field(default_factory=lambda: GREEDY)

    method = "nudging"

    def __post_init__(self) -> None:
        check_range("gamma", self.gamma, low=0.0, high=1.0)
        check_range("nudge_tokens", self.nudge_tokens, low=1, integer=True)
        check_range("base_chunk_tokens", self.base_chunk_tokens, low=1, integer=True)
        check_range("max_new_tokens", self.max_new_tokens, low=1, integer=True)
        check_range("max_repeats", self.max_repeats, low=1, integer=True)
        check_sampling(self.sampling)

    def generate(self, base, nudger, prompts: Sequence[str], *, seed: int = 0, base_template: str = "{prompt}",
                 nudger_template: str = "chat", scorer=None, batch_size: int = 8, progress: bool = False,
                 start_index: int = 0) -> Iterator[NudgingResult]:
        """Answer each prompt, ``batch_size`` prompts in lock step.  ``base`` must have generators with
        ``generate_confident`` (local models; remote ones whose engine returns top log-probs).  ``scorer``
        (optional) gives each answer its score, as for the search methods."""
        check_template("base_template", base_template)
        check_template("nudger_template", nudger_template)
        check_range("batch_size", batch_size, low=1, integer=True)

        def run(batch, seeds, _):
            results = _Batch(self, base, nudger, batch, seeds, base_template, nudger_template).run()
            if scorer is not None:
                scores = as_scorer(scorer).score([r.prompt for r in results], [r.response for r in results],
                                                 [r.finished for r in results])
                for result, score in zip(results, scores):
                    result.score = score
            return results

        yield from in_batches(list(prompts), batch_size, seed, start_index, progress, "Nudging", None, run)

    def context_error(self, base, nudger, prompt: str, *, base_template: str = "{prompt}",
                      nudger_template: str = "chat") -> str | None:
        """Why ``prompt``'s longest answer would not fit the base's or the nudger's context, or None."""
        return (context_error(base, base_template, prompt, self.max_new_tokens, who="the base model")
                or context_error(nudger, nudger_template, prompt, self.max_new_tokens + self.nudge_tokens,
                                 who="the nudging model"))


def split_words(text: str) -> list[str]:
    """Words on single spaces, each after the first with its leading space (the first keeps the text's own
    leading spaces; newlines stay inside words): ``"".join(split_words(t)) == t``."""
    stripped = text.lstrip(" ")
    first, *rest = stripped.split(" ")
    return [text[:len(text) - len(stripped)] + first, *(" " + w for w in rest)]


def _count(model, text: str) -> int:
    encode = getattr(model, "encode", None)
    return len(encode(text)) if encode is not None and text else len(text.split())


class _Batch:
    """One batch of prompts through the rounds, all rows in lock step."""

    def __init__(self, config: Nudging, base, nudger, prompts, seeds, base_template, nudger_template):
        self.config, self.base, self.nudger, self.prompts = config, base, nudger, prompts
        self.base_contexts = [base.render(base_template, p) for p in prompts]
        self.nudger_contexts = [nudger.render(nudger_template, p) for p in prompts]
        n = len(prompts)
        # stop strings are looked for in the whole answer (one may span the two models' pieces): an end the
        # generators report is an end-of-sequence token
        sampling = replace(config.sampling, stop=())
        self.base_rows = base.generator(n, sampling, seeds, base_template)
        if not hasattr(self.base_rows, "generate_confident"):
            raise ValueError(f"Nudging needs the base model's top probabilities, which {base.name!r} does not "
                             "give (a remote engine that returns no top log-probs).")
        self.nudger_rows = nudger.generator(n, sampling, [s ^ 0x9E3779B9 for s in seeds], nudger_template)
        for rows in (self.base_rows, self.nudger_rows):  # each model goes on from its own tokens
            if hasattr(rows, "own_tokens"):
                rows.own_tokens = True
        self.results = [NudgingResult(p, "", None, False, 0, config.method) for p in prompts]
        self.answers = [""] * n
        self.last_nudge, self.repeats = [None] * n, [0] * n

    def _append(self, i: int, writer: str, text: str, tokens: int) -> None:
        result = self.results[i]
        if text:
            self.answers[i] += text
            if result.pieces and result.pieces[-1][0] == writer:  # one piece per turn
                result.pieces[-1] = (writer, result.pieces[-1][1] + text)
            else:
                result.pieces.append((writer, text))
        if writer == "base":
            result.base_tokens += tokens
        else:
            result.nudge_tokens += tokens
        result.num_tokens = result.base_tokens + result.nudge_tokens

    def _stopped(self, i: int) -> bool:
        """Ends row ``i`` at a stop string of the sampling settings; True if it did."""
        at = stop_index(self.answers[i], self.config.sampling.stop)
        if at is None:
            return False
        self.answers[i] = self.answers[i][:at]
        self.results[i].finished = True
        return True

    def run(self) -> list[NudgingResult]:
        live = set(range(len(self.prompts)))
        # the base starts where it is sure of its first token (at gamma 0 it writes the whole answer)
        starts = self.base_rows.generate_confident({i: self.base_contexts[i] for i in sorted(live)}, 1,
                                                   self.config.gamma, keep_first=True)
        sure = {i: p for i, p in starts.items() if p.top >= self.config.gamma}
        for i in starts.keys() - sure.keys():  # drawn, not written
            self.results[i].sampled_tokens += starts[i].tokens
        self._base_turns(self._base_writes(sure, live), live)
        while live:
            room = min(self.config.max_new_tokens - self.results[i].num_tokens for i in live)
            nudges = self.nudger_rows.generate({i: self.nudger_contexts[i] + self.answers[i] for i in sorted(live)},
                                               min(self.config.nudge_tokens, room))
            self._base_turns(self._takeovers(nudges, live), live)
        for i, result in enumerate(self.results):
            result.response = self.answers[i]
        return self.results

    def _base_writes(self, probes: dict, live: set[int]) -> set[int]:
        """Append the token each base probe drew where it takes over; the rows whose base goes on."""
        going = set()
        for i, probe in probes.items():
            self.results[i].sampled_tokens += probe.tokens
            self._append(i, "base", probe.text, probe.tokens)
            if probe.ended:  # the base ends the answer where it is sure it ends
                self.results[i].finished = True
            if not self._ends(i):
                going.add(i)
            else:
                live.discard(i)
        return going

    def _ends(self, i: int) -> bool:
        """Whether row ``i``'s answer is over: ended, at a stop string or at the length limit."""
        return (self.results[i].finished or self._stopped(i)
                or self.results[i].num_tokens >= self.config.max_new_tokens)

    def _takeovers(self, nudges: dict[int, tuple[str, bool]], live: set[int]) -> set[int]:
        """Append each row's nudge up to where the base takes over, and the token the base drew there; the
        rows whose base goes on.  Rows that are done leave ``live``."""
        config = self.config
        words, tried, takeover = {}, {}, {}
        for i, (text, ended) in nudges.items():
            self.results[i].rounds += 1
            self.results[i].guide_tokens += _count(self.nudger, text)
            if ended or not text:
                self._append(i, "nudger", text, _count(self.nudger, text))
                self.results[i].finished = ended or self._stopped(i)
                live.discard(i)
                continue
            words[i], tried[i] = split_words(text), 1
        # the base is asked before word k = 1, 2, ... (all rows at once) until it takes over or the words run out
        while any(tried[i] < len(words[i]) for i in words if i not in takeover):
            asks = {}
            for i in words:
                while i not in takeover and tried[i] < len(words[i]) and words[i][tried[i]] == " ":
                    tried[i] += 1  # a run of spaces: no word to hand over at
                if i not in takeover and tried[i] < len(words[i]):
                    asks[i] = self.base_contexts[i] + self.answers[i] + "".join(words[i][:tried[i]])
            probes = self.base_rows.generate_confident(asks, 1, config.gamma, keep_first=True)
            for i, probe in probes.items():
                word = words[i][tried[i]]
                if probe.top >= config.gamma or (config.agreement and probe.text and word.startswith(probe.text)):
                    takeover[i] = probe
                else:
                    self.results[i].sampled_tokens += probe.tokens
                    tried[i] += 1
        accepted = {}
        for i in words:  # without a take-over, all words but the last (which may be cut)
            nudge = "".join(words[i][:tried[i] if i in takeover else max(len(words[i]) - 1, 1)])
            if nudge == self.last_nudge[i]:
                self.repeats[i] += 1
            else:
                self.last_nudge[i], self.repeats[i] = nudge, 1
            self._append(i, "nudger", nudge, _count(self.nudger, nudge))
            if self.repeats[i] >= config.max_repeats or self._ends(i):
                live.discard(i)
            elif i in takeover:
                accepted[i] = takeover[i]
        for i, probe in takeover.items():
            if i not in accepted:  # drawn, not written
                self.results[i].sampled_tokens += probe.tokens
        return self._base_writes(accepted, live)

    def _base_turns(self, going: set[int], live: set[int]) -> None:
        """The base writes for the rows it took over, while it is sure, in pieces of ``base_chunk_tokens``."""
        config = self.config
        while going:
            asks = {i: self.base_contexts[i] + self.answers[i] for i in sorted(going)}
            room = min(config.max_new_tokens - self.results[i].num_tokens for i in going)
            cap = min(config.base_chunk_tokens, max(room, 1))
            for i, piece in self.base_rows.generate_confident(asks, cap, config.gamma, keep_first=False).items():
                self.results[i].sampled_tokens += piece.tokens
                if len(piece.text.split(" ")) > REPEAT_WORDS and piece.text in self.answers[i]:
                    going.discard(i)  # a loop: dropped, and the nudger has the next word
                    continue
                self._append(i, "base", piece.text, piece.tokens)
                self.results[i].finished = piece.ended
                if self._ends(i):
                    going.discard(i)
                    live.discard(i)
                elif piece.tokens < cap:  # unsure: the nudger's turn
                    going.discard(i)
