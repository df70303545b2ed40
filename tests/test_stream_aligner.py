"""The Stream Aligner loop: sentence stops, cache reuse, batching, and the Aligner baseline."""

import pytest

import w2s
from conftest import chain, make_scripted, strong_tokenizer
from w2s.aligner import STREAM_ALIGNER_TEMPLATE, stream_aligner_input

ANSWER = " The movie was wonderful! I did not like it? Great."  # distinct tokens: a bigram can say it


@pytest.fixture
def scripted_upstream():
    """Answers ``ANSWER`` then EOS after any question ending in 'Q'; counts the tokens it runs."""
    tok = strong_tokenizer()
    ids, script = chain(tok, ANSWER, end=tok.eos_token_id)
    question_end = tok("Q", add_special_tokens=False)["input_ids"][-1]
    script[question_end] = [(ids[0], 1.0)]
    model = make_scripted(tok, script, default_next=tok.eos_token_id)
    model.tokens_seen = []
    forward = model.model.forward

    def counting(*args, **kwargs):
        model.tokens_seen.append(kwargs["input_ids"].numel())  # one row: the tokens run
        return forward(*args, **kwargs)

    model.model.forward = counting
    return model


def upper(question, prefix, sentence):
    return sentence.upper()


def test_each_sentence_is_corrected_and_emitted_in_order(scripted_upstream):
    seen = []

    def aligner(question, prefix, sentence):
        seen.append((prefix, sentence))
        return sentence.upper()

    steps = list(w2s.StreamAligner().stream(scripted_upstream, aligner, "Q", upstream_template="{prompt}"))
    assert [s.original for s in steps] == [" The movie was wonderful!", " I did not like it?", " Great."]
    assert "".join(s.corrected for s in steps) == ANSWER.upper()
    # the aligner sees the corrected prefix and the bare sentence
    assert seen == [("", "The movie was wonderful!"), (" THE MOVIE WAS WONDERFUL!", "I did not like it?"),
                    (" THE MOVIE WAS WONDERFUL! I DID NOT LIKE IT?", "Great.")]
    assert all(s.elapsed >= s.upstream_seconds for s in steps)


def test_upstream_stops_at_sentence_ends_and_reuses_its_cache(scripted_upstream):
    """Fails if the upstream regenerates the rest of the answer, or re-encodes the prefix, every round."""
    tok = scripted_upstream.tokenizer
    prompt = len(tok("Q")["input_ids"])
    answer = len(tok(ANSWER, add_special_tokens=False)["input_ids"])
    list(w2s.StreamAligner().stream(scripted_upstream, lambda q, p, s: s, "Q", upstream_template="{prompt}"))
    rounds = 3
    # prompt once, each answer token about once, plus per round: the re-run last token and the token
    # or two sampled past the sentence end to confirm it
    assert sum(scripted_upstream.tokens_seen) <= prompt + answer + 3 * rounds
    # regenerating the whole rest each round (the research code) would run about 2x the answer here
    assert sum(scripted_upstream.tokens_seen) < prompt + 2 * answer


def test_max_sentences_bounds_the_rounds(scripted_upstream):
    steps = list(w2s.StreamAligner(max_sentences=2).stream(scripted_upstream, upper, "Q", upstream_template="{prompt}"))
    assert [s.original for s in steps] == [" The movie was wonderful!", " I did not like it?"]


def test_batched_run_equals_streaming_each_question(strong):
    sa = w2s.StreamAligner(max_sentences=3, max_sentence_tokens=8)
    questions = ["The cat", "What a day", "I did not like"]
    batch = sa.run(strong, upper, questions, seed=4, upstream_template="{prompt}")
    for i, (q, a) in enumerate(zip(questions, batch)):
        steps = [s for s in sa.steps(strong, upper, questions, seed=4, upstream_template="{prompt}")
                 if s.question_index == i]
        assert a.corrected == "".join(s.corrected for s in steps) and a.corrected == a.original.upper()
        assert a.question == q and 0 < a.first_seconds <= a.total_seconds


def test_a_model_aligner_gets_the_authors_format_in_its_chat_template(scripted_upstream):
    tok = strong_tokenizer()
    ids, script = chain(tok, " Yes", end=tok.eos_token_id)
    script[tok.convert_tokens_to_ids("<|assistant|>")] = [(ids[0], 1.0)]
    aligner = make_scripted(tok, script, default_next=tok.eos_token_id)
    prompts = []
    encode = aligner.encode_prompt
    aligner.encode_prompt = lambda text, template: prompts.append(text) or encode(text, template)
    steps = list(w2s.StreamAligner().stream(scripted_upstream, aligner, "Q", upstream_template="{prompt}"))
    assert [s.corrected for s in steps][0] == " Yes"
    written = len(ids) + 1  # " Yes" and the end token: what the aligner generated for each sentence
    assert [s.aligner_tokens for s in steps] == [written] * len(steps)
    whole = w2s.Aligner().run(scripted_upstream, aligner, ["Q"], upstream_template="{prompt}")[0]
    assert whole.corrected == "Yes" and whole.aligner_tokens == written
    answer = w2s.StreamAligner().run(scripted_upstream, aligner, ["Q"], upstream_template="{prompt}")[0]
    assert answer.aligner_tokens == written * len(answer.steps)
    assert prompts[0] == aligner.render("chat", stream_aligner_input("Q", "", "The movie was wonderful!"))
    assert STREAM_ALIGNER_TEMPLATE.startswith("##Question: {question} | ##Answer_Prefix: {prefix}")


def test_aligner_baseline_corrects_the_whole_answer(scripted_upstream):
    answers = w2s.Aligner().run(scripted_upstream, lambda q, a: a.upper(), ["Q"], upstream_template="{prompt}")
    assert answers[0].original == ANSWER and answers[0].corrected == ANSWER.strip().upper()
    assert answers[0].first_seconds == answers[0].total_seconds


def test_invalid_arguments_are_named(scripted_upstream):
    with pytest.raises(ValueError, match="max_sentences"):
        w2s.StreamAligner(max_sentences=0)
    with pytest.raises(ValueError, match="upstream_template"):
        list(w2s.StreamAligner().stream(scripted_upstream, upper, "Q", upstream_template="no placeholder"))
    with pytest.raises(ValueError, match="sampling must be a w2s.SamplingParams"):
        w2s.StreamAligner(sampling=0.7)


def _some_upper(question, prefix, sentence):  # changes some sentences and leaves the others alone
    return sentence.upper() if len(sentence) % 3 == 0 else sentence


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_speculative_run_gives_the_plain_runs_answers(strong, seed):
    """Drafts of changed sentences are thrown away with their random draws: same answers as a plain run."""
    questions = ["The cat", "What a day", "I did not like", "Yes"]
    kw = dict(max_sentences=5, max_sentence_tokens=6, sampling=w2s.SamplingParams(temperature=1.0))
    plain = w2s.StreamAligner(**kw).run(strong, _some_upper, questions, seed=seed, upstream_template="{prompt}")
    fast = w2s.StreamAligner(speculative=True, **kw).run(strong, _some_upper, questions, seed=seed,
                                                         upstream_template="{prompt}")
    assert [(a.original, a.corrected) for a in fast] == [(a.original, a.corrected) for a in plain]
    steps = [s for a in fast for s in a.steps]
    # a step is a kept draft exactly when the step before it (same question) was left unchanged
    for a in fast:
        for before, step in zip(a.steps, a.steps[1:]):
            assert step.drafted == (before.corrected == before.original)
    assert not any(s.drafted for s in steps if s.index == 0)


def test_speculation_keeps_every_draft_when_the_aligner_changes_nothing(scripted_upstream):
    steps = list(w2s.StreamAligner(speculative=True).stream(scripted_upstream, lambda q, p, s: s, "Q",
                                                            upstream_template="{prompt}"))
    assert "".join(s.corrected for s in steps) == ANSWER
    assert [s.drafted for s in steps] == [False, True, True]


def test_aligner_baseline_answer_can_end_after_n_sentences(scripted_upstream):
    answer = w2s.Aligner(max_sentences=2).run(scripted_upstream, lambda q, a: a, ["Q"], upstream_template="{prompt}")
    assert answer[0].original.strip() == "The movie was wonderful! I did not like it?"
    with pytest.raises(ValueError, match="max_sentences"):
        w2s.Aligner(max_sentences=0)


CODE = "    total = sum(a,\n                b)\n\n    # done\n    return total\n"


class CodeUpstream:
    """A stand-in upstream (the loop's logic only) that writes ``CODE``: each call continues where the last
    unit ended (a line keeps its newline), up to the end its ``stop`` rule finds."""

    def __init__(self, code=CODE):
        self.code = code

    def render(self, template, question):
        return question

    def generator(self, n, sampling, seeds, template):
        upstream, CODE = self, self.code
        upstream.at = [0] * n

        class Rows:
            def generate(self, contexts, max_tokens, stop=None):
                out = {}
                for i in contexts:
                    rest = CODE[upstream.at[i]:]
                    text = rest[: stop(rest) or len(rest)] if stop else rest
                    upstream.at[i] += len(text)
                    out[i] = (text, not CODE[upstream.at[i]:].strip())
                return out

        return Rows()


def test_code_is_corrected_logical_line_by_logical_line():
    """unit="line": a call spread over lines is one unit, a blank line goes with the line after it, and the
    aligner's comment is kept in the answer; the Aligner counts lines with the same rule."""
    seen = []

    def commenting(question, prefix, line):
        seen.append(line)
        return line if line.lstrip().startswith("#") else line + "  # step"

    answer = w2s.StreamAligner(unit="line").run(CodeUpstream(), commenting, ["Q"], upstream_template="{prompt}")[0]
    assert [s.original for s in answer.steps] == ["    total = sum(a,\n                b)\n", "\n    # done\n",
                                                  "    return total\n"]  # a line keeps its newline
    assert seen == ["    total = sum(a,\n                b)", "    # done", "    return total"]  # indentation kept
    assert answer.corrected == "    total = sum(a,\n                b)  # step\n\n    # done\n    return total  # step\n"
    assert w2s.Aligner(unit="line", max_sentences=1).run(CodeUpstream(), lambda q, a: a, ["Q"])[0].original == \
        "    total = sum(a,\n                b)\n"
    with pytest.raises(ValueError, match="unit"):
        w2s.StreamAligner(unit="paragraph")


def test_the_code_guard_keeps_corrections_that_only_add_comments():
    """guard="code": a correction that changes a code token (or the indentation) is refused and the line
    kept as the upstream wrote it, with the reason; comments, above the line or after it, and a fenced
    answer's inside are accepted."""
    from w2s.aligner.stream import accept

    original = "\n    return total"
    assert accept("code", original, "# the sum\n    return total") == ("\n    # the sum\n    return total", None)
    assert accept("code", original, "```python\n    return total  # the sum\n```") == (
        "\n    return total  # the sum", None)
    assert accept("code", original, "    return total + 1") == (original, "code changed at token 3: '(nothing)' "
                                                                               "became '+'")
    assert accept("code", original, "# the sum\nreturn total")[1].startswith("code changed")  # indentation lost
    assert accept("code", original, "return (total")[1].startswith("the correction: it does not tokenize")
    assert accept(None, original, "return total + 1") == ("\n    return total + 1", None)

    asked = []

    def rewriting(question, prefix, line):  # changes the first line's code, comments the others
        asked.append(line)
        return line.replace("sum", "max") if "sum" in line else "# next\n" + line

    guarded = w2s.StreamAligner(unit="line", guard="code").run(CodeUpstream(), rewriting, ["Q"],
                                                               upstream_template="{prompt}")[0]
    assert [s.rejected is not None for s in guarded.steps] == [True, False, False]
    # the comment line is kept without asking the aligner
    assert guarded.corrected == "    total = sum(a,\n                b)\n\n    # done\n    # next\n    return total\n"
    assert asked == ["    total = sum(a,\n                b)", "    return total"]
    assert guarded.steps[0].rejected == "code changed at token 3: 'sum' became 'max'"
    free = w2s.StreamAligner(unit="line").run(CodeUpstream(), rewriting, ["Q"], upstream_template="{prompt}")[0]
    assert "max(a" in free.corrected and all(s.rejected is None for s in free.steps)
    whole = w2s.Aligner(unit="line", guard="code")
    assert whole.run(CodeUpstream(), lambda q, a: a.replace("sum", "max"), ["Q"])[0].rejected.startswith("code changed")
    kept = whole.run(CodeUpstream(), lambda q, a: "# add them\n" + a, ["Q"])[0]
    assert kept.rejected is None and kept.corrected.startswith("    # add them\n    total = sum(a,")
    with pytest.raises(ValueError, match="guard"):
        w2s.StreamAligner(guard="prose")


def test_a_function_body_ends_at_the_first_line_at_column_0():
    """function_body=True: raw completion of a function stops where a line starts at column 0 (the stop
    strings of w2s.tasks.code cannot see it once the previous line's newline is in the prefix)."""
    upstream = CodeUpstream("    x = 1\n\n    return x\n```\nThis code returns x.\n")
    body = w2s.StreamAligner(unit="line", function_body=True).run(upstream, lambda q, p, s: s, ["Q"])[0]
    assert body.corrected == "    x = 1\n\n    return x\n" and len(body.steps) == 2
    free = w2s.StreamAligner(unit="line").run(upstream, lambda q, p, s: s, ["Q"])[0]
    assert free.corrected.endswith("```\nThis code returns x.\n") and len(free.steps) == 4
    with pytest.raises(ValueError, match="function_body needs unit='line'"):
        w2s.StreamAligner(function_body=True)


def test_a_function_aligner_with_many_gets_each_rounds_units_in_one_call():
    class Batched:
        calls = []

        def __call__(self, question, prefix, line):
            raise AssertionError("many() takes every call")

        def many(self, asks):
            self.calls.append(sorted(asks))
            return {i: line + "  # ok" for i, (question, prefix, line) in asks.items()}

    teacher = Batched()
    answers = w2s.StreamAligner(unit="line").run(CodeUpstream(), teacher, ["Q1", "Q2"], upstream_template="{prompt}")
    assert teacher.calls == [[0, 1]] * 3
    assert [a.corrected for a in answers] == [
        "    total = sum(a,\n                b)  # ok\n\n    # done  # ok\n    return total  # ok\n"] * 2
