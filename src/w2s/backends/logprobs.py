"""Log-likelihood of responses under a local model, computed incrementally across calls.

Definition (what :class:`w2s.LogRatioScorer` sums): tokenize ``context + response`` without special
tokens, where ``context = template.format(prompt=prompt)`` (or the chat template); the prompt part is
the longest common prefix of those ids with the ids of ``context`` alone, and only the tokens after it
count; a finished response gets the model's EOS token appended and counted.  If that common prefix is
empty (an empty context, or a response that merges into the context's first token), the model's BOS
(or EOS) token is put in front as an uncounted start token, so that every counted token has a context.

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


class IncrementalLogProbs:
    def __init__(self, lm, template: str, incremental: bool = True, batch_size: int = 32):
        lm.render(template, "")  # fail early when 'chat' is asked of a model without a chat template
        self.lm, self.template, self.incremental, self.batch_size = lm, template, incremental, batch_size
        self.groups: list[_Group] = []
        self._context_ids: dict[str, list[int]] = {}

    def reset(self) -> None:
        self.groups = []

    def sequence(self, prompt: str, response: str, finished: bool) -> tuple[str, list[int], int]:
        """``(context, ids, start)``: the tokens to run and the index of the first counted one."""
        context = self.lm.render(self.template, prompt)
        if context not in self._context_ids:
            self._context_ids[context] = self.lm.encode(context)
        ids = self.lm.encode(context + response) + ([self.lm.eos_id] if finished else [])
        start = common_prefix_length(ids, self._context_ids[context])
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
            else:  # children of one old group: its cache rows are selected, rolled back and extended
                group = old[g]
                group.rows.select([r for _, r, _ in members])
                keep = [n if n == len(seqs[j][1]) else n - 1 for j, _, n in members]
                group.rows.truncate(keep)
                reused = [group.token_logprobs[r][:n] for _, r, n in members]  # tokens 0..n-1 are shared
                self._extend(group.rows, seqs, members, reused, keep, token_logprobs)
        return [float(sum(lp[start:])) for lp, (_, _, start) in zip(token_logprobs, seqs)]

    def _extend(self, rows: KVRows, seqs, members, reused, keep, out) -> None:
        """Forward each member's tokens after ``keep`` and record the new group of rows."""
        new = [seqs[j][1][k:] for (j, _, _), k in zip(members, keep)]
        logprobs = [list(lp) for lp in reused]
        if any(new):
            logits = rows.forward(new, last_only=False)  # [rows, width, vocab]
            width = logits.shape[1]
            # the logits at new position t predict the token after it: new[i][t + 1]
            targets = torch.zeros(len(new), width, dtype=torch.long)
            for i, toks in enumerate(new):
                if len(toks) > 1:
                    targets[i, : len(toks) - 1] = torch.as_tensor(toks[1:], dtype=torch.long)
            logits = logits.float()
            picked = logits.gather(-1, targets.to(logits.device).unsqueeze(-1)).squeeze(-1)
            token_lp = (picked - logits.logsumexp(dim=-1)).cpu()
            for i, toks in enumerate(new):
                logprobs[i].extend(token_lp[i, : max(len(toks) - 1, 0)].tolist())
        for i, (j, _, _) in enumerate(members):
            assert len(logprobs[i]) == len(seqs[j][1])
            out[j] = logprobs[i]
        self.groups.append(_Group(rows, [seqs[j][0] for j, _, _ in members], logprobs))
