"""prompts.py against A1111's own readers, kept here as the reference: the lark Earley
grammar of prompt editing and alternation, and the regexes of AND weights and BREAK.

prompts.py reads the same language in linear time, because A1111's readers do not: Earley
takes seconds on a 1,000-character prompt with a few edits and minutes on 2,000 characters
of nested brackets, and the two regexes backtrack quadratically over long runs of spaces.
The one known difference: Earley sometimes reads an edit that is directly followed by stray
closers or colons (`[a:1]:]`) as literal text; prompts.py always reads it as the edit.
"""

from __future__ import annotations

import random
import re
import time

import lark
import pytest

from webui.core.prompts import _break_parts, parse_attention, prompt_schedule, split_and

# A1111 1.10 modules/prompt_parser.py, verbatim
A1111_GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""
A1111_PARSER = lark.Lark(A1111_GRAMMAR)
A1111_AND_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
A1111_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
# where Earley may pick the all-literal reading: a `]` followed by a stray bracket or colon
EARLEY_AMBIGUITY = re.compile(r"\][\[\]():]")


def _when(token: str, steps: int) -> int:
    value = float(token)
    if "." in token or "e" in token.lower():
        value *= steps
    return min(steps, int(value))


def _text(node, step: int, steps: int) -> str:  # recursion is fine on these short prompts
    if node is None:
        return ""
    if isinstance(node, lark.Token):
        return str(node)
    if node.data == "scheduled":
        before, after, _, when, _ = node.children
        return _text(before if step <= _when(when, steps) else after, step, steps)
    if node.data == "alternate":
        return _text(node.children[(step - 1) % len(node.children)], step, steps)
    return "".join(_text(child, step, steps) for child in node.children)


def a1111_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    try:
        tree = A1111_PARSER.parse(prompt)
    except lark.exceptions.LarkError:
        return [(steps, prompt)]
    ends = {steps}
    for node in tree.iter_subtrees():
        if node.data == "scheduled" and _when(node.children[-2], steps) >= 1:
            ends.add(_when(node.children[-2], steps))
        elif node.data == "alternate":
            ends.update(range(1, steps + 1))
    schedule: list[tuple[int, str]] = []
    for end in sorted(ends):
        text = _text(tree, end, steps)
        if schedule and schedule[-1][1] == text:
            schedule[-1] = (end, text)
        else:
            schedule.append((end, text))
    return schedule


def a1111_split_and(prompt: str) -> list[tuple[str, float]]:
    parts = []
    for sub in re.split(r"\bAND\b", prompt):
        match = A1111_AND_WEIGHT.search(sub)
        parts.append((match.group(1), float(match.group(2)) if match.group(2) else 1.0))
    return parts


REALISTIC = [
    "masterpiece, best quality, (a red fox:1.2), [blurry], ((snow)), [[low quality]]",
    "a [cat:dog:0.5] on a (mat:1.1), [fantasy:cyberpunk:16] city, [red|green|blue] car",
    "(([cat:dog:0.5])), [a:[b:c:5]:10] x [[a|b]:c:3] ([a|b]:1.2) (a [b:c:1]:1.2)",
    "a [cat:dog:0.5]), x, [unbalanced (thing, stray) closer] [x::0.25] [:y:0.75]",
    "portrait AND [smile:frown:8] :0.6 AND (background:0.8), \\(escaped\\) [a: 2 ]",
    "[photo|painting|sketch] of a [(knight:1.2)|wizard], [day:night:.5] BREAK sky",
    "a | b, [a|b", "((a][:b:c [d:3]", "[a:b:c] [a:b:1:2] (a:b:c) [(a:b:c):1] [d:2]",
]  # fmt: skip


@pytest.mark.parametrize("prompt", REALISTIC)
def test_prompts_are_read_as_a1111_reads_them(prompt):
    for steps in (1, 4, 20):
        assert prompt_schedule(prompt, steps) == a1111_schedule(prompt, steps)


def test_random_prompts_are_read_as_a1111_reads_them():
    rng = random.Random(1234)
    pieces = ["a", "b", " ", ":", "|", "[", "]", "(", ")", "1", ".5", "2", "\\", "e3", "-", "\n"]
    weights = [6, 3, 3, 3, 1, 4, 4, 2, 2, 2, 1, 1, 0.3, 0.3, 0.3, 0.3]
    ambiguous = 0
    for _ in range(2000):
        prompt = "".join(rng.choices(pieces, weights, k=rng.randint(1, 16)))
        steps = rng.choice([1, 3, 4, 7])
        ours, theirs = prompt_schedule(prompt, steps), a1111_schedule(prompt, steps)
        if ours != theirs:
            assert EARLEY_AMBIGUITY.search(prompt), (prompt, steps, ours, theirs)
            assert theirs == [(steps, prompt)]  # Earley's literal reading
            ambiguous += 1
    assert ambiguous < 20  # 0.1% in practice


def test_an_edit_followed_by_stray_closers_is_an_edit():
    assert a1111_schedule("[a:1]:]", 4) == [(4, "[a:1]:]")]  # Earley's choice
    assert prompt_schedule("[a:1]:]", 4) == [(1, ":]"), (4, "a:]")]
    assert prompt_schedule("[a:1]:", 4) == a1111_schedule("[a:1]:", 4) == [(1, ":"), (4, "a:")]


def test_and_weights_and_break_are_read_as_a1111_reads_them():
    rng = random.Random(99)
    pieces = ["a", " ", "  ", "\n", "\t", ":", "1", ".", "5", "-", "AND", "BREAK", "x", "\u3000"]
    for _ in range(5000):
        prompt = "".join(rng.choices(pieces, k=rng.randint(0, 14)))
        assert split_and(prompt) == a1111_split_and(prompt), prompt
        assert _break_parts(prompt) == A1111_BREAK.split(prompt), prompt


def _seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


HOSTILE = {
    "nested emphasis": ("(" * 32 + "cat" + ")" * 32 + " ") * 140,
    "nested edits": ("[" * 31 + "[a:b:3]" + "]" * 31 + " ") * 140,
    "flat edits": "[cat:dog:5] " * 833,
    "alternations": "[a|b] " * 1666,
    "spaces": "a" + " " * 9998 + ":",
    "spaces before BREAK": " " * 9995 + "BREAK",
    "unclosed": "(" * 10_000,
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_reading_a_10000_character_prompt_takes_milliseconds(name):
    """A1111's readers: 54 s (Earley, nested edits), 98 s (nested emphasis), 5 s (BREAK
    over spaces). Generous bounds: the machine is shared."""
    prompt = HOSTILE[name]
    assert len(prompt) <= 10_000
    assert _seconds(prompt_schedule, prompt, 150) < 3
    assert _seconds(parse_attention, prompt) < 3
    assert _seconds(split_and, prompt) < 3


def test_deep_nesting_never_recurses():
    prompt = "[" * 100_000 + "[a:b:1]" + "]" * 100_000
    assert prompt_schedule(prompt, 2) == [(1, prompt[:100_000] + "a" + prompt[-100_000:]),
                                          (2, prompt[:100_000] + "b" + prompt[-100_000:])]  # fmt: skip
