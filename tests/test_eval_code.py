"""The code evaluation (w2s.evaluation.code, w2s eval code) and the code guides' pair builder
(w2s.training.code_pairs) on tiny models; the executed gold itself is tested in test_code_task.py."""

from __future__ import annotations

import json

import pytest

import w2s
from w2s.cli import main
from w2s.evaluation import code as code_eval
from w2s.tasks import code
from w2s.training.code_pairs import build_code_pairs, pair_of

PROBLEMS = [
    {"task_id": f"Mine/{i}", "prompt": f"def f{i}(x):\n    \"\"\"Return x plus {i}.\"\"\"\n", "entry_point": f"f{i}",
     "test": f"def check(candidate):\n    assert candidate(1) == {1 + i}\n"} for i in (1, 3, 5)]


def test_pass_at_k_is_the_unbiased_estimator():
    assert code_eval.pass_at_k(3, 0, 3) == 0.0 and code_eval.pass_at_k(3, 1, 3) == 1.0
    assert code_eval.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)
    with pytest.raises(ValueError, match="pass_at_k needs"):
        code_eval.pass_at_k(2, 3, 1)


def test_evaluation_executes_every_completion_resumes_and_rewrites_from_raw(model_dirs, tmp_path):
    strong, tuned, untuned = (w2s.load_model(model_dirs[r]) for r in ("strong", "tuned", "untuned"))
    kw = dict(seeds=(0, 1), max_new_tokens=6, methods=("greedy", "bon-4", "cbs-2x2", "tuned-alone"), batch_size=2,
              limits=code.Limits(timeout=2), progress=False)
    rows = code_eval.evaluate_code(tmp_path, strong, tuned, untuned, PROBLEMS, **kw)
    assert [r["method"] for r in rows] == ["greedy", "base", "bon-4", "cbs-2x2", "tuned-alone"]
    raw = [json.loads(line) for line in (tmp_path / "raw" / "cbs-2x2" / "seed0.jsonl").open()]
    assert [r["task_id"] for r in raw] == ["Mine/1", "Mine/3", "Mine/5"]
    assert all({"passed", "aligned", "status", "comments", "sampled_tokens", "response"} <= set(r) for r in raw)
    # each record's verdict is the sandbox's on its own completion
    again = code.gold(PROBLEMS, [r["response"] for r in raw], code.Limits(timeout=2))
    assert [g["passed"] for g in again] == [r["passed"] for r in raw]
    by = {r["method"]: r for r in rows}
    assert by["base"]["pass_at_seeds"] is not None and by["greedy"]["compute_N"] == 1 and by["cbs-2x2"]["compute_N"] == 4
    greedy = [[json.loads(line)["response"] for line in (tmp_path / "raw" / "greedy" / f"seed{s}.jsonl").open()]
              for s in (0, 1)]
    assert greedy[0] == greedy[1]  # greedy decoding does not depend on the seed
    assert all(0 <= by[m]["pass_mean"] <= 1 for m in by)
    md = (tmp_path / "summary.md").read_text()
    assert "| method | compute N | pass [95% CI] | aligned [95% CI] |" in md and "Base pass@2" in md
    comparisons = (tmp_path / "comparisons.md").read_text()
    assert "| cbs-2x2 − base | pass |" in comparisons and "sign test p" in comparisons and "3 problems" in comparisons
    assert (tmp_path / "gold_vs_compute.png").exists()
    assert code_eval.rewrite_from_raw(tmp_path) == rows
    path = tmp_path / "raw" / "bon-4" / "seed1.jsonl"
    full = path.read_text()
    path.write_text(full.splitlines(keepends=True)[0])  # a stop mid-run: the rest is redone the same way
    code_eval.evaluate_code(tmp_path, strong, tuned, untuned, PROBLEMS, **kw)
    assert [json.loads(x)["response"] for x in path.read_text().splitlines()] == \
        [json.loads(x)["response"] for x in full.splitlines()]
    with pytest.raises(ValueError, match="different max_new_tokens"):
        code_eval.evaluate_code(tmp_path, strong, tuned, untuned, PROBLEMS, **{**kw, "max_new_tokens": 7})


def test_eval_code_command_takes_a_problems_file(model_dirs, tmp_path, capsys):
    problems = tmp_path / "mine.jsonl"
    problems.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    out = tmp_path / "out"
    args = ["eval", "code", "--strong", model_dirs["strong"], "--tuned", model_dirs["tuned"], "--untuned",
            model_dirs["untuned"], "--problems", str(problems), "--prompts", "2", "--out", str(out), "--seeds", "0",
            "--max-new-tokens", "4", "--methods", "greedy", "--exec-timeout", "2", "--dtype", "bfloat16",
            "--tuned-dtype", "float32"]
    assert main(args) == 0
    assert "| greedy | 1 |" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["task_ids"] == ["Mine/1", "Mine/3"] and config["strong_template"] == "{prompt}"
    assert config["limits"]["timeout"] == 2 and config["methods"] == ["greedy", "base"]
    # one dtype for all models, one role overriding it; a resumed run must keep them
    assert (config["strong_dtype"], config["tuned_dtype"], config["untuned_dtype"]) == ("bfloat16", "float32",
                                                                                        "bfloat16")
    assert main([*args, "--strong-dtype", "float32"]) == 2
    assert "different strong_dtype ('bfloat16' there, 'float32' now)" in capsys.readouterr().err
    assert main(["eval", "code", "--out", str(out), "--from-raw"]) == 0
    assert "| base | 1 |" in capsys.readouterr().out


def test_pair_rules():
    def s(passed, comments, instructed=False, code_lines=4):
        return {"passed": passed, "comments": comments, "code_lines": code_lines, "instructed": instructed,
                "commented": comments >= 1 and 4 * comments >= code_lines, "completion": f"{passed}{comments}"}

    plain_pass, plain_fail, explained = s(True, 0), s(False, 0), s(True, 2, instructed=True)
    assert pair_of("style", [plain_fail, plain_pass, explained]) == (explained, plain_pass)
    assert pair_of("style", [plain_pass, s(False, 2, instructed=True)]) is None  # the commented one fails
    assert pair_of("style", [s(True, 1, code_lines=9), explained]) is None  # one comment on 9 lines: neither side
    assert pair_of("correct", [plain_fail, plain_pass]) == (plain_pass, plain_fail)
    assert pair_of("correct", [explained, plain_fail]) is None  # instructed samples are not the correct kind's


def test_pair_builder_samples_executes_and_resumes(strong, tmp_path):
    train = [{**p, "task_id": f"Mine/{int(p['task_id'].split('/')[1]) + 1}"} for p in PROBLEMS[:2]]
    out = tmp_path / "pairs.jsonl"
    pairs = build_code_pairs(strong, train, out, samples=2, max_new_tokens=5, batch_size=1, progress=False)
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").open()]
    assert len(samples) == 2 * 2 * 2 and [s["instructed"] for s in samples[:4]] == [False, False, True, True]
    assert all(s["status"] in ("passed", "failed", "timeout", "memory", "output", "killed") for s in samples)
    lines = [json.loads(line) for line in out.open()]
    assert [r["task_id"] for r in lines] == ["Mine/2", "Mine/4"] and len(pairs) == sum(not r.get("skipped") for r in lines)
    before = out.read_text()
    assert build_code_pairs(strong, train, out, samples=2, max_new_tokens=5, batch_size=1, progress=False) == pairs
    assert out.read_text() == before and len((tmp_path / "samples.jsonl").read_text().splitlines()) == 8
    with pytest.raises(ValueError, match="must be training problems"):
        build_code_pairs(strong, PROBLEMS, tmp_path / "x.jsonl", progress=False)


def test_a_setting_recorded_only_since_a_later_version_is_not_held_against_an_older_run(tmp_path):
    from w2s.evaluation.common import start_run

    start_run(tmp_path, {"strong": "m"}, ("strong", "strong_dtype"))  # written before dtypes were recorded
    start_run(tmp_path, {"strong": "m", "strong_dtype": "bfloat16"}, ("strong", "strong_dtype"))
    with pytest.raises(ValueError, match="different strong_dtype"):
        start_run(tmp_path, {"strong": "m", "strong_dtype": "float32"}, ("strong", "strong_dtype"))
    with pytest.raises(ValueError, match="different strong "):
        start_run(tmp_path, {"strong": "n", "strong_dtype": "bfloat16"}, ("strong", "strong_dtype"))


class BodyWriter:
    """A stand-in coder (the loop's logic only; the real coders ran in the data build): every answer is
    ``BODY``, handed out up to where the loop's stop rule ends a unit."""

    BODY = "    y = x + 1\n\n    return (y,\n            y)\n```\nThat is all.\n"

    def render(self, template, question):
        return question

    def generator(self, n, sampling, seeds, template):
        at = [0] * n

        class Rows:
            def generate(self, contexts, max_tokens, stop=None):
                out = {}
                for i in contexts:
                    rest = BodyWriter.BODY[at[i]:]
                    text = rest[: (stop(rest) if stop else None) or len(rest)]
                    at[i] += len(text)
                    out[i] = (text, at[i] == len(BodyWriter.BODY))
                return out

        return Rows()


def test_code_corrections_explain_lines_keep_the_code_and_resume(strong, tmp_path):
    """w2s data code-corrections (w2s.training.code_corrections): the Stream Aligner loop over training problems,
    line by line under the code guard, up to the end of the function's body; a teacher's correction that
    changes code is refused, with its reason."""
    from w2s.training.code_corrections import (CommentTeacher, build_code_corrections, explained_once, note_of,
                                               training_records)

    train = [{**p, "task_id": f"Mine/{int(p['task_id'].split('/')[1]) + 1}"} for p in PROBLEMS[:2]]
    def teacher(question, prefix, line):  # explains the first line, changes the code of the other
        return "# note\n" + line if "x + 1" in line else line + " + 1"

    out = tmp_path / "lines.jsonl"
    kw = dict(batch_size=2, progress=False)
    assert build_code_corrections(BodyWriter(), teacher, train, out, **kw) == 4
    records = [json.loads(line) for line in out.open()]
    assert [(r["question"], r["sentence"]) for r in records] == [
        (p["prompt"], line) for p in train for line in ("    y = x + 1", "    return (y,\n            y)")]
    assert [r["rejected"] for r in records] == [None, "code changed at token 7: '(nothing)' became '+'"] * 2
    assert [r["correction"] for r in records] == ["    # note\n    y = x + 1", "    return (y,\n            y)"] * 2
    assert records[1]["prefix"] == "    # note\n    y = x + 1\n"  # what the upstream went on from
    before = out.read_text()
    whole, lines = tmp_path / "whole.jsonl", tmp_path / "train-lines.jsonl"
    assert build_code_corrections(BodyWriter(), teacher, train, out, train_out_path=lines, whole_out_path=whole,
                                  **kw) == 4
    assert out.read_text() == before  # resumed: nothing more to do
    assert [json.loads(line) for line in lines.open()] == records  # no comment under a comment to drop
    assert [json.loads(line) for line in whole.open()][1] == {
        "question_index": 1, "question": train[1]["prompt"], "answer": "    y = x + 1\n    return (y,\n            y)",
        "correction": "    # note\n    y = x + 1\n    return (y,\n            y)"}
    with pytest.raises(ValueError, match="must be training problems"):
        build_code_corrections(BodyWriter(), teacher, PROBLEMS, tmp_path / "x.jsonl", **kw)

    commented = [{"question_index": 0, "question": "Q", "prefix": p, "sentence": "    x = 1",
                  "correction": "    # sets x\n    x = 1", "rejected": None}
                 for p in ("    # one\n", "    # one\n\n", "    y = 2  # two\n", "")]
    assert [r["correction"] for r in explained_once(commented)] == ["    x = 1", "    x = 1"] + [
        "    # sets x\n    x = 1"] * 2  # under a comment line (blank lines skipped): the line unchanged
    loop = tmp_path / "loop.jsonl"
    loop.write_text("".join(json.dumps(r) + "\n" for r in [
        {**commented[3], "sentence": "    # mine", "correction": "    # mine"}, commented[0]]))
    assert training_records(loop, tmp_path / "t.jsonl", tmp_path / "w.jsonl") == (1, 1)  # the comment line: not
    assert [json.loads(line)["sentence"] for line in (tmp_path / "t.jsonl").open()] == ["    x = 1"]  # asked
    assert json.loads((tmp_path / "w.jsonl").read_text())["correction"] == "    # mine\n    x = 1"  # but in the whole

    assert note_of("The line `x = 1` is used to set x to one. Then it returns.") == "Set x to one."
    assert note_of("```\n# counts the items\n```") == "Counts the items"
    assert note_of("This line is intended to handle the empty list.") == "Handle the empty list."
    assert note_of("This line is iterating over each character.") == "Iterating over each character."
    assert note_of("This line " + "loops " * 40).endswith("loops") and len(note_of("loops " * 40)) <= 120
    comment = CommentTeacher(strong, max_tokens=4, slots=1)
    assert comment("Q", "", "    # already a comment") == "    # already a comment" and comment.calls == 0
    made = comment("def f(x):\n", "", "    return x")
    assert made == "    return x" or (made.startswith("    # ") and made.endswith("\n    return x"))
    assert comment.calls == 1


def test_aligner_rows_correct_the_strong_models_answer_under_the_code_guard(model_dirs, tmp_path):
    """Issue 26 item 4: stream-aligner (and speculative) and aligner rows beside the search rows, same problems,
    gold and seeds; the guard keeps the code (pass lost 0), and records say what the aligner did."""
    strong, tuned, untuned = (w2s.load_model(model_dirs[r]) for r in ("strong", "tuned", "untuned"))

    def explain(question, prefix, line):  # comments every line; changes the code of none
        return "# step\n" + line

    def breaks(question, answer):  # the whole-answer aligner tries to replace the code: refused
        return "    return 0\n"

    kw = dict(seeds=(0,), max_new_tokens=6, batch_size=2, limits=code.Limits(timeout=2), progress=False)
    with pytest.raises(ValueError, match="method 'aligner' needs whole_aligner"):
        code_eval.evaluate_code(tmp_path / "x", strong, tuned, untuned, PROBLEMS, methods=("aligner",), **kw)
    rows = code_eval.evaluate_code(tmp_path, strong, tuned, untuned, PROBLEMS, aligner=explain, whole_aligner=breaks,
                                   methods=("stream-aligner", "stream-aligner-speculative", "aligner"), **kw)
    by = {r["method"]: r for r in rows}
    assert list(by) == ["base", "stream-aligner", "stream-aligner-speculative", "aligner"]
    for name in ("stream-aligner", "aligner"):
        raw = [json.loads(line) for line in (tmp_path / "raw" / name / "seed0.jsonl").open()]
        assert [r["task_id"] for r in raw] == ["Mine/1", "Mine/3", "Mine/5"]
        assert all({"passed_original", "code_changed", "rejected", "first_seconds"} <= set(r) for r in raw)
        assert not any(r["code_changed"] for r in raw)  # the guard: comments only, or the answer as it was
        assert [r["comments"] for r in raw] == [code.comment_lines(r["response"])[0] for r in raw]
    assert by["aligner"]["pass_lost"] == 0 and by["stream-aligner"]["pass_lost"] == 0
    assert by["base"]["pass_lost"] is None and by["stream-aligner"]["first_seconds"] is not None
    assert "| first (s) | code changed | pass lost |" in (tmp_path / "summary.md").read_text()
    assert "stream-aligner − base" in (tmp_path / "comparisons.md").read_text()
    assert code_eval.rewrite_from_raw(tmp_path) == rows

    # the runs themselves, on a coder that writes a body (the tiny random model writes none)
    problem = {**PROBLEMS[0], "test": "def check(candidate):\n    assert candidate(1) == (2, 2)\n"}
    gold = lambda prompts, responses: code.gold([problem] * len(prompts), responses, code.Limits(timeout=2))  # noqa
    runs = code_eval.aligned_runs(BodyWriter(), "{prompt}", explain, breaks, "chat", 20, gold)
    body = "    y = x + 1\n\n    return (y,\n            y)\n"
    line, = runs["stream-aligner"]([problem["prompt"]], seed=0)
    assert line.response == "    # step\n    y = x + 1\n\n    # step\n    return (y,\n            y)\n"
    assert line.extra == {"passed_original": True, "rejected": 0, "code_changed": False,
                          "first_seconds": line.extra["first_seconds"]} and line.extra["first_seconds"] > 0
    assert gold([problem["prompt"]], [line.response])[0]["aligned"]  # passes, and one comment per two lines
    whole, = runs["aligner"]([problem["prompt"]], seed=0)
    assert whole.response == body and whole.extra["rejected"] == 1 and not whole.extra["code_changed"]


def test_code_changed_compares_code_and_never_flags_the_same_text():
    from w2s.evaluation.code import code_changed

    assert not code_changed("    x = 1\n", "    # one\n    x = 1\n")  # a comment added
    assert code_changed("    x = 1\n", "    x = 2\n")
    untokenizable = "    x = {'a': 1,\n"  # a literal cut at the line cap: the tokenizer fails on it
    assert not code_changed(untokenizable, untokenizable) and code_changed(untokenizable, "    # a\n" + untokenizable)


def test_peer_rows_run_on_the_code_gold(model_dirs, tmp_path):
    """Issue 29 item 4: Nudging, CBS with entropy-cut chunks and tree search at CBS 2x2's per-step budget."""
    strong, tuned, untuned = (w2s.load_model(model_dirs[r]) for r in ("strong", "tuned", "untuned"))
    names = ("base", "cbs-2x2", "cbs-2x2-entropy", "tree-2x2", "nudging")
    rows = code_eval.evaluate_code(tmp_path, strong, tuned, untuned, PROBLEMS, seeds=(0,), max_new_tokens=6,
                                   methods=names, batch_size=3, limits=code.Limits(timeout=2), progress=False)
    assert [r["method"] for r in rows] == ["base", "cbs-2x2", "cbs-2x2-entropy", "tree-2x2", "nudging"]
    nudged = [json.loads(line) for line in (tmp_path / "raw" / "nudging" / "seed0.jsonl").open()]
    assert all({"passed", "nudge_tokens", "base_tokens"} <= set(r) for r in nudged)
    comparisons = (tmp_path / "comparisons.md").read_text()
    for pair in ("tree-2x2 − cbs-2x2", "cbs-2x2-entropy − cbs-2x2", "nudging − base", "nudging − cbs-2x2"):
        assert f"| {pair} |" in comparisons
