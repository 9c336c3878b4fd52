"""Clip skip and textual-inversion embeddings on the transformer families' text encoders,
as Forge does them, and what the job is told about the rest.

- FLUX.1: CLIP-L takes embeddings (an SDXL-style file's `clip_l` vectors, or 768-wide
  `emb_params` / `string_to_param` vectors): `clip_l_ids` lays out CLIP-L's 77 tokens with
  placeholder tokens where an embedding's name is, and the vectors go in at the token
  embedding layer (`conditioning._token_embedding_fixes`), so the pooled vector FLUX reads
  sees them. T5 takes none: it reads the embedding's name as words. Clip skip picks a
  hidden layer of CLIP-L in Forge, but FLUX reads only CLIP-L's pooled vector, which comes
  from the last layer whatever the clip skip (Forge's `ClassicTextProcessingEngine`:
  `pooled_output = outputs.pooler_output`), so the picture does not change.
- Z-Image: Qwen3 takes neither.

What was not applied is a warning of the job (`Conditioning.warnings`) naming it, and the
infotext claims neither ("Clip skip" is not written; "TI hashes" names only the embeddings
CLIP-L used).

This module must never import a UI library.
"""

from __future__ import annotations

import re
from typing import Any

CLIP_L_KEY = "clip_l"


def clip_skip_warnings(clip_skip: int | None, reason: str) -> list[str]:
    """The warning for a clip skip above 1 that a family's encoders do not apply."""
    if clip_skip is None or clip_skip <= 1:
        return []
    return [f"Clip skip {clip_skip} not applied: {reason}"]


def named_embeddings(embeddings: Any, texts: list[str]) -> list[Any]:
    """The embeddings whose name is a word of one of `texts` (case-insensitively, as CLIP
    reads it), in the order of the registry."""
    if embeddings is None:
        return []
    found: dict[str, Any] = {}
    for text in texts:
        for emb in embeddings.candidates(text):
            if re.search(rf"(?<!\w){re.escape(emb.name)}(?!\w)", text, re.IGNORECASE):
                found.setdefault(emb.name, emb)
    return list(found.values())


def embedding_warnings(embeddings: list[Any], reason: str) -> list[str]:
    return [f"Embedding {emb.name} not applied: {reason}" for emb in embeddings]


def clip_l_ids(
    tokenizer: Any, text: str, embeddings: list[Any], width: int
) -> tuple[list[int], list[tuple[int, Any]], dict[str, Any]]:
    """CLIP-L's BOS + 75 + EOS token ids of `text` (padded to the tokenizer's length), each
    embedding's name replaced by one placeholder token per vector; the (position, vectors)
    fixes; the embeddings used by name. `embeddings`: those with CLIP-L vectors."""
    ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids
    candidates: dict[int, list[tuple[list[int], Any]]] = {}
    for emb in embeddings:
        name_ids = tokenizer(emb.name, add_special_tokens=False).input_ids
        if name_ids:
            candidates.setdefault(name_ids[0], []).append((name_ids, emb))
    for entries in candidates.values():
        entries.sort(key=lambda entry: -len(entry[0]))
    length = tokenizer.model_max_length
    tokens: list[int] = []
    fixes: list[tuple[int, Any]] = []
    used: dict[str, Any] = {}
    position = 0
    while position < len(ids):
        match = next((entry for entry in candidates.get(ids[position], ())
                      if ids[position : position + len(entry[0])] == entry[0]), None)  # fmt: skip
        if match is None:
            tokens.append(ids[position])
            position += 1
            continue
        name_ids, emb = match
        vectors = emb.vectors_for(CLIP_L_KEY, width)
        fixes.append((1 + len(tokens), vectors))  # after BOS
        tokens += [0] * len(vectors)  # A1111's placeholder token
        used[emb.name] = emb
        position += len(name_ids)
    tokens = tokens[: length - 2]
    fixes = [(start, vectors[: length - 1 - start]) for start, vectors in fixes
             if start < length - 1]  # fmt: skip  # never over EOS
    full = [tokenizer.bos_token_id, *tokens, tokenizer.eos_token_id]
    return full + [tokenizer.pad_token_id] * (length - len(full)), fixes, used
