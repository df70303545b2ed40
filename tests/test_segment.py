"""Sentence segmentation: offline splits, the join invariant, and streaming never moving a boundary."""

from __future__ import annotations

import random

import pytest

from w2s.aligner import first_sentence_end, split_sentences

CASES = [
    # basics, whitespace
    ("", []),
    ("   ", ["   "]),
    ("\n\n", ["\n\n"]),
    ("Hi there. How are you?", ["Hi there. ", "How are you?"]),
    ("  Hello there.  How are you?", ["  Hello there.  ", "How are you?"]),
    ("\n\nHello. World.", ["\n\nHello. ", "World."]),
    ("Hello.  \n", ["Hello.  \n"]),
    ("no terminator at all", ["no terminator at all"]),
    ("First one. second one lowercase", ["First one. second one lowercase"]),
    ("First. Second", ["First. ", "Second"]),
    # ! ? and combinations
    ("Wait?! Really!! Yes? No!", ["Wait?! ", "Really!! ", "Yes? ", "No!"]),
    ("What?! 42 people came.", ["What?! ", "42 people came."]),
    # quotes and brackets after the terminator
    ('He said "Stop." Then he left.', ['He said "Stop." ', "Then he left."]),
    ('"Why?" she asked. He shrugged.', ['"Why?" she asked. ', "He shrugged."]),
    ("He left (finally.) Then we ate.", ["He left (finally.) ", "Then we ate."]),
    ("See [the note.] It helps.", ["See [the note.] ", "It helps."]),
    ("It ended.’ Then silence.", ["It ended.’ ", "Then silence."]),
    ("“Go.” She went.", ["“Go.” ", "She went."]),
    ("This (really!) works.", ["This (really!) works."]),
    ("**Note.** This matters.", ["**Note.** ", "This matters."]),
    # abbreviations and initials
    ("Dr. Smith arrived. He sat down.", ["Dr. Smith arrived. ", "He sat down."]),
    ("Mr. and Mrs. Jones met Ms. Lee and Prof. Kim on St. James Street.",
     ["Mr. and Mrs. Jones met Ms. Lee and Prof. Kim on St. James Street."]),
    ("Use a tool, e.g. a hammer, i.e. something heavy.", ["Use a tool, e.g. a hammer, i.e. something heavy."]),
    ("Bring fruit, e.g. Apples. Then go.", ["Bring fruit, e.g. Apples. ", "Then go."]),
    ("Use tools (e.g., hammers) here.", ["Use tools (e.g., hammers) here."]),
    ("We bought apples, pears, etc. and then left.", ["We bought apples, pears, etc. and then left."]),
    ("We bought apples, pears, etc. Then we left.", ["We bought apples, pears, etc. ", "Then we left."]),
    ("Python vs. Rust is old. Cf. Go.", ["Python vs. Rust is old. ", "Cf. Go."]),
    ("See Fig. 3 for details. No. 5 is missing.", ["See Fig. 3 for details. ", "No. 5 is missing."]),
    ("No. I disagree.", ["No. ", "I disagree."]),
    ("She moved to the U.S. last year.", ["She moved to the U.S. last year."]),
    ("We met at 9 a.m. and left at 5 p.m. The end.", ["We met at 9 a.m. and left at 5 p.m. ", "The end."]),
    ("J. R. R. Tolkien wrote it. I read it.", ["J. R. R. Tolkien wrote it. ", "I read it."]),
    ("Ends with e.g.\nthe next line", ["Ends with e.g.\nthe next line"]),
    # numbers
    ("Pi is 3.14 and costs $5.99 today.", ["Pi is 3.14 and costs $5.99 today."]),
    ("Install v1.2.3 now. Then restart.", ["Install v1.2.3 now. ", "Then restart."]),
    ("The answer is 5. Next we add 2.", ["The answer is 5. ", "Next we add 2."]),
    ("Use version 1.2.3. It works.", ["Use version 1.2.3. ", "It works."]),
    ("1. First item\n2. Second item", ["1. First item\n", "2. Second item"]),
    ("Steps:\n1. Mix the flour. Add eggs.\n2. Bake.", ["Steps:\n", "1. Mix the flour. ", "Add eggs.\n", "2. Bake."]),
    ("  3. Indented item\n  4) Other style", ["  3. Indented item\n  ", "4) Other style"]),
    # ellipses
    ("Well... maybe not.", ["Well... maybe not."]),
    ("Wait... Then it hit me.", ["Wait... ", "Then it hit me."]),
    ("Hmm… okay then.", ["Hmm… okay then."]),
    ("Hmm… I see.", ["Hmm… ", "I see."]),
    # lists, newlines, headings
    ("Fruits:\n- apple\n* pear\n• plum\n+ fig", ["Fruits:\n", "- apple\n", "* pear\n", "• plum\n", "+ fig"]),
    ("- item one\ncontinued here\n- item two", ["- item one\ncontinued here\n", "- item two"]),
    ("Line one.\nLine two", ["Line one.\n", "Line two"]),
    ("the end.\nthen more", ["the end.\n", "then more"]),
    ("no period here\ncontinues here", ["no period here\ncontinues here"]),
    ("Para one\n\nPara two", ["Para one\n\n", "Para two"]),
    ("Para one\n  \n\tPara two", ["Para one\n  \n\t", "Para two"]),
    ("# Title\nSome text. More.", ["# Title\n", "Some text. ", "More."]),
    ("Intro\n## Step 1. Install it. Now\nRun it.", ["Intro\n", "## Step 1. Install it. Now\n", "Run it."]),
    ("#hashtag is not a heading\nreally", ["#hashtag is not a heading\nreally"]),
    # code
    ("Here is code:\n```python\nx = 1. Y = 2\n\nprint(x)\n```\nThen more.",
     ["Here is code:\n", "```python\nx = 1. Y = 2\n\nprint(x)\n```\n", "Then more."]),
    ("Run ```a. B``` now. Done.", ["Run ```a. B``` now. ", "Done."]),
    ("```\nA. B. C\n\nD. E", ["```\nA. B. C\n\nD. E"]),
    ("Call `a.b()` first. Then `print('Hi. Bye')` runs.", ["Call `a.b()` first. ", "Then `print('Hi. Bye')` runs."]),
    ("A stray ` tick. Then more.", ["A stray ` tick. ", "Then more."]),
    ("Escaped 1\\. Not a list. Ok.", ["Escaped 1\\. Not a list. ", "Ok."]),
    # LaTeX and dollars
    ("So the answer is $\\boxed{42}$. Done.", ["So the answer is $\\boxed{42}$. ", "Done."]),
    ("So the answer is $\\boxed{42}$.", ["So the answer is $\\boxed{42}$."]),
    ("Compute $3.5 + 1.2$ now.", ["Compute $3.5 + 1.2$ now."]),
    ("Take $x. Y$ here. Ok.", ["Take $x. ", "Y$ here. ", "Ok."]),  # ". " inside: "$" is a dollar sign
    ("We get $$x = 1. Y = 2$$ here. Ok.", ["We get $$x = 1. Y = 2$$ here. ", "Ok."]),
    ("Inline \\(a. B\\) and display \\[c. D\\] stay.", ["Inline \\(a. B\\) and display \\[c. D\\] stay."]),
    ("Multi-line:\n$$\na = 1.\nb = 2.\n$$\nso done. Next.", ["Multi-line:\n$$\na = 1.\nb = 2.\n$$\nso done. ", "Next."]),
    ("It costs $5. Then $3. Ok.", ["It costs $5. ", "Then $3. ", "Ok."]),
    ("Pay $5 and $6. Done.", ["Pay $5 and $6. ", "Done."]),
    ("Broken $$ here. Then\n\nmore $$.", ["Broken $$ here. ", "Then\n\n", "more $$."]),
    # CJK
    ("你好。今天天气很好！", ["你好。", "今天天气很好！"]),
    ("真的吗？是的。好", ["真的吗？", "是的。", "好"]),
    ("他说：“走。”然后走了。", ["他说：“走。”", "然后走了。"]),
    ("全角．句号", ["全角．", "句号"]),
    ("Hello。 world", ["Hello。 ", "world"]),
    ("中文! 然后", ["中文! ", "然后"]),
    # URLs and emails
    ("Visit www.x.org/a.b or example.com for more. Mail john.doe@example.com today.",
     ["Visit www.x.org/a.b or example.com for more. ", "Mail john.doe@example.com today."]),
    ("Is it https://example.com/a?b=1. Yes.", ["Is it https://example.com/a?b=1. ", "Yes."]),
]


@pytest.mark.parametrize("text,expected", CASES, ids=[repr(t)[:40] for t, _ in CASES])
def test_split(text, expected):
    assert split_sentences(text) == expected


def random_texts(count=400, max_len=40, seed=0):
    rng = random.Random(seed)
    alphabet = "abcXYZ   .!?\n3eg$`。\\-#"
    return [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_len))) for _ in range(count)
    ]


def test_join_invariant():
    for text in [t for t, _ in CASES] + random_texts():
        parts = split_sentences(text)
        assert "".join(parts) == text
        assert all(parts)
        assert all(not p[0].isspace() for p in parts[1:])  # trailing whitespace stays with its sentence


def test_split_is_repeated_first_sentence_end():
    for text in [t for t, _ in CASES] + random_texts(100):
        rest, parts = text, []
        while rest:
            end = first_sentence_end(rest, final=True)
            parts.append(rest[:end])
            rest = rest[end:]
        assert parts == split_sentences(text)


def assert_stream_consistent(text):
    """Every prefix reports either nothing yet or exactly the final first boundary."""
    final = first_sentence_end(text, final=True)
    for k in range(len(text) + 1):
        got = first_sentence_end(text[:k])
        assert got is None or got == final, (text[:k], got, final)
    if text:
        assert final == len(split_sentences(text)[0])


STREAM_TEXTS = [t for t, parts in CASES if len(parts) >= 2] + [
    "The value is 3.14159 and more. Then done.",
    "The value is 3. Next we go.",
    "Use e.g. This one. Fine.",
    "Dr. Smith arrived. Then left.",
    "J. R. R. Tolkien wrote. Then.",
    "1. First item\n2. Second item\n3. Third",
    "Well... I think so. Yes.",
    "Costs $5.99 now. Then $3.",
    "Say $x. y$ then. Next.",
]


@pytest.mark.parametrize("text", STREAM_TEXTS, ids=[repr(t)[:40] for t in STREAM_TEXTS])
def test_streaming_never_moves_a_boundary(text):
    assert_stream_consistent(text)
    # and it is reported before the text ends; an open inline "`" or "$" waits for the end of its line
    first = len(split_sentences(text)[0])
    assert first_sentence_end(text + "\n\nEnd.") == first


def test_streaming_random_texts():
    for text in random_texts():
        assert_stream_consistent(text)


@pytest.mark.parametrize("prefix,expected", [
    ("", None),
    ("Hello", None),
    ("Hello.", None),
    ("Hello. ", None),
    ("Hello. W", 7),
    ("Hello.\n", None),
    ("Hello.\nw", 7),
    ("The value is 3.", None),   # may become 3.14
    ("The value is 3.1", None),
    ("The value is 3. ", None),
    ("The value is 3. N", 16),
    ("Use e.g.", None),
    ("Use e.g. T", None),        # e.g. never ends a sentence
    ("See Fig. 3", None),
    ("1.", None),
    ("1. First item\n", None),
    ("1. First item\n2", None),   # may become "2. "
    ("1. First item\n2.", None),
    ("1. First item\n2. ", 14),
    ("Intro\n-", None),
    ("Intro\n- ", 6),
    ("Intro\n``", None),
    ("Intro\n```", 6),
    ("你好。", None),             # more closers or "！" may follow
    ("你好。”", None),
    ("你好。今", 3),
    ("Say $x.", None),           # may become "$x.y$"
    ("Say $x. ", None),
    ("Say $x. Y", 8),            # ". " inside: not math
    ("See ```\ncode. More", None),
    ("See `a. B", None),         # inline code may still close on this line
    ("See `a. B\nC", 8),
    ("Wait\\", None),
])
def test_not_yet_confirmed(prefix, expected):
    assert first_sentence_end(prefix) == expected


def test_final_ends_last_sentence():
    assert first_sentence_end("The value is 3.", final=True) == 15
    assert first_sentence_end("no terminator", final=True) == 13
    assert first_sentence_end("   ", final=True) == 3
    assert first_sentence_end("", final=True) is None


def test_sentences_end_counts_complete_sentences_of_a_stream():
    from w2s.aligner.segment import sentences_end

    text = "One is here. Two is e.g. there! Three"
    assert sentences_end(text, 1) == len("One is here. ")
    assert sentences_end(text, 2) == len("One is here. Two is e.g. there! ")
    assert sentences_end(text, 3) is None  # the third may still go on
