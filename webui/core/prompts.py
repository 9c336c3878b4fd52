"""The A1111 prompt language: parsing only, no tensors.

Order of reading, as A1111 does it:

1. `extract_extra_networks`: `<lora:name:weight>` (any `<kind:args>`) tags are taken out
   of the text; what is left goes to the text encoder.
2. `split_and`: `AND` splits a positive prompt into sub-prompts for composable diffusion;
   a sub-prompt ending in `:weight` carries that weight.
3. `prompt_schedule`: prompt editing `[from:to:when]`, `[to:when]`, `[from::when]` and
   alternation `[a|b]` give the prompt text for every range of steps. `when` with a decimal
   point is a fraction of the steps (`0.25`), without one a step number (`10`), as in
   A1111 1.10. A prompt that cannot be read (a stray `|`, a trailing `\\`) is used
   literally for every step.
4. `parse_attention`: emphasis `(x)` x1.1, `[x]` /1.1, `(x:1.3)`, escapes `\\(`, nesting
   multiplies, `BREAK`. Malformed input is read as A1111 reads it: an unclosed bracket
   still weights the rest of the prompt, a stray closing bracket is plain text, a weight
   that is not a number (`(x:1.2.3)`) is plain text.

A1111 reads step 3 with a lark Earley grammar (kept in tests/test_prompts.py as the
reference). Earley is far from linear on these prompts: a 1,000-character prompt with a
few edits takes seconds, a 2,000-character one with nested brackets minutes. This module
reads the same language in one left-to-right pass with an explicit stack: a bracket group
whose content is well formed is emphasis, an edit or an alternation; any other bracket,
colon or closer is plain text, and a `|` that separates nothing makes the prompt literal.
It gives the grammar's result, except where Earley picks an all-literal reading among
ambiguous ones (an edit directly followed by stray closers or colons, `[a:1]:]`): here the
edit is always an edit.

Every function here runs in time linear in the prompt's length times its bracket depth,
and none recurses: `webui.core.prompt_limits` bounds length and depth (one linear scan)
before anything else reads a prompt.

This module must never import torch or a UI library: the UI uses it too.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

log = logging.getLogger(__name__)

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_WEIGHT = -1.0  # marks a BREAK item in parse_attention's output

# prompt editing: escapes, brackets and separators, runs of anything else
_SCHEDULE_TOKENS = re.compile(r"\\.|\\|[][():|]|[^][():|\\]+", re.S)
# the `when` of [a:b:when]: the grammar's [WHITESPACE] SIGNED_NUMBER [WHITESPACE]
_WHEN = re.compile(r"\s*([+-]?(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[0-9]+))\s*")  # fmt: skip
_ATTENTION_TOKENS = re.compile(
    r"""
    \\\(|\\\)|\\\[|\\]|\\\\|\\      # escapes, and a lone backslash
    |\(|\[                          # openers
    |:\s*([+-]?[.\d]+)\s*\)         # weight and closer: ":1.3)"
    |\)|]                           # closers
    |[^\\()\[\]:]+                  # text
    |:                              # a colon that is not a weight
    """,
    re.X,
)
_BREAK = re.compile(r"\bBREAK\b")
_AND = re.compile(r"\bAND\b")
_SUBPROMPT_WEIGHT = re.compile(r"\s*([-+]?(?:\d+\.?|\d*\.\d+))")  # after the last ":"
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


# --- extra networks -------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtraNetworkTag:
    """One `<kind:arg1:arg2...>` tag, e.g. kind "lora", args ("add_detail", "0.8")."""

    kind: str
    args: tuple[str, ...]
    text: str  # the tag as written

    @property
    def name(self) -> str:
        return self.args[0] if self.args else ""


@dataclass(frozen=True)
class LoraRequest:
    """A LoRA a prompt asks for, with its text-encoder and UNet multipliers."""

    name: str
    te: float = 1.0
    unet: float = 1.0
    tag: str = ""


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetworkTag]]:
    """The prompt without its `<kind:...>` tags, and the tags in order."""
    tags: list[ExtraNetworkTag] = []

    def take(match: re.Match) -> str:
        args = tuple(a.strip() for a in match.group(2).split(":"))
        tags.append(ExtraNetworkTag(match.group(1).lower(), args, match.group(0)))
        return ""

    end = prompt.rfind(">") + 1  # no tag ends later: the regex never scans an unclosed tail
    return _EXTRA_NETWORK.sub(take, prompt[:end]) + prompt[end:], tags


def lora_requests(
    tags: list[ExtraNetworkTag],
) -> tuple[list[LoraRequest], list[tuple[str, str]]]:
    """LoRA requests from `lora`/`lyco` tags, and (tag, message) for every unusable tag.

    A1111's forms: `<lora:name>` (1.0), `<lora:name:w>`, `<lora:name:te:unet>`,
    `<lora:name:te=w:unet=w>`. A tag whose multiplier is not a number is skipped.
    """
    requests: list[LoraRequest] = []
    problems: list[tuple[str, str]] = []
    for tag in tags:
        if tag.kind not in ("lora", "lyco"):
            problems.append((tag.text, f"{tag.text}: '{tag.kind}' networks are not supported"))
            continue
        if not tag.name:
            problems.append((tag.text, f"{tag.text}: no LoRA name"))
            continue
        positional = [a for a in tag.args[1:] if "=" not in a]
        named = dict(a.split("=", 1) for a in tag.args[1:] if "=" in a)
        try:
            te = _number(positional[0]) if positional else 1.0
            te = _number(named.get("te", te))
            unet = _number(positional[1]) if len(positional) > 1 else te
            unet = _number(named.get("unet", unet))
        except ValueError as exc:
            problems.append((tag.text, f"{tag.text}: {exc}"))
            continue
        requests.append(LoraRequest(tag.name, te, unet, tag.text))
    return requests, problems


def _number(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"multiplier {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"multiplier {value!r} is not a finite number")
    return number


# --- composable diffusion -------------------------------------------------------------------


def split_and(prompt: str) -> list[tuple[str, float]]:
    """Sub-prompts joined by `AND`, each with its weight (`text :0.5` -> 0.5, else 1.0).

    A1111's `^((?:\\s|.)*?)(?:\\s*:\\s*(number))?\\s*$`, read without its quadratic
    backtracking: the weight can only follow the last colon."""
    parts: list[tuple[str, float]] = []
    for sub in _AND.split(prompt):
        text, weight = sub.rstrip(), 1.0
        colon = text.rfind(":")
        if colon >= 0 and (match := _SUBPROMPT_WEIGHT.fullmatch(text, colon + 1)):
            text, weight = text[:colon].rstrip(), float(match.group(1))
        parts.append((text, weight))
    return parts


# --- prompt editing and alternation ---------------------------------------------------------


@dataclass
class _Part:
    """The stretch `prompt[start:end]`, with the edits inside it in order."""

    start: int
    end: int = 0
    edits: list[_Edit] = field(default_factory=list)


@dataclass
class _Edit:
    """`[from:to:when]` (options: from or None, to; `when` is set) or `[a|b|...]`."""

    start: int
    end: int
    options: list[_Part | None]
    when: str | None = None

    def chosen(self, step: int, steps: int) -> _Part | None:
        if self.when is None:
            return self.options[(step - 1) % len(self.options)]
        return self.options[0] if step <= _when(self.when, steps) else self.options[1]


class _Group:
    """An open bracket while reading: its parts between top-level `:` or `|`."""

    __slots__ = ("opener", "start", "parts", "separators", "broken")

    def __init__(self, opener: str, start: int):
        self.opener = opener
        self.start = start
        self.parts = [_Part(start + 1)]
        self.separators: list[str] = []
        self.broken = False  # holds a stray bracket or a malformed group: plain text

    def split(self, separator: str, at: int) -> None:
        self.parts[-1].end = at
        self.separators.append(separator)
        self.parts.append(_Part(at + 1))

    def edit(self, prompt: str, end: int) -> _Edit | bool:
        """The edit this closed group is, True for emphasis, False if it is malformed."""
        seps, parts = self.separators, self.parts
        if self.broken or (self.opener == "(" and seps not in ([], [":"])):
            return False
        if self.opener == "(" or not seps:
            return True
        if "|" not in seps:
            last = parts[-1]
            when = _WHEN.fullmatch(prompt, last.start, last.end)
            if len(seps) > 2 or when is None or last.edits:
                return False
            before = parts[0] if len(seps) == 2 else None
            return _Edit(self.start, end, [before, parts[-2]], when.group(1))
        return _Edit(self.start, end, list(parts)) if ":" not in seps else False


@lru_cache(maxsize=32)
def _read_edits(prompt: str) -> tuple[_Part, tuple[_Edit, ...]] | None:
    """The prompt with its edits, and every edit; None if the prompt is read literally."""
    stack = [_Group("", -1)]
    edits: list[_Edit] = []
    for match in _SCHEDULE_TOKENS.finditer(prompt):
        token, at = match.group(0), match.start()
        top = stack[-1]
        if token[0] == "\\":
            if len(token) == 1 or token[1] == "\n":  # the grammar escapes any other character
                return None
        elif token in ("(", "["):
            stack.append(_Group(token, at))
        elif token in (")", "]") and len(stack) > 1 and top.opener == "(["[token == "]"]:
            stack.pop()
            top.parts[-1].end = at
            found = top.edit(prompt, at + 1)
            if found is False and "|" in top.separators:
                return None
            if isinstance(found, _Edit):
                edits.append(found)
                stack[-1].parts[-1].edits.append(found)
            else:
                _dissolve(top, stack[-1])
                if found is False:
                    _break(stack)
        elif token in (")", "]"):
            _break(stack)  # a stray closer: no open group around it is well formed
        elif token in (":", "|") and len(stack) > 1:
            top.split(token, at)
        elif token == "|":
            return None
    while len(stack) > 1:  # unclosed brackets are plain text
        group = stack.pop()
        if "|" in group.separators:
            return None
        _dissolve(group, stack[-1])
    root = stack[0].parts[0]
    root.start, root.end = 0, len(prompt)
    return root, tuple(edits)


def _dissolve(group: _Group, parent: _Group) -> None:
    """A group that is text (emphasis, or malformed) hands its edits to its parent."""
    for part in group.parts:
        parent.parts[-1].edits.extend(part.edits)


def _break(stack: list[_Group]) -> None:
    for group in stack[1:]:
        group.broken = True


def _when(token: str, steps: int) -> int:
    """The step a `[a:b:when]` switches after: `0.5` is a fraction, `10` a step number.
    Beyond the steps (or before the first, or too big for a float: `1e999`) is the same."""
    value = float(token)
    if "." in token or "e" in token.lower():
        value *= steps
    return int(max(-1.0, min(float(steps), value)))


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(last step, text), ...]: `text` is the prompt for steps up to and including
    `last step` (1-based), after the previous entry's. The last entry ends at `steps`."""
    steps = max(1, int(steps))
    read = _read_edits(prompt)
    if read is None:
        return [(steps, prompt)]
    root, edits = read
    ends = {steps}
    for edit in edits:
        if edit.when is None:
            ends.update(range(1, steps + 1))  # an alternation changes at every step
        elif (when := _when(edit.when, steps)) >= 1:
            ends.add(when)
    schedule: list[tuple[int, str]] = []
    for end in sorted(ends):
        text = _text_at(prompt, root, end, steps)
        if schedule and schedule[-1][1] == text:
            schedule[-1] = (end, text)  # same text as the range before: one longer range
        else:
            schedule.append((end, text))
    return schedule


def _text_at(prompt: str, root: _Part, step: int, steps: int) -> str:
    """The text of `root` at a step: a walk with an explicit stack, never a recursion."""
    out: list[str] = []
    stack = [(root, 0, root.start)]  # (part, index of its next edit, where its text goes on)
    while stack:
        part, index, position = stack.pop()
        if index == len(part.edits):
            out.append(prompt[position : part.end])
            continue
        edit = part.edits[index]
        out.append(prompt[position : edit.start])
        stack.append((part, index + 1, edit.end))
        chosen = edit.chosen(step, steps)
        if chosen is not None:
            stack.append((chosen, 0, chosen.start))
    return "".join(out)


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The prompt text for a 0-based sampling step."""
    for end, text in schedule:
        if step + 1 <= end:
            return text
    return schedule[-1][1]


# --- emphasis -------------------------------------------------------------------------------


def parse_attention(text: str) -> list[tuple[str, float]]:
    """[(text, weight), ...] with neighbours of equal weight merged; BREAK is
    ("BREAK", -1.0). `a (b:1.5) [c]` -> [("a ", 1.0), ("b", 1.5), ("c", 1/1.1)]."""
    items: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in items[start:]:
            if item[1] != BREAK_WEIGHT:
                item[1] *= factor

    def add_text(piece: str) -> None:
        for i, part in enumerate(_break_parts(piece)):
            if i > 0:
                items.append(["BREAK", BREAK_WEIGHT])
            if part:
                items.append([part, 1.0])

    for match in _ATTENTION_TOKENS.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            items.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(items))
        elif token == "[":
            square_open.append(len(items))
        elif weight is not None and round_open:
            try:
                factor = float(weight)
            except ValueError:  # ":1.2.3)" is text, and its ")" closes the bracket
                add_text(token[:-1])
                multiply(round_open.pop(), ROUND_MULTIPLIER)
                continue
            multiply(round_open.pop(), factor)
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE_MULTIPLIER)
        else:
            add_text(token)
    for start in round_open:  # unclosed brackets weight the rest, as in A1111
        multiply(start, ROUND_MULTIPLIER)
    for start in square_open:
        multiply(start, SQUARE_MULTIPLIER)
    return _merged(items)


def _break_parts(piece: str) -> list[str]:
    """A1111's `re.split(r"\\s*\\bBREAK\\b\\s*", piece)`, in linear time: the whitespace
    around every BREAK goes with it."""
    parts = _BREAK.split(piece)
    last = len(parts) - 1
    if not last:
        return parts
    return [
        (part.lstrip() if i else part).rstrip() if i < last else part.lstrip()
        for i, part in enumerate(parts)
    ]


def _merged(items: list[list]) -> list[tuple[str, float]]:
    merged: list[list] = []
    for text, weight in items:
        if text == "" and weight != BREAK_WEIGHT:
            continue
        if merged and weight != BREAK_WEIGHT and merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return [(t, w) for t, w in merged] or [("", 1.0)]
