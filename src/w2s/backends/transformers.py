"""Local models through ``transformers``: loading, chunked sampling with a kept KV cache, log-probabilities.

The large model's cache is kept across chunks: a beam's prefix is encoded once, its rows are reordered
(``Cache.reorder_cache``) when beams are selected, and the last token of a chunk is forwarded only for
the beams that survive.  Small models score responses incrementally: a new response is matched to the
cached row with the longest common prefix of token ids and only the tokens after it are forwarded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..validation import check_choice, check_range
from .base import (ANCHOR_TOKENS, ENTROPY_MIN_TOKENS, MAX_TOKENS_PER_FORWARD, Confident, Continuation, SamplingParams,
                   chat_turn_end_id, context_length_of, per_row, render_prompt, special_token_ids)
from .kv_rows import KVRows, check_model, rows_beat_branches
from .logprobs import common_prefix_length
from .sampling import sample_rows

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Tokens that end a text or a turn in common tokenizers; each counts as end-of-sequence when present.
END_TOKENS = ("<|endoftext|>", "<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "</s>", "<eos>")


# a model folder holds one of these for its tokenizer (without, transformers may build an empty one)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}.")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device is {device!r} but no CUDA device is available; use device='cpu'.")
    return torch.device(device)


def load_model(
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    device: str = "cpu",
    gguf_file: str | None = None,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    offload_folder: str | os.PathLike | None = None,
    max_tokens_per_forward: int | None = MAX_TOKENS_PER_FORWARD,
) -> "TransformersModel":
    """Load a causal LM and its tokenizer from a directory, or from a ``.gguf`` file.

    Args:
        path: a ``transformers`` model directory (or hub id, when online), or a path to a GGUF file.
        dtype: ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        gguf_file: a GGUF file name inside ``path`` (alternative to passing the file's path).
        device_map: a ``transformers`` device map (``"auto"``, or module -> device) that spreads a large
            model over several devices through accelerate; it replaces ``device``.
        max_memory: with ``device_map``, the memory each device may hold (e.g. ``{0: "20GiB", "cpu": "60GiB"}``).
        offload_folder: with ``device_map``, where modules mapped to ``"disk"`` keep their weights.
        max_tokens_per_forward: the most query tokens (rows times new positions) one forward runs;
            longer forwards run as several calls (None: no bound).  See :data:`MAX_TOKENS_PER_FORWARD`.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..names import resolve_model

    check_choice("dtype", dtype, DTYPES)
    check_range("max_tokens_per_forward", max_tokens_per_forward, low=1, integer=True, allow_none=True)
    torch_device = resolve_device(device) if device_map is None else None
    path = Path(resolve_model(path))
    if path.suffix == ".gguf" and gguf_file is None:
        path, gguf_file = path.parent, path.name
    if gguf_file is not None and not (path / gguf_file).is_file():
        raise ValueError(f"gguf_file {str(path / gguf_file)!r} does not exist.")
    if gguf_file is None and not path.exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        raise ValueError(f"model path {str(path)!r} does not exist (and HF_HUB_OFFLINE=1 forbids the hub).")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    if (path / "adapter_config.json").is_file():  # a LoRA adapter: merged into its base model
        if device_map is not None:
            raise ValueError(f"device_map is not supported for a LoRA adapter ({path}); use device.")
        from .adapters import load_adapter  # merged into its base once, then cached (w2s.backends.adapters)

        model, tokenizer = load_adapter(path, DTYPES[dtype])
        model = model.to(torch_device)
    else:
        if path.is_dir() and gguf_file is None and not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise ValueError(f"model folder {str(path)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
                             "copy the model's tokenizer files beside its weights.")
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        if device_map is not None:
            kwargs.update(device_map=device_map, max_memory=max_memory, offload_folder=offload_folder)
        elif max_memory is not None or offload_folder is not None:
            raise ValueError("max_memory and offload_folder need a device_map (e.g. device_map='auto').")
        from safetensors import SafetensorError

        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], **kwargs)
        except SafetensorError as err:
            raise ValueError(f"model {str(path)!r}: its weights cannot be read ({err}); the download or copy may be "
                             "incomplete.") from None
        if torch_device is not None:
            model = model.to(torch_device)
    model.eval()
    name = str(path / gguf_file) if gguf_file else str(path)
    return TransformersModel(model, tokenizer, name=name, max_tokens_per_forward=max_tokens_per_forward)


class TransformersModel:
    """A local causal LM: samples continuations in chunks and computes log-probabilities of texts.

    Token rules, the same for the large model, the guides (scoring and EFT) and the aligners:

    - **Start of a context (BOS).** A prompt rendered by a format string gets the special tokens the
      tokenizer puts in front of a text (BOS for Llama, Mistral and Gemma tokenizers; nothing for GPT-2
      or Qwen ones): :attr:`prefix_ids`.  A chat-template rendering gets none added, since the template
      writes its own.  A context that would still be empty starts with :attr:`start_id` (BOS, else EOS).
    - **End of a response.** Sampling stops at any of :attr:`eos_ids` (EOS, the generation config's end
      tokens, the end-of-turn token of the chat template and common end tokens).  The end token that is
      *scored* is :meth:`end_id`: the chat template's end-of-turn token under ``"chat"``, EOS otherwise.
    - **Banned tokens.** :attr:`banned_ids` are never sampled: special tokens that are not text (other
      than end tokens) and logit columns without a token (embedding rows padded past the tokenizer).
      Added tokens that are not special (``<think>``, ``<tool_call>``) are text and may be sampled.
      Pass ``banned_ids=`` to replace the set.
    - **Response text.** Ids are decoded relative to their context (:meth:`decode_after`), because
      SentencePiece decoders drop the leading space of a text's first token.
    """

    def __init__(self, model, tokenizer, name: str = "model", *, banned_ids: Iterable[int] | None = None,
                 max_tokens_per_forward: int | None = MAX_TOKENS_PER_FORWARD):
        # refuse caches that cannot be rolled back (recurrent, hybrid) when loaded; every KVRows reuses the plan
        self.cache_plan = check_model(model)
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.device = next(model.parameters()).device
        vocab = tokenizer.get_vocab()
        self.turn_end_id = chat_turn_end_id(tokenizer)
        self.eos_ids = _end_token_ids(tokenizer, model, vocab) | ({self.turn_end_id} - {None})
        if not self.eos_ids:
            raise ValueError(f"model {name!r}: its tokenizer has no end-of-sequence token.")
        self.eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else min(self.eos_ids)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else self.eos_id
        self.prefix_ids = _prefix_ids(tokenizer)
        self.num_logits = model.get_output_embeddings().weight.shape[0]
        self.context_length = context_length_of(getattr(model, "config", None))  # tokens; None if unknown
        check_range("max_tokens_per_forward", max_tokens_per_forward, low=1, integer=True, allow_none=True)
        self.max_tokens_per_forward = max_tokens_per_forward  # see load_model; read by every new KVRows
        self.banned_ids = (sorted(_non_text_token_ids(tokenizer, self.num_logits, vocab) - self.eos_ids)
                           if banned_ids is None else banned_ids)

    @property
    def banned_ids(self) -> list[int]:
        """Token ids never sampled (see the class docstring); assignable."""
        return self._banned.tolist()

    @banned_ids.setter
    def banned_ids(self, ids: Iterable[int]) -> None:
        ids = sorted({int(i) for i in ids})
        bad = [i for i in ids if not 0 <= i < self.num_logits]
        if bad:
            raise ValueError(f"banned_ids must be token ids in [0, {self.num_logits}) for {self.name!r}, got {bad[:5]}.")
        self._banned = torch.tensor(ids, dtype=torch.long, device=self.device)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # -- text <-> ids ---------------------------------------------------------------------------------
    def render(self, template: str, prompt: str) -> str:
        """``template.format(prompt=prompt)``, or the chat template (see :func:`w2s.backends.base.render_prompt`)."""
        return render_prompt(self.tokenizer, f"the tokenizer of {self.name}", template, prompt)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens (the scoring definition)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` of each text, in one batched tokenizer call."""
        return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []

    def context_prefix(self, template: str) -> list[int]:
        """Special tokens put before a context rendered with ``template`` (the BOS rule)."""
        return [] if template == "chat" else list(self.prefix_ids)

    def encode_prompt(self, text: str, template: str) -> list[int]:
        """Ids a model is conditioned on (the BOS rule in the class docstring).  Never empty."""
        return (self.context_prefix(template) + self.encode(text)) or [self.start_id]

    def end_id(self, template: str) -> int:
        """The end token scored after a finished response: the chat template's end of turn, else EOS."""
        return self.turn_end_id if template == "chat" and self.turn_end_id is not None else self.eos_id

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def decode_after(self, context: Sequence[int], ids: Sequence[int]) -> str:
        """The text ``ids`` add after ``context`` (ids): decoded with the context's last tokens in front, which
        are then taken off, so a first token's leading space (``"▁How"``) is kept where a decoder alone
        would drop it."""
        anchor = list(context[-ANCHOR_TOKENS:])
        if anchor:
            head, full = self.decode(anchor), self.decode(anchor + list(ids))
            if full.startswith(head) and not head.endswith("\ufffd"):
                return full[len(head):]
        return self.decode(ids)

    # -- sampling -------------------------------------------------------------------------------------
    def open(
        self, prompts: Sequence[str], params: SamplingParams, seeds: Sequence[int], template: str = "{prompt}"
    ) -> "LocalSearchSession":
        ids = [self.encode_prompt(self.render(template, p), template) for p in prompts]
        return LocalSearchSession(self, params, seeds, [(self, ids)])

    @torch.inference_mode()
    def sample_next(self, logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor) -> torch.Tensor:
        """One token per row from ``logits`` [rows, vocab], by inverse-CDF sampling with ``uniforms`` [rows].

        Order as in ``transformers``: temperature, then top-k, then top-p (top-k is taken first here, which
        selects the same tokens).  ``logits`` is edited in place.  Tokens that are not text
        (special tokens other than end-of-sequence, ids the tokenizer does not know) are never drawn.
        """
        logits = logits.float()  # ours to edit: every caller passes fresh logits
        banned = self._banned[self._banned < logits.shape[-1]]
        if len(banned):
            logits.index_fill_(1, banned, float("-inf"))
        if params.temperature == 0:
            return logits.argmax(dim=-1)
        if params.top_k:  # top-k before the temperature: the same tokens, and only k columns to divide
            logits, order = logits.topk(min(params.top_k, logits.shape[-1]), dim=-1)  # sorted, descending
        elif params.top_p < 1.0:
            logits, order = logits.sort(dim=-1, descending=True)
        else:
            order = None
        logits = logits / params.temperature
        probs = logits.softmax(dim=-1)
        if params.top_p < 1.0:  # probs are sorted here: drop a token once the mass before it reaches top_p
            before = probs.cumsum(dim=-1) - probs
            probs = probs.masked_fill(before >= params.top_p, 0.0)
        cdf = probs.cumsum(dim=-1)
        u = uniforms.to(cdf.device, cdf.dtype).unsqueeze(1) * cdf[:, -1:]
        picked = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[-1] - 1)
        # guard against drawing a zero-probability token at the edge of float rounding
        picked = torch.where(probs.gather(1, picked) > 0, picked, probs.argmax(dim=-1, keepdim=True))
        return (order.gather(1, picked) if order is not None else picked).squeeze(1)

    def response_text(self, context: Sequence[int], ids: Sequence[int], finished: bool) -> str:
        """The response ``ids`` after ``context`` as text (:meth:`decode_after`); while unfinished, bytes of
        an incomplete trailing character are held back."""
        text = self.decode_after(context, ids)
        return text if finished else text.rstrip("\ufffd")

    # -- log-probabilities ----------------------------------------------------------------------------
    def response_logprobs(self, template: str, incremental: bool = True, batch_size: int = 32):
        from .logprobs import IncrementalLogProbs

        return IncrementalLogProbs(self, template, incremental=incremental, batch_size=batch_size)

    def new_rows(self) -> KVRows:
        return KVRows(self.model, self.pad_id, self.cache_plan, name=self.name,
                      max_tokens_per_forward=self.max_tokens_per_forward, context_length=self.context_length)

    def generator(self, n_rows: int, params: SamplingParams, seeds: Sequence[int], template: str = "{prompt}"
                  ) -> "IncrementalGenerator":
        return IncrementalGenerator(self, n_rows, params, seeds, template)


def _end_token_ids(tokenizer, model, vocab: dict[str, int]) -> set[int]:
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.generation_config, "eos_token_id", None)):
        if value is not None:
            ids.update([value] if isinstance(value, int) else value)
    ids.update(vocab[t] for t in END_TOKENS if t in vocab)
    return ids


def _non_text_token_ids(tokenizer, num_logits: int, vocab: dict[str, int]) -> set[int]:
    """Special tokens (``<start_of_image>``, ``<|im_start|>``...) plus logit columns without a token.
    Added tokens that are not special (``<think>``) are text: they are not in this set."""
    banned = special_token_ids(tokenizer)
    known = set(vocab.values())
    banned.update(i for i in range(num_logits) if i not in known)
    return banned


def _prefix_ids(tokenizer) -> list[int]:
    """The special tokens the tokenizer puts in front of a text (e.g. ``[bos]``); none for most BPE ones."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start]
    return []


class LocalSearchSession:
    """A generation session over a batch of prompts; see :class:`w2s.backends.base.SearchSession`.

    The rows of the KV cache are the live beams.  :meth:`expand` gives every parent row ``n`` branches
    that share its keys and values (:class:`KVRows`) and samples them in lock step, or, when the samples
    may outgrow what they share (:func:`rows_beat_branches`: Best-of-N's whole answers), copies each
    parent's row once per sample and samples the copies as rows of their own; :meth:`select` makes the
    surviving continuations the next rows, with one gather.  When a chunk ends, its last sampled token
    is *pending*: it is forwarded only if the beam survives, so rejected candidates cost nothing for it.
    A chunk cut by a chunk-end rule (``expand(..., end=...)``) ends exactly at the cut: the tokens sampled
    past it are rolled back, and a token the cut fell inside is replaced by the encoding of its part
    before the cut (pending too).

    Randomness: a branch draws its t-th token with key ``(prompt seed, d + t, lane)``, where ``d`` counts
    every token drawn on its path so far (those rolled back after a chunk-end cut too, so no key is drawn
    twice on a path) and its lane is its rank among its prompt's branches in this expansion, or its
    parent's lane when the parent has only this one branch (so a sample continued chunk after chunk draws
    as one long sample).

    Several models may run in lock step over the same token ids (``streams``), their next-token logits
    merged by ``combine``: that is how EFT samples from strong + beta * (tuned - untuned).
    """

    def __init__(
        self,
        lm: TransformersModel,
        params: SamplingParams,
        seeds: Sequence[int],
        streams: Sequence[tuple[TransformersModel, list[list[int]]]],
        combine=None,
    ):
        n_prompts = len(streams[0][1])
        if len(seeds) != n_prompts:
            raise ValueError(f"seeds must have one entry per prompt ({n_prompts}), got {len(seeds)}.")
        self.lm, self.params, self.combine = lm, params, combine or (lambda logits: logits[0])
        self.contexts = streams[0][1]  # each prompt's ids in the sampling model: response text is decoded after them
        self.stream_contexts = [ids for _, ids in streams]
        self.seeds = [int(s) for s in seeds]
        self.stream_rows = []  # each stream's KV cache rows: one row per live beam
        for model, _ in streams:
            rows = model.new_rows()
            rows.add_empty_rows(n_prompts)
            self.stream_rows.append(rows)
        self.next_logits = self.combine([rows.forward(ids, last_only=True)
                                         for rows, (_, ids) in zip(self.stream_rows, streams)])
        self.pending: list[list[int]] = [[] for _ in range(n_prompts)]  # each row's tokens not yet forwarded
        self.prompt_index = list(range(n_prompts))
        self.response_ids: list[list[int]] = [[] for _ in range(n_prompts)]
        self.response_texts = [""] * n_prompts
        self.lanes = [0] * n_prompts  # each row's random-number lane (see expand)
        self.draws = [0] * n_prompts  # tokens each row's path has drawn, rolled back ones too
        self.candidates: list[Continuation] = []
        # (row, branch, ids sampled, lane, draws): where each candidate sits and how it drew
        self.candidate_places: list[tuple[int, int, list[int], int, int]] = []

    def _regroup(self, sources: Sequence[tuple[int, int | None]], reserve: int = 0) -> None:
        for rows in self.stream_rows:
            rows.regroup(sources, reserve=reserve)

    def expand(self, parents: Sequence[int], n, max_tokens, end=None, entropy=None) -> list[Continuation]:
        if self.candidates:
            raise RuntimeError("select the survivors of the last expansion before expanding again.")
        parents = list(parents)
        ns, limits = per_row(n, len(parents)), per_row(max_tokens, len(parents))
        assert parents and min(ns) >= 1 and min(limits) >= 1
        if parents != list(range(len(self.prompt_index))):
            self._regroup([(p, None) for p in parents])
            self.next_logits = self.next_logits[torch.as_tensor(parents, device=self.next_logits.device)]
            self.pending = [self.pending[p] for p in parents]
            self.prompt_index = [self.prompt_index[p] for p in parents]
            self.response_ids = [self.response_ids[p] for p in parents]
            self.response_texts = [self.response_texts[p] for p in parents]
            self.lanes = [self.lanes[p] for p in parents]
            self.draws = [self.draws[p] for p in parents]
        own_rows = rows_beat_branches([len(ids) + len(t) for ids, t in zip(self.stream_rows[0].ids, self.pending)],
                                      [[limit] * k for k, limit in zip(ns, limits)])
        for rows in self.stream_rows:  # as branches, a column per branch per step
            rows.reserve(max(len(t) for t in self.pending) + (0 if own_rows else max(ns) * max(limits)))
        if any(self.pending):  # only the surviving beams' last tokens are forwarded
            logits = self.combine([rows.forward(self.pending, last_only=True) for rows in self.stream_rows])
            has_pending = torch.tensor([bool(t) for t in self.pending], device=logits.device)
            self.next_logits = torch.where(has_pending.unsqueeze(1), logits, self.next_logits)
            self.pending = [[] for _ in self.pending]
        places = [(r, k) for r, count in enumerate(ns) for k in range(count)]  # (row, branch) of each sample
        if own_rows:  # each sample gets a copy of its parent's row; its place is that row
            self._regroup([(r, None) for r, _ in places], reserve=max(limits))
            sample_places = [(i, None) for i in range(len(places))]

            def forward(tokens: list[int | None]) -> torch.Tensor:
                new = [[] if t is None else [t] for t in tokens]
                return self.combine([rows.forward(new, last_only=True) for rows in self.stream_rows])
        else:
            for rows in self.stream_rows:
                rows.branch([[len(ids)] * k for ids, k in zip(rows.ids, ns)])
            sample_places = places
            # the samples' rows in the [rows * max(ns)] logits (all of them, in order, when every parent has max(ns))
            at = None if len(set(ns)) == 1 else torch.tensor([r * max(ns) + k for r, k in places],
                                                              device=self.next_logits.device)

            def forward(tokens: list[int | None]) -> torch.Tensor:
                new = [[] for _ in parents]
                for (r, _), t in zip(places, tokens):
                    new[r].append([] if t is None else [t])
                logits = [rows.forward_branches(new, last_only=True)[:, : max(ns)] for rows in self.stream_rows]
                flat = [x.reshape(-1, x.shape[-1]) for x in logits]
                return self.combine(flat if at is None else [x[at] for x in flat])

        prompts = [self.prompt_index[r] for r, _ in places]
        lanes, seen = [], {}
        for (r, _), p in zip(places, prompts):  # a branch's lane: its rank among its prompt's branches, or its
            lanes.append(self.lanes[r] if ns[r] == 1 else seen.get(p, 0))  # parent's when it is the only one
            seen[p] = seen.get(p, 0) + 1
        keys = ([self.seeds[p] for p in prompts], [self.draws[r] for r, _ in places], lanes)
        contexts = [self.contexts[p] for p in prompts]
        stops = None if end is None else [_chunk_end(end, len(self.response_texts[r])) for r, _ in places]
        drawn = sample_rows(self.lm, self.params, self.next_logits[[r for r, _ in places]], forward, keys, contexts,
                            [limits[r] for r, _ in places], prefixes=[self.response_ids[r] for r, _ in places],
                            stop=stops, hold=None if entropy is None else entropy_hold(entropy))
        self.candidates, self.candidate_places = [], []
        for i, ((r, k), draw) in enumerate(zip(places, drawn)):
            ids = self.response_ids[r] + draw.ids
            if draw.reason == "cut":
                ids, text = self._ids_of(contexts[i], ids, draw.text, len(self.response_ids[r]))
            elif draw.reason == "stop":
                text = draw.text
            else:
                text = self.lm.response_text(contexts[i], ids, draw.ended)
            self.candidates.append(Continuation(prompts[i], parents[r], text, draw.ended, len(ids), ids,
                                                drawn=len(draw.ids)))
            self.candidate_places.append((*sample_places[i], self.response_ids[r] + draw.ids, lanes[i],
                                          self.draws[r] + len(draw.ids) + (draw.reason == "end")))
        return self.candidates

    def _ids_of(self, context: list[int], ids: list[int], text: str, start: int) -> tuple[list[int], str]:
        """Response ids whose text is ``text``, a cut of ``ids``' text, and that text: the longest prefix of
        ``ids`` (at least ``start`` long) whose text begins ``text``, then the rest of ``text`` encoded.  When
        that encoding does not give ``text`` back (a tokenizer that puts a space in front, bytes that are not
        valid UTF-8), the token the cut fell in is kept whole, and the chunk ends a little past the cut."""
        k = len(ids)
        head = self.lm.response_text(context, ids, finished=False)
        while k > start and not text.startswith(head):
            k -= 1
            head = self.lm.response_text(context, ids[:k], finished=False)
        if head == text:
            return ids[:k], text
        candidate = ids[:k] + self.lm.encode(text[len(head):])
        if self.lm.response_text(context, candidate, finished=False) == text:
            return candidate, text
        return ids[: k + 1], self.lm.response_text(context, ids[: k + 1], finished=False)

    def close(self) -> None:
        """Free the cache: nothing will be expanded again (the continuations already returned keep their text)."""
        self.stream_rows, self.next_logits = [], None

    def select(self, indices: Sequence[int]) -> None:
        for i in indices:
            if self.candidates[i].finished:
                raise ValueError(f"continuation {i} is finished and cannot be selected for expansion.")
        sources, keeps = [], []
        for i in indices:
            r, k, sampled, _, _ = self.candidate_places[i]
            ids = self.candidates[i].token_ids
            # the branch's cache holds all it sampled but the last token; the survivor keeps what it shares
            # with that (all of it, unless a cut re-encoded the end) and the rest is pending: at least one
            # token, whose logits sample next
            keep = min(common_prefix_length(ids, sampled[:-1]), len(ids) - 1)
            sources.append((r, k))
            keeps.append(keep)
        for rows, contexts in zip(self.stream_rows, self.stream_contexts):
            rows.regroup(sources, [len(contexts[self.candidates[i].prompt_index]) + keep
                                   for i, keep in zip(indices, keeps)])
        self.pending = [self.candidates[i].token_ids[keep:] for i, keep in zip(indices, keeps)]
        self.prompt_index = [self.candidates[i].prompt_index for i in indices]
        self.response_ids = [self.candidates[i].token_ids for i in indices]
        self.response_texts = [self.candidates[i].text for i in indices]
        self.lanes = [self.candidate_places[i][3] for i in indices]
        self.draws = [self.candidate_places[i][4] for i in indices]
        self.next_logits = self.next_logits.new_zeros(len(indices), self.next_logits.shape[-1])  # every row is pending
        self.candidates = []


def entropy_hold(threshold: float):
    """A ``hold`` of :func:`sample_rows` that ends a chunk before the token at which the next-token entropy
    (nats, over the whole vocabulary) reaches ``threshold``, once the chunk has ENTROPY_MIN_TOKENS tokens."""
    def hold(step: int, logits: torch.Tensor) -> list[bool]:
        if step < ENTROPY_MIN_TOKENS:
            return [False] * logits.shape[0]
        logp = logits.float().log_softmax(dim=-1)
        entropy = -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(dim=-1)
        return (entropy >= threshold).tolist()

    return hold


def _chunk_end(end, start: int):
    """A stop function on a whole response text from a chunk-end rule ``end`` on the text after ``start``."""
    def stop(text: str) -> int | None:
        cut = end(text[start:])
        return None if cut is None else start + cut

    return stop


class IncrementalGenerator:
    """Continues one text per row, keeping each row's KV cache between calls.

    At every call, row ``i``'s new context is matched to the ids its cache holds: the longest common
    prefix stays, the rest is rolled back, and only the new tokens are run.  That is how the Stream
    Aligner's upstream continues ``question + corrected prefix`` round after round without re-encoding
    the unchanged part.  ``stop(text)`` sees the text generated so far and returns where to cut it (a
    sentence end, say) or None to go on; the tokens sampled past the cut are rolled back next time.
    Row ``i`` draws its random numbers with key ``(seeds[i], draws so far, 0)`` (:func:`sample_rows`).
    Every forward adds columns to all rows; when holes (rolled-back tokens, rows that did not grow) make
    up most of them, the rows are compacted: before each call the cache holds at most twice the longest
    row's tokens (plus :attr:`SLACK`) columns.
    """

    SLACK = 64  # columns of holes allowed beyond the longest row's length before compacting

    def __init__(self, lm: TransformersModel, n_rows: int, params: SamplingParams, seeds: Sequence[int],
                 template: str = "{prompt}"):
        self.lm, self.params, self.template = lm, params, template
        self.seeds = [int(s) for s in seeds]
        self.draws = [0] * n_rows
        # with own_tokens, a row whose new context is its last one plus text it wrote, up to one of its token
        # boundaries, goes on from those tokens instead of the text encoded again (which may split it
        # otherwise): Nudging's models continue their own writing as if never interrupted
        self.own_tokens = False
        self.written: dict[int, tuple[str, list[int], list[int]]] = {}  # row -> (context, its ids, drawn ids)
        self.rows = lm.new_rows()
        self.rows.add_empty_rows(n_rows)
        self.tokens_run = 0  # tokens forwarded over all calls: what the cache saves shows here

    def rng_states(self, rows: Sequence[int]) -> dict[int, int]:
        """The rows' random-number positions, to draw the same numbers again after :meth:`restore_rng_states`."""
        return {i: self.draws[i] for i in rows}

    def restore_rng_states(self, states: dict[int, int]) -> None:
        for i, state in states.items():
            self.draws[i] = state

    def generate(self, contexts: dict[int, str], max_new_tokens: int, stop=None) -> dict[int, tuple[str, bool]]:
        """Continue ``contexts`` (row -> rendered text: prompt in its template, then the partial response);
        returns row -> (new text, ended) where ``ended`` is true at end-of-sequence or at one of the sampling
        parameters' stop strings (cut off, as remote engines do); a cut by ``stop`` or by
        ``max_new_tokens`` is not an end."""
        return {i: (text, drawn.ended) for i, (text, drawn) in self._draw(contexts, max_new_tokens, stop).items()}

    def generate_confident(self, contexts: dict[int, str], max_new_tokens: int, threshold: float,
                           keep_first: bool = True) -> dict[int, Confident]:
        """Continue ``contexts`` while the model is sure: a row stops before the first token (after its first,
        with ``keep_first``) at which its raw next-token distribution's top probability is below
        ``threshold`` (see :class:`w2s.backends.base.Confident`)."""
        tops: dict[int, float] = {}

        def hold(step: int, logits: torch.Tensor) -> list[bool]:
            top = logits.float().softmax(dim=-1).amax(dim=-1).tolist()
            if step == 0:
                tops.update({i: top[i] for i in contexts})
            return [(step > 0 or not keep_first) and p < threshold for p in top]

        return {i: Confident(text, drawn.ended, tops[i], len(drawn.ids) + (drawn.reason == "end"))
                for i, (text, drawn) in self._draw(contexts, max_new_tokens, None, hold).items()}

    def _draw(self, contexts: dict[int, str], max_new_tokens: int, stop=None, hold=None) -> dict[int, tuple]:
        """row -> (new text, :class:`Drawn`) for :meth:`generate` and :meth:`generate_confident`."""
        if not contexts:
            return {}
        rows = self.rows
        order = sorted(contexts)
        new = [[] for _ in range(len(rows))]
        keep = [len(ids) for ids in rows.ids]
        context_ids = [[] for _ in range(len(rows))]
        carried = [[] for _ in range(len(rows))]  # the tokens of an incomplete character the context ends in
        for i in order:
            own = self._own_ids(i, contexts[i]) if self.own_tokens else None
            if own is not None:
                context_ids[i], carried[i] = own
            else:
                context_ids[i] = self.lm.encode_prompt(contexts[i], self.template)
            ids = context_ids[i] + carried[i]
            # keep the shared prefix, but always re-run at least the last token: its logits start sampling
            keep[i] = min(common_prefix_length(ids, rows.ids[i]), len(ids) - 1)
            new[i] = ids[keep[i]:]
        rows.truncate(keep)
        if rows.num_columns > 2 * max(map(len, rows.ids)) + self.SLACK:  # mostly holes: rolled back, or rows
            rows.select(range(len(rows)))  # that did not grow while others did; copy each row's tokens together
        rows.reserve(max(map(len, new)) + max_new_tokens)
        logits = rows.forward(new, last_only=True)
        self.tokens_run += sum(map(len, new))

        def forward(tokens: list[int | None]) -> torch.Tensor:
            self.tokens_run += sum(t is not None for t in tokens)
            return rows.forward([[] if t is None else [t] for t in tokens], last_only=True)

        active = [i in contexts for i in range(len(rows))]
        drawn = sample_rows(self.lm, self.params, logits, forward, (self.seeds, self.draws, [0] * len(rows)),
                            context_ids, max_new_tokens, prefixes=carried, active=active, stop=stop, hold=hold)
        result = {}
        for i in order:
            draw = drawn[i]
            self.draws[i] += len(draw.ids) + (draw.reason == "end")
            text = (draw.text if draw.reason in ("stop", "cut")
                    else self.lm.response_text(context_ids[i], carried[i] + draw.ids, draw.ended))
            result[i] = (text, draw)
            self.written[i] = (contexts[i], context_ids[i], carried[i] + draw.ids)
        return result

    def _own_ids(self, row: int, context: str) -> tuple[list[int], list[int]] | None:
        """``context`` as the row's last context and the most of the tokens it wrote whose text is what follows
        in ``context``: (those ids, the tokens of an incomplete character after them that the text held
        back, if any); None when ``context`` does not continue the last one that way."""
        if row not in self.written:
            return None
        last, last_ids, written = self.written[row]
        if not context.startswith(last):
            return None
        rest, partial = context[len(last):], None
        for j in range(len(written), -1, -1):
            text = self.lm.decode_after(last_ids, written[:j])
            if text == rest:
                return last_ids + written[:j], written[j:partial] if partial else []
            if partial is None and text.endswith("\ufffd") and text.rstrip("\ufffd") == rest:
                partial = j  # the held-back bytes of a character: carried, to be completed
            if len(text.rstrip("\ufffd")) < len(rest):  # shorter ones only get shorter
                return None
        return None
