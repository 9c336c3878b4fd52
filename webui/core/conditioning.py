"""Text conditioning: prompts to the embeddings the UNet is conditioned on, the A1111 way.

A prompt line is read by `prompts.parse_attention` into (text, weight) pieces, tokenized
without special tokens and laid out by `chunks.layout_chunks` in chunks of 75 tokens (a
`BREAK` starts a new chunk; when a chunk is full and a comma lies within the last 20
tokens, the words after it move to the next chunk). Each chunk is encoded on its own as BOS + 75 tokens + EOS (padding
after the first EOS with the tokenizer's pad token, "!" for OpenCLIP), and the chunks are
concatenated: a 100-token prompt gives a 154 x D conditioning. Textual-inversion vectors
replace the placeholder tokens of an embedding's name inside the text encoder's token
embedding layer, for that encode only. Weights multiply the encoder output per token,
then the tensor is scaled back to its original mean (A1111 "Original" emphasis).

Which text encoders a model has and how each is read is the model family's declaration
(`TextEncoding`, `webui.core.families`): clip skip for SD 1.x/2.x takes the output of the
N-th layer from the end through the final layer norm; SDXL takes layer -(N+1) of both
encoders (the penultimate for N=1), without the norm, and the pooled embedding of the
second encoder's first chunk; an SDXL empty negative prompt is all zeros, as diffusers
and A1111 do it. This module is the machinery those CLIP families share.

`prepare_conditioning` builds, for one job, the schedule of every AND sub-prompt and of
the negative prompt; `composable.hooked` switches it during sampling. `encode_prompts` is
the simple, static form (first step only) kept for callers that need no schedule.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import torch

from .chunks import CHUNK_LENGTH, Chunk, layout_chunks
from .prompt_limits import check_prompts
from .prompts import (
    extract_extra_networks,
    parse_attention,
    prompt_schedule,
    split_and,
)

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    embeds: torch.Tensor  # [1, 77 * chunks, D]
    pooled: torch.Tensor | None = None  # [1, P] (SDXL)


@dataclass
class TextEncoderSlot:
    """One tokenizer + text encoder pair and how its output is read (a family declares
    its slots: `TextEncoding.text_encoders`)."""

    tokenizer: object
    encoder: torch.nn.Module
    key: str  # embedding vectors key: "" (SD1/SD2), "clip_l" or "clip_g" (SDXL)
    layer: int  # hidden state index, from the end (1 = last)
    final_norm: bool
    pooled: bool


class TextEncoding(Protocol):
    """What a model family declares about its text encoders (`webui.core.families`)."""

    zero_empty_negative: bool  # an empty negative prompt is all zeros (SDXL)

    def text_encoders(self, pipe: Any, clip_skip: int) -> list[TextEncoderSlot]: ...


class PromptEncoder:
    """Encodes prompt texts for one pipeline, with caching; remembers used embeddings."""

    def __init__(self, pipe, family: TextEncoding, clip_skip: int, embeddings=None):
        self.family = family
        self.embeddings = embeddings
        self.used_embeddings: dict[str, object] = {}
        self._cache: dict[str, Encoded] = {}
        self._chunks: dict[str, list[Chunk]] = {}
        self._zeros: Encoded | None = None  # an SDXL empty negative
        self.slots = family.text_encoders(pipe, clip_skip)
        if embeddings is not None:
            embeddings.model_widths = {slot.key: _width(slot) for slot in self.slots}
        tokenizer = self.slots[0].tokenizer
        self._comma = tokenizer.convert_tokens_to_ids(",</w>")

    # --- tokens -------------------------------------------------------------------------
    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.slots[0].tokenizer(texts, truncation=False, add_special_tokens=False)[
            "input_ids"
        ]

    def _candidates(self, line: str) -> dict[int, list[tuple[list[int], object]]]:
        """Embeddings whose name may occur in `line`, by the first token id of the name."""
        if self.embeddings is None:
            return {}
        found: dict[int, list[tuple[list[int], object]]] = {}
        for emb in self.embeddings.candidates(line):
            if not all(emb.vectors_for(slot.key, _width(slot)) is not None for slot in self.slots):
                continue  # made for another model family
            ids = self._tokenize([emb.name])[0]
            if ids:
                found.setdefault(ids[0], []).append((ids, emb))
        for entries in found.values():
            entries.sort(key=lambda e: -len(e[0]))
        return found

    def chunks(self, line: str) -> list[Chunk]:
        """The 75-token chunks of one prompt line (A1111's tokenize_line), cached."""
        if line not in self._chunks:
            parsed = parse_attention(line)
            tokenized = self._tokenize([text for text, _ in parsed])
            candidates = self._candidates(line)
            chunks = layout_chunks(
                parsed,
                tokenized,
                comma=self._comma,
                pad=self.slots[0].tokenizer.eos_token_id,
                embedding_at=partial(_embedding_at, candidates),
            )
            for chunk in chunks:
                for _, emb in chunk.fixes:
                    self.used_embeddings[emb.name] = emb
            self._chunks[line] = chunks
        return self._chunks[line]

    # --- encoding ----------------------------------------------------------------------
    def encode(self, text: str) -> Encoded:
        if text not in self._cache:
            self._cache[text] = self._encode(text)
        return self._cache[text]

    @torch.inference_mode()
    def _encode(self, text: str) -> Encoded:
        return self.encode_uncached(text)

    def encode_uncached(self, text: str) -> Encoded:
        """`encode` without the cache or inference mode: autograd reaches the embedding
        vectors (textual-inversion training, `ti_train`)."""
        parts, pooled = [], None
        chunks = self.chunks(text)
        for slot in self.slots:
            encoded = [self._encode_chunk(slot, chunk) for chunk in chunks]
            parts.append(torch.cat([z for z, _ in encoded], dim=1))
            if slot.pooled:
                pooled = encoded[0][1]
        return Encoded(torch.cat(parts, dim=-1), pooled)

    def _encode_chunk(self, slot: TextEncoderSlot, chunk: Chunk):
        tokenizer, encoder = slot.tokenizer, slot.encoder
        ids = [tokenizer.bos_token_id, *chunk.tokens, tokenizer.eos_token_id]
        pad = tokenizer.pad_token_id
        if pad is not None and pad != tokenizer.eos_token_id:
            first_eos = ids.index(tokenizer.eos_token_id)
            ids[first_eos + 1 :] = [pad] * (len(ids) - first_eos - 1)
        input_ids = torch.tensor([ids], device=encoder.device)
        fixes = [
            (1 + offset, emb.vectors_for(slot.key, _width(slot))) for offset, emb in chunk.fixes
        ]
        with _token_embedding_fixes(encoder, fixes):
            output = encoder(input_ids, output_hidden_states=slot.layer > 1 or not slot.final_norm)
        if slot.layer == 1 and slot.final_norm:
            z = output.last_hidden_state
        else:
            z = output.hidden_states[-slot.layer]
            if slot.final_norm:
                z = getattr(encoder, "text_model", encoder).final_layer_norm(z)
        pooled = output.text_embeds if slot.pooled else None
        multipliers = [1.0, *chunk.multipliers, 1.0]
        if any(m != 1.0 for m in multipliers):
            z = _emphasis(z, torch.tensor(multipliers, dtype=z.dtype, device=z.device))
        return z, pooled

    def zeros_like_empty(self) -> Encoded:
        if self._zeros is None:
            empty = self.encode("")
            pooled = torch.zeros_like(empty.pooled) if empty.pooled is not None else None
            self._zeros = Encoded(torch.zeros_like(empty.embeds), pooled)
        return self._zeros


def _emphasis(z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """Scale each token's vector by its weight, then restore the original mean (A1111)."""
    original_mean = z.mean()
    z = z * multipliers.reshape(1, -1, 1)
    new_mean = z.mean()
    if new_mean != 0:
        z = z * (original_mean / new_mean)
    return z


def _width(slot: TextEncoderSlot) -> int:
    return slot.encoder.get_input_embeddings().embedding_dim


def _embedding_at(candidates, tokens: list[int], position: int):
    for ids, emb in candidates.get(tokens[position], ()):
        if tokens[position : position + len(ids)] == ids:
            return emb, len(ids)
    return None, 1


@contextmanager
def _token_embedding_fixes(encoder, fixes):
    """Put textual-inversion vectors at their token positions, for one forward pass."""
    if not fixes:
        yield
        return

    def hook(module, args, output):
        output = output.clone()
        for start, vectors in fixes:
            count = min(len(vectors), output.shape[1] - start)
            output[0, start : start + count] = vectors[:count].to(output.device, output.dtype)
        return output

    handle = encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def check_clip_skip(encoder, clip_skip: int) -> None:
    """Refuse a clip skip deeper than the text encoder (ValueError)."""
    layers = encoder.config.num_hidden_layers
    if clip_skip > layers:
        raise ValueError(f"Clip skip {clip_skip} is more than the text encoder's {layers} layers")


# --- schedules for a job ----------------------------------------------------------------------


@dataclass
class Scheduled:
    """Encoded prompt per range of steps: `items[i]` is used up to step `ends[i]` (1-based)."""

    ends: list[int]
    items: list[Encoded]

    def at(self, step: int) -> Encoded:
        for end, item in zip(self.ends, self.items, strict=True):
            if step + 1 <= end:
                return item
        return self.items[-1]


@dataclass
class Conditioning:
    """Everything a job conditions on: the negative schedule and every AND sub-prompt."""

    uncond: Scheduled
    conds: list[Scheduled]
    weights: list[float]
    used_embeddings: dict[str, object]
    # what the family's text encoders did not apply (a clip skip, an embedding): job warnings
    warnings: list[str] = field(default_factory=list)

    @property
    def static(self) -> bool:
        """One sub-prompt of weight 1 and no switch: the pipeline needs no hook."""
        return (
            len(self.conds) == 1
            and self.weights[0] == 1.0
            and len(self.conds[0].items) == 1
            and len(self.uncond.items) == 1
        )

    def pipeline_kwargs(self) -> dict:
        """The first step's embeddings, as diffusers pipeline keyword arguments."""
        cond, uncond = self.conds[0].at(0), self.uncond.at(0)
        kwargs = {"prompt_embeds": cond.embeds, "negative_prompt_embeds": uncond.embeds}
        if cond.pooled is not None:  # a family with a pooled text embedding (SDXL)
            kwargs["pooled_prompt_embeds"] = cond.pooled
            kwargs["negative_pooled_prompt_embeds"] = uncond.pooled
        return kwargs


def prepare_conditioning(
    pipe,
    family: TextEncoding,
    prompt: str,
    negative: str,
    clip_skip: int,
    *,
    steps: int,
    embeddings=None,
    fields: tuple[str, str] = ("prompt", "negative_prompt"),
) -> Conditioning:
    """Encode a job's prompt (AND sub-prompts, schedules) and negative prompt.

    The prompt limits are checked first with the model's own tokenizer and embeddings
    (PromptLimitError naming `fields`): scripts and styles make prompts inside the worker.
    `<lora:...>` tags are removed. All encodings are padded with empty-prompt chunks to
    one length, so that any step's tensors can be batched together.
    """
    encoder = PromptEncoder(pipe, family, clip_skip, embeddings)
    check_prompts(
        prompt,
        negative,
        steps=steps,
        count_chunks=lambda text: len(encoder.chunks(text)),
        fields=fields,
    )
    prompt, _ = extract_extra_networks(prompt)
    negative, _ = extract_extra_networks(negative)
    subprompts = split_and(prompt)
    conds = [_scheduled(encoder, text, steps, negative=False) for text, _ in subprompts]
    uncond = _scheduled(encoder, negative, steps, negative=True)
    _pad_all([uncond, *conds], encoder)
    return Conditioning(uncond, conds, [w for _, w in subprompts], encoder.used_embeddings)


def _scheduled(encoder: PromptEncoder, text: str, steps: int, *, negative: bool) -> Scheduled:
    zero_empty = negative and encoder.family.zero_empty_negative
    ends, items = [], []
    for end, part in prompt_schedule(text, steps):
        ends.append(end)
        items.append(
            encoder.zeros_like_empty() if zero_empty and part == "" else encoder.encode(part)
        )
    return Scheduled(ends, items)


def _pad_all(schedules: list[Scheduled], encoder: PromptEncoder) -> None:
    """Pad every encoding to the longest; a text used at many steps is padded once."""
    longest = max(item.embeds.shape[1] for s in schedules for item in s.items)
    padded: dict[int, Encoded] = {}  # id of an encoding -> its padded copy
    for schedule in schedules:
        for i, item in enumerate(schedule.items):
            missing = (longest - item.embeds.shape[1]) // (CHUNK_LENGTH + 2)
            if not missing:
                continue
            if id(item) not in padded:
                filler = encoder.encode("").embeds
                if not item.embeds.any():  # an SDXL zero negative stays zero
                    filler = torch.zeros_like(filler)
                embeds = torch.cat([item.embeds, filler.repeat(1, missing, 1)], dim=1)
                padded[id(item)] = Encoded(embeds, item.pooled)
            schedule.items[i] = padded[id(item)]


def encode_prompts(pipe, family: TextEncoding, prompt: str, negative: str, clip_skip: int) -> dict:
    """Pipeline keyword arguments for the prompt and negative prompt, without schedules
    or AND (the first step's text, the first sub-prompt): the static form."""
    return prepare_conditioning(
        pipe, family, prompt, negative, clip_skip, steps=1
    ).pipeline_kwargs()
