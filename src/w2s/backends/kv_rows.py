"""Rows of one batched KV cache, grown chunk by chunk and reordered when beams are selected.

Each row is one token sequence.  Rows of different lengths share one rectangular cache: a token's key
and value sit in some column of the cache, the 2-D attention mask marks which columns belong to the
row, and the position ids count only the row's own tokens.  Columns a row does not use (padding, or
tokens rolled back after re-tokenization changed them) stay in the cache as masked holes: cheaper than
moving memory, and exactly what ``generate`` does with left padding.

Only public ``transformers`` APIs are used: ``DynamicCache``, ``Cache.reorder_cache`` and the model's
``forward`` with ``attention_mask``, ``position_ids``, ``past_key_values`` and ``logits_to_keep``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from transformers import DynamicCache


class KVRows:
    def __init__(self, model: torch.nn.Module, pad_id: int):
        self.model = model
        self.pad_id = pad_id
        self.device = next(model.parameters()).device
        self.cache = DynamicCache(config=model.config)
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=self.device)  # [rows, columns]
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

    def select(self, indices: Sequence[int]) -> None:
        """Keep rows ``indices`` in that order (repeats allowed): the cache is reordered in place."""
        index = torch.as_tensor(list(indices), dtype=torch.long, device=self.device)
        if self.num_columns:
            self.cache.reorder_cache(index)
        self.mask = self.mask.index_select(0, index)
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
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=self.mask,
            position_ids=positions.to(self.device),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
        )
        self.cache = out.past_key_values
        return out.logits[:, -1] if last_only else out.logits
