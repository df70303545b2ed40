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

Incremental: the sequences of the previous call stay in a KV cache.  A new sequence is matched to its
parent, the old sequence of the same context whose response text is the longest prefix of the new one
(what a search's candidate extends), and shares the prefix of token ids they have in common
(re-tokenization may change the last tokens of the old text, so this is a prefix of ids, not of text).
The parents become the rows of a fresh cache (one gather) and their children branches of them, which
read the parent's keys and values once for all of them (:class:`KVRows`), or, when the children's new
tokens outnumber what they share (whole answers: :func:`rows_beat_branches`), rows of their own; only the tokens after the
shared prefix are forwarded (one before it when the parent's last tokens changed), and the shared
tokens' log-probabilities are reused.  A token's log-probability is its logit minus the logsumexp of its
row: no full-vocabulary log-softmax is written except for each sequence's next-token distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .kv_rows import KVRows, rows_beat_branches


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id lists (list comparisons in C, then a binary search)."""
    n = min(len(a), len(b))
    a, b = list(a[:n]), list(b[:n])
    if a == b:
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        mid = (low + high) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid
    return low


@dataclass
class _Group:
    """The sequences one cache holds after a call: where each is (row, branch), and what is known of it."""

    rows: KVRows
    places: list[tuple[int, int | None]]
    contexts: list[str]
    responses: list[str]
    ids: list[list[int]]
    token_logprobs: list[list[float]]  # [seq][i] = log p(ids[i] | ids[:i]); entry 0 is 0.0
    next_logprobs: torch.Tensor  # [seqs, vocab] = log p(next token | ids), valid where has_next
    has_next: list[bool]


class IncrementalLogProbs:
    TOKENS_PER_GATHER = 256  # logit rows copied at once to score tokens (bounded memory)

    def __init__(self, lm, template: str, incremental: bool = True, batch_size: int = 32):
        lm.render(template, "")  # fail early when 'chat' is asked of a model without a chat template
        self.lm, self.template, self.incremental, self.batch_size = lm, template, incremental, batch_size
        self.lead, self.end_id = lm.context_prefix(template), lm.end_id(template)  # BOS and end-token rules
        self.groups: list[_Group] = []
        self._context_ids: dict[str, list[int]] = {}
        self.last_tokens: list[int] = []  # tokens run for each response of the last call (its prompt's not counted)

    def reset(self) -> None:
        self.groups = []
        self._context_ids = {}

    def sequences(self, prompts, responses, finished) -> list[tuple[str, list[int], int]]:
        """``(context, ids, start)`` of each response: the tokens to run and the index of the first counted one
        (all texts tokenized in one batched call)."""
        contexts = [self.lm.render(self.template, p) for p in prompts]
        unseen = sorted(set(contexts) - set(self._context_ids))
        self._context_ids.update(zip(unseen, self.lm.encode_many(unseen)))
        out = []
        for context, ids, done in zip(contexts, self.lm.encode_many([c + r for c, r in zip(contexts, responses)]),
                                      finished):
            start = len(self.lead) + common_prefix_length(ids, self._context_ids[context])
            ids = self.lead + ids + ([self.end_id] if done else [])
            if start == 0:
                ids, start = [self.lm.start_id] + ids, 1
            out.append((context, ids, start))
        return out

    def _context_ids_of(self, context: str) -> list[int]:
        if context not in self._context_ids:
            self._context_ids[context] = self.lm.encode(context)
        return self._context_ids[context]

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], finished: Sequence[bool],
                 seqs=None) -> list[float]:
        """Log-likelihood of each response; ``seqs``: :meth:`sequences` of them when already computed (by a
        model with the same tokenizer and template)."""
        if not (len(prompts) == len(responses) == len(finished)):
            raise ValueError("prompts, responses and finished must have the same length.")
        seqs = seqs if seqs is not None else self.sequences(prompts, responses, finished)
        current = {context for context, _, _ in seqs}  # forget other calls' prompts: memory stays one call's
        self._context_ids = {c: ids for c, ids in self._context_ids.items() if c in current}
        old, self.groups = (self.groups if self.incremental else []), []
        self.last_tokens = [0] * len(seqs)
        try:
            return self._score(seqs, list(responses), old)
        except BaseException:
            self.groups = []  # old rows were consumed; start afresh next time
            raise

    def _parent(self, candidates, ids: list[int], response: str, old: list[_Group]) -> tuple[int, int, int]:
        """``(group, sequence, shared ids)`` of the old sequence a new one extends (see the module docstring)."""
        best, best_length = None, -1
        for g, s in candidates:
            text = old[g].responses[s]
            if len(text) > best_length and response.startswith(text):
                best, best_length = (g, s), len(text)
        if best is None:  # no old response is a prefix of this one: any sequence shares at least the context
            best = candidates[0]
        g, s = best
        return g, s, common_prefix_length(ids, old[g].ids[s])

    def _score(self, seqs, responses: list[str], old: list[_Group]) -> list[float]:
        by_context: dict[str, list[tuple[int, int]]] = {}
        for g, group in enumerate(old):
            for s, ctx in enumerate(group.contexts):
                by_context.setdefault(ctx, []).append((g, s))
        fresh, children = [], {}  # children[g][s] = [(j, shared)]
        for j, (ctx, ids, _) in enumerate(seqs):
            candidates = by_context.get(ctx)
            g, s, n = self._parent(candidates, ids, responses[j], old) if candidates else (None, None, 0)
            if n > 1:
                children.setdefault(g, {}).setdefault(s, []).append((j, n))
            else:
                fresh.append(j)

        token_logprobs: list[list[float] | None] = [None] * len(seqs)
        by_fresh_context: dict[str, list[int]] = {}
        for j in fresh:
            by_fresh_context.setdefault(seqs[j][0], []).append(j)
        contexts = list(by_fresh_context)
        for k in range(0, len(contexts), self.batch_size):  # from scratch: branches of their contexts' rows
            batch = contexts[k : k + self.batch_size]
            heads = [(self.lead + self._context_ids_of(c)) or [self.lm.start_id] for c in batch]
            rows = self.lm.new_rows()
            rows.add_empty_rows(len(batch))
            rows.forward(heads, last_only=True)
            members, member_runs, keeps, new = [], [], [], []
            for row, (context, head) in enumerate(zip(batch, heads)):
                row_keeps, row_new = [], []
                for j in by_fresh_context[context]:  # re-run the last shared token: its logits score the next
                    ids = seqs[j][1]
                    keep = max(common_prefix_length(ids, head) - 1, 0)
                    members.append(j)
                    # (row, branch, keep, known): tokens before the response's start don't count
                    member_runs.append((row, len(row_keeps), keep, [0.0] * (keep + 1)))
                    row_keeps.append(keep)
                    row_new.append(ids[keep:])
                keeps.append(row_keeps)
                new.append(row_new)
            self._run(rows, None, keeps, new, seqs, responses, members, member_runs, None, token_logprobs)
        for g, by_parent in children.items():  # children of one old group: branches of its parents
            group, parents = old[g], list(by_parent)
            members, member_runs, keeps, next_of_parent, from_next = [], [], [], [], []
            for row, s in enumerate(parents):
                parent_ids, lp, row_keeps = group.ids[s], group.token_logprobs[s], []
                for j, n in by_parent[s]:
                    ids = seqs[j][1]
                    if n == len(ids):  # a prefix of the parent: nothing to run
                        keep, known = n, lp[:n]
                        next_of_parent.append(s if n == len(parent_ids) and group.has_next[s] else None)
                    elif n == len(parent_ids) and group.has_next[s]:  # the parent's next-token logits score ids[n]
                        keep, known = n, lp[:n] + [0.0]  # filled below, in one gather
                        next_of_parent.append(None)
                        from_next.append((len(member_runs), s, ids[n]))
                    else:  # re-tokenization changed the parent's last tokens: re-run the last shared one
                        keep, known = n - 1, lp[:n]
                        next_of_parent.append(None)
                    members.append(j)
                    member_runs.append((row, len(row_keeps), keep, known))
                    row_keeps.append(keep)
                keeps.append(row_keeps)
            if from_next:
                at, seq, token = zip(*from_next)
                device = group.next_logprobs.device
                index = torch.tensor(seq, device=device), torch.tensor(token, device=device)
                values = group.next_logprobs[index].tolist()
                for i, value in zip(at, values):
                    member_runs[i][3][-1] = value
            new = [[] for _ in parents]
            for j, (row, _, keep, _) in zip(members, member_runs):
                new[row].append(seqs[j][1][keep:])
            parent_next = [None if s is None else group.next_logprobs[s] for s in next_of_parent]
            self._run(group.rows, [group.places[s] for s in parents], keeps, new, seqs, responses, members,
                      member_runs, parent_next, token_logprobs)
        return [float(sum(lp[start:])) for lp, (_, _, start) in zip(token_logprobs, seqs)]

    def _run(self, rows: KVRows, parents, keeps, new, seqs, responses, members, member_runs, parent_next,
             token_logprobs) -> None:
        """Run the members' new tokens after their parents' and score them: sequence ``parents[r]`` of ``rows``
        (row ``r`` when ``parents`` is None) continues as ``new[r][b]`` after its first ``keeps[r][b]`` tokens,
        for member ``b`` of parent ``r`` (``member_runs`` lists ``(r, b, keep, known)`` in member order).  The
        parents become the rows of a fresh cache and the members branches of them, or, when that would make
        the members attend over more of their siblings than of their parents (:func:`rows_beat_branches`:
        whole answers), each member becomes a row of its own, holding a copy of its parent's first ``keep``
        tokens."""
        if rows_beat_branches([max(k) for k in keeps], [list(map(len, n)) for n in new]):
            sources = [(r, None) if parents is None else parents[r] for r, _, _, _ in member_runs]
            rows.regroup(sources, [keep for _, _, keep, _ in member_runs], reserve=max(len(t) for n in new for t in n))
            own = [new[r][b] for r, b, _, _ in member_runs]
            places = [(i, None) for i in range(len(member_runs))]
            queries = [(i, 0, keep, known) for i, (_, _, keep, known) in enumerate(member_runs)]
            reader = self._reader(seqs, members, queries)
            if any(own):
                rows.forward(own, last_only=False, read=reader.read)
        else:
            if parents is not None:
                rows.regroup(parents, [max(k) for k in keeps], reserve=max(sum(map(len, n)) for n in new))
            rows.branch(keeps)
            starts = KVRows.branch_starts(new)
            places = [(r, b) for r, b, _, _ in member_runs]
            queries = [(r, starts[r][b], keep, known) for r, b, keep, known in member_runs]
            reader = self._reader(seqs, members, queries)
            if any(t for n in new for t in n):
                rows.forward_branches(new, last_only=False, read=reader.read)
        self._record(rows, places, seqs, responses, members, reader, queries, parent_next, token_logprobs)

    def _reader(self, seqs, members, queries) -> "_Reader":
        """What a forward's logits must give (see :meth:`_record` for ``queries``): for each member, the
        log-probability of each of its new tokens after the first, at the query before it, and its last
        query's next-token distribution."""
        rows_idx, query_idx, targets, last_rows, last_queries, last_members = [], [], [], [], [], []
        for i, (j, (row, query, keep, known)) in enumerate(zip(members, queries)):
            ids = seqs[j][1]
            n_new = len(ids) - keep
            self.last_tokens[j] = n_new
            for t in range(len(known) - keep - 1, n_new - 1):
                rows_idx.append(row)
                query_idx.append(query + t)
                targets.append(ids[keep + t + 1])
            if n_new:
                last_rows.append(row)
                last_queries.append(query + n_new - 1)
                last_members.append(i)
        return _Reader(rows_idx, query_idx, targets, last_rows, last_queries, last_members, self.lm.num_logits,
                       self.lm.device, self.TOKENS_PER_GATHER)

    def _record(self, rows: KVRows, places, seqs, responses, members, reader: "_Reader", queries, parent_next,
                out) -> None:
        """Score each member's new tokens from what ``reader`` read and keep the group for the next call.

        ``queries[i] = (row, query, keep, known)``: member ``i``'s tokens after ``keep`` were run at queries
        ``query...`` of ``row``, and ``known`` holds the log-probs of its first ``len(known)`` tokens.  The
        logit at the query of token ``t`` scores token ``t + 1``; the last one is the next-token distribution.
        ``parent_next[i]``, when not None, is the next-token distribution member ``i`` takes over from its
        parent (it ran no token of its own).
        """
        logprobs = [list(known) for _, _, _, known in queries]
        scored = iter(reader.scored.tolist())
        for i, (j, (_, _, keep, known)) in enumerate(zip(members, queries)):
            logprobs[i] += [next(scored) for _ in range(len(known) - keep - 1, len(seqs[j][1]) - keep - 1)]
        next_lp = torch.zeros(len(members), self.lm.num_logits, device=self.lm.device)
        has_next = [False] * len(members)
        if parent_next is not None:
            for i, lp in enumerate(parent_next):
                if lp is not None:
                    next_lp[i], has_next[i] = lp, True
        if reader.last_members:
            next_lp[torch.tensor(reader.last_members, device=next_lp.device)] = reader.next
            for i in reader.last_members:
                has_next[i] = True
        for i, j in enumerate(members):
            assert len(logprobs[i]) == len(seqs[j][1])
            out[j] = logprobs[i]
        self.groups.append(_Group(rows, list(places), [seqs[j][0] for j in members], [responses[j] for j in members],
                                  [seqs[j][1] for j in members], logprobs, next_lp, has_next))


class _Reader:
    """The logits a scoring forward needs, read model call by model call (``KVRows.forward_branches(...,
    read=reader.read)``) so that no more of them exist at once than one call makes: entry ``e`` is the
    log-probability of token ``targets[e]`` under the logits at ``(rows_idx[e], query_idx[e])`` (its logit
    minus the logsumexp of its row, ``per_gather`` rows copied at a time), and ``next`` holds the
    log-softmax at each ``(last_rows[k], last_queries[k])``, for member ``last_members[k]``."""

    def __init__(self, rows_idx, query_idx, targets, last_rows, last_queries, last_members, vocab, device,
                 per_gather: int):
        as_tensor = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
        self.rows, self.queries, self.targets = as_tensor(rows_idx), as_tensor(query_idx), as_tensor(targets)
        self.last_rows, self.last_queries, self.last_members = as_tensor(last_rows), as_tensor(last_queries), last_members
        self.scored = torch.zeros(len(targets), device=device)
        self.next = torch.zeros(len(last_rows), vocab, device=device)
        self.per_gather = per_gather

    def read(self, logits: torch.Tensor, column: int) -> None:
        """Take what is needed from ``logits`` ``[rows, width, vocab]``, the new columns ``column..column+width``."""
        width = logits.shape[1]
        inside = ((self.queries >= column) & (self.queries < column + width)).nonzero().flatten()
        for a in range(0, len(inside), self.per_gather):
            e = inside[a : a + self.per_gather]
            picked = logits[self.rows[e], self.queries[e] - column].float()
            self.scored[e] = picked.gather(1, self.targets[e, None])[:, 0] - picked.logsumexp(dim=-1)
        last = ((self.last_queries >= column) & (self.last_queries < column + width)).nonzero().flatten()
        if len(last):
            self.next[last] = logits[self.last_rows[last], self.last_queries[last] - column].float().log_softmax(dim=-1)
