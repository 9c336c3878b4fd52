"""The A1111 prompt language: parsing only, no tensors.

Order of reading, as A1111 does it:

1. `extract_extra_networks`: `<lora:name:weight>` (any `<kind:args>`) tags are taken out
   of the text; what is left goes to the text encoder.
2. `split_and`: `AND` splits a positive prompt into sub-prompts for composable diffusion;
   a sub-prompt ending in `:weight` carries that weight.
3. `prompt_schedule`: a lark grammar reads prompt editing `[from:to:when]`, `[to:when]`,
   `[from::when]` and alternation `[a|b]`, and gives the prompt text for every range of
   steps. `when` with a decimal point is a fraction of the steps (`0.25`), without one a
   step number (`10`), as in A1111 1.10. A prompt the grammar cannot read (a stray `|`,
   a trailing `\\`) is used literally for every step.
4. `parse_attention`: emphasis `(x)` x1.1, `[x]` /1.1, `(x:1.3)`, escapes `\\(`, nesting
   multiplies, `BREAK`. Malformed input is read as A1111 reads it: an unclosed bracket
   still weights the rest of the prompt, a stray closing bracket is plain text, a weight
   that is not a number (`(x:1.2.3)`) is plain text.

This module must never import torch or a UI library: the UI uses it too.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from functools import lru_cache

import lark

log = logging.getLogger(__name__)

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_WEIGHT = -1.0  # marks a BREAK item in parse_attention's output

_GRAMMAR = r"""
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
_PARSER = lark.Lark(_GRAMMAR)

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
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_AND = re.compile(r"\bAND\b")
_SUBPROMPT_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")
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

    return _EXTRA_NETWORK.sub(take, prompt), tags


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
    """Sub-prompts joined by `AND`, each with its weight (`text :0.5` -> 0.5, else 1.0)."""
    parts: list[tuple[str, float]] = []
    for sub in _AND.split(prompt):
        match = _SUBPROMPT_WEIGHT.search(sub)
        text, weight = (match.group(1), match.group(2)) if match else (sub, None)
        parts.append((text, float(weight) if weight is not None else 1.0))
    return parts


# --- prompt editing and alternation ---------------------------------------------------------


@lru_cache(maxsize=256)
def _parse_schedule(prompt: str) -> lark.Tree | None:
    try:
        return _PARSER.parse(prompt)
    except lark.exceptions.LarkError:
        return None


def _when(token: str, steps: int) -> int:
    """The step a `[a:b:when]` switches after: `0.5` is a fraction, `10` a step number."""
    value = float(token)
    if "." in token or "e" in token.lower():
        value *= steps
    return min(steps, int(value))


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(last step, text), ...]: `text` is the prompt for steps up to and including
    `last step` (1-based), after the previous entry's. The last entry ends at `steps`."""
    steps = max(1, int(steps))
    tree = _parse_schedule(prompt)
    if tree is None:
        return [(steps, prompt)]
    ends = {steps}
    for node in tree.iter_subtrees():
        if node.data == "scheduled":
            when = _when(node.children[-2], steps)
            if when >= 1:
                ends.add(when)
        elif node.data == "alternate":
            ends.update(range(1, steps + 1))
    schedule: list[tuple[int, str]] = []
    for end in sorted(ends):
        text = _text_at(tree, end, steps)
        if schedule and schedule[-1][1] == text:
            schedule[-1] = (end, text)  # same text as the range before: one longer range
        else:
            schedule.append((end, text))
    return schedule


def _text_at(node, step: int, steps: int) -> str:
    if node is None:
        return ""
    if isinstance(node, lark.Token):
        return str(node)
    if node.data == "scheduled":
        before, after, _, when, _ = node.children
        return _text_at(before if step <= _when(when, steps) else after, step, steps)
    if node.data == "alternate":
        options = node.children
        return _text_at(options[(step - 1) % len(options)], step, steps)
    return "".join(_text_at(child, step, steps) for child in node.children)


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
        for i, part in enumerate(_BREAK.split(piece)):
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
