"""The HumanEval task (w2s.tasks.code): problems, the fixed split, the stop rule, the comment rule and the
executed gold on the problems' own canonical solutions."""

import gzip
import json

import pytest

from w2s.tasks import code


@pytest.fixture(scope="module")
def problems():
    return code.load_problems()


def test_humaneval_loads_and_splits_by_task_number(problems):
    train, test = code.split(problems, "train"), code.split(problems, "test")
    assert (len(problems), len(train), len(test)) == (164, 82, 82)
    assert all(code.task_number(p) % 2 == 0 for p in train) and all(code.task_number(p) % 2 for p in test)
    assert test[0]["task_id"] == "HumanEval/1" and train[0]["task_id"] == "HumanEval/0"
    with pytest.raises(ValueError, match="part must be one of"):
        code.split(problems, "dev")


def test_a_problems_file_of_the_same_format_loads_and_bad_lines_are_named(tmp_path, problems):
    path = tmp_path / "mine.jsonl.gz"
    path.write_bytes(gzip.compress("\n".join(json.dumps(p) for p in problems[:3]).encode()))
    assert [p["task_id"] for p in code.load_problems(path)] == [p["task_id"] for p in problems[:3]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "x/1", "prompt": "def f():\n"}) + "\n")
    with pytest.raises(ValueError, match=r"line 1 lacks \['entry_point', 'test'\]"):
        code.load_problems(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        code.load_problems(tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match="must end in a number"):
        code.task_number({"task_id": "mine/abc"})


def test_the_stop_rule_cuts_where_the_body_ends():
    body = "    x = 1\n\n    # keep going\n    return x\n"
    assert code.finish(body + "\n\ndef check(f):\n    pass\n") == body + "\n\n"
    assert code.finish(body + "if __name__ == '__main__':\n    main()") == body
    assert code.finish(body) == body  # cut by the token cap: nothing to cut
    assert code.finish("return 1\nprint(2)") == "return 1\n"  # the first line is the body's whatever it holds
    # every stop string starts a line at column 0, which finish() cuts before
    for stop in code.STOP:
        assert code.finish(body + stop.lstrip("\n") + "rest") == body


def test_the_comment_rule_on_real_shapes():
    explained = ("    # count each number once\n    seen = set()\n    for n in numbers:  # one pass\n"
                 "        seen.add(n)\n    return len(seen)\n")
    assert code.comment_lines(explained) == (2, 4)  # the inline comment's line is code and comment
    assert code.meets_comment_rule(explained)
    bare = "    seen = set()\n    for n in numbers:\n        seen.add(n)\n    return len(seen)\n    # done\n"
    assert code.comment_lines(bare) == (1, 4) and code.meets_comment_rule(bare)  # 4 code lines: 1 comment is enough
    assert not code.meets_comment_rule(bare + "    x = 1\n")  # 5 code lines: 1 comment is too few
    assert not code.meets_comment_rule("    return 1\n")
    assert code.comment_lines("    s = 'has # no comment'\n") == (0, 1)  # a # in a string is code
    # past a tokenizer error the rest is classified line by line
    assert code.comment_lines("    s = '''open\n    # not parsed\n") == (1, 1)


def test_gold_runs_the_tests_canonical_solutions_pass_broken_ones_fail(problems):
    test = code.split(problems, "test")
    rows = code.gold(test, [p["canonical_solution"] for p in test])
    assert all(r["passed"] for r in rows) and len(rows) == 82
    assert sum(r["commented"] for r in rows) == 0  # HumanEval's solutions carry no comments
    wrong = code.gold(test[:3], ["    return None\n", "    while True:\n        pass\n", "    # step\n    return (\n"],
                      code.Limits(timeout=1.0))
    assert [r["status"] for r in wrong] == ["failed", "timeout", "failed"]
    assert "SyntaxError" in wrong[2]["detail"] and not any(r["aligned"] for r in wrong)
    # the same completion with a trailing test block is judged on its body alone
    p = test[0]
    assert code.gold([p], [p["canonical_solution"] + "\nassert False\n"])[0]["passed"]
    with pytest.raises(ValueError, match="pair one to one"):
        code.gold(test[:2], ["x"])


def test_a_correction_may_add_comments_and_change_no_code():
    """The check a line's correction passes before it becomes aligner data (issue 26 item 2)."""
    line = "    total = sum(a,\n                b)"
    assert code.changed_code(line, line + "  # add them up") is None
    assert code.changed_code(line, "    # add them up\n" + line) is None
    assert code.changed_code('    s = """a\n    b"""', '    s = """a\n    b"""  # the text') is None
    assert "'b' became 'c'" in code.changed_code(line, line.replace("b)", "c)") + "  # add them up")
    assert "'    ' became '        '" in code.changed_code(line, "    " + line)  # indentation is code
    assert "'x' became '+'" not in code.changed_code("    return x", "    return x + 1")
    assert "'(nothing)' became '+'" in code.changed_code("    return x", "    return x + 1")
    assert "the correction" in code.changed_code("    return x", "    return f(x  # done")  # a bracket left open
    assert code.changed_code("    s = 'a'", "    s = 'a # b'") is not None  # a '#' inside a string is code
