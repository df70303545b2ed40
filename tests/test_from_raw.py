"""``w2s eval sentiment|reviews|stream --out DIR --from-raw``: the tables, comparisons and plots rewritten from
copies of the committed results, with no model loaded."""

import csv
import json
import shutil
import statistics
from pathlib import Path

import pytest

from w2s.cli import main
from w2s.evaluation import report, reviews as eval_reviews, sentiment, stream
from w2s.tasks import quality
from w2s.tasks import reviews

RESULTS = Path(__file__).resolve().parents[1] / "results"
SENTIMENT = ["base", "bon-4", "bon-16", "cbs-2x2", "cbs-4x4", "tuned-alone", "pruned-bon-16", "cbs-4x4-sentence",
             "front-4x4", "adaptive-4x4"]  # the committed runs (others may be appended there meanwhile)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def no_models(monkeypatch):
    import w2s.cli.evaluate
    import w2s.models

    def refuse(*args, **kwargs):
        raise AssertionError("--from-raw loaded a model")

    for module in (w2s.models, w2s.cli.evaluate):
        monkeypatch.setattr(module, "load_all", refuse, raising=False)
    monkeypatch.setattr(w2s.models, "load", refuse)


def copy_results(src: Path, dst: Path, runs=None) -> Path:
    dst.mkdir(parents=True)
    shutil.copy(src / "config.json", dst / "config.json")
    for run in runs or [p.name for p in (src / "raw").iterdir()]:
        shutil.copytree(src / "raw" / run, dst / "raw" / run)
    return dst


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def raw(out, run):
    return {int(p.stem[4:]): [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines()]
            for p in sorted((out / "raw" / run).glob("seed*.jsonl"))}


def test_sentiment_from_raw_rewrites_the_committed_tables(tmp_path, capsys):
    out = copy_results(RESULTS / "sentiment", tmp_path / "sentiment", SENTIMENT)
    (out / "raw" / "cbs-2x2-norepeat").mkdir()  # a run still being appended: one partial seed file
    lines = (out / "raw" / "cbs-2x2" / "seed0.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "raw" / "cbs-2x2-norepeat" / "seed0.jsonl").write_text("".join(lines[:5]), encoding="utf-8")
    assert main(["eval", "sentiment", "--out", str(out), "--from-raw"]) == 0
    printed = capsys.readouterr().out
    assert printed == (out / "summary.md").read_text(encoding="utf-8")
    assert "| method | compute N | gold reward [95% CI] | seed sd | loops | padded | distinct-2 | truncated |" in printed
    assert "cbs-2x2-norepeat seed 0: incomplete (5 of 120 records), left out" in printed
    rows = {r["method"]: r for r in read_csv(out / "summary.csv")}
    assert list(rows) == [n for n in sentiment.SENTIMENT_RUNS if n in SENTIMENT]
    for name in SENTIMENT:
        per_seed = raw(out, name)
        texts = [r["response"] for records in per_seed.values() for r in records]
        # the gold over prompts: each prompt's mean over the 3 seeds, then their mean and spread
        by_prompt = [statistics.fmean(per_seed[s][i]["gold_reward"] for s in per_seed) for i in range(120)]
        half = 1.9800999 * statistics.stdev(by_prompt) / 120 ** 0.5  # t(0.975, 119)
        row = rows[name]
        assert float(row["gold_reward_mean"]) == pytest.approx(statistics.fmean(by_prompt))
        assert float(row["gold_reward_high"]) - float(row["gold_reward_mean"]) == pytest.approx(half, rel=1e-5)
        seed_means = [statistics.fmean(r["gold_reward"] for r in per_seed[s]) for s in per_seed]
        assert float(row["gold_reward_seed_sd"]) == pytest.approx(statistics.stdev(seed_means))
        assert float(row["looping"]) == sum(map(quality.loops, texts)) / 360
        assert float(row["padded"]) == sum(map(quality.padded, texts)) / 360
        assert row["seeds"] == "3" and row["compute_N"] == str(sentiment.SENTIMENT_RUNS[name])
    assert round(100 * float(rows["cbs-4x4"]["looping"])) == 16 and round(100 * float(rows["front-4x4"]["looping"])) == 22
    comparisons = read_csv(out / "comparisons.csv")
    pruned = next(r for r in comparisons if (r["a"], r["b"]) == ("pruned-bon-16", "bon-16"))
    assert (pruned["identical"], pruned["answers"], pruned["unit"], pruned["n"]) == ("232", "360", "prompt", "120")
    assert int(pruned["wins"]) + int(pruned["losses"]) + int(pruned["ties"]) == 120
    assert float(pruned["low"]) < float(pruned["mean"]) < float(pruned["high"])
    pairs = {(r["a"], r["b"]) for r in comparisons}
    assert {("cbs-2x2", "bon-4"), ("cbs-4x4", "bon-16"), ("cbs-4x4", "tuned-alone"), ("front-4x4", "cbs-4x4"),
            ("bon-16", "base")} <= pairs and not any("norepeat" in a for a, _ in pairs)
    assert "| pruned-bon-16 − bon-16 | gold reward (VADER) |" in (out / "comparisons.md").read_text(encoding="utf-8")
    for png in ("reward_vs_compute.png", "reward_vs_tokens.png"):
        assert (out / png).read_bytes()[:8] == PNG


def test_sentiment_tables_take_run_names_they_do_not_list(tmp_path):
    out = copy_results(RESULTS / "sentiment", tmp_path / "s", ["base", "cbs-4x4"])
    for base in ("base", "cbs-4x4"):  # stand-ins for the repetition-controlled reruns: the same answers
        shutil.copytree(out / "raw" / base, out / "raw" / f"{base}-norepeat")
    shutil.copytree(out / "raw" / "base", out / "raw" / "cbs-9x9-new")
    rows = sentiment.rewrite_from_raw(out)
    got = {r["method"]: r for r in rows if not r["skipped"]}
    assert list(got) == ["base", "base-norepeat", "cbs-4x4", "cbs-4x4-norepeat", "cbs-9x9-new"]
    assert (got["cbs-4x4-norepeat"]["compute_N"], got["base-norepeat"]["compute_N"], got["cbs-9x9-new"]["compute_N"]) \
        == (16, 1, 81)
    comparisons = read_csv(out / "comparisons.csv")
    norepeat = {(r["a"], r["b"]): r for r in comparisons if r["a"].endswith("-norepeat")}
    assert set(norepeat) == {("base-norepeat", "base"), ("cbs-4x4-norepeat", "cbs-4x4"), ("cbs-4x4-norepeat", "base")}
    same = norepeat[("cbs-4x4-norepeat", "cbs-4x4")]
    assert (same["identical"], float(same["mean"]), same["ties"]) == ("360", 0.0, "120")
    # the pairs whose runs are missing are skipped silently
    assert not any(r["b"] in ("bon-4", "bon-16", "tuned-alone") for r in comparisons)


def test_reviews_from_raw_rescores_with_the_gate_and_the_constant_floor(tmp_path, capsys):
    out = copy_results(RESULTS / "reviews" / "qwen1.5b-llamacpp", tmp_path / "r")
    assert main(["eval", "reviews", "--out", str(out), "--from-raw"]) == 0
    printed = capsys.readouterr().out
    assert "| method | compute N | combined gold [95% CI] | seed sd | non-answers |" in printed
    assert f"VADER − max(0, {reviews.FLUENCY_FLOOR:.2f} − fluency)" in printed
    assert "| tuned-alone † |" in printed and "trained on the old gold's VADER+fluency reward" in printed
    rows = {r["method"]: r for r in read_csv(out / "summary.csv")}
    assert {n: rows[n]["non_answers"] for n in ("base", "cbs-2x2", "cbs-4x4")} == {"base": "5", "cbs-2x2": "5",
                                                                                   "cbs-4x4": "4"}
    for name, row in rows.items():
        records = raw(out, name)[0]
        gold = []
        for r in records:  # the rule, spelled out: non-answers 0, else VADER less the penalty below the floor
            gated = quality.non_answer(r["response"]) is not None
            gold.append(0.0 if gated else r["vader"] - max(0.0, reviews.FLUENCY_FLOOR - r["fluency"]))
        assert float(row["combined_mean"]) == pytest.approx(statistics.fmean(gold))
        assert row["non_answers"] == str(sum(quality.non_answer(r["response"]) is not None for r in records))
    # the same text gets the same gold in every directory: the 1.5B dir's guide-alone answers are the 0.5B
    # dir's seed-0 answers byte for byte, and now score the same there (the floor was each base run's before)
    other = copy_results(RESULTS / "reviews" / "qwen0.5b", tmp_path / "r0")
    eval_reviews.rewrite_from_raw(other)
    seed0 = raw(other, "tuned-alone")[0]
    assert [r["response"] for r in seed0] == [r["response"] for r in raw(out, "tuned-alone")[0]]
    assert float(rows["tuned-alone"]["combined_mean"]) == pytest.approx(statistics.fmean(map(reviews.gold_of, seed0)))
    comparisons = read_csv(out / "comparisons.csv")
    cbs = [r for r in comparisons if (r["a"], r["b"]) == ("cbs-4x4", "bon-16")]
    assert [r["column"] for r in cbs] == ["combined", "vader", "fluency"] and cbs[0]["n"] == "8"
    assert {("tuned-alone", "untuned-alone"), ("cbs-2x2", "base"), ("cbs-4x4", "tuned-alone")} <= \
        {(r["a"], r["b"]) for r in comparisons}
    assert (out / "gold_vs_compute.png").read_bytes()[:8] == PNG


def test_stream_from_raw_compares_each_correction_with_its_own_upstream_answer(tmp_path, capsys):
    out = copy_results(RESULTS / "stream", tmp_path / "t")
    assert main(["eval", "stream", "--out", str(out), "--from-raw"]) == 0
    assert "| method | VADER [95% CI] | seed sd | content F1 [95% CI] |" in capsys.readouterr().out
    comparisons = read_csv(out / "comparisons.csv")
    gain = next(r for r in comparisons if r["a"] == "stream-aligner" and r["b"] == "stream-aligner" + stream.ORIGINAL)
    records = raw(out, "stream-aligner")[0]
    diffs = [r["vader"] - r["vader_original"] for r in records]
    assert float(gain["mean"]) == pytest.approx(statistics.fmean(diffs)) and gain["n"] == str(len(records))
    assert gain["wins"] == str(sum(d > 1e-12 for d in diffs))
    spec = [r for r in comparisons if r["a"] == "stream-aligner-speculative" and r["b"] == "stream-aligner"]
    assert spec[0]["identical"] == spec[0]["answers"] == "32"  # speculation changes no answer
    assert float(next(r for r in spec if r["column"] == "total_seconds")["mean"]) < 0
    rows = {r["method"]: r for r in read_csv(out / "summary.csv")}
    assert rows["upstream"]["content_f1_mean"] == "1.0" and rows["upstream"]["truncated"] == ""
    assert (out / "quality_latency.png").read_bytes()[:8] == PNG


def test_from_raw_names_what_is_missing(tmp_path, capsys):
    assert main(["eval", "sentiment", "--out", str(tmp_path / "none"), "--from-raw"]) == 2
    assert "out must be a directory holding an evaluation's config.json" in capsys.readouterr().err
    out = copy_results(RESULTS / "reviews" / "qwen1.5b-llamacpp", tmp_path / "r", ["cbs-4x4"])
    with pytest.raises(ValueError, match="must hold the base run's raw records"):
        eval_reviews.rewrite_from_raw(out)


def test_run_order_and_compute_n_of_unlisted_names():
    assert report.order(["x", "cbs-4x4-norepeat", "base", "cbs-4x4", "base-norepeat"], ["base", "cbs-4x4"]) == \
        ["base", "base-norepeat", "cbs-4x4", "cbs-4x4-norepeat", "x"]
    table = {"base": 1, "cbs-4x4": 16}
    assert [report.compute_n(n, table) for n in ("cbs-4x4-norepeat", "pruned-bon-8", "front-2x3", "x-alone", "eft?")] \
        == [16, 8, 6, 1, None]
