"""What one prompt may ask for: checked before a job is queued, and again in the worker.

Without bounds one request could stop a shared server: 1,000 nested `(` made the old
Earley parser work for minutes in gigabytes, 3,000 `AND` parts made a UNet batch of
3,001 rows. The limits below are far above what A1111 users write and far below where a
prompt costs more than the sampling itself:

- `MAX_PROMPT_CHARS` characters in one prompt field;
- `MAX_NESTING` brackets `(` `[` open at once (as `parse_attention` counts them: the two
  kinds apart, a closer with nothing open of its kind is text, `\\(` is text);
- `MAX_AND_PARTS` sub-prompts joined by `AND` in a positive prompt;
- `MAX_CHUNKS` chunks of 75 tokens in any text the prompt becomes;
- `MAX_CONDITIONING_CHUNKS`: the different texts a job's prompt and negative prompt
  become over the steps (prompt editing, alternation, each AND part), times the chunks of
  the longest: every such text is encoded and kept, padded to the longest, for the job.

`check_prompts` checks them in that order, so that each step only ever reads input that
the steps before it have bounded: length is a comparison, depth and AND parts one linear
scan, and only then are the texts over the steps built and their chunks counted. Before a
job is queued the chunks are counted with the CLIP BPE vocabulary every supported family
uses (`clip_chunk_count`); the worker counts them with the model's own tokenizer and
embeddings (`prepare_conditioning`).

Failures raise `PromptLimitError`, a `ParamError` naming the field and the limit.

This module must never import torch or a UI library, and never recurses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import NoReturn

from ..model_manager.clip_vocab import EOS_TOKEN, clip_backend
from .chunks import CHUNK_LENGTH, layout_chunks
from .errors import ParamError
from .prompts import extract_extra_networks, parse_attention, prompt_schedule, split_and

MAX_PROMPT_CHARS = 10_000
MAX_NESTING = 32
MAX_AND_PARTS = 16
MAX_CHUNKS = 20  # 1,500 tokens
MAX_CONDITIONING_CHUNKS = 500

_BRACKETS = re.compile(r"\\.|[()\[\]]", re.S)  # an escaped character is text
_AND = re.compile(r"\bAND\b")


class PromptLimitError(ParamError):
    """A prompt asks for more than a limit of this module allows."""


def nesting_depth(text: str) -> int:
    """The most brackets open at once, in one pass."""
    round_open = square_open = deepest = 0
    for match in _BRACKETS.finditer(text):
        bracket = match.group(0)
        if bracket == "(":
            round_open += 1
        elif bracket == "[":
            square_open += 1
        elif bracket == ")":
            round_open = max(0, round_open - 1)
        elif bracket == "]":
            square_open = max(0, square_open - 1)
        deepest = max(deepest, round_open + square_open)
    return deepest


def check_shape(field: str, text: str, *, positive: bool) -> None:
    """Length, bracket depth and (for a positive prompt) AND parts: linear, no parsing."""
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptLimitError(
            field, f"{len(text):,} characters; at most {MAX_PROMPT_CHARS:,} are allowed"
        )
    depth = nesting_depth(text)
    if depth > MAX_NESTING:
        raise PromptLimitError(
            field, f"brackets nested {depth:,} deep; at most {MAX_NESTING} are allowed"
        )
    if positive:
        parts = sum(1 for _ in _AND.finditer(extract_extra_networks(text)[0])) + 1
        if parts > MAX_AND_PARTS:
            raise PromptLimitError(
                field, f"{parts:,} sub-prompts joined by AND; at most {MAX_AND_PARTS} are allowed"
            )


@lru_cache(maxsize=1024)
def clip_chunk_count(text: str) -> int:
    """The 75-token chunks of one text, as the CLIP tokenizer of every family lays them
    out (without textual-inversion embeddings, which only the worker knows)."""
    tokenizer = clip_backend()
    parsed = parse_attention(text)
    encoded = tokenizer.encode_batch([piece for piece, _ in parsed], add_special_tokens=False)
    chunks = layout_chunks(
        parsed,
        [e.ids for e in encoded],
        comma=tokenizer.token_to_id(",</w>"),
        pad=tokenizer.token_to_id(EOS_TOKEN),
    )
    return len(chunks)


def scheduled_texts(text: str, steps: int, *, positive: bool) -> list[str]:
    """Every text one prompt field becomes over the steps, in order, each once."""
    text, _ = extract_extra_networks(text)
    parts = [part for part, _ in split_and(text)] if positive else [text]
    found: dict[str, None] = {}
    for part in parts:
        for _, scheduled in prompt_schedule(part, steps):
            found.setdefault(scheduled)
    return list(found)


def check_prompts(
    prompt: str,
    negative: str,
    *,
    steps: int,
    count_chunks: Callable[[str], int] = clip_chunk_count,
    fields: tuple[str, str] = ("prompt", "negative_prompt"),
) -> None:
    """Raise PromptLimitError if a job's prompt and negative prompt break a limit."""
    check_shape(fields[0], prompt, positive=True)
    check_shape(fields[1], negative, positive=False)
    texts: dict[str, str] = {}  # text -> the field it comes from (the first one)
    for field, text, positive in ((fields[0], prompt, True), (fields[1], negative, False)):
        for scheduled in scheduled_texts(text, steps, positive=positive):
            texts.setdefault(scheduled, field)
    longest = 1
    for text, field in texts.items():
        chunks = count_chunks(text)
        if chunks > MAX_CHUNKS:
            raise PromptLimitError(
                field,
                f"{chunks:,} chunks of {CHUNK_LENGTH} tokens; at most {MAX_CHUNKS} "
                f"({MAX_CHUNKS * CHUNK_LENGTH:,} tokens) are allowed",
            )
        longest = max(longest, chunks)
        if len(texts) * longest > MAX_CONDITIONING_CHUNKS:
            _too_much_work(texts, longest, steps)


def _too_much_work(texts: dict[str, str], longest: int, steps: int) -> NoReturn:
    fields = list(texts.values())
    field = max(dict.fromkeys(fields), key=fields.count)  # the field with the most texts
    raise PromptLimitError(
        field,
        f"{len(texts):,} different texts over {steps} steps (prompt editing, alternation, "
        f"AND) of up to {longest} chunks each make {len(texts) * longest:,} chunks to "
        f"encode; at most {MAX_CONDITIONING_CHUNKS:,} are allowed",
    )
