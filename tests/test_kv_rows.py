"""KVRows: many rows of different lengths, with holes and branches, in one cache give each sequence's
from-scratch logits.

Every scenario is checked against the model run on each row's ids alone (no padding, no cache):
plain full attention (Llama, GPT-2), sliding-window attention (Mistral, Gemma-3 with mixed layer types,
Qwen2 with sliding layers) with rows well past the window, and models whose cache cannot be rolled back
(refused with their model type named).  ``W2S_TEST_DEVICE`` and ``W2S_TEST_DTYPE`` run the models on another
device and in another precision (the GPU check, ``benchmarks/gpu_check.py``); CPU float32 by default.
"""

from __future__ import annotations

import inspect
import os
import warnings

import pytest
import torch
import transformers as T
from torch import nn

from w2s.backends.kv_rows import KVRows, check_model

DEVICE = torch.device(os.environ.get("W2S_TEST_DEVICE", "cpu"))
DTYPE = getattr(torch, os.environ.get("W2S_TEST_DTYPE", "float32"))
# logits against the model run from scratch: a wrong mask is off by whole units; bfloat16 rounds by ~0.06 here
TOL = 1e-4 if DTYPE == torch.float32 else 0.15
VOCAB = 64
WINDOW = 5
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=256, initializer_range=0.3, pad_token_id=0)


def llama():
    return T.LlamaForCausalLM(T.LlamaConfig(num_hidden_layers=2, **SMALL))


def gpt2():
    return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                          initializer_range=0.3))


def mistral():
    return T.MistralForCausalLM(T.MistralConfig(num_hidden_layers=2, sliding_window=WINDOW, **SMALL))


def gemma3():
    config = T.Gemma3TextConfig(num_hidden_layers=3, head_dim=8, query_pre_attn_scalar=8, sliding_window=WINDOW,
                                layer_types=["sliding_attention", "full_attention", "sliding_attention"], **SMALL)
    return T.Gemma3ForCausalLM(config)


def qwen2():
    config = T.Qwen2Config(num_hidden_layers=3, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1,
                           **SMALL)
    assert config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    return T.Qwen2ForCausalLM(config)


def build(make, attn="sdpa", seed=0):
    torch.manual_seed(seed)
    model = make().eval().to(DEVICE, DTYPE)
    model.set_attn_implementation(attn)
    return model


class Checked:
    """Runs KVRows calls and compares every returned logit with the model run from scratch on the row."""

    def __init__(self, model, pad_id=0, **kw):
        self.model, self.rows = model, KVRows(model, pad_id, **kw)
        self.gen = torch.Generator().manual_seed(1)
        self.checked = 0

    def tokens(self, n):
        return torch.randint(1, VOCAB, (n,), generator=self.gen).tolist()

    @torch.no_grad()
    def reference(self, ids):
        return self.model(input_ids=torch.tensor([ids], device=DEVICE), use_cache=False).logits[0]

    def forward(self, lengths, last_only):
        new = [self.tokens(n) for n in lengths]
        before = [len(ids) for ids in self.rows.ids]
        logits = self.rows.forward(new, last_only=last_only)
        assert torch.isfinite(logits).all()
        for i, ids in enumerate(self.rows.ids):
            if not new[i]:
                continue  # meaningless logits by contract
            ref = self.reference(ids)
            got, want = (logits[i], ref[-1]) if last_only else (logits[i, : len(new[i])], ref[before[i]:])
            torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
            self.checked += 1

    def scenario(self):
        rows = self.rows
        rows.add_empty_rows(3)
        self.forward([4, 11, 7], last_only=True)  # prompts of different lengths: left padding
        self.forward([3, 0, 6], last_only=False)  # right padding, and a row of padding queries only
        rows.truncate([5, 9, 12])  # re-tokenization rolls rows back: holes
        self.forward([2, 5, 1], last_only=True)
        rows.select([2, 0, 0, 1])  # reorder, with a repeat
        rows.truncate([len(rows.ids[0]) - 2, len(rows.ids[1]), len(rows.ids[2]) - 3, 4])
        self.forward([6, 3, 9, 2], last_only=False)
        for step in range(12):  # decoding, some rows rolled back by one token now and then
            if step % 4 == 3:
                rows.truncate([len(ids) - (i % 2) for i, ids in enumerate(rows.ids)])
            self.forward([1, 1, 1, 1], last_only=True)
        rows.select([3, 1])
        self.forward([4, 2], last_only=True)
        assert min(len(ids) for ids in rows.ids) > 3 * WINDOW  # well past the window
        assert rows.num_columns > max(len(ids) for ids in rows.ids)  # holes and padding in every row


@pytest.mark.parametrize("make", [mistral, gemma3, qwen2])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_sliding_window_rows_with_holes_match_each_row_from_scratch(make, attn):
    run = Checked(build(make, attn))
    run.scenario()
    assert run.checked > 40


@pytest.mark.parametrize("make", [llama, gpt2])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_full_attention_rows_with_holes_match_each_row_from_scratch(make, attn):
    """Models without sliding layers: the same 4-D masks, every layer full."""
    run = Checked(build(make, attn))
    run.scenario()
    assert run.checked > 40


@pytest.mark.parametrize("make, sliding", [(llama, False), (gpt2, False), (mistral, True), (gemma3, True), (qwen2, True)])
def test_only_sliding_models_take_the_4d_mask_path(make, sliding):
    assert KVRows(build(make), 0).sliding == sliding


def test_sliding_rows_keep_every_column():
    """Sliding layers of DynamicCache(config=...) would drop columns that other rows still need."""
    run = Checked(build(gemma3))
    run.scenario()
    assert {layer.get_seq_length() for layer in run.rows.cache.layers} == {run.rows.num_columns}


def check_branches(run: Checked, new, last_only: bool) -> None:
    """``forward_branches(new)`` gives each branch's logits as its sequence run from scratch."""
    rows = run.rows
    before = [[len(rows.sequence(i, b)) for b in range(len(n))] for i, n in enumerate(new)]
    out = rows.forward_branches(new, last_only=last_only)
    logits, starts = (out, None) if last_only else out
    for i, n in enumerate(new):
        for b, toks in enumerate(n):
            if not toks:
                continue
            ref = run.reference(rows.sequence(i, b))
            if last_only:
                got, want = logits[i, b], ref[-1]
            else:
                got, want = logits[i, starts[i][b] : starts[i][b] + len(toks)], ref[before[i][b]:]
            torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
            run.checked += 1


@pytest.mark.parametrize("make", [llama, gpt2, mistral, gemma3])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_branches_share_their_row_and_regroup_into_rows(make, attn):
    """Search beams: K branches per row, decoded in lock step, then survivors regrouped into rows; scoring: branches
    that see only part of their row (re-tokenized tails) with several new tokens each."""
    branch_scenario(Checked(build(make, attn)))


def branch_scenario(run: Checked) -> None:
    rows = run.rows
    rows.add_empty_rows(3)
    run.forward([4, 9, 6], last_only=True)
    rows.truncate([4, 7, 6])  # a hole in row 1
    rows.branch([[4, 4], [7, 7, 7], [6]])
    for step in range(8):  # a finished branch gets no token (a padding query)
        check_branches(run, [[run.tokens(1), run.tokens(1)], [run.tokens(1), [] if step > 2 else run.tokens(1),
                                                              run.tokens(1)], [run.tokens(1)]], last_only=True)
    survivors = [(1, 2), (0, 1), (1, 2), (2, None), (1, 1)]
    expected = [rows.sequence(r, b) for r, b in survivors]
    rows.regroup(survivors, reserve=8)
    assert rows.ids == expected and not any(rows.branches)
    run.forward([1, 0, 2, 3, 1], last_only=True)
    rows.branch([[len(rows.ids[0]), len(rows.ids[0]) - 2], [3], [len(rows.ids[2]) - 1, 5], [0 + 1], []])
    check_branches(run, [[run.tokens(3), run.tokens(5)], [run.tokens(2)], [run.tokens(1), run.tokens(4)],
                         [run.tokens(6)], []], last_only=False)
    rows.regroup([(0, 1), (2, 0), (3, 0)], lengths=[7, 3, 4])
    run.forward([2, 5, 1], last_only=False)
    assert min(len(ids) for ids in rows.ids) >= 5 and run.checked > 40


@pytest.mark.parametrize("make", [llama, gemma3])
def test_a_token_bound_splits_forwards_into_calls_that_give_the_same_logits(make):
    """max_tokens_per_forward: a forward of more query tokens runs as several model calls, each of at most
    that many tokens, whose logits equal the unsplit ones (rows, holes, branches, sliding windows)."""
    model = build(make)
    calls = []  # (rows, columns) of each cached call; the references run without a cache
    model.register_forward_pre_hook(
        lambda module, args, kw: calls.append(tuple(kw["input_ids"].shape)) if kw.get("use_cache") else None,
        with_kwargs=True)
    for scenario in (Checked.scenario, branch_scenario):
        run = Checked(model, max_tokens_per_forward=6)
        scenario(run)
        assert run.checked > 40
    assert max(rows * columns for rows, columns in calls) <= 6
    assert len(calls) > 2 * sum(1 for rows, columns in calls if columns > 1)  # most forwards were split


def test_a_forward_with_more_rows_than_the_token_bound_is_refused_before_it_changes_anything():
    run = Checked(build(llama), max_tokens_per_forward=2)
    run.rows.add_empty_rows(3)
    with pytest.raises(ValueError, match=r"max_tokens_per_forward=2 is below one token for each of the 3 rows"):
        run.rows.forward([[1, 2], [3], [4]], last_only=True)
    assert run.rows.ids == [[], [], []] and run.rows.num_columns == 0


def takes(model, name):
    return name in inspect.signature(model.forward).parameters


@pytest.mark.parametrize("make", [llama, gpt2])
def test_no_deprecation_warnings_and_new_cache_argument(make):
    model = build(make)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        run = Checked(model)
        run.scenario()
    # transformers 5.24 takes `cache` (`past_key_values` is deprecated, removed in 5.40); 5.0 only the old name
    assert run.rows.cache_arg == ("cache" if takes(model, "cache") else "past_key_values")


class OldForward(nn.Module):
    """A model whose forward only knows ``past_key_values`` (transformers before the rename)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config
        self.name = "cache" if takes(inner, "cache") else "past_key_values"

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None, use_cache=None,
                logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, logits_to_keep=logits_to_keep, **{self.name: past_key_values})


def test_old_past_key_values_argument_still_works():
    model = build(llama)
    rows = KVRows(OldForward(model), 0)
    assert rows.cache_arg == "past_key_values"
    rows.add_empty_rows(2)
    logits = rows.forward([[1, 2, 3], [4, 5]], last_only=True)
    want = model(input_ids=torch.tensor([[4, 5]], device=DEVICE)).logits[0, -1]
    torch.testing.assert_close(logits[1], want, atol=TOL, rtol=TOL)


class IgnoresCache(OldForward):
    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None,
                logits_to_keep=0):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache, logits_to_keep=logits_to_keep)


def test_a_model_that_keeps_its_state_elsewhere_is_caught_at_the_first_forward():
    rows = KVRows(IgnoresCache(build(llama)), 0)
    rows.add_empty_rows(2)
    with pytest.raises(ValueError, match="model type 'llama'.*did not store"):
        rows.forward([[1, 2, 3], [4, 5]], last_only=True)


def tiny_mamba():
    return T.MambaForCausalLM(T.MambaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, state_size=4))


def tiny_lfm2():
    return T.Lfm2ForCausalLM(T.Lfm2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, full_attn_idxs=[1]))


def tiny_rwkv():
    return T.RwkvForCausalLM(T.RwkvConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                          attention_hidden_size=32, intermediate_size=64, context_length=64))


@pytest.mark.parametrize("make, model_type", [(tiny_mamba, "mamba"), (tiny_lfm2, "lfm2"), (tiny_rwkv, "rwkv")])
def test_recurrent_models_are_refused(make, model_type):
    with pytest.raises(ValueError, match=rf"model type '{model_type}'.*rolls rows back"):
        KVRows(make().eval(), 0)


class ConfigOnly(nn.Module):
    """Stands in for a model too big to build here: KVRows only looks at its config and its forward's
    signature (taken from the real class) before the first forward."""

    def __init__(self, config):
        super().__init__()
        self.config, self.w = config, nn.Parameter(torch.zeros(1))


def config_only(model_class, config):
    return type(model_class.__name__, (ConfigOnly,), {"forward": model_class.forward})(config)


@pytest.mark.parametrize("model_class, config", [
    ("JambaForCausalLM", lambda: T.JambaConfig(num_hidden_layers=2)),
    ("Qwen3NextForCausalLM", lambda: T.Qwen3NextConfig(num_hidden_layers=4)),
    ("FalconH1ForCausalLM", lambda: T.FalconH1Config(num_hidden_layers=2)),
    ("RecurrentGemmaForCausalLM", lambda: T.RecurrentGemmaConfig(num_hidden_layers=3)),
    ("Mamba2ForCausalLM", lambda: T.Mamba2Config(num_hidden_layers=2)),
    ("xLSTMForCausalLM", lambda: T.xLSTMConfig(num_hidden_layers=2)),
    ("Llama4ForCausalLM", lambda: T.Llama4TextConfig(num_hidden_layers=4)),  # chunked attention
    ("Gemma3nForCausalLM", lambda: T.Gemma3nTextConfig()),  # layers sharing another layer's cache
])
def test_hybrid_chunked_and_shared_caches_are_refused(model_class, config):
    config = config()
    with pytest.raises(ValueError, match=rf"model type '{config.model_type}'.*rolls rows back"):
        KVRows(config_only(getattr(T, model_class), config), 0)


def test_sliding_model_without_4d_masks_is_refused():
    config = T.MistralConfig(num_hidden_layers=2, sliding_window=WINDOW, **SMALL)
    config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match=r"model type 'mistral'.*flash_attention_2"):
        KVRows(config_only(T.MistralForCausalLM, config), 0)
    config._attn_implementation = "sdpa"
    assert KVRows(config_only(T.MistralForCausalLM, config), 0).sliding


def test_check_model_fails_early_without_a_forward():
    assert check_model(build(gemma3))["kinds"] == ["sliding_attention", "full_attention", "sliding_attention"]
    with pytest.raises(ValueError, match="model type 'mamba'"):
        check_model(tiny_mamba())


def test_grouped_query_attention_folds_query_heads_instead_of_copying_keys(monkeypatch):
    """Llama with 4 query heads over 2 key/value heads: every layer of every forward takes the folded path,
    and the logits still equal each sequence's from scratch (checked by the scenario)."""
    from transformers import AttentionInterface

    from w2s.backends import kv_rows

    calls = []

    def counting(module, query, key, value, attention_mask, **kwargs):
        calls.append((query.shape[1], key.shape[1]))
        return kv_rows.folded_sdpa(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register(kv_rows.FOLDED_SDPA, counting)
    try:
        run = Checked(build(llama))
        run.scenario()
    finally:
        AttentionInterface.register(kv_rows.FOLDED_SDPA, kv_rows.folded_sdpa)
    assert calls and set(calls) == {(4, 2)}
    # set on this model through transformers' API (not swapped at every forward), and its own forward, with
    # transformers' masks, is still sdpa's: the same logits as a fresh sdpa copy of the model
    assert run.model.config._attn_implementation == kv_rows.FOLDED_SDPA
    fresh = build(llama)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]], device=DEVICE)
    torch.testing.assert_close(run.model(input_ids=ids).logits, fresh(input_ids=ids).logits, atol=TOL / 10, rtol=TOL / 10)
    assert fresh.config._attn_implementation == "sdpa"  # other models untouched
