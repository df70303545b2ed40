"""Log-likelihood of responses under a local model, computed incrementally across calls.

Definition (what :class:`w2s.LogRatioScorer` sums): tokenize ``context + response`` without special
tokens, where ``context = template.format(prompt=prompt)`` (or the chat template); the prompt part is
the longest common prefix of those ids with the ids of ``context`` alone, and only the tokens after it
count; a finished response gets the model's end token appended and counted (the chat template's end of
turn under ``"chat"``, else EOS: :meth:`TransformersModel.end_id`).  In front go the special tokens of
the BOS rule (:meth:`TransformersModel.context_prefix`: the tokenizer's BOS for a format-string
template); if there is still nothing before the first counted token (an empty context, or a response
that merges into the context's first token), the model's start token is put in front, uncounted, so
that every counted token has a context.

Incremental: the rows of the previous call stay in a KV cache.  A new sequence is matched to the row
sharing the longest prefix of token ids with it (re-tokenization may change the last tokens of the old
text, so this is a prefix of ids, not of text); the row is rolled back to one token before the end of
that prefix and only the rest is forwarded.  The log-probabilities of the shared tokens are reused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .kv_rows import KVRows


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass
class _Group:
    rows: KVRows
    contexts: list[str]
    token_logprobs: list[list[float]]  # [row][i] = log p(ids[i] | ids[:i]); entry 0 is 0.0
    next_logprobs: torch.Tensor  # [rows, vocab] = log p(next token | ids), valid where has_next
    has_next: list[bool]


class IncrementalLogProbs:
    def __init__(self, lm, template: str, incremental: bool = True, batch_size: int = 32):
        lm.render(template, "")  # fail early when 'chat' is asked of a model without a chat template
        self.lm, self.template, self.incremental, self.batch_size = lm, template, incremental, batch_size
        self.lead, self.end_id = lm.context_prefix(template), lm.end_id(template)  # BOS and end-token rules
        self.groups: list[_Group] = []
        self._context_ids: dict[str, list[int]] = {}

    def reset(self) -> None:
        self.groups = []
        self._context_ids = {}

    def sequence(self, prompt: str, response: str, finished: bool) -> tuple[str, list[int], int]:
        """``(context, ids, start)``: the tokens to run and the index of the first counted one."""
        context = self.lm.render(self.template, prompt)
        if context not in self._context_ids:
            self._context_ids[context] = self.lm.encode(context)
        ids = self.lm.encode(context + response)
        start = len(self.lead) + common_prefix_length(ids, self._context_ids[context])
        ids = self.lead + ids + ([self.end_id] if finished else [])
        if start == 0:
            ids, start = [self.lm.start_id] + ids, 1
        return context, ids, start

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool]) -> list[float]:
        if not (len(prompts) == len(responses) == len(finished)):
            raise ValueError("prompts, responses and finished must have the same length.")
        seqs = [self.sequence(p, r, f) for p, r, f in zip(prompts, responses, finished)]
        old, self.groups = (self.groups if self.incremental else []), []
        try:
            return self._score(seqs, old)
        except BaseException:
            self.groups = []  # old rows were consumed; start afresh next time
            raise

    def _score(self, seqs, old: list[_Group]) -> list[float]:
        by_context: dict[str, list[tuple[int, int]]] = {}
        for g, group in enumerate(old):
            for r, ctx in enumerate(group.contexts):
                by_context.setdefault(ctx, []).append((g, r))
        # parent of each sequence: (group, row, shared prefix length), or None when nothing is shared
        plans: dict[int | None, list[tuple[int, int, int]]] = {}
        for j, (ctx, ids, _) in enumerate(seqs):
            best = (None, -1, 0)
            for g, r in by_context.get(ctx, ()):
                n = common_prefix_length(ids, old[g].rows.ids[r])
                if n > best[2]:
                    best = (g, r, n)
            g, r, n = best
            plans.setdefault(g if n > 1 else None, []).append((j, r, n))

        token_logprobs: list[list[float] | None] = [None] * len(seqs)
        for g, members in plans.items():
            if g is None:  # from scratch, in micro-batches
                for k in range(0, len(members), self.batch_size):
                    chunk = members[k : k + self.batch_size]
                    rows = self.lm.new_rows()
                    rows.add_empty_rows(len(chunk))
                    self._extend(rows, seqs, chunk, [[0.0]] * len(chunk), [0] * len(chunk), token_logprobs)
                continue
            # children of one old group: its cache rows are selected, rolled back and extended
            group, keep, reused, inherit = old[g], [], [], []
            for j, r, n in members:
                ids, parent_ids, lp = seqs[j][1], group.rows.ids[r], group.token_logprobs[r]
                if n == len(ids):  # a prefix of the parent: nothing to run
                    keep.append(n)
                    reused.append(lp[:n])
                    inherit.append(n == len(parent_ids) and group.has_next[r])
                elif n == len(parent_ids) and group.has_next[r]:  # the parent's next-token distribution scores ids[n]
                    keep.append(n)
                    reused.append(lp[:n] + [group.next_logprobs[r, ids[n]].item()])
                    inherit.append(False)
                else:  # re-tokenization changed the parent's last tokens: re-run the last shared one
                    keep.append(n - 1)
                    reused.append(lp[:n])
                    inherit.append(False)
            parents = [r for _, r, _ in members]
            inherited = group.next_logprobs[torch.as_tensor(parents, device=group.next_logprobs.device)]
            group.rows.select(parents)
            group.rows.truncate(keep)
            self._extend(group.rows, seqs, members, reused, keep, token_logprobs, inherited, inherit)
        return [float(sum(lp[start:])) for lp, (_, _, start) in zip(token_logprobs, seqs)]

    def _extend(self, rows: KVRows, seqs, members, reused, keep, out, inherited=None, inherit=None) -> None:
        """Run each member's tokens after ``keep`` and record the new group of rows.

        ``reused[i]`` holds the log-probs of tokens ``0..keep[i]`` (all of them if nothing is new): the
        logits at new position t then score new token t + 1, and the last one is the next-token
        distribution kept for the following call.
        """
        new = [seqs[j][1][k:] for (j, _, _), k in zip(members, keep)]
        logprobs = [list(lp) for lp in reused]
        vocab = self.lm.model.get_output_embeddings().weight.shape[0]
        device = self.lm.device
        next_lp = inherited if inherited is not None else torch.zeros(len(new), vocab, device=device)
        has_next = list(inherit) if inherit is not None else [False] * len(new)
        if any(new):
            logits = rows.forward(new, last_only=False)  # [rows, width, vocab]
            for a in range(0, len(new), 16):  # bounded memory for the float32 log-softmax
                lsm = logits[a : a + 16].float().log_softmax(dim=-1)
                for i in range(a, min(a + 16, len(new))):
                    n = len(new[i])
                    if n:
                        targets = torch.as_tensor(new[i][1:], dtype=torch.long, device=device)
                        logprobs[i].extend(lsm[i - a, torch.arange(n - 1, device=device), targets].tolist())
                        next_lp[i] = lsm[i - a, n - 1]
                        has_next[i] = True
        for i, (j, _, _) in enumerate(members):
            assert len(logprobs[i]) == len(seqs[j][1])
            out[j] = logprobs[i]
        self.groups.append(_Group(rows, [seqs[j][0] for j, _, _ in members], logprobs, next_lp, has_next))
