"""The two protocols that carry the design: a model that samples continuations, and log-probabilities.

A search method only ever talks to a :class:`LanguageModel`.  It opens a :class:`SearchSession` over a
batch of prompts, asks it to *expand* some of the current beams into sampled continuations, and then
tells it which continuations survive (:meth:`SearchSession.select`).  Between those calls the backend keeps
whatever it can reuse (a local model keeps its KV cache rows; a remote engine keeps nothing but text).
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

from ..validation import check_choice, check_range, check_stop

# the most query tokens (rows x new positions) one forward of a local model runs: longer forwards (a long
# prompt's prefill, many candidates scored at once) are split into several calls, which bounds the hidden
# states, attention scores, masks and logits one call holds (the guides' scoring reads each call's logits
# and drops them).  On a GPU, raise it until the throughput stops growing.
MAX_TOKENS_PER_FORWARD = 4096

# context tokens decoded in front of a response to recover its leading space (TransformersModel.decode_after)
ANCHOR_TOKENS = 4
ENTROPY_MIN_TOKENS = 4  # a chunk cut where the entropy rises has at least this many tokens (CARDS' rule)
TOP_LOGPROBS = 20  # the top log-probs asked of an engine to estimate an entropy (vLLM's default maximum)
TRANSCRIPT_ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}


class Conversation(str):
    """A multi-turn prompt: a list of ``{"role", "content"}`` messages that is also a string.

    The ``"chat"`` template renders the messages themselves with the model's chat template (roles and
    system prompt kept); a format-string template sees the string value, a plain transcript with one
    ``Role: text`` line per message.  A lone user message is just its text.
    """

    messages: tuple[dict, ...]

    def __new__(cls, messages: Sequence[dict]):
        messages = tuple({"role": m["role"], "content": m["content"]} for m in messages)
        if not messages:
            raise ValueError("messages must not be empty.")
        for m in messages:
            if m["role"] not in TRANSCRIPT_ROLES or not isinstance(m["content"], str):
                raise ValueError(f"a message needs a role in {sorted(TRANSCRIPT_ROLES)} and text content, "
                                 f"got {m!r}.")
        if len(messages) == 1 and messages[0]["role"] == "user":
            text = messages[0]["content"]
        else:
            text = "\n".join(f"{TRANSCRIPT_ROLES[m['role']]}: {m['content']}" for m in messages)
        self = super().__new__(cls, text)
        self.messages = messages
        return self

    def __getnewargs__(self):  # copy and pickle rebuild it from its messages, not from its text
        return (self.messages,)


_interrupt = threading.local()


@contextlib.contextmanager
def interrupt_when(check: Callable[[], None]):
    """While in this block, this thread's generation calls ``check()`` at every token (local models) and
    while it waits for an engine (remote ones); an exception it raises stops the call in flight (``w2s
    serve``: a client gone, a deadline passed)."""
    previous, _interrupt.check = getattr(_interrupt, "check", None), check
    try:
        yield
    finally:
        _interrupt.check = previous


def check_interrupt() -> None:
    """Raise what the innermost :func:`interrupt_when` check raises (nothing outside one)."""
    check = getattr(_interrupt, "check", None)
    if check is not None:
        check()


# The kinds of failure, the same from the backends through SearchResult (``error_kind``, ``error_code``)
# to the commands' error records and the server's error schema: kind -> (code, the server's HTTP status).
ERROR_KINDS = {
    "context": ("context_length_exceeded", 400),  # the prompt and the tokens asked for do not fit a context
    "engine": ("engine_error", 502),              # a remote engine failed or could not be reached
    "timeout": ("engine_timeout", 504),           # a remote engine did not answer in time
    "cancelled": ("cancelled", 499),              # the work was stopped: its client went away, or Ctrl-C
    "internal": ("internal_error", 500),          # anything else (a fault of w2s or of a model)
}


def error_code(kind: str | None) -> str | None:
    """The code of an error kind (None for None)."""
    return None if kind is None else ERROR_KINDS[kind][0]


class RemoteError(RuntimeError):
    """A request to a remote engine failed for good (after retries, or with a non-retryable status).

    ``kind`` is ``"timeout"`` when the engine did not answer in time, else ``"engine"``; ``status`` is
    the HTTP status of the engine's last answer when one came (None: it could not be reached)."""

    def __init__(self, message: str, kind: str = "engine", status: int | None = None):
        super().__init__(message)
        self.kind, self.status = kind, status

    @property
    def code(self) -> str:
        """The error's code in results and records: ``engine_timeout`` or ``engine_error``."""
        return error_code(self.kind)


class ContextLengthError(ValueError):
    """A sequence would not fit a model's context window (its ``max_position_embeddings``): the prompt is
    too long for the tokens asked for.  Methods turn it into an error for that prompt only."""

    kind = "context"


class Cancelled(Exception):
    """Work stopped because nobody wants its result any more (raised by an :func:`interrupt_when` check)."""

    kind = "cancelled"


def error_kind(err: BaseException) -> str:
    """The kind (a key of :data:`ERROR_KINDS`) of an exception: its own ``kind`` when it is one of ours
    (:class:`RemoteError`, :class:`ContextLengthError`, :class:`Cancelled`), ``cancelled`` for Ctrl-C,
    else ``internal``."""
    if isinstance(err, KeyboardInterrupt):
        return "cancelled"
    kind = getattr(err, "kind", None) if isinstance(err, (RemoteError, ContextLengthError, Cancelled)) else None
    return kind if kind in ERROR_KINDS else "internal"


CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


def context_length_of(config) -> int | None:
    """A transformers config's context window in tokens (its text config's, for multimodal ones), or None."""
    if config is None:
        return None
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    for name in CONTEXT_FIELDS:
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def context_error(model, template: str, prompt: str, new_tokens: int, who: str | None = None) -> str | None:
    """Why ``prompt`` (rendered with ``template``) plus ``new_tokens`` tokens do not fit ``model``'s context,
    or None (also when the model cannot count: a remote engine checks its own context)."""
    limit = getattr(model, "context_length", None)
    if limit is None or not hasattr(model, "encode_prompt"):
        return None
    n = len(model.encode_prompt(model.render(template, prompt), template))
    if n + new_tokens <= limit:
        return None
    return (f"{who or model.name}'s context is {limit} tokens; the prompt has {n} and up to {new_tokens} more are "
            "needed; shorten the prompt or lower the token limits.")


def top_entropy(logprobs: Sequence[float]) -> float:
    """The entropy (nats) of a distribution known by its top log-probs: those outcomes, and the rest of the
    mass as one more.  A lower bound of the whole vocabulary's entropy, close when the top ones hold most
    of the mass."""
    probs = [math.exp(x) for x in logprobs]
    rest = max(0.0, 1.0 - sum(probs))
    return -sum(p * math.log(p) for p in (*probs, rest) if p > 0)


def stop_index(text: str, stop: Sequence[str]) -> int | None:
    """Where ``text`` is cut by the first occurrence of any stop string (OpenAI semantics: the stop string
    is not part of the response), or None.  The same rule for local sampling, remote engines (whose own
    check sees only one request's text: a stop string spanning two chunks is caught here) and CBS."""
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return min(hits) if hits else None


def per_row(value, rows: int) -> list:
    """``value`` for each of ``rows`` rows: a list or tuple as it is (it must have one entry per row), anything
    else repeated."""
    if isinstance(value, (list, tuple)):
        if len(value) != rows:
            raise ValueError(f"expected one value per row ({rows}), got {len(value)}.")
        return list(value)
    return [value] * rows


def special_token_ids(tokenizer) -> set[int]:
    """The tokenizer's special tokens: its named ones and the added tokens flagged special (not the added
    tokens that are text, such as Qwen3's ``<think>``)."""
    return set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def chat_turn_end_id(tokenizer) -> int | None:
    """The special token a chat template writes after an assistant turn (``<|eot_id|>`` for Llama-3-Instruct,
    ``<|im_end|>`` for ChatML, ``<end_of_turn>`` for Gemma, ``</s>`` for Llama-2), or None when the template
    writes no special token there (or there is no chat template)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None
    mark = "\u2063w2s-turn-end\u2063"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": mark}],
                                             tokenize=False)
    except Exception:  # a template with stricter role rules; treat as unknown
        return None
    if mark not in text:
        return None
    special = special_token_ids(tokenizer)
    for token_id in tokenizer(text[text.rindex(mark) + len(mark):], add_special_tokens=False)["input_ids"]:
        if token_id in special:
            return token_id
        if tokenizer.decode([token_id]).strip():  # text, not a special token, comes first
            return None
    return None


def render_prompt(tokenizer, name: str, template: str, prompt: str, hint: str = "") -> str:
    """``template.format(prompt=prompt)``, or ``tokenizer``'s chat template for ``"chat"``: the prompt is
    the user turn, or a :class:`Conversation`'s messages, followed by the assistant's generation prompt."""
    if template != "chat":
        return template.format(prompt=prompt)
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"template 'chat' needs a chat template, and {name} has none{hint}; "
                         "pass a format string such as '{prompt}' instead.")
    messages = list(prompt.messages) if isinstance(prompt, Conversation) else [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass(frozen=True)
class SamplingParams:
    """How the large model samples tokens.

    The repetition controls have the meanings users know: ``repetition_penalty`` and
    ``no_repeat_ngram_size`` those of ``transformers`` (over the prompt and the response so far),
    ``frequency_penalty`` and ``presence_penalty`` those of the OpenAI API (over the response so far).
    They act on the logits before the temperature, top-k and top-p, in that order.

    Attributes:
        temperature: softmax temperature; 0 means greedy decoding.
        top_p: nucleus sampling mass in (0, 1]; 1 disables it.
        top_k: keep the k most likely tokens; 0 disables it.
        stop: strings that end a response (OpenAI semantics: the stop string is not part of the text).
        repetition_penalty: divides the positive logits, and multiplies the negative ones, of every token
            already in the prompt or the response (``transformers``' and vLLM's meaning); 1 disables it,
            above 1 discourages repeats.
        frequency_penalty: subtracted from a token's logit once per time it occurs in the response so far
            (the OpenAI API's meaning), in [-2, 2]; 0 disables it.
        presence_penalty: subtracted from the logit of every token that occurs in the response so far (the
            OpenAI API's meaning), in [-2, 2]; 0 disables it.
        no_repeat_ngram_size: never draw a token that would repeat an n-gram of this many tokens already in
            the prompt or the response (``transformers``' meaning); 0 disables it.
    """

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 50
    stop: tuple[str, ...] = ()
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self) -> None:
        check_range("temperature", self.temperature, low=0.0)
        check_range("top_p", self.top_p, low=0.0, high=1.0, low_open=True)
        check_range("top_k", self.top_k, low=0, integer=True)
        object.__setattr__(self, "stop", check_stop(self.stop))
        check_range("repetition_penalty", self.repetition_penalty, low=0.0, low_open=True)
        check_range("frequency_penalty", self.frequency_penalty, low=-2.0, high=2.0)
        check_range("presence_penalty", self.presence_penalty, low=-2.0, high=2.0)
        check_range("no_repeat_ngram_size", self.no_repeat_ngram_size, low=0, integer=True)

    @property
    def repetition_controls(self) -> dict:
        """The repetition controls that are on (name -> value); empty when none is."""
        off = {"repetition_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0, "no_repeat_ngram_size": 0}
        return {name: getattr(self, name) for name, value in off.items() if getattr(self, name) != value}

    @classmethod
    def preset(cls, name: str, **overrides) -> "SamplingParams":
        """The named settings of :data:`SAMPLING_PRESETS`, with ``overrides`` on top."""
        check_choice("preset", name, SAMPLING_PRESETS)
        return cls(**{**SAMPLING_PRESETS[name], **overrides})


# named sampling settings: the authors' own, as their code sets them
SAMPLING_PRESETS = {
    # Weak-to-Strong Search (Zhou et al. 2024): the sampling of their scripts (also SamplingParams' defaults)
    "weak-to-strong": {"temperature": 0.7, "top_p": 1.0, "top_k": 50},
    # Stream Aligner (Lou et al. 2025): their upstream's vLLM sampling (generation/generation.py)
    "stream-aligner": {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "frequency_penalty": 1.2},
}


def check_sampling(sampling) -> None:
    """A config's ``sampling`` field must be a :class:`SamplingParams` (it validated itself when built)."""
    if not isinstance(sampling, SamplingParams):
        raise ValueError(f"sampling must be a w2s.SamplingParams (e.g. SamplingParams(temperature=0.7)), "
                         f"got {sampling!r}.")


@dataclass
class Continuation:
    """One sampled continuation of a beam.

    ``text`` is the whole response so far (not only the new chunk), decoded from whole characters only:
    bytes of a character that a chunk boundary split are held back until the character is complete.
    ``finished`` is true only when the response really ended (end-of-sequence token or a stop string),
    never when it was cut by a length limit.  ``drawn`` counts the tokens sampled for it in this
    expansion (tokens sampled past a chunk-end cut and rolled back included; None when the backend cannot
    tell, and then the search counts ``num_tokens`` minus the parent's).  ``error`` is set when a remote
    backend could not sample for this prompt (after retries): every continuation of that prompt then
    carries it, and the search ends the prompt with that error instead of a response; ``failure`` is
    that :class:`RemoteError` itself (its kind and the engine's HTTP status).
    """

    prompt_index: int
    parent: int
    text: str
    finished: bool
    num_tokens: int
    token_ids: list[int] = field(default_factory=list, repr=False)
    error: str | None = None
    drawn: int | None = None
    failure: RemoteError | None = field(default=None, repr=False)


@runtime_checkable
class SearchSession(Protocol):
    """A batch of prompts being generated, with a set of live (unfinished) beams per prompt."""

    def expand(self, parents: Sequence[int], n: int | Sequence[int], max_tokens: int | Sequence[int],
               end: Callable[[str], int | None] | None = None, entropy: float | None = None) -> list[Continuation]:
        """Sample ``n`` continuations of at most ``max_tokens`` tokens for each live beam in ``parents``.

        ``parents`` index the live beams (initially one empty beam per prompt, index = prompt index).
        ``n`` and ``max_tokens`` are one number for all parents or one per parent.  ``end(new_text)``, when
        given, ends a continuation's chunk early: it sees the text sampled in this expansion and returns
        where to cut it (the continuation's text then ends exactly there, unfinished) or None to go on.
        ``entropy``, when given, ends a chunk before the token at which the model's next-token entropy (nats)
        reaches it, once the chunk has :data:`ENTROPY_MIN_TOKENS` tokens (remotely, estimated from the
        engine's top log-probs: :func:`top_entropy`).
        Returns ``sum(n)`` continuations, grouped by parent in the order given.
        """
        ...

    def select(self, indices: Sequence[int]) -> None:
        """Keep these continuations (indices into the last :meth:`expand` result) as the live beams.

        Finished continuations must not be selected: they are never expanded again.
        """
        ...


@runtime_checkable
class LanguageModel(Protocol):
    """A model that samples continuations and scores given texts."""

    name: str

    def render(self, template: str, prompt: str) -> str:
        """Apply a prompt template: a format string with ``{prompt}``, or ``"chat"`` for the chat template."""
        ...

    def open(
        self, prompts: Sequence[str], params: SamplingParams, seeds: Sequence[int], template: str = "{prompt}"
    ) -> SearchSession:
        """Start generating for ``prompts`` (raw prompts, rendered with ``template``)."""
        ...

    def response_logprobs(self, template: str, incremental: bool = True, batch_size: int = 32
                          ) -> "ResponseLogProbs":
        """A scorer of response log-likelihoods under this model with the given prompt template, running at
        most ``batch_size`` texts per forward pass (or request)."""
        ...

    def generator(self, n_rows: int, params: SamplingParams, seeds: Sequence[int], template: str = "{prompt}"
                  ) -> "TextGenerator":
        """Rows of text continued call after call (the Stream Aligner's upstream and aligner)."""
        ...


class TextGenerator(Protocol):
    def generate(self, contexts: dict[int, str], max_new_tokens: int, stop=None) -> dict[int, tuple[str, bool]]:
        """Continue each row's ``contexts[row]`` (prompt rendered in the generator's template, then the
        partial response).  ``stop(text)`` sees the new text so far and returns where to cut it, or None
        to go on.  Returns row -> (new text, ended), ``ended`` true only at the end of the response (a
        cut by ``stop`` or ``max_new_tokens`` is not an end).  Row ``i`` samples from its own seed."""
        ...

    def generate_confident(self, contexts: dict[int, str], max_new_tokens: int, threshold: float,
                           keep_first: bool = True) -> dict[int, "Confident"]:
        """Continue each row while the model is sure: it stops before the first token (after its first, with
        ``keep_first``) where the top probability of its raw next-token distribution is below
        ``threshold``.  Generators that cannot tell (no log-probabilities) lack this method."""
        ...


@dataclass
class Confident:
    """What a row wrote while its model was sure (``generate_confident`` of a generator, what Nudging asks
    of the large model).

    ``text`` is what it wrote, ``ended`` true when that ended the response, ``top`` the top probability of
    its raw next-token distribution before the first token (how sure it was where it started), and
    ``tokens`` the tokens it drew (its end token included; those of an incomplete last character are held
    back from ``text`` and carried into the row's next call).
    """

    text: str
    ended: bool
    top: float
    tokens: int


class ResponseLogProbs(Protocol):
    def __call__(
        self, prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool]
    ) -> list[float]:
        """Sum of log p(response token | context) over the response tokens (+ EOS when finished)."""
        ...
