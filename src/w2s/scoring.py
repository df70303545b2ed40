"""Scorers: map (prompt, responses, finished) to floats; the search keeps what scores highest.

Weak-to-Strong Search (Zhou et al. 2024, arXiv 2405.19262) scores a partial response y of prompt x by

    score(x, y) = log pi_tuned(y | x) - log pi_untuned(y | x)                  (the paper's Eq. 4 objective)

because under KL-constrained RL the optimal policy satisfies r(x, y) = beta log pi*(y|x)/pi_ref(y|x) + c,
so the log-ratio of a tuned/untuned pair is an implicit reward and, on partial responses, a value.
Any other scorer (a reward model, a Python callable on text) plugs into the same place.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, runtime_checkable

from .backends.base import context_error
from .validation import check_template


@runtime_checkable
class Scorer(Protocol):
    def score(
        self, prompt: str | Sequence[str], responses: Sequence[str], finished: Sequence[bool]
    ) -> list[float]:
        """One float per response; ``prompt`` is one prompt for all, or one per response.

        ``finished[i]`` is true when response i really ended (EOS or a stop string), not when it was
        cut by a length limit.
        """
        ...


def _prompts(prompt: str | Sequence[str], n: int) -> list[str]:
    if isinstance(prompt, str):
        return [prompt] * n
    prompts = list(prompt)
    if len(prompts) != n:
        raise ValueError(f"prompt must be one string or one per response ({n}), got {len(prompts)}.")
    return prompts


def _check_lengths(responses: Sequence[str], finished: Sequence[bool]) -> None:
    if len(responses) != len(finished):
        raise ValueError(f"finished must have one entry per response ({len(responses)}), got {len(finished)}.")


class LogRatioScorer:
    """Sum over response tokens of log p_tuned - log p_untuned (float32 log-softmax, summed in float64).

    Each small model has its own prompt template (a format string with ``{prompt}``, or ``"chat"``),
    and re-tokenizes the response text itself, so the large model may use any tokenizer.  Scoring is
    incremental: each model keeps the KV cache rows of the previous call and forwards only the tokens
    after the longest common prefix of ids (set ``incremental=False`` to score from scratch).
    """

    def __init__(
        self,
        tuned,
        untuned,
        tuned_template: str = "{prompt}",
        untuned_template: str = "{prompt}",
        *,
        incremental: bool = True,
        batch_size: int = 32,
    ):
        check_template("tuned_template", tuned_template)
        check_template("untuned_template", untuned_template)
        self.tuned, self.untuned = tuned, untuned
        self.tuned_template, self.untuned_template = tuned_template, untuned_template
        self._tuned = tuned.response_logprobs(tuned_template, incremental=incremental, batch_size=batch_size)
        self._untuned = untuned.response_logprobs(untuned_template, incremental=incremental, batch_size=batch_size)
        # a tuned/untuned pair usually shares its tokenizer: then each response is tokenized once
        self._same_tokens = (tuned_template == untuned_template and hasattr(self._tuned, "sequences")
                             and hasattr(self._untuned, "sequences") and _same_tokenizer(tuned, untuned))

    def score(self, prompt, responses, finished) -> list[float]:
        _check_lengths(responses, finished)
        prompts = _prompts(prompt, len(responses))
        if not responses:
            return []
        if self._same_tokens:
            seqs = self._tuned.sequences(prompts, responses, finished)
            tuned = self._tuned(prompts, responses, finished, seqs)
            untuned = self._untuned(prompts, responses, finished, seqs)
        else:
            tuned = self._tuned(prompts, responses, finished)
            untuned = self._untuned(prompts, responses, finished)
        return [a - b for a, b in zip(tuned, untuned)]

    @property
    def last_tokens(self) -> list[int] | None:
        """Guide tokens run for each response of the last :meth:`score` call, both guides summed (what the
        KV caches held already not counted); None when a guide cannot tell (a remote one)."""
        counts = [getattr(lp, "last_tokens", None) for lp in (self._tuned, self._untuned)]
        return None if None in counts else [a + b for a, b in zip(*counts)]

    def context_error(self, prompt: str, new_tokens: int) -> str | None:
        """Why a response of ``new_tokens`` tokens to ``prompt`` (and its scored end token) would not fit a
        guide's context, or None."""
        return (guide_context_error(self.tuned, self.tuned_template, prompt, new_tokens, "tuned")
                or guide_context_error(self.untuned, self.untuned_template, prompt, new_tokens, "untuned"))

    def reset(self) -> None:
        """Drop the cached rows (they are replaced at every call anyway), of a scorer that keeps any."""
        for logprobs in (self._tuned, self._untuned):
            if hasattr(logprobs, "reset"):  # beyond the ResponseLogProbs protocol: an optional extra
                logprobs.reset()


def guide_context_error(guide, template: str, prompt: str, new_tokens: int, role: str) -> str | None:
    """Why a response of ``new_tokens`` tokens to ``prompt``, and the end token a finished one is scored
    with, would not fit the ``role`` ("tuned" or "untuned") guide's context, or None."""
    return context_error(guide, template, prompt, new_tokens + 1, who=f"the {role} guide")


def _same_tokenizer(a, b) -> bool:
    """Whether two local models tokenize (and add special tokens) identically: same fast tokenizer and ids."""
    ta, tb = a.tokenizer, b.tokenizer
    if ta is tb:
        return True
    same = lambda attr: getattr(a, attr, None) == getattr(b, attr, None)  # noqa: E731
    if not all(same(x) for x in ("prefix_ids", "start_id", "eos_id", "turn_end_id")):
        return False
    if getattr(ta, "chat_template", None) != getattr(tb, "chat_template", None):
        return False
    backend_a, backend_b = getattr(ta, "backend_tokenizer", None), getattr(tb, "backend_tokenizer", None)
    return backend_a is not None and backend_b is not None and backend_a.to_str() == backend_b.to_str()


class RewardModelScorer:
    """A sequence-classification reward model on ``template(prompt) + response``.

    Args:
        model: a ``transformers`` ``AutoModelForSequenceClassification``.
        tokenizer: its tokenizer.
        template: format string with ``{prompt}``; the response is appended to it.
        label: which output logit is the reward (0 for single-output reward models).
    """

    def __init__(self, model, tokenizer, template: str = "{prompt}", label: int = 0, batch_size: int = 16):
        check_template("template", template)
        if template == "chat":
            raise ValueError("template 'chat' is not supported by RewardModelScorer; pass a format string.")
        self.model, self.tokenizer, self.template = model.eval(), tokenizer, template
        self.label, self.batch_size = label, batch_size
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:  # Llama-family reward models: the model finds
            model.config.pad_token_id = tokenizer.pad_token_id  # each row's last token by it in a batch
        config = model.config
        self.max_length = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    @classmethod
    def from_pretrained(cls, path: str, device: str = "cpu", **kwargs) -> "RewardModelScorer":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from .backends.transformers import resolve_device

        model = AutoModelForSequenceClassification.from_pretrained(path).to(resolve_device(device))
        return cls(model, AutoTokenizer.from_pretrained(path), **kwargs)

    def score(self, prompt, responses, finished) -> list[float]:
        import torch  # here: the search configs import this module for the command line's flags

        with torch.inference_mode():
            return self._score(prompt, responses, finished)

    def _score(self, prompt, responses, finished) -> list[float]:
        _check_lengths(responses, finished)
        texts = [self.template.format(prompt=p) + r for p, r in zip(_prompts(prompt, len(responses)), responses)]
        device = next(self.model.parameters()).device
        scores: list[float] = []
        for k in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[k : k + self.batch_size], return_tensors="pt", padding=True)
            length = batch["attention_mask"].sum(dim=1).max().item()
            if self.max_length and length > self.max_length:  # never a reward for a text cut short
                raise ValueError(f"RewardModelScorer: a prompt and response of {length} tokens is longer than the "
                                 f"reward model's {self.max_length} positions.")
            logits = self.model(**batch.to(device)).logits
            scores += logits[:, self.label].float().tolist()
        return scores


class CallableScorer:
    """Wrap ``fn(prompt, response) -> float`` (e.g. a rule or a classifier on text) as a scorer."""

    def __init__(self, fn: Callable[[str, str], float]):
        self.fn = fn

    def score(self, prompt, responses, finished) -> list[float]:
        _check_lengths(responses, finished)
        return [float(self.fn(p, r)) for p, r in zip(_prompts(prompt, len(responses)), responses)]


def as_scorer(obj) -> Scorer:
    """Accept a scorer or a plain callable ``fn(prompt, response) -> float``."""
    if isinstance(obj, Scorer):
        return obj
    if callable(obj):
        return CallableScorer(obj)
    raise TypeError(f"scorer must have a .score(prompt, responses, finished) method or be callable, got {obj!r}.")
