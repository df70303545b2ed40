"""Rows of one batched KV cache, grown chunk by chunk and reordered when beams are selected.

Each row is one token sequence.  Rows of different lengths share one rectangular cache: a token's key
and value sit in some column of the cache, the attention mask marks which columns belong to the row,
and the position ids count only the row's own tokens.  Columns a row does not use (padding, or tokens
rolled back after re-tokenization changed them) stay in the cache as masked holes: cheaper than moving
memory, and exactly what ``generate`` does with left padding.

Two mask paths:

- plain full-attention decoders (Llama, GPT-2, Qwen2 without sliding layers...): the 2-D ``[rows,
  columns]`` mask, from which ``transformers`` builds its causal mask.  Causality by column index is right
  here, since a row's tokens sit in increasing columns.
- models with sliding-window layers (Mistral, Gemma-2/3, Qwen2 with ``use_sliding_window``, GPT-OSS...):
  ``transformers`` builds the sliding mask from column indices, which holes and padding stretch, and
  ``DynamicCache(config=...)`` gives sliding layers that drop old columns.  Here every layer keeps all its
  columns (a plain ``DynamicCache()``), and the model gets 4-D masks built from each row's own positions:
  a token at position ``p`` sees the row's columns holding positions ``q <= p``, and on sliding layers
  only those with ``p - q < sliding_window`` (the convention of ``transformers.masking_utils``).  Models
  mixing both layer types get them as ``{"full_attention": ..., "sliding_attention": ...}``.  4-D masks
  need the ``eager`` or ``sdpa`` attention.

Models whose cache is not plain per-layer keys and values (Mamba, Jamba, LFM2, Qwen3-Next, Falcon-H1,
chunked attention...) are refused: a recurrent state can be neither rolled back nor hold holes.

Only public ``transformers`` APIs are used: ``DynamicCache`` and its layer classes, ``Cache.reorder_cache``
and the model's ``forward`` with ``attention_mask``, ``position_ids``, ``cache`` (``past_key_values`` before
transformers renamed it) and ``logits_to_keep``.  The cache is updated in place; it is never read back from
the output.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Sequence

import torch
from transformers import Cache, DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

FULL, SLIDING = "full_attention", "sliding_attention"
MASK_4D_ATTENTION = ("eager", "sdpa")  # attention implementations that take a custom 4-D mask
ROLLBACK_USERS = (
    "w2s keeps many rows of different lengths in one cache, rolls rows back when re-tokenization changes "
    "their last tokens (sampling, chunk-level beam search, Stream Aligner) and leaves masked holes where "
    "incremental log-probabilities reuse a prefix"
)


def _refuse(model_type: str, why: str) -> ValueError:
    return ValueError(f"w2s cannot run model type {model_type!r} locally: {why}. {ROLLBACK_USERS}.")


def cache_argument(model: torch.nn.Module, model_type: str) -> str:
    """The name the model's ``forward`` takes its cache under: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (older, deprecated in 5.2x and removed in 5.40)."""
    for forward in (model.forward, type(model).forward):  # the class's, when an instrumented forward takes **kwargs
        params = inspect.signature(forward).parameters
        name = next((n for n in ("cache", "past_key_values") if n in params), None)
        if name or not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            break
    if name is None:
        raise _refuse(model_type, "its forward takes neither a `cache` nor a `past_key_values` argument")
    # a forward typed to take its own state class (xLSTM's ``xLSTMCache``) cannot take a DynamicCache
    annotation = params[name].annotation
    classes = [a for a in typing.get_args(annotation) or (annotation,) if inspect.isclass(a)
               and not isinstance(a, types.GenericAlias) and a not in (type(None), inspect.Parameter.empty)]
    if classes and not any(issubclass(a, Cache) for a in classes):
        raise _refuse(model_type, f"its forward takes `{name}` as {classes[0].__name__}, not a key/value Cache")
    return name


def layer_kinds(model: torch.nn.Module) -> tuple[list[str], int | None]:
    """Each layer's attention kind (``full_attention`` or ``sliding_attention``) and the sliding window.

    Read from the config's ``layer_types`` and from the cache ``transformers`` itself builds for the model
    (``DynamicCache(config=...)``, what ``generate`` uses), which must agree; without ``layer_types`` a
    ``sliding_window`` in the config means sliding layers, as in ``transformers``.  Raises ``ValueError``
    for anything else: recurrent or convolutional layers, chunked or indexed attention, hybrid layers,
    layers sharing another layer's cache.
    """
    config = model.config
    model_type = getattr(config, "model_type", None) or type(model).__name__
    if getattr(config, "is_encoder_decoder", False):
        raise _refuse(model_type, "it is an encoder-decoder model, not a decoder-only causal LM")
    text = config.get_text_config(decoder=True)
    if not getattr(text, "is_causal", True) or getattr(text, "use_bidirectional_attention", False):
        raise _refuse(model_type, "its attention is bidirectional, so earlier tokens' keys would change")
    if getattr(text, "num_kv_shared_layers", 0) or "reuse" in (getattr(text, "kv_sharing_modes", None) or ()):
        raise _refuse(model_type, "some of its layers reuse another layer's keys and values (KV sharing), "
                                  "which w2s does not reorder or mask")
    # older configs of hybrid models name their blocks here instead of in layer_types
    blocks = getattr(text, "layers_block_type", None) or getattr(text, "block_types", None) or ()
    others = sorted({b for b in blocks if isinstance(b, str)} - {"attention", FULL, SLIDING})
    if others:
        raise _refuse(model_type, f"it has {', '.join(others)} blocks, whose state cannot be rolled back or hold "
                                  "masked holes")
    try:
        layers = DynamicCache(config=config).layers  # may be empty: layers are then made lazily, all full
    except Exception as error:  # noqa: BLE001 - any failure means we cannot tell what the layers keep
        raise _refuse(model_type, f"transformers cannot build a DynamicCache for its config ({error})") from error
    declared = list(getattr(text, "layer_types", None) or [])
    default = SLIDING if getattr(text, "sliding_window", None) is not None else FULL
    kinds, windows, bad = [], set(), []
    for i in range(max(len(declared), len(layers))):
        layer = layers[i] if i < len(layers) else None
        built = None if layer is None else {DynamicLayer: FULL, DynamicSlidingWindowLayer: SLIDING}.get(type(layer))
        kind = declared[i] if i < len(declared) else built or default
        if kind not in (FULL, SLIDING) or (layer is not None and built != kind):
            shown = f" as {type(layer).__name__}" if kind in (FULL, SLIDING) else ""  # e.g. a DummyLayer
            bad.append(f"layer {i}: {kind}{shown}")
            continue
        kinds.append(kind)
        if kind == SLIDING:
            windows.add(getattr(layer, "sliding_window", None) or getattr(text, "sliding_window", None))
    if bad:
        raise _refuse(
            model_type,
            f"its cache is not plain per-layer keys and values ({'; '.join(bad[:4])}"
            f"{'; ...' if len(bad) > 4 else ''}), so rows cannot be rolled back or hold masked holes",
        )
    if None in windows or len(windows) > 1:
        raise _refuse(model_type, f"its sliding layers have no single window ({sorted(windows, key=str)})")
    return kinds, (int(windows.pop()) if windows else None)


def check_model(model: torch.nn.Module) -> dict:
    """Raise ``ValueError`` (naming the model type) unless KVRows can run ``model`` exactly; else return
    how: ``cache_arg``, ``kinds`` (one per layer), ``window`` and ``attention`` (implementation).  Cheap
    (no forward): call it when a model is loaded to fail early."""
    model_type = getattr(model.config, "model_type", None) or type(model).__name__
    cache_arg = cache_argument(model, model_type)
    kinds, window = layer_kinds(model)
    # "eager" when unset: its additive float masks suit sdpa too
    attention = getattr(model.config.get_text_config(decoder=True), "_attn_implementation", None) or "eager"
    if SLIDING in kinds and attention not in MASK_4D_ATTENTION:
        raise _refuse(
            model_type,
            f"it has sliding-window layers, which need per-row 4-D attention masks, and attention "
            f"{attention!r} takes none; load it with attn_implementation='sdpa' or 'eager'",
        )
    return dict(model_type=model_type, cache_arg=cache_arg, kinds=kinds, window=window, attention=attention)


class KVRows:
    def __init__(self, model: torch.nn.Module, pad_id: int, how: dict | None = None):
        """``how``: what :func:`check_model` returned for ``model`` (checked here when not given)."""
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        how = how or check_model(model)
        self.model_type, self.cache_arg, self.window = how["model_type"], how["cache_arg"], how["window"]
        self.sliding = SLIDING in how["kinds"]
        self.mixed = self.sliding and FULL in how["kinds"]
        if self.sliding:
            self.eager = how["attention"] == "eager"
            self.cache = DynamicCache()  # full layers everywhere: no column is ever dropped
        else:
            self.cache = DynamicCache(config=model.config)
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # [rows, columns]
        # sliding models only: the position of the token in each column ([rows, columns]; holes keep theirs)
        self.pos = torch.zeros(0, 0, dtype=torch.long, device=self.device)
        self.ids: list[list[int]] = []  # each row's tokens, in order
        self.cols: list[list[int]] = []  # the cache column of each of those tokens

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_columns(self) -> int:
        return self.mask.shape[1]

    def add_empty_rows(self, n: int) -> None:
        """Start ``n`` empty rows (only before the first forward)."""
        assert self.num_columns == 0, "rows can only be added to an empty cache"
        self.ids += [[] for _ in range(n)]
        self.cols += [[] for _ in range(n)]
        self.mask = torch.zeros(len(self.ids), 0, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(len(self.ids), 0, dtype=torch.long, device=self.device)

    def select(self, indices: Sequence[int]) -> None:
        """Keep rows ``indices`` in that order (repeats allowed): the cache is reordered in place."""
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
        if self.num_columns:
            self.cache.reorder_cache(index)
        self.mask = self.mask.index_select(0, index)
        if self.sliding:
            self.pos = self.pos.index_select(0, index)
        self.ids = [list(self.ids[i]) for i in indices]
        self.cols = [list(self.cols[i]) for i in indices]

    @torch.inference_mode()  # the mask is an inference tensor (made in forward): edit it in that mode
    def truncate(self, keep: Sequence[int]) -> None:
        """Roll row ``i`` back to its first ``keep[i]`` tokens (the dropped columns become holes)."""
        for row, k in enumerate(keep):
            dropped = self.cols[row][k:]
            if dropped:
                self.mask[row, dropped] = 0
                del self.cols[row][k:], self.ids[row][k:]

    def _masks_4d(self, positions: torch.Tensor, start: int):
        """Per-row masks ``[rows, 1, new, columns]`` for the new tokens at ``positions`` ``[rows, new]``."""
        q, k = positions[:, :, None], self.pos[:, None, :]
        seen = self.mask.bool()[:, None, :] & (k <= q)
        # every query also sees its own column: padding queries then attend to something (no NaN), real
        # tokens already do
        own = torch.zeros(q.shape[1], k.shape[2], dtype=torch.bool, device=self.device)
        own[:, start:].fill_diagonal_(True)
        masks = {SLIDING: (seen & (k > q - self.window)) | own}
        if self.mixed:
            masks[FULL] = seen | own
        for kind, m in masks.items():
            m = m[:, None]
            if self.eager:  # eager adds the mask to the scores
                dtype = self.model.dtype
                m = torch.zeros(m.shape, dtype=dtype, device=self.device).masked_fill_(~m, torch.finfo(dtype).min)
            masks[kind] = m
        return masks if self.mixed else masks[SLIDING]

    @torch.inference_mode()
    def forward(self, new: Sequence[Sequence[int]], last_only: bool) -> torch.Tensor:
        """Append ``new[i]`` to row ``i`` and run the model over the new tokens only.

        With ``last_only`` the new tokens are right-aligned and the logits of each row's last token are
        returned, ``[rows, vocab]`` (a row with no new token gets meaningless logits); otherwise they
        are left-aligned and all logits come back, ``[rows, max_new, vocab]``, row ``i``'s ``j``-th
        new token at ``[i, j]``.
        """
        rows, width = len(new), max((len(x) for x in new), default=0)
        assert rows == len(self.ids) and width > 0
        start = self.num_columns
        input_ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
        new_mask = torch.zeros(rows, width, dtype=torch.long)
        positions = torch.zeros(rows, width, dtype=torch.long)
        for i, toks in enumerate(new):
            n = len(toks)
            offset = width - n if last_only else 0
            base = len(self.ids[i])
            if n:
                input_ids[i, offset : offset + n] = torch.as_tensor(toks, dtype=torch.long)
                new_mask[i, offset : offset + n] = 1
            # padding gets the nearest real position; its value never matters (masked everywhere)
            positions[i] = (torch.arange(width) - offset).clamp(0, max(n - 1, 0)) + base
            self.cols[i].extend(range(start + offset, start + offset + n))
            self.ids[i].extend(toks)
        self.mask = torch.cat([self.mask, new_mask.to(self.device)], dim=1)
        positions = positions.to(self.device)
        if self.sliding:
            self.pos = torch.cat([self.pos, positions], dim=1)
            attention_mask = self._masks_4d(positions, start)
        else:
            attention_mask = self.mask
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
            **{self.cache_arg: self.cache},
        )
        if start == 0:
            self._check_cache_used()
        return out.logits[:, -1] if last_only else out.logits

    def _check_cache_used(self) -> None:
        """After the first forward every layer must hold keys for every row and column: a model that
        kept its state elsewhere (a cache class of its own) would otherwise be silently wrong."""
        keys = [getattr(layer, "keys", None) for layer in self.cache.layers]
        if not keys or not all(torch.is_tensor(k) and k.ndim >= 3 and k.shape[0] == len(self)
                               and k.shape[-2] == self.num_columns for k in keys):
            raise _refuse(self.model_type, "its forward did not store its state as keys and values in the "
                                           "DynamicCache it was given")
