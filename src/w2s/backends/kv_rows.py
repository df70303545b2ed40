"""Rows of one preallocated KV cache, with branches that share their row's history.

Each row is one token sequence (its *shared* tokens).  A row may also carry *branches*: continuations
that each see the first ``keep`` shared tokens of the row plus their own tokens, so that K samples of one
beam, or K candidates scored after one parent, hold and read the parent's keys and values once instead
of K times (a tree of sequences, as in tree attention).  :meth:`KVRows.regroup` turns any list of
sequences (a row, or a branch of one) into the rows of a fresh cache with one gather per layer: that is
how surviving beams become the next chunk's rows.

Branches are for short continuations (a search's chunk).  A branch's queries attend over its siblings'
columns too, so K continuations of T tokens each in one row cost every query ``P + K*T`` columns instead
of ``P + T``; when their tokens outnumber the prefix they share (:func:`rows_beat_branches`: a
Best-of-N sample, scoring whole answers) each continuation becomes a row of its own instead, the prefix
copied once per row by :meth:`KVRows.regroup`, and every query attends over its own sequence only.

Layout.  Keys and values live in buffers ``[rows, heads, capacity, head_dim]`` per layer, written in
place (no concatenation per token) and grown in large steps.  Every forward call appends the same
number of columns to all rows; a column holds a shared token, a token of one branch, or nothing (a hole:
padding, or a token rolled back by :meth:`truncate`).  Two small tensors describe the columns: the
owner (shared, a branch id, or a hole) and the position of the token.  Each new token gets a 4-D mask
built from them: it sees the shared columns holding positions before its branch's ``keep`` (or, for a
shared token, up to its own position), its branch's earlier columns, itself, and on sliding-window layers
only tokens less than ``sliding_window`` positions back (the convention of ``transformers.masking_utils``;
mixed models get ``{"full_attention": ..., "sliding_attention": ...}``).  Position ids count only the
sequence's own tokens.  4-D masks need the ``eager`` or ``sdpa`` attention.

Models whose cache is not plain per-layer keys and values (Mamba, Jamba, LFM2, Qwen3-Next, Falcon-H1,
chunked attention...) are refused: a recurrent state can be neither rolled back nor shared by branches.

Grouped-query attention under ``sdpa`` runs through :func:`folded_sdpa` (registered under its own name
with ``AttentionInterface`` when a model first needs it, and set on that model with
``set_attn_implementation``), which folds each group's query heads into the query length instead of
copying the keys and values once per query head.

Only public ``transformers`` APIs are used: ``Cache`` with layers of our own ``CacheLayerMixin`` class,
``AttentionInterface``, ``set_attn_implementation``, and the model's ``forward`` with ``attention_mask``, ``position_ids``, ``cache``
(``past_key_values`` before transformers renamed it) and ``logits_to_keep``.
"""

from __future__ import annotations

import inspect
import types
import typing
from typing import Sequence

import torch
from transformers import AttentionInterface, Cache, DynamicCache
from transformers.cache_utils import CacheLayerMixin, DynamicLayer, DynamicSlidingWindowLayer

from .base import ContextLengthError, context_length_of

FULL, SLIDING = "full_attention", "sliding_attention"
FOLDED_SDPA = "w2s_folded_sdpa"
# attention implementations that take a custom 4-D mask (the folded one is sdpa's, see folded_sdpa)
MASK_4D_ATTENTION = ("eager", "sdpa", FOLDED_SDPA)
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
    the cache plan: ``cache_arg``, ``kinds`` (one per layer), ``window`` and ``attention`` (implementation).  Cheap
    (no forward): call it when a model is loaded to fail early."""
    model_type = getattr(model.config, "model_type", None) or type(model).__name__
    cache_arg = cache_argument(model, model_type)
    kinds, window = layer_kinds(model)
    # "eager" when unset: its additive float masks suit sdpa too
    attention = getattr(model.config.get_text_config(decoder=True), "_attn_implementation", None) or "eager"
    attention = "sdpa" if attention == FOLDED_SDPA else attention
    if attention not in MASK_4D_ATTENTION:
        raise _refuse(
            model_type,
            f"its attention {attention!r} takes no per-row 4-D attention masks, which w2s builds for rows with "
            f"holes and shared histories; load it with attn_implementation='sdpa' or 'eager'",
        )
    return dict(model_type=model_type, cache_arg=cache_arg, kinds=kinds, window=window, attention=attention)


def folded_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """``sdpa`` attention that, for grouped-query attention under a 4-D mask, folds each group's query heads
    into the query length (``[rows, kv_heads, groups * queries, dim]``) instead of copying every key and
    value once per query head (``repeat_kv``, which transformers does whenever a mask rules out SDPA's own
    GQA).  Exact: the same scores, in another order.  Anything else goes to transformers' ``sdpa``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = query.shape[1] // key.shape[1]
    if (groups == 1 or attention_mask is None or attention_mask.dim() != 4 or attention_mask.shape[1] != 1
            or dropout or any(kwargs.get(k) is not None for k in ("position_bias", "s_aux", "softcap"))):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    rows, heads, length, dim = query.shape
    mask = attention_mask[:, :, :, : key.shape[-2]]
    mask = mask[:, :, None].expand(rows, 1, groups, length, mask.shape[-1]).reshape(rows, 1, groups * length, -1)
    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(rows, key.shape[1], groups * length, dim), key, value, attn_mask=mask, scale=scaling)
    return out.reshape(rows, heads, length, value.shape[-1]).transpose(1, 2).contiguous(), None


def use_folded_sdpa(model: torch.nn.Module) -> None:
    """Give ``model`` (an ``sdpa`` model with grouped-query attention that w2s runs) the folded attention,
    through transformers' public API: registered under its own name (transformers' ``sdpa`` is untouched)
    and set on this model only, once.  It computes what ``sdpa`` does, so the model's own ``generate``
    and forward give the same results after."""
    from transformers import AttentionMaskInterface
    from transformers.masking_utils import sdpa_mask

    if FOLDED_SDPA not in AttentionInterface():  # registered once, when a model first needs it
        AttentionInterface.register(FOLDED_SDPA, folded_sdpa)
    if FOLDED_SDPA not in AttentionMaskInterface():  # the masks sdpa gets, for the model's own calls
        AttentionMaskInterface.register(FOLDED_SDPA, sdpa_mask)
    if getattr(model.config, "_attn_implementation", None) != FOLDED_SDPA:
        model.set_attn_implementation(FOLDED_SDPA)


SHARED, HOLE, PADDING = -1, -2, -3  # column owners besides branch ids (0, 1, ...); PADDING: a query only


class BufferLayer(CacheLayerMixin):
    """One layer's keys and values in buffers ``[rows, heads, capacity, head_dim]``, written in place:
    :meth:`update` writes the new columns after the used ones and returns views of the used part."""

    is_sliding = False  # every layer keeps all its columns: KVRows masks sliding windows itself

    def __init__(self, rows: "KVRows"):
        super().__init__()
        self.rows = rows  # whose ``capacity`` a buffer is allocated with
        self.used = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.is_initialized = key_states.device, True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.used, self.used + key_states.shape[-2]
        if self.keys is None or self.keys.shape[-2] < end:
            self.keys = self._grown(self.keys, key_states, end)
            self.values = self._grown(self.values, value_states, end)
        self.keys[:, :, start:end] = key_states
        self.values[:, :, start:end] = value_states
        self.used = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def _grown(self, old: torch.Tensor | None, like: torch.Tensor, end: int) -> torch.Tensor:
        rows, heads, _, dim = like.shape
        buffer = like.new_empty(rows, heads, max(end, self.rows.capacity), dim)
        if old is not None and self.used:
            buffer[:, :, : self.used] = old[:, :, : self.used]
        return buffer

    def copy_rows(self, rows: torch.Tensor, lo: int, block: int, tail: torch.Tensor, capacity: int) -> None:
        """New row ``i``: the columns ``lo .. lo + block`` of old row ``rows[i]`` (one ``index_select``), then its
        columns ``tail[i]`` (gathered), in a new buffer of ``capacity`` columns."""
        if self.keys is None:
            return
        for name in ("keys", "values"):
            old = getattr(self, name)
            span = min(capacity, old.shape[2] - lo)
            new = old[:, :, lo : lo + span].index_select(0, rows)  # past the block: free columns
            if span < capacity:
                grown = new.new_empty(new.shape[0], new.shape[1], capacity, new.shape[3])
                grown[:, :, :span] = new
                new = grown
            if tail.shape[1]:
                new[:, :, block : block + tail.shape[1]] = old[rows[:, None], :, tail].permute(0, 2, 1, 3)
            setattr(self, name, new)
        self.used = block + tail.shape[1]

    def get_seq_length(self) -> int:
        return self.used

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.used + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = None
        self.used, self.is_initialized = 0, False


def rows_beat_branches(prefixes: Sequence[int], tokens: Sequence[Sequence[int]]) -> bool:
    """Whether continuations should run as rows of their own rather than as branches of their parents' rows.

    ``prefixes[i]``: the tokens parent ``i``'s continuations share; ``tokens[i]``: how many tokens each of them
    adds.  As branches, a continuation's queries also attend over its siblings' columns (up to
    ``sum(tokens[i]) - max(tokens[i])`` of them); as rows, each continuation holds its own copy of the prefix.
    Rows when, over all parents, the siblings' columns outnumber the prefixes: a query's span then stays
    under twice its own sequence either way, and memory grows with the answers, not with their product.
    """
    extra = sum(sum(t) - max(t, default=0) for t in tokens)
    return extra > sum(prefixes)


class _Branch:
    """A continuation of a row: it sees the row's first ``keep`` shared tokens, then its own ``ids``."""

    __slots__ = ("keep", "ids", "cols")

    def __init__(self, keep: int):
        self.keep, self.ids, self.cols = keep, [], []


class KVRows:
    """Token sequences in one cache: rows, each with optional branches (see the module docstring).

    ``ids[i]`` and ``cols[i]`` are row ``i``'s shared tokens and the columns holding them;
    ``branches[i]`` its branches.  A *sequence* is ``(row, None)`` (the row's shared tokens) or ``(row, b)``
    (branch ``b``: the row's first ``keep`` tokens, then the branch's own).
    """

    GROWTH = 64  # spare columns allocated beyond what is asked for
    # a forward that returns every position's logits (scoring) runs at most this many query positions per
    # model call, so no logits tensor exceeds [LOGIT_POSITIONS, vocab] (200 MB for a 49k float32 vocabulary)
    LOGIT_POSITIONS = 1024

    def __init__(self, model: torch.nn.Module, pad_id: int, cache_plan: dict | None = None, name: str = "the model",
                 max_tokens_per_forward: int | None = None, context_length: int | None = None):
        """``cache_plan``: what :func:`check_model` returned for ``model`` (checked here when not given);
        ``name`` names the model in errors; ``max_tokens_per_forward``: the most query tokens (rows times
        new columns) one model call may run; a call that appends more columns runs as several calls of
        fewer columns each, which attend to the earlier ones through the cache (None: no bound);
        ``context_length``: the longest sequence allowed (default: the model config's)."""
        self.model, self.name = model, name
        self.max_tokens_per_forward = max_tokens_per_forward
        self.context_length = context_length or context_length_of(model.config)
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        plan = cache_plan or check_model(model)
        self.model_type, self.cache_arg, self.window = plan["model_type"], plan["cache_arg"], plan["window"]
        self.sliding = SLIDING in plan["kinds"]
        self.mixed = self.sliding and FULL in plan["kinds"]
        self.eager = plan["attention"] == "eager"
        text = model.config.get_text_config(decoder=True)
        grouped = getattr(text, "num_key_value_heads", None) not in (None, getattr(text, "num_attention_heads", None))
        if plan["attention"] == "sdpa" and grouped and hasattr(model, "set_attn_implementation"):
            use_folded_sdpa(model)  # (a model without transformers' API runs its own sdpa)
        self.capacity = 0  # columns of every buffer (the layers' and owner/pos)
        self.cache = Cache(layer_class_to_replicate=lambda: BufferLayer(self))
        self.columns = 0
        self.owner = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # [rows, capacity]
        self.pos = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # position of each column's token
        self.ids: list[list[int]] = []
        self.cols: list[list[int]] = []
        self.branches: list[list[_Branch]] = []

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_columns(self) -> int:
        return self.columns

    def add_empty_rows(self, n: int) -> None:
        """Start ``n`` empty rows (only before the first forward)."""
        assert self.columns == 0, "rows can only be added to an empty cache"
        self.ids += [[] for _ in range(n)]
        self.cols += [[] for _ in range(n)]
        self.branches += [[] for _ in range(n)]
        self._reset_meta(len(self.ids), self.capacity)

    def _reset_meta(self, rows: int, capacity: int) -> None:
        self.owner = torch.full((rows, capacity), HOLE, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(rows, capacity, dtype=torch.long, device=self.device)

    def reserve(self, columns: int) -> None:
        """Make room for ``columns`` more columns, so the next forwards write in place without growing."""
        needed = self.columns + columns
        if needed <= self.capacity:
            return
        self.capacity = needed + self.GROWTH
        owner, pos = self.owner, self.pos
        self._reset_meta(len(self.ids), self.capacity)
        self.owner[:, : self.columns], self.pos[:, : self.columns] = owner[:, : self.columns], pos[:, : self.columns]

    def sequence(self, row: int, branch: int | None = None) -> list[int]:
        """The token ids of sequence ``(row, branch)``."""
        if branch is None:
            return self.ids[row]
        b = self.branches[row][branch]
        return self.ids[row][: b.keep] + b.ids

    @torch.inference_mode()
    def regroup(self, sources: Sequence[tuple[int, int | None]], lengths: Sequence[int] | None = None,
                reserve: int = 0) -> None:
        """Make new row ``i`` the sequence ``sources[i]`` (``(row, branch)``; repeats allowed), cut to its first
        ``lengths[i]`` tokens when given; every branch is dropped, and ``reserve`` columns are left free.

        One copy per layer: the sequences' shared tokens, when they sit in consecutive columns (as after an
        earlier regroup), are copied as one block of columns of their rows, and only the rest (a branch's
        own tokens) is gathered column by column.  When the beams all grew by the same number of tokens they
        stay right-aligned, with holes only on the left."""
        heads, tails, ids = [], [], []
        for i, (r, b) in enumerate(sources):
            branch = None if b is None else self.branches[r][b]
            shared = self.cols[r] if branch is None else self.cols[r][: branch.keep]
            seq = self.sequence(r, b)
            n = len(seq) if lengths is None else lengths[i]
            own = [] if branch is None else branch.cols[: max(0, n - len(shared))]
            shared = shared[:n]
            ids.append(list(seq[:n]))
            if shared and shared[-1] - shared[0] == len(shared) - 1:  # increasing columns: consecutive
                heads.append((shared[0], shared[-1] + 1))
                tails.append(own)
            else:
                heads.append(None)
                tails.append(shared + own)
        spans = [h for h in heads if h]
        lo, hi = min((a for a, _ in spans), default=0), max((e for _, e in spans), default=0)
        block, tail_width = hi - lo, max((len(t) for t in tails), default=0)
        width = block + tail_width
        owner = [[HOLE] * width for _ in sources]
        pos = [[0] * width for _ in sources]
        self.cols = []
        for i, (head, tail) in enumerate(zip(heads, tails)):
            cols = list(range(head[0] - lo, head[1] - lo)) if head else []
            cols += range(block, block + len(tail))
            for k, c in enumerate(cols):
                owner[i][c], pos[i][c] = SHARED, k
            self.cols.append(cols)
        self.capacity = width + reserve + self.GROWTH
        if self.columns:
            rows = torch.as_tensor([r for r, _ in sources], dtype=torch.long, device=self.device)
            tail = torch.tensor([t + [0] * (tail_width - len(t)) for t in tails], dtype=torch.long,
                                device=self.device).reshape(len(sources), tail_width)
            for layer in self.cache.layers:
                layer.copy_rows(rows, lo, block, tail, self.capacity)
        self._reset_meta(len(sources), self.capacity)
        self.owner[:, :width] = torch.tensor(owner, dtype=torch.long, device=self.device).reshape(len(sources), width)
        self.pos[:, :width] = torch.tensor(pos, dtype=torch.long, device=self.device).reshape(len(sources), width)
        self.columns = width
        self.ids = ids
        self.branches = [[] for _ in sources]

    def select(self, indices: Sequence[int]) -> None:
        """Keep rows ``indices`` in that order (repeats allowed), without their branches."""
        self.regroup([(i, None) for i in indices])

    @torch.inference_mode()
    def truncate(self, keep: Sequence[int]) -> None:
        """Roll row ``i`` back to its first ``keep[i]`` tokens (the dropped columns become holes)."""
        assert not any(self.branches), "truncate rows without branches"
        for row, k in enumerate(keep):
            dropped = self.cols[row][k:]
            if dropped:
                self.owner[row, dropped] = HOLE
                del self.cols[row][k:], self.ids[row][k:]

    def branch(self, keep: Sequence[Sequence[int]]) -> None:
        """Give row ``i`` one new branch per entry of ``keep[i]``, seeing that many of its shared tokens."""
        assert not any(self.branches), "branch rows that have no branches"
        self.branches = [[_Branch(k) for k in ks] for ks in keep]

    def forward(self, new: Sequence[Sequence[int]], last_only: bool, read=None) -> torch.Tensor | None:
        """Append ``new[i]`` to row ``i``'s shared tokens and run the model over the new tokens only.

        With ``last_only`` the logits of each row's last new token come back, ``[rows, vocab]`` (a row with
        no new token gets meaningless logits); otherwise all of them, ``[rows, max_new, vocab]``, row ``i``'s
        ``j``-th new token at ``[i, j]``, or, with ``read``, handed over call by call as in
        :meth:`forward_branches` (and None comes back).
        """
        assert not any(self.branches), "rows with branches take forward_branches"
        return self._run([[(SHARED, toks)] for toks in new], last_only, read=read)

    def forward_branches(self, new: Sequence[Sequence[Sequence[int]]], last_only: bool, read=None):
        """Append ``new[i][b]`` to branch ``b`` of row ``i`` and run the model over the new tokens only.

        With ``last_only`` every branch must get at most one token, and the logits of branch ``b`` of row
        ``i`` come back at ``[i, b]`` (``[rows, max_branches, vocab]``; meaningless for a branch that got
        none).  Otherwise ``(logits, starts)``: branch ``b``'s ``j``-th new token at
        ``logits[i, starts[i][b] + j]`` (:meth:`branch_starts`).  With ``read``, the logits are handed over
        model call by model call, ``read(logits, column)`` with row ``i``'s new column ``column + j`` at
        ``logits[i, j]``, and never held together: ``(None, starts)`` comes back.
        """
        assert all(len(n) == len(b) for n, b in zip(new, self.branches))
        if last_only:
            assert all(len(t) <= 1 for n in new for t in n)
            return self._run([list(enumerate(n)) for n in new], last_only=False, pad_each=True)
        logits = self._run([[(b, t) for b, t in enumerate(n) if t] for n in new], last_only=False, read=read)
        return logits, self.branch_starts(new)

    @staticmethod
    def branch_starts(new: Sequence[Sequence[Sequence[int]]]) -> list[list[int]]:
        """Where each branch's new tokens start among its row's new columns in :meth:`forward_branches`."""
        starts = []
        for n in new:
            offsets, at = [], 0
            for t in n:
                offsets.append(at)
                at += len(t)
            starts.append(offsets)
        return starts

    @torch.inference_mode()
    def _run(self, segments: Sequence[Sequence[tuple[int, Sequence[int]]]], last_only: bool,
             pad_each: bool = False, read=None) -> torch.Tensor | None:
        """Run one forward: row ``i`` gets the segments ``(owner, tokens)`` in order (owner SHARED or a branch
        id).  Shared tokens are right-aligned when ``last_only``, else every row's tokens are left-aligned;
        with ``pad_each`` every segment takes one query, a padding one when it has no token.  ``read``: see
        :meth:`forward_branches`."""
        rows = len(segments)
        assert rows == len(self.ids)
        counts = [sum(max(len(t), pad_each) for _, t in segs) for segs in segments]
        width = max(counts, default=0)
        assert width > 0
        self._check_context(segments)
        step = self._columns_per_call(rows, width)
        if not last_only:
            step = min(step, max(1, self.LOGIT_POSITIONS // rows))
        start = self.columns
        self.reserve(width)
        # per query: token, owner, position, shared positions seen (< keep); built as lists, moved once
        ids, owners, positions, keeps = ([[v] * width for _ in range(rows)] for v in (self.pad_id, PADDING, 0, 0))
        for i, segs in enumerate(segments):
            at = width - counts[i] if last_only else 0
            row_ids, row_owner, row_pos, row_keep = ids[i], owners[i], positions[i], keeps[i]
            for owner, toks in segs:
                n = len(toks)
                if owner == SHARED:
                    base, cols, seq = len(self.ids[i]), self.cols[i], self.ids[i]
                else:
                    b = self.branches[i][owner]
                    base, cols, seq = b.keep + len(b.ids), b.cols, b.ids
                if n:
                    row_ids[at : at + n] = toks
                    row_owner[at : at + n] = [owner] * n
                    row_pos[at : at + n] = range(base, base + n)
                    row_keep[at : at + n] = range(base + 1, base + n + 1) if owner == SHARED else [b.keep] * n
                    cols.extend(range(start + at, start + at + n))
                    seq.extend(toks)
                elif pad_each:
                    row_pos[at], n = base, 1
                at += n
        as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=self.device)  # noqa: E731
        q_owner, q_pos, q_keep = as_tensor(owners), as_tensor(positions), as_tensor(keeps)
        end = start + width
        self.owner[:, start:end] = q_owner.masked_fill(q_owner == PADDING, HOLE)
        self.pos[:, start:end] = q_pos
        input_ids, pieces = as_tensor(ids), []
        for a in range(0, width, step):  # columns a..b in one call; later calls see them through the cache
            b = min(a + step, width)
            self.columns = start + b
            out = self.model(
                input_ids=input_ids[:, a:b],
                attention_mask=self._masks(q_owner[:, a:b], q_pos[:, a:b], q_keep[:, a:b], start + a),
                position_ids=q_pos[:, a:b],
                use_cache=True,
                logits_to_keep=1 if last_only else 0,
                **{self.cache_arg: self.cache},
            )
            if start + a == 0:
                self._check_cache_used()
            if read is not None and not last_only:
                read(out.logits, a)
            else:
                pieces.append(out.logits)
        if not pieces:
            return None
        return pieces[-1][:, -1] if last_only else torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]

    def _columns_per_call(self, rows: int, width: int) -> int:
        """Columns one model call may append under :attr:`max_tokens_per_forward` (every row gets each column)."""
        bound = self.max_tokens_per_forward
        if bound is None or rows * width <= bound:
            return width
        if rows > bound:
            raise ValueError(f"max_tokens_per_forward={bound} is below one token for each of the {rows} rows that "
                             f"{self.name} runs at once; raise it to at least {rows} or run fewer rows "
                             f"(batch_size, beam_width * successors_per_beam, n).")
        return bound // rows

    def _check_context(self, segments) -> None:
        """Refuse (before anything changes) a forward that would put a token past the context window."""
        if self.context_length is None:
            return
        for i, segs in enumerate(segments):
            for owner, toks in segs:
                if owner == SHARED:
                    end = len(self.ids[i]) + len(toks)
                else:
                    b = self.branches[i][owner]
                    end = b.keep + len(b.ids) + len(toks)
                if end > self.context_length:
                    raise ContextLengthError(f"{self.name}'s context is {self.context_length} tokens and a sequence "
                                             f"would need {end}; shorten the prompt or lower the token limits.")

    def _masks(self, q_owner, q_pos, q_keep, start: int):
        """4-D masks ``[rows, 1, new, columns]`` for the new tokens (see the module docstring)."""
        owner, pos = self.owner[:, None, : self.columns], self.pos[:, None, : self.columns]
        col = torch.arange(self.columns, device=self.device)
        q_col = torch.arange(start, self.columns, device=self.device)[None, :, None]
        seen = ((owner == SHARED) & (pos < q_keep[:, :, None])) | (
            (owner == q_owner[:, :, None]) & (col <= q_col))
        # every query also sees its own column: padding queries then attend to something (no NaN)
        own = (col == q_col)
        masks = {FULL: seen | own}
        if self.sliding:
            masks[SLIDING] = (seen & (pos > q_pos[:, :, None] - self.window)) | own
            if not self.mixed:
                del masks[FULL]
        for kind, m in masks.items():
            m = m[:, None]
            if self.eager:  # eager adds the mask to the scores
                dtype = self.model.dtype
                m = torch.zeros(m.shape, dtype=dtype, device=self.device).masked_fill_(~m, torch.finfo(dtype).min)
            masks[kind] = m
        return masks if self.mixed else next(iter(masks.values()))

    def _check_cache_used(self) -> None:
        """After the first forward every layer must hold keys for every row and column: a model that
        kept its state elsewhere (a cache class of its own) would otherwise be silently wrong."""
        layers = self.cache.layers
        if not layers or not all(isinstance(layer, BufferLayer) and torch.is_tensor(layer.keys)
                                 and layer.keys.shape[0] == len(self) and layer.used == self.columns
                                 for layer in layers):
            raise _refuse(self.model_type, "its forward did not store its state as keys and values in the "
                                           "cache it was given")
