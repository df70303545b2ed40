"""Bad inputs and failing items on the command line: a one-line error (exit 2) for what cannot run, an
error record per failed item with a summary (exit 1), and outputs that only ever hold one run."""

import json

import pytest
from conftest import llama, save, strong_tokenizer

from w2s.cli import main
from w2s.cli.common import read_records, run_record

ERROR_RECORD_KEYS = {"index", "error", "error_kind", "error_code", "error_status"}
LONG = "The cat sat on the mat. " * 80  # 721 tokens of the strong tokenizer: more than its context of 512


def cli(capsys, *args):
    """(exit status, stdout, stderr) of ``w2s ARGS`` run in this process."""
    capsys.readouterr()
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def search_flags(dirs, prompts, output):
    return ["search", "--strong", dirs["strong"], "--tuned", dirs["tuned"], "--untuned", dirs["untuned"],
            "--method", "sampling", "--max-new-tokens", "3", "--prompts", prompts, "--output", output]


def stream_flags(dirs, command, aligner, questions, output):
    return [command, "--upstream", dirs["strong"], "--upstream-template", "{prompt}", "--aligner", aligner,
            "--max-sentences", "2", "--max-correction-tokens", "8",
            *(["--max-sentence-tokens", "6"] if command == "stream" else ["--max-new-tokens", "12"]),
            "--questions", questions, "--output", output]


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_line_error(err, command):
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.startswith(f"w2s {command}: error: "), err
    return err


@pytest.fixture(scope="module")
def small_aligner(tmp_path_factory):
    """An aligner with a context of 128 tokens, which a long question overflows."""
    tok = strong_tokenizer()
    model = llama(tok, 5)
    model.config.max_position_embeddings = 128
    return save(model, tok, tmp_path_factory.mktemp("small") / "aligner")


# 10: inputs


@pytest.mark.parametrize("command,args", [
    ("search", ["search", "--method", "sampling", "--max-new-tokens", "3", "--prompts", "MISSING", "--output", "-"]),
    ("stream", ["stream", "--questions", "MISSING", "--output", "OUT"]),
    ("align", ["align", "--questions", "MISSING", "--output", "OUT"]),
    ("data corrections", ["data", "corrections", "--teacher", "t", "--questions", "MISSING", "--out", "OUT"]),
    ("train aligner", ["train", "aligner", "--base", "b", "--records", "MISSING", "--out", "OUT"]),
    ("train lm", ["train", "lm", "--corpus", "MISSING", "--out", "OUT"]),
])
def test_a_missing_input_file_is_a_one_line_error_naming_it(capsys, tmp_path, command, args):
    missing, out = tmp_path / "missing.jsonl", tmp_path / "out.jsonl"
    status, _, err = cli(capsys, *[{"MISSING": missing, "OUT": out}.get(a, a) for a in args])
    flag = args[args.index("MISSING") - 1]
    assert status == 2
    assert f"{flag} {missing}: no such file or directory." in one_line_error(err, command)
    assert not out.exists()


def test_a_malformed_json_line_is_an_error_naming_the_file_and_line(capsys, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The cat"}\n{"prompt": "What a",}\n')
    status, _, err = cli(capsys, "search", "--method", "sampling", "--max-new-tokens", "3", "--prompts", prompts,
                         "--output", "-")
    assert status == 2 and f"--prompts {prompts}: line 2 is not JSON" in one_line_error(err, "search")
    status, _, err = cli(capsys, "stream", "--questions", prompts, "--output", tmp_path / "o.jsonl")
    assert status == 2 and f"--questions {prompts}: line 1 is not a JSON object with a string 'question'" in err


def test_which_files_are_jsonl(tmp_path):
    def read(name, text):
        path = tmp_path / name
        path.write_text(text)
        return read_records(str(path))

    # a first line that starts with { makes a file JSONL: every line must parse
    with pytest.raises(ValueError, match=r"p\.in: line 3 is not JSON"):
        read("p.in", '{"prompt": "a"}\n\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"line 1 is not a JSON object with a string 'prompt'"):
        read("p.jsonl", "[1, 2]\n")
    with pytest.raises(ValueError, match=r"line 1 is not JSON"):
        read("p.jsonl", "The cat\n")  # .jsonl: JSON whatever the first line
    # plain text: each line verbatim, whatever it looks like
    plain = "[INST] Hello [/INST]\n{name} is\n\n  What a \n"
    assert read("p.prompts", plain) == [{"prompt": t} for t in ("[INST] Hello [/INST]", "{name} is", "  What a ")]
    assert read("p.txt", '{"prompt": "x"\n') == [{"prompt": '{"prompt": "x"'}]  # .txt: always plain
    assert read("p.in", '{"prompt": "a", "id": 3}\n') == [{"prompt": "a", "id": 3}]
    # a byte-order mark (Windows editors write one) is not part of the first prompt, plain or JSONL
    assert read("bom.txt", "\ufeffThe cat\nA dog\n") == [{"prompt": "The cat"}, {"prompt": "A dog"}]
    assert read("bom.jsonl", '\ufeff{"prompt": "a"}\n') == [{"prompt": "a"}]
    # nothing to do is an error, not a run that writes nothing and says nothing
    with pytest.raises(ValueError, match=r"empty\.txt: holds no prompts"):
        read("empty.txt", "\n  \n")


def test_a_line_torn_inside_a_character_is_cut_and_the_run_resumes(tmp_path):
    from w2s.jsonl import read_complete

    path = tmp_path / "out.jsonl"
    whole = '{"response": "caf\u00e9 \u732b"}\n'.encode()
    path.write_bytes(whole + '{"response": "\u732b'.encode()[:-1])  # stopped inside the 3-byte character
    assert read_complete(path) == [{"response": "café 猫"}]
    assert path.read_bytes() == whole


def test_an_over_long_prompt_is_an_error_record_and_the_others_go_on(capsys, model_dirs, tmp_path):
    prompts, out = tmp_path / "p.txt", tmp_path / "out.jsonl"
    prompts.write_text(f"The cat\n{LONG}\nWhat a\n")
    for method in ("sampling", "cbs"):
        status, _, err = cli(capsys, *search_flags(model_dirs, prompts, out), "--overwrite", "--method", method)
        rows = lines(out)
        assert [r["prompt"] for r in rows] == ["The cat", LONG, "What a"]
        assert rows[1].keys() == ERROR_RECORD_KEYS | {"prompt"} and rows[1]["index"] == 1
        assert "context is 512 tokens" in rows[1]["error"]
        assert (rows[1]["error_kind"], rows[1]["error_code"]) == ("context", "context_length_exceeded")
        assert "response" in rows[0] and "response" in rows[2]
        # 12: a summary and exit status 1
        assert status == 1 and f"w2s search: 1 of 3 prompts failed (error records in {out}):" in err
        assert "  index 1: " in err and "context is 512 tokens" in err


# 11 (and 12): an aligner whose context a question overflows


@pytest.mark.parametrize("command", ["stream", "align"])
def test_a_question_that_overflows_the_aligner_is_an_error_record(capsys, model_dirs, small_aligner, tmp_path,
                                                                   command):
    questions, out = tmp_path / "q.jsonl", tmp_path / "answers.jsonl"
    questions.write_text("".join(json.dumps({"question": q}) + "\n" for q in ["The cat", LONG[:400], "What a"]))
    status, _, err = cli(capsys, *stream_flags(model_dirs, command, small_aligner, questions, out))
    rows = lines(out)
    assert [r["question"] for r in rows] == ["The cat", LONG[:400], "What a"]
    assert rows[1].keys() == ERROR_RECORD_KEYS | {"question"} and rows[1]["index"] == 1
    assert (rows[1]["error_kind"], rows[1]["error_code"], rows[1]["error_status"]) == ("context", "context_length_exceeded", None)
    assert "context is 128 tokens" in rows[1]["error"]
    assert "corrected" in rows[0] and "corrected" in rows[2]
    assert status == 1 and f"w2s {command}: 1 of 3 questions failed" in err and "  index 1: " in err


# 13: an output holds one run


def test_search_output_holds_one_run(capsys, model_dirs, tmp_path):
    prompts, out = tmp_path / "p.txt", tmp_path / "out.jsonl"
    prompts.write_text("The cat\nWhat a\nOnce upon\n")
    run = search_flags(model_dirs, prompts, out)
    status, _, err = cli(capsys, *run, "--batch-size", "2")
    assert status == 0 and "failed" not in err and "error" not in err  # a good run: exit 0, no summary
    first = out.read_text()
    record = json.loads(run_record(out).read_text())
    assert record["command"] == "w2s search" and record["inputs"]["count"] == 3
    assert record["flags"]["--method"] == "sampling" and record["flags"]["--seed"] == 0
    assert record["flags"]["--strong"] == model_dirs["strong"] and record["flags"]["--max-new-tokens"] == 3

    def refused(*extra, prompts_text=None):
        if prompts_text is not None:
            prompts.write_text(prompts_text)
        status, _, err = cli(capsys, *run, *extra)
        assert status == 2 and out.read_text() == first
        return one_line_error(err, "search")

    assert "already holds lines; give --resume to go on with that run, or --overwrite to start over" in refused()
    assert f"--output {out} holds a run with --seed 0, not 1;" in refused("--resume", "--seed", "1")
    assert "--temperature 0.7, not 0.5" in refused("--resume", "--temperature", "0.5")
    assert "--untuned-template none, not chat" in refused("--resume", "--untuned-template", "chat")
    assert "not both" in refused("--resume", "--overwrite")
    assert "other --prompts (3 items" in refused("--resume", prompts_text="The cat\nWhat a\nOnce more\n")
    prompts.write_text("The cat\nWhat a\nOnce upon\n")
    # the same settings go on (another batch size too: it changes the scores' last bits, not what is computed)
    out.write_text(first.splitlines(keepends=True)[0])
    assert cli(capsys, *run, "--resume")[0] == 0
    assert [(r["prompt"], r["response"]) for r in lines(out)] == [(r["prompt"], r["response"]) for r in map(
        json.loads, first.splitlines())]
    # --overwrite starts over, recording the new settings
    assert cli(capsys, *run, "--overwrite", "--seed", "1")[0] == 0 and len(lines(out)) == 3
    assert json.loads(run_record(out).read_text())["flags"]["--seed"] == 1
    # an output written before runs were recorded goes on unchecked, with a warning
    run_record(out).unlink()
    out.write_text(first.splitlines(keepends=True)[0])
    with pytest.warns(UserWarning, match="written before runs were recorded"):
        assert cli(capsys, *run, "--resume")[0] == 0
    assert run_record(out).exists() and len(lines(out)) == 3


def test_a_second_run_on_an_output_being_written_is_refused(capsys, model_dirs, tmp_path):
    import subprocess
    import sys

    prompts, out = tmp_path / "p.txt", tmp_path / "out.jsonl"
    prompts.write_text("The cat\nWhat a\n")
    out.write_text('{"prompt": "The cat"}\n')
    # another process's run holds the output, as w2s's own runs do while they write it
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
                               "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        for extra in (["--resume"], ["--overwrite"]):
            status, _, err = cli(capsys, *search_flags(model_dirs, prompts, out), *extra)
            assert status == 2 and f"--output {out} is being written by another run" in one_line_error(err, "search")
            assert out.read_text() == '{"prompt": "The cat"}\n'  # not cut, not emptied
    finally:
        holder.kill()
        holder.wait()
    assert cli(capsys, *search_flags(model_dirs, prompts, out), "--overwrite")[0] == 0 and len(lines(out)) == 2
    assert cli(capsys, *search_flags(model_dirs, prompts, out), "--resume")[0] == 0  # the lock ends with the run


@pytest.mark.parametrize("command", ["stream", "data"])
def test_rerun_of_stream_and_corrections_goes_on_only_with_the_same_settings(capsys, model_dirs, tmp_path, command):
    questions, out = tmp_path / "q.txt", tmp_path / "out.jsonl"
    questions.write_text("The cat\nWhat a\n")
    if command == "stream":
        run = stream_flags(model_dirs, "stream", model_dirs["shared_tuned"], questions, out)
        flag, name = "--output", "stream"
    else:
        run = ["data", "corrections", "--upstream", model_dirs["strong"], "--upstream-template", "{prompt}",
               "--teacher", model_dirs["shared_tuned"], "--max-sentences", "2", "--max-sentence-tokens", "6",
               "--max-correction-tokens", "8", "--questions", questions, "--out", out]
        flag, name = "--out", "data corrections"
    assert cli(capsys, *run)[0] == 0
    first = out.read_text()
    assert first and cli(capsys, *run)[0] == 0 and out.read_text() == first  # a rerun goes on (nothing to do)
    status, _, err = cli(capsys, *run, "--seed", "4")
    assert status == 2 and out.read_text() == first
    assert f"{flag} {out} holds a run with --seed 0, not 4;" in one_line_error(err, name)
    status, _, err = cli(capsys, *run, "--max-sentences", "1")
    assert status == 2 and "--max-sentences 2, not 1" in err
    assert cli(capsys, *run, "--seed", "4", "--overwrite")[0] == 0
    assert json.loads(run_record(out).read_text())["flags"]["--seed"] == 4


def test_an_engine_that_stays_down_is_a_one_line_error(capsys, model_dirs):
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there
    status, _, err = cli(capsys, "stream", "--upstream", f"http://127.0.0.1:{port}/v1", "--upstream-model", "m",
                         "--upstream-template", "{prompt}", "--aligner", model_dirs["shared_tuned"], "--max-retries",
                         "0", "--max-sentences", "1", "--question", "Hi")
    last = err.splitlines()[-1]  # after the aligner's loading bar
    assert status == 1 and "Traceback" not in err and last.startswith("w2s stream: error: ") and "Connect" in last


def test_ctrl_c_ends_with_one_line_that_says_how_to_go_on(capsys, model_dirs, tmp_path, monkeypatch):
    """Issue 25 item 16: Ctrl-C printed a full traceback."""
    from w2s.cli import search

    prompts, out = tmp_path / "p.txt", tmp_path / "out.jsonl"
    prompts.write_text("The cat\n")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search, "write_output", interrupted)
    status, _, err = cli(capsys, *search_flags(model_dirs, prompts, out))
    assert status == 130 and "Traceback" not in err
    assert err.endswith("\nw2s search: interrupted; the lines written are kept: run it again with --resume to go on.\n")


def test_a_method_has_one_name_and_the_old_one_still_works_with_a_warning(capsys, model_dirs, tmp_path):
    """Issue 25 item 10: plain sampling was `base` in Python and on the command line, `sampling` in the server."""
    import w2s
    from w2s.search import SEARCH_METHODS
    from w2s.serve import ServeConfig
    from w2s.serve.config import SERVED_METHODS

    assert w2s.Sampling.method == "sampling" and "sampling" in SERVED_METHODS and "sampling" in SEARCH_METHODS
    prompts, out = tmp_path / "p.txt", tmp_path / "out.jsonl"
    prompts.write_text("The cat\n")
    flags = search_flags(model_dirs, prompts, out)
    flags[flags.index("sampling")] = "base"
    with pytest.warns(DeprecationWarning, match="'base' is now called 'sampling'"):
        status, _, _ = cli(capsys, *flags)
    assert status == 0 and lines(out)[0]["method"] == "sampling"
    assert json.loads(run_record(out).read_text())["flags"]["--method"] == "sampling"
    with pytest.warns(DeprecationWarning):
        assert ServeConfig(method="base").method == "sampling"


def test_a_python_teacher_needs_its_prefix():
    """Issue 25 item 7: an unknown ``a:b`` teacher was imported as ``module:function``; now only ``py:`` does."""
    from w2s.models import ModelSpec, load
    from w2s.tasks import positive

    assert load(ModelSpec("py:w2s.tasks.positive:teacher", role="teacher")).model is positive.teacher
    with pytest.raises(ValueError, match=r"for a Python function write 'py:w2s\.tasks\.positive:teacher'"):
        load(ModelSpec("w2s.tasks.positive:teacher", role="teacher"))
    with pytest.raises(ValueError, match="only the teacher may be a Python function"):
        load(ModelSpec("py:os:system", role="strong"))
    with pytest.raises(ValueError, match="not an importable function"):
        load(ModelSpec("py:w2s.no_such_module:teacher", role="teacher"))
    with pytest.raises(ValueError, match="must name a function"):
        load(ModelSpec("py:w2s.tasks.positive", role="teacher"))


def test_the_rows_a_search_samples_at_once_are_bounded_before_any_work(capsys, tmp_path):
    """Issue 25 items 1 and 11: only the server checked a method's rows; the command line and the Python
    API sampled whatever W * K (or W * max(schedule)) asked for."""
    import w2s

    prompts, out = tmp_path / "p.txt", tmp_path / "out.jsonl"
    prompts.write_text("The cat\n")
    missing = str(tmp_path / "no-such-model")  # refused before any model would load
    flags = ["search", "--strong", missing, "--tuned", missing, "--untuned", missing, "--max-new-tokens", "3",
             "--prompts", prompts, "--output", out]
    status, _, err = cli(capsys, *flags, "--method", "adaptive", "--beam-width", "2", "--successors-per-beam", "1",
                         "--schedule", "10000")
    assert status == 2 and "beam_width * max(schedule) = 20000 large-model rows" in err and "--max-rows = 1024" in err
    status, _, err = cli(capsys, *flags, "--method", "bon", "--n", "64", "--max-rows", "32")
    assert status == 2 and "n = 64 large-model rows per prompt at once, more than --max-rows = 32" in err
    assert not out.exists()
    with pytest.raises(ValueError, match="beam_width \\* successors_per_beam = 4096 .* max_rows = 1024"):
        next(w2s.ChunkBeamSearch(beam_width=64, successors_per_beam=64).generate(None, None, ["The cat"]))
    with pytest.raises(ValueError, match="max_rows = 8"):
        next(w2s.BestOfN(n=16).generate(None, None, ["The cat"], max_rows=8))
    with pytest.raises(ValueError, match="max_rows must be"):
        next(w2s.BestOfN(n=16).generate(None, None, ["The cat"], max_rows=0))
