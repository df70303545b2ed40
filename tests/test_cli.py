"""``w2s search`` end to end, as a user runs it: a real process, files in and out."""

import json
import os
import subprocess
import sys

import pytest

import w2s


def run_cli(*args, stdin=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "w2s.cli", *args], input=stdin, capture_output=True, text=True,
                          env=env, timeout=300)


def model_flags(dirs, shared=False):
    prefix = "shared_" if shared else ""
    return ["--strong", dirs["strong"], "--tuned", dirs[prefix + "tuned"], "--untuned", dirs[prefix + "untuned"]]


PROMPTS = [{"prompt": "The cat", "id": 1}, {"prompt": "What a", "id": 2}, {"prompt": "I did not like", "id": 3}]


@pytest.mark.parametrize("method,extra", [
    ("cbs", ["--beam-width", "2", "--successors", "2", "--chunk-length", "3"]),
    ("bon", ["--n", "3"]),
    ("sampling", []),
    ("adaptive", ["--beam-width", "2", "--successors", "2", "--chunk-length", "3", "--chunk-end", " ",
                  "--schedule", "3", "1", "--patience", "1"]),
    ("pruned_bon", ["--n", "4", "--checkpoints", "2", "4", "--prune-fraction", "0.5"]),
    ("nudging", ["--gamma", "0.3", "--nudge-tokens", "4"]),  # the tuned model nudges
    ("tree", ["--children", "2", "--chunk-length", "3", "--simulations", "2"]),
])
def test_search_writes_one_scored_line_per_prompt_in_order(model_dirs, tmp_path, method, extra):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p) + "\n" for p in PROMPTS))
    out = tmp_path / "out.jsonl"
    proc = run_cli("search", *model_flags(model_dirs), "--method", method, *extra, "--max-new-tokens", "6",
                   "--tuned-template", "chat", "--seed", "3", "--prompts", str(prompts), "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "prompt" in proc.stderr  # the progress bar
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["id"], r["prompt"]) for r in rows] == [(p["id"], p["prompt"]) for p in PROMPTS]
    scorer = w2s.LogRatioScorer(w2s.load_model(model_dirs["tuned"]), w2s.load_model(model_dirs["untuned"]),
                                tuned_template="chat", incremental=False)
    for r in rows:
        slack = 4 if method == "nudging" else 0  # its nudger's words, counted again from their text
        assert r["method"] == method and isinstance(r["finished"], bool) and 0 < r["num_tokens"] <= 6 + slack
        # (Nudging's answer is partly the nudger's: the large model sampled at least its own part)
        assert r["sampled_tokens"] >= r.get("base_tokens", r["num_tokens"]) and r["guide_tokens"] > 0
        assert r["score"] == pytest.approx(scorer.score(r["prompt"], [r["response"]], [r["finished"]])[0], abs=1e-4)


def test_search_eft_plain_text_prompts_stdin_to_stdout(model_dirs):
    proc = run_cli("search", *model_flags(model_dirs, shared=True), "--method", "eft", "--beta", "0.5",
                   "--max-new-tokens", "4", "--prompts", "-", "--output", "-", stdin="The cat\n\nWhat a\n")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == ["The cat", "What a"] and {r["method"] for r in rows} == {"eft"}


def test_eft_with_different_vocabularies_is_a_clear_error(model_dirs):
    proc = run_cli("search", *model_flags(model_dirs), "--method", "eft", "--max-new-tokens", "4",
                   "--prompts", "-", "--output", "-", stdin="The cat\n")
    assert proc.returncode == 2 and "vocabulary" in proc.stderr


def test_bad_parameter_is_named_before_models_load(model_dirs):
    proc = run_cli("search", *model_flags(model_dirs), "--method", "cbs", "--beam-width", "0",
                   "--max-new-tokens", "4", "--prompts", "-", "--output", "-", stdin="x\n")
    assert proc.returncode == 2 and "beam_width must be in [1, inf), got 0" in proc.stderr


def test_ignored_flags_are_warned_about(model_dirs):
    proc = run_cli("search", *model_flags(model_dirs), "--method", "bon", "--n", "2", "--beam-width", "3",
                   "--max-new-tokens", "3", "--prompts", "-", "--output", "-", stdin="x\n")
    assert proc.returncode == 0 and "--beam-width is ignored by --method bon" in proc.stderr


def test_resume_keeps_finished_lines_and_matches_an_uninterrupted_run(model_dirs, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("The cat\nWhat a\nI did not like\nOnce upon\n")
    common = ["search", *model_flags(model_dirs), "--method", "cbs", "--beam-width", "2", "--successors", "2",
              "--max-new-tokens", "5", "--batch-size", "1", "--prompts", str(prompts)]
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    assert run_cli(*common, "--output", str(full)).returncode == 0
    lines = full.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:2]) + lines[2][:10])  # interrupted while writing line 3
    assert run_cli(*common, "--output", str(part), "--resume").returncode == 0
    assert part.read_text() == full.read_text()


def test_resume_restarts_at_the_batch_boundary(tmp_path):
    from w2s.cli.common import is_error_record
    from w2s.jsonl import resume_point

    def _resume_point(path, batch_size, total):
        return resume_point(path, batch_size, total, keep=lambda r: not is_error_record(r))

    out = tmp_path / "out.jsonl"
    rows = [json.dumps({"prompt": str(i), "response": "x"}) + "\n" for i in range(5)]
    out.write_text("".join(rows[:3]) + rows[3][:5])  # 3 complete lines, a torn 4th
    assert _resume_point(str(out), 2, total=6) == 2 and out.read_text() == "".join(rows[:2])
    out.write_text("".join(rows))  # a finished run of 5 keeps its partial last batch
    assert _resume_point(str(out), 2, total=5) == 5 and out.read_text() == "".join(rows)
    error = json.dumps({"index": 1, "prompt": "1", "error": "HTTP 503"}) + "\n"
    out.write_text(rows[0] + error + "".join(rows[2:]))  # retried from the error's batch
    assert _resume_point(str(out), 1, total=5) == 1 and _resume_point(str(out), 4, total=5) == 0


def aligner_flags(dirs):
    # the shared guide has the strong model's tokenizer and its chat template: a stand-in aligner
    # (and a correction budget that fits its context of 512 with the question and answer)
    return ["--upstream", dirs["strong"], "--upstream-template", "{prompt}", "--max-sentences", "2",
            "--max-correction-tokens", "64"]


def test_stream_prints_one_question_and_writes_a_file_of_them(model_dirs, tmp_path):
    proc = run_cli("stream", *aligner_flags(model_dirs), "--aligner", model_dirs["shared_tuned"], "--question", "The cat")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "The cat"}\n{"question": "What a"}\n')
    out = tmp_path / "out.jsonl"
    for command in ("stream", "align"):
        out.unlink(missing_ok=True)
        proc = run_cli(command, *aligner_flags(model_dirs), "--aligner", model_dirs["shared_tuned"],
                       "--questions", str(questions), "--output", str(out))
        assert proc.returncode == 0, proc.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert [r["question"] for r in rows] == ["The cat", "What a"]
        assert all(r["total_seconds"] >= r["first_seconds"] > 0 for r in rows)


def test_data_corrections_then_train_aligner(model_dirs, tmp_path):
    records = tmp_path / "records.jsonl"
    proc = run_cli("data", "corrections", *aligner_flags(model_dirs), "--teacher", model_dirs["shared_tuned"],
                   "--questions", "-", "--out", str(records), stdin="The cat\nWhat a\n")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in records.read_text().splitlines()]
    assert rows and set(rows[0]) >= {"question", "prefix", "sentence", "correction"}
    proc = run_cli("train", "aligner", "--base", model_dirs["shared_untuned"], "--records", str(records),
                   "--out", str(tmp_path / "aligner"), "--epochs", "1", "--batch-size", "2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "aligner" / "w2s_training.json").read_text())["records"] == len(rows)


# -- sampling presets and repetition controls on the command line -------------------------------------
def _configs(argv):
    """The config each sampling command builds from ``argv`` (its own flags after the command's)."""
    from w2s.cli import build_parser
    from w2s.cli.flags import config_from_args
    from w2s.cli.search import method_config

    parser = build_parser()
    search = parser.parse_args(["search", "--method", "cbs", "--max-new-tokens", "4", "--prompts", "-",
                                "--output", "-", *argv])
    out = {"search": method_config(search)}
    for command, cls in (("stream", w2s.StreamAligner), ("align", w2s.Aligner)):
        out[command] = config_from_args(cls, parser.parse_args([command, "--question", "Q", *argv]))
    corrections = parser.parse_args(["data", "corrections", "--questions", "q", "--out", "o", "--teacher", "t", *argv])
    out["data corrections"] = config_from_args(w2s.StreamAligner, corrections)
    return {command: config.sampling for command, config in out.items()}


def test_a_sampling_preset_sets_the_sampling_flags_defaults_and_given_flags_override_it():
    for command, sampling in _configs([]).items():
        assert sampling == w2s.SamplingParams(), command
    for command, sampling in _configs(["--sampling-preset", "stream-aligner"]).items():
        assert sampling == w2s.SamplingParams.preset("stream-aligner"), command
    given = ["--sampling-preset", "stream-aligner", "--top-p", "1.0", "--frequency-penalty", "0",
             "--repetition-penalty", "1.3", "--no-repeat-ngram-size", "3", "--presence-penalty", "0.5"]
    for command, sampling in _configs(given).items():
        assert sampling == w2s.SamplingParams(temperature=0.7, top_p=1.0, top_k=40, frequency_penalty=0.0,
                                              repetition_penalty=1.3, no_repeat_ngram_size=3,
                                              presence_penalty=0.5), command


def test_an_unknown_sampling_preset_or_bad_control_is_named():
    proc = run_cli("search", "--method", "sampling", "--max-new-tokens", "4", "--prompts", "-", "--output", "-",
                   "--sampling-preset", "stream_aligner", stdin="x\n")
    assert proc.returncode == 2 and "--sampling-preset" in proc.stderr and "'stream_aligner'" in proc.stderr
    assert "weak-to-strong" in proc.stderr and "stream-aligner" in proc.stderr
    proc = run_cli("stream", "--question", "Q", "--frequency-penalty", "3")
    assert proc.returncode == 2 and "frequency_penalty must be in [-2, 2], got 3" in proc.stderr


def test_the_engine_flag_reaches_the_model_spec():
    from w2s.cli import build_parser
    from w2s.cli.flags import model_specs
    from w2s.cli.search import ROLES

    args = build_parser().parse_args(["search", "--method", "sampling", "--max-new-tokens", "4", "--prompts", "-",
                                      "--output", "-", "--strong", "http://h:8000/v1", "--strong-model", "m",
                                      "--engine", "vllm"])
    assert model_specs(args, ROLES)["strong"].engine == "vllm"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["stream", "--question", "Q", "--engine", "tgi"])
