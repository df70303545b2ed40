"""``w2s eval sentiment``: the controlled-sentiment comparison on tiny random models."""

import csv
import json

import pytest

import w2s
from w2s.cli import build_parser
from w2s.evaluation.common import make_search
from w2s.evaluation.sentiment import SENTIMENT_RUNS, evaluate_sentiment
from w2s.tasks.sentiment import gold_reward

PROMPTS = ["The cat", "What a", "I did not like"]


@pytest.fixture(scope="module")
def shared(model_dirs):
    return w2s.load_model(model_dirs["shared_tuned"]), w2s.load_model(model_dirs["shared_untuned"])


def raw(out, method, seed):
    return [json.loads(line) for line in (out / "raw" / method / f"seed{seed}.jsonl").read_text().splitlines()]


def test_tiny_run_writes_tables_plot_and_gold_rewards(strong, shared, tmp_path):
    rows = evaluate_sentiment(tmp_path, strong, *shared, PROMPTS, seeds=(0, 1), max_new_tokens=4, progress=False,
                              methods=["base", "bon-4", "cbs-2x2", "cbs-4x4", "eft", "tuned-alone"])
    expected = {"base": 1, "bon-4": 4, "cbs-2x2": 4, "cbs-4x4": 16, "eft": 1, "tuned-alone": 1}
    assert [(r["method"], r["compute_N"]) for r in rows] == list(expected.items())
    with open(tmp_path / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [(r["method"], int(r["compute_N"]), r["prompts"], r["seeds"], r["skipped"]) for r in table] == [
        (m, n, "3", "2", "") for m, n in expected.items()]
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("| method | compute N | gold reward [95% CI] | seed sd | loops |") and "| cbs-4x4 | 16 |" in md
    assert "±" not in md and "95% t-interval over prompts" in md
    assert "| cbs-2x2 − bon-4 | gold reward (VADER) |" in (tmp_path / "comparisons.md").read_text()
    # the tables rewritten from the raw files alone are the same tables
    before = {f: (tmp_path / f).read_text() for f in ("summary.csv", "summary.md", "comparisons.csv")}
    from w2s.evaluation.sentiment import rewrite_from_raw
    assert rewrite_from_raw(tmp_path) == rows
    assert {f: (tmp_path / f).read_text() for f in before} == before
    assert (tmp_path / "reward_vs_compute.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["prompts"] == PROMPTS and config["max_new_tokens"] == 4 and config["top_k"] == 50
    for row in rows:
        per_seed = [raw(tmp_path, row["method"], s) for s in (0, 1)]
        for records in per_seed:
            assert [r["prompt"] for r in records] == PROMPTS
            for r in records:
                assert r["gold_reward"] == gold_reward(r["response"]) and 0 < r["num_tokens"] <= 4
                assert r["seconds"] >= 0 and isinstance(r["finished"], bool)
        means = [sum(r["gold_reward"] for r in records) / 3 for records in per_seed]
        assert row["gold_reward_mean"] == pytest.approx(sum(means) / 2)
        assert row["gold_reward_seed_sd"] == pytest.approx(abs(means[0] - means[1]) / 2 ** 0.5)
        assert row["gold_reward_low"] <= row["gold_reward_mean"] <= row["gold_reward_high"]
        assert 0 <= row["looping"] <= 1 and 0 <= row["truncated"] <= 1
    # different seeds draw different samples somewhere
    assert any(raw(tmp_path, m, 0) != raw(tmp_path, m, 1) for m in expected)


def test_budget_variants_record_their_compute_and_get_the_tokens_plot(strong, tuned, untuned, tmp_path):
    names = ["base", "bon-4", "bon-16", "pruned-bon-16", "cbs-2x2", "cbs-4x4-sentence", "adaptive-4x4"]
    rows = evaluate_sentiment(tmp_path, strong, tuned, untuned, PROMPTS[:2], seeds=(0,), max_new_tokens=10,
                              methods=names, progress=False)
    got = {r["method"]: r for r in rows}
    assert list(got) == [n for n in SENTIMENT_RUNS if n in names]  # in the table's order
    for name in names:
        records = raw(tmp_path, name, 0)
        assert all(r["sampled_tokens"] >= r["num_tokens"] and r["guide_tokens"] >= 0 for r in records)
        assert got[name]["sampled_tokens"] == pytest.approx(sum(r["sampled_tokens"] for r in records) / 2)
    assert got["cbs-2x2"]["guide_tokens"] > got["base"]["guide_tokens"] > 0  # base: its reported score only
    assert got["pruned-bon-16"]["sampled_tokens"] < got["bon-16"]["sampled_tokens"]
    md = (tmp_path / "summary.md").read_text()
    assert "| sampled tokens | guide tokens |" in md and "| pruned-bon-16 | 16 |" in md
    assert (tmp_path / "reward_vs_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eft_is_skipped_with_a_reason_when_vocabularies_differ(strong, tuned, untuned, tmp_path):
    rows = evaluate_sentiment(tmp_path, strong, tuned, untuned, PROMPTS[:2], seeds=(0,), max_new_tokens=3,
                              methods=["base", "eft"], progress=False)
    eft = rows[1]
    assert eft["method"] == "eft" and "vocabulary" in eft["skipped"] and eft["gold_reward_mean"] is None
    assert not (tmp_path / "raw" / "eft").exists() and len(raw(tmp_path, "base", 0)) == 2
    md = (tmp_path / "summary.md").read_text()
    assert "| eft |" not in md and "- `eft`: EFT needs one shared vocabulary" in md
    assert (tmp_path / "reward_vs_compute.png").exists()
    # the reason is kept in the settings, for --from-raw, and survives a later run of other methods
    evaluate_sentiment(tmp_path, strong, tuned, untuned, PROMPTS[:2], seeds=(0,), max_new_tokens=3,
                       methods=["base"], progress=False)
    from w2s.evaluation.sentiment import rewrite_from_raw
    rows = rewrite_from_raw(tmp_path)
    assert [(r["method"], bool(r["skipped"])) for r in rows] == [("base", False), ("eft", True)]
    assert "- `eft`: EFT needs one shared vocabulary" in (tmp_path / "summary.md").read_text()


def _records(path):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in map(json.loads, path.read_text().splitlines())]


def assert_same_records(after, before):
    """Same texts and counts; scores equal to float tolerance (exact only for identical batches)."""
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert {k: v for k, v in a.items() if k != "score"} == {k: v for k, v in b.items() if k != "score"}
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_resume_restarts_at_a_batch_boundary_and_skips_finished_work(strong, tuned, untuned, tmp_path, monkeypatch):
    prompts = PROMPTS + ["The food was", "My day"]  # 5 prompts: the last batch is a partial one
    kw = dict(seeds=(0, 1), max_new_tokens=4, methods=["base", "cbs-2x2"], batch_size=2, progress=False)
    evaluate_sentiment(tmp_path, strong, tuned, untuned, prompts, **kw)
    files = sorted((tmp_path / "raw").glob("*/*.jsonl"))
    assert len(files) == 4
    before = {f: _records(f) for f in files}
    torn = tmp_path / "raw" / "cbs-2x2" / "seed1.jsonl"
    lines = torn.read_text().splitlines(keepends=True)
    # the first batch (2 prompts) and one line of the second are complete, the next line is torn
    torn.write_text("".join(lines[:3]) + lines[3][: len(lines[3]) // 2])

    calls = []
    generate = w2s.ChunkBeamSearch.generate

    def counting(self, model, scorer, prompts, **options):
        calls.append((type(self).__name__, options["seed"], options["start_index"], list(prompts)))
        return generate(self, model, scorer, prompts, **options)

    monkeypatch.setattr(w2s.ChunkBeamSearch, "generate", counting)
    rows = evaluate_sentiment(tmp_path, strong, tuned, untuned, prompts, **kw)
    # only cbs seed 1 runs again, from the start of the batch its torn line belongs to
    assert calls == [("ChunkBeamSearch", 1, 2, prompts[2:4]), ("ChunkBeamSearch", 1, 4, prompts[4:])]
    for f in files:
        assert_same_records(_records(f), before[f])
    assert [r["method"] for r in rows] == ["base", "cbs-2x2"] and all(r["prompts"] == 5 for r in rows)
    calls.clear()  # a finished run, partial last batch included, is kept whole
    evaluate_sentiment(tmp_path, strong, tuned, untuned, prompts, **kw)
    assert calls == []


def test_same_seed_and_batch_size_give_identical_records(strong, tuned, untuned, tmp_path):
    """The reproducibility claim: same seed + same batch size + same machine = identical, floats included;
    another batch size gives the same texts here (equal in distribution in general) and close scores."""
    kw = dict(seeds=(0,), max_new_tokens=4, methods=["cbs-2x2"], progress=False)
    runs = {}
    for name, batch_size in [("a", 2), ("b", 2), ("c", 3)]:
        evaluate_sentiment(tmp_path / name, strong, tuned, untuned, PROMPTS, batch_size=batch_size, **kw)
        runs[name] = _records(tmp_path / name / "raw" / "cbs-2x2" / "seed0.jsonl")
    assert runs["a"] == runs["b"]
    assert_same_records(runs["c"], runs["a"])


@pytest.mark.parametrize("change,setting", [
    (dict(max_new_tokens=3), "max_new_tokens"),
    (dict(prompts=PROMPTS[:1]), "prompts"),
    (dict(strong_template="Review: {prompt}"), "strong_template"),
])
def test_resuming_with_different_settings_is_refused(strong, tuned, untuned, tmp_path, change, setting):
    kw = dict(prompts=PROMPTS[:2], seeds=(0,), max_new_tokens=2, methods=["base"], progress=False)
    evaluate_sentiment(tmp_path, strong, tuned, untuned, **kw)
    with pytest.raises(ValueError, match=f"different {setting} "):
        evaluate_sentiment(tmp_path, strong, tuned, untuned, **{**kw, **change})
    # other seeds and methods may be added to the same directory
    rows = evaluate_sentiment(tmp_path, strong, tuned, untuned, **{**kw, "seeds": (0, 5)})
    assert rows[0]["seeds"] == 2


def test_unknown_method_is_named(strong, tuned, untuned, tmp_path):
    with pytest.raises(ValueError, match="bon-8"):
        evaluate_sentiment(tmp_path, strong, tuned, untuned, PROMPTS, methods=["bon-8"])


def parse(argv):
    return build_parser().parse_args(["eval", *argv])


def test_cli_with_model_paths(model_dirs, tmp_path, capsys):
    args = parse([
        "sentiment", "--out", str(tmp_path), "--prompts", "2", "--seeds", "3", "--methods", "base", "tuned-alone",
        "--max-new-tokens", "2", "--strong", model_dirs["strong"], "--tuned", model_dirs["tuned"],
        "--untuned", model_dirs["untuned"], "--tuned-template", "chat"])
    assert args.batch_size == 8 and args.device == "cpu" and args.dtype == "float32"
    args.func(args)
    captured = capsys.readouterr()
    assert "| base | 1 |" in captured.out and "| tuned-alone | 1 |" in captured.out
    assert "prompt" in captured.err  # progress bars
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tuned_template"] == "chat" and config["strong_template"] == "{prompt}"
    assert len(config["prompts"]) == 2 and config["seeds"] == [3]


def test_cli_defaults_come_from_w2s_defaults(model_dirs, tmp_path, monkeypatch, capsys):
    from w2s import defaults
    from w2s.backends import gguf

    # the real defaults are the demo models; point them at the tiny fixtures
    monkeypatch.setattr(gguf, "strong_model_dir", lambda: model_dirs["strong"])
    monkeypatch.setattr(defaults, "guide_dir", lambda which: model_dirs[which])
    monkeypatch.setattr(defaults, "GUIDE_TEMPLATE", "Text: {prompt}")
    args = parse(["sentiment", "--out", str(tmp_path), "--prompts", "1", "--seeds", "0",
                                "--methods", "base", "--max-new-tokens", "2"])
    args.func(args)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tuned_template"] == "Text: {prompt}" and config["strong"] == model_dirs["strong"]
    assert "| base | 1 |" in capsys.readouterr().out


def test_method_table_covers_the_paper_settings_and_the_budget_variants():
    paper_and_variants = {"base": 1, "bon-4": 4, "bon-16": 16, "cbs-2x2": 4, "cbs-4x4": 16, "eft": 1,
                          "tuned-alone": 1, "pruned-bon-16": 16, "cbs-4x4-sentence": 16, "front-4x4": 16,
                          "adaptive-4x4": 16, "cbs-4x4-entropy": 16, "tree-4x4": 16, "nudging": 1}
    assert dict(list(SENTIMENT_RUNS.items())[: len(paper_and_variants)]) == paper_and_variants
    # the rest are repetition-controlled reruns, each with its run's compute
    rest = {n: c for n, c in SENTIMENT_RUNS.items() if n not in paper_and_variants}
    assert rest and all(n.endswith("-norepeat") and c == SENTIMENT_RUNS[n.removesuffix("-norepeat")]
                        for n, c in rest.items())
    pruned = make_search("pruned-bon-16", 16, 50, chunk_length=5)
    assert (pruned.n, pruned.checkpoints, pruned.prune_fraction) == (16, (10, 20), 0.5)
    cut = make_search("cbs-4x4-entropy", 16, 50, chunk_length=5)
    assert (cut.chunk_entropy, cut.chunk_length, cut.chunk_end) == (3.0, 10, None)
    tree = make_search("tree-4x4", 16, 50, chunk_length=5)
    assert (tree.simulations, tree.children, tree.chunk_length, tree.method) == (4, 4, 5, "tree")
    nudge = make_search("nudging", 1, 50, chunk_length=5)
    assert (nudge.gamma, nudge.sampling.temperature, nudge.max_new_tokens) == (0.4, 0.0, 50)
    steps = make_search("cbs-4x4-sentence", 16, 50, chunk_length=5)
    assert (steps.beam_width, steps.successors_per_beam, steps.chunk_end, steps.chunk_length) == (4, 4, "sentence", 10)
    front, adaptive = make_search("front-4x4", 16, 50, 5), make_search("adaptive-4x4", 16, 50, 5)
    assert front.schedule == adaptive.schedule and sum(front.schedule) == 4 * 10 and front.schedule[0] == 7
    assert (front.patience, adaptive.patience) == (None, 2)
    cbs = make_search("cbs-4x4", 16, 50, chunk_length=5)
    assert (cbs.beam_width, cbs.successors_per_beam, cbs.chunk_length, cbs.sampling.temperature, cbs.sampling.top_k,
            cbs.sampling.top_p) == (
        4, 4, 5, 0.7, 50, 1.0)
    assert make_search("bon-16", 16, 50, chunk_length=5).samples_per_step == 16
    assert make_search("eft", 1, 50, chunk_length=5).beta == 1.0


def test_peer_rows_run_with_their_compute_and_comparisons(strong, tuned, untuned, tmp_path):
    """Issue 29 item 4: Nudging (the tuned guide nudges), CBS with entropy-cut chunks and tree search at CBS
    4x4's per-step budget, paired with CBS 4x4 and base."""
    names = ["base", "cbs-4x4", "cbs-4x4-entropy", "tree-4x4", "nudging"]
    rows = evaluate_sentiment(tmp_path, strong, tuned, untuned, PROMPTS[:2], seeds=(0,), max_new_tokens=8,
                              methods=names, progress=False)
    got = {r["method"]: r for r in rows}
    assert list(got) == [n for n in SENTIMENT_RUNS if n in names]
    assert got["tree-4x4"]["compute_N"] == 16 and got["nudging"]["compute_N"] == 1
    nudged = raw(tmp_path, "nudging", 0)
    assert all(r["nudge_tokens"] > 0 and r["guide_tokens"] >= r["nudge_tokens"] for r in nudged)  # the nudger's
    assert all(r["sampled_tokens"] >= r["base_tokens"] for r in nudged)
    assert got["tree-4x4"]["sampled_tokens"] > got["cbs-4x4"]["sampled_tokens"] / 4 > 0
    comparisons = (tmp_path / "comparisons.md").read_text()
    for pair in ("tree-4x4 − cbs-4x4", "cbs-4x4-entropy − cbs-4x4", "nudging − cbs-4x4", "nudging − base"):
        assert f"| {pair} |" in comparisons
