"""Emulated fine-tuning (EFT) / proxy-tuning: a token-level baseline for weak-to-strong search.

Mitchell et al. 2023 (arXiv 2310.12962), Liu et al. 2024 (arXiv 2401.08565), as compared in Zhou et al.
2024 (arXiv 2405.19262): at every step the next-token distribution is

    log p(y_t | x, y_<t) = log pi_strong + beta * (log pi_tuned - log pi_untuned)   (then normalized)

followed by the usual temperature / top-k / top-p sampling.  White-box and token level: all three models
must share one vocabulary (the vocabularies themselves are compared, not only their sizes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

from ..backends.base import SamplingParams, check_sampling
from ..validation import check_range, check_template
from .cbs import Sampling, SearchResult

if TYPE_CHECKING:  # torch is imported when EFT runs, not with the command line's flags
    import torch

    from ..backends.transformers import LocalSearchSession, TransformersModel


def check_same_vocabulary(strong, **guides) -> None:
    """Raise ``ValueError`` unless every guide's tokenizer has exactly the strong model's vocabulary."""
    reference = strong.tokenizer.get_vocab()
    for name, model in guides.items():
        vocab = model.tokenizer.get_vocab()
        if vocab != reference:
            differing = sorted(set(vocab.items()) ^ set(reference.items()), key=lambda kv: kv[1])[:3]
            raise ValueError(
                f"EFT needs one shared vocabulary, but the {name} model's vocabulary ({len(vocab)} tokens) "
                f"differs from the strong model's ({len(reference)} tokens), e.g. {differing}; "
                "use chunk-level beam search (method 'cbs'), which works across tokenizers."
            )


@dataclass(frozen=True)
class EmulatedFineTuning:
    """EFT sampling.

    Attributes:
        beta: weight of the tuned/untuned log-ratio added to the strong model's log-probabilities.
        max_new_tokens: length limit of a response, in large-model tokens.
        sampling: temperature, top_p, top_k and stop strings, applied to the mixed distribution.
    """

    beta: float = 1.0
    max_new_tokens: int = 50
    sampling: SamplingParams = field(default_factory=SamplingParams)

    method = "eft"

    def __post_init__(self) -> None:
        check_range("beta", self.beta, low=0.0)
        check_range("max_new_tokens", self.max_new_tokens, low=1, integer=True)
        check_sampling(self.sampling)

    def generate(
        self,
        strong: TransformersModel,
        tuned: TransformersModel,
        untuned: TransformersModel,
        prompts: Sequence[str],
        *,
        seed: int = 0,
        strong_template: str = "{prompt}",
        tuned_template: str = "{prompt}",
        untuned_template: str = "{prompt}",
        scorer=None,
        batch_size: int = 8,
        progress: bool = False,
        start_index: int = 0,
    ) -> Iterator[SearchResult]:
        """Sample one response per prompt; ``scorer`` (optional) gives each result its score."""
        for name, template in [("strong_template", strong_template), ("tuned_template", tuned_template),
                               ("untuned_template", untuned_template)]:
            check_template(name, template)
        check_same_vocabulary(strong, tuned=tuned, untuned=untuned)
        sampler = _EFTModel(self.beta, strong, strong_template, (tuned, tuned_template), (untuned, untuned_template))
        search = Sampling(max_new_tokens=self.max_new_tokens, sampling=self.sampling)
        for result in search.generate(sampler, scorer, prompts, seed=seed, batch_size=batch_size,
                                        progress=progress, start_index=start_index):
            result.method = self.method
            if result.guide_tokens is not None:  # the guides run every sampled token beside the strong model
                result.guide_tokens += 2 * result.sampled_tokens
            yield result


class _EFTModel:
    """The three models in lock step, sampled as one model (see :class:`LocalSearchSession`)."""

    def __init__(self, beta: float, strong: TransformersModel, strong_template: str, *guides):
        self.beta, self.strong, self.strong_template, self.guides = beta, strong, strong_template, guides
        # ids of real tokens: columns past them are embedding rows padded beyond the tokenizer (Qwen, Pythia...),
        # whose widths may differ between models of one vocabulary
        self.vocab_size = max(strong.tokenizer.get_vocab().values()) + 1

    def _combine(self, logits: list[torch.Tensor]) -> torch.Tensor:
        """[rows, strong width]: log-softmax over the real tokens, mixed; padded columns -inf (never drawn)."""
        import torch

        n, device = self.vocab_size, logits[0].device  # the guides may live on other devices
        strong, tuned, untuned = (x[:, :n].to(device).float().log_softmax(dim=-1) for x in logits)
        mixed = strong + self.beta * (tuned - untuned)
        width = logits[0].shape[-1]
        if width > n:
            mixed = torch.cat([mixed, mixed.new_full((mixed.shape[0], width - n), float("-inf"))], dim=-1)
        return mixed

    def open(self, prompts, params, seeds, template=None) -> "LocalSearchSession":
        from ..backends.transformers import LocalSearchSession

        # every model sees its context by the same BOS rule (TransformersModel.encode_prompt)
        streams = [(model, [model.encode_prompt(model.render(tmpl, p), tmpl) for p in prompts])
                   for model, tmpl in [(self.strong, self.strong_template), *self.guides]]
        return LocalSearchSession(self.strong, params, seeds, streams, combine=self._combine)
