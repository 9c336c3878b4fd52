"""The prompt language: a table of prompts and how they are read (A1111 1.10 semantics)."""

from __future__ import annotations

import pytest

from webui.core.prompts import (
    ExtraNetworkTag,
    LoraRequest,
    extract_extra_networks,
    lora_requests,
    parse_attention,
    prompt_schedule,
    split_and,
    text_at_step,
)

S = 1 / 1.1

# prompt -> [(text, weight)]; the first rows are the A1111 wiki's own examples
ATTENTION = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.3 * 1.1 * 1.1), (" ", 1.1), ("on", S * 1.1), (" a ", 1.1),
      ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.1 ** 4), (".", 1.1)]),  # A1111 doctest
    ("a (cat:1.5) on [a mat]", [("a ", 1.0), ("cat", 1.5), (" on ", 1.0), ("a mat", S)]),
    ("((a:0.5))", [("a", 0.55)]),
    ("[[b]]", [("b", S * S)]),
    ("(x:-1)", [("x", -1.0)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
    ("(a BREAK b)", [("a", 1.1), ("BREAK", -1.0), ("b", 1.1)]),
    ("aBREAKb", [("aBREAKb", 1.0)]),  # BREAK only as a word
    # malformed: read literally, as A1111 does
    ("[unbalanced", [("unbalanced", S)]),
    ("(a)b]c", [("a", 1.1), ("b]c", 1.0)]),  # a stray closer is text
    ("a:1.2)", [("a:1.2)", 1.0)]),  # a weight with no opening bracket is text
    ("a (b:1.2.3) c", [("a ", 1.0), ("b:1.2.3", 1.1), (" c", 1.0)]),  # not a number
    ("(a:b)", [("a:b", 1.1)]),
    ("a\\b", [("ab", 1.0)]),  # a lone backslash is dropped
    ("\\\\", [("\\", 1.0)]),
    ("", [("", 1.0)]),
]  # fmt: skip


@pytest.mark.parametrize(("prompt", "expected"), ATTENTION)
def test_attention(prompt, expected):
    got = parse_attention(prompt)
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected])


# prompt, steps -> schedule; rows from A1111's prompt_parser doctests
SCHEDULES = [
    ("test", 10, [(10, "test")]),
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[fantasy:cyberpunk:16] landscape", 100,
     [(16, "fantasy landscape"), (100, "cyberpunk landscape")]),  # the wiki's example
    ("[fantasy::0.25]", 8, [(2, "fantasy"), (8, "")]),  # [from::when] removes
    ("[a:b:0.5]", 5, [(2, "a"), (5, "b")]),  # int(0.5 * 5) = 2
    ("[a:b:1.0]", 10, [(10, "a")]),  # 1.0 is all of the steps: never switches
    ("[a:b:0]", 10, [(10, "b")]),
    ("[a:b:99]", 10, [(10, "a")]),
    ("[a:b:1e999]", 10, [(10, "a")]),  # too big for a float: A1111 fails (OverflowError)
    ("[a:b:-1e999]", 10, [(10, "b")]),
    ("[a:b:" + "9" * 400 + "]", 10, [(10, "a")]),
    ("[a|b]", 4, [(1, "a"), (2, "b"), (3, "a"), (4, "b")]),
    ("[a|(b:1.1)]", 3, [(1, "a"), (2, "(b:1.1)"), (3, "a")]),
    ("[fe|]male", 3, [(1, "female"), (2, "male"), (3, "female")]),
    ("[fe|||]male", 6, [(1, "female"), (4, "male"), (5, "female"), (6, "male")]),
    # malformed: the whole prompt, literally, for every step
    ("a|b", 10, [(10, "a|b")]),
    ("x\\", 10, [(10, "x\\")]),
    ("[a:b:c]", 10, [(10, "[a:b:c]")]),
]  # fmt: skip


@pytest.mark.parametrize(("prompt", "steps", "expected"), SCHEDULES)
def test_schedule(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


def test_text_at_step_is_zero_based():
    schedule = prompt_schedule("[cat:dog:2]", 4)
    assert [text_at_step(schedule, s) for s in range(4)] == ["cat", "cat", "dog", "dog"]


def test_and_splits_with_weights():
    assert split_and("a cat AND a dog:0.5 AND x :2") == [
        ("a cat", 1.0),
        (" a dog", 0.5),
        (" x", 2.0),
    ]
    assert split_and("one subprompt") == [("one subprompt", 1.0)]
    assert split_and("a cat:1.5") == [("a cat", 1.5)]  # A1111 reads a trailing weight
    assert split_and("(a cat:1.5)") == [("(a cat:1.5)", 1.0)]
    assert split_and("ANDROID") == [("ANDROID", 1.0)]  # only the word AND


def test_extra_network_tags_are_taken_out():
    text, tags = extract_extra_networks(
        "a <lora:foo:0.5> cat <hypernet:x> <LORA:bar:te=0.2:unet=1>"
    )
    assert text == "a  cat  "
    assert tags == [
        ExtraNetworkTag("lora", ("foo", "0.5"), "<lora:foo:0.5>"),
        ExtraNetworkTag("hypernet", ("x",), "<hypernet:x>"),
        ExtraNetworkTag("lora", ("bar", "te=0.2", "unet=1"), "<LORA:bar:te=0.2:unet=1>"),
    ]


def test_lora_multipliers():
    _, tags = extract_extra_networks(
        "<lora:a> <lora:b:0.5> <lora:c:1:0> <lora:d:te=0.3> <lora:e:0.2:unet=2> <lyco:f:-1>"
        "<lora:g:x> <hypernet:h:1> <lora::1>"
    )
    requests, problems = lora_requests(tags)
    assert [(r.name, r.te, r.unet) for r in requests] == [
        ("a", 1.0, 1.0), ("b", 0.5, 0.5), ("c", 1.0, 0.0), ("d", 0.3, 0.3), ("e", 0.2, 2.0),
        ("f", -1.0, -1.0),
    ]  # fmt: skip
    assert [tag for tag, _ in problems] == ["<lora:g:x>", "<hypernet:h:1>", "<lora::1>"]
    assert "not a number" in problems[0][1] and "not supported" in problems[1][1]
    assert requests[1] == LoraRequest("b", 0.5, 0.5, "<lora:b:0.5>")
