"""The 75-token chunks of one prompt line (A1111's `tokenize_line`), over token ids.

A line read by `prompts.parse_attention` into (text, weight) pieces, each piece tokenized
without special tokens, is laid out in chunks of 75 tokens: a `BREAK` starts a new chunk;
when a chunk is full and a comma lies within its last 20 tokens, the words after the comma
move to the next chunk; a textual-inversion embedding takes as many tokens as it has
vectors and never straddles two chunks. Every chunk is padded to 75 tokens.

`conditioning.PromptEncoder` lays out what the model's own tokenizer made, with the
embeddings it found; `prompt_limits` counts the chunks of a prompt before a job is queued.
Both use this one layout, so they count alike.

This module must never import torch or a UI library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .prompts import BREAK_WEIGHT

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20

# (token ids of a piece, position) -> (embedding, tokens of its name) or (None, 1)
EmbeddingAt = Callable[[list[int], int], tuple[object | None, int]]


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, object]] = field(default_factory=list)  # (offset, embedding)


def _no_embedding(tokens: list[int], position: int) -> tuple[object | None, int]:
    return None, 1


def layout_chunks(
    parsed: list[tuple[str, float]],
    tokenized: list[list[int]],
    *,
    comma: int,
    pad: int,
    embedding_at: EmbeddingAt = _no_embedding,
) -> list[Chunk]:
    """The chunks of a line: `parsed` from parse_attention, `tokenized` its pieces' ids.

    `comma` is the id of ",</w>", `pad` the id that fills a chunk (the tokenizer's EOS);
    an embedding found by `embedding_at` needs a `vector_count`."""
    chunks: list[Chunk] = []
    chunk = Chunk()
    last_comma = -1

    def next_chunk() -> None:
        nonlocal chunk, last_comma
        missing = CHUNK_LENGTH - len(chunk.tokens)
        chunk.tokens += [pad] * missing
        chunk.multipliers += [1.0] * missing
        chunks.append(chunk)
        chunk, last_comma = Chunk(), -1

    for tokens, (text, weight) in zip(tokenized, parsed, strict=True):
        if weight == BREAK_WEIGHT and text == "BREAK":
            next_chunk()
            continue
        position = 0
        while position < len(tokens):
            token = tokens[position]
            if token == comma:
                last_comma = len(chunk.tokens)
            elif (
                len(chunk.tokens) == CHUNK_LENGTH
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK
            ):  # move the words after the last comma into the next chunk
                cut = last_comma + 1
                moved = chunk.tokens[cut:], chunk.multipliers[cut:]
                del chunk.tokens[cut:], chunk.multipliers[cut:]
                next_chunk()
                chunk.tokens, chunk.multipliers = list(moved[0]), list(moved[1])
            if len(chunk.tokens) == CHUNK_LENGTH:
                next_chunk()
            emb, used = embedding_at(tokens, position)
            if emb is None:
                chunk.tokens.append(token)
                chunk.multipliers.append(weight)
                position += 1
                continue
            count = min(CHUNK_LENGTH, emb.vector_count)
            if len(chunk.tokens) + count > CHUNK_LENGTH:
                next_chunk()
            chunk.fixes.append((len(chunk.tokens), emb))
            chunk.tokens += [0] * count
            chunk.multipliers += [weight] * count
            position += used
    if chunk.tokens or not chunks:
        next_chunk()
    return chunks
