"""FLUX.1 prompts: A1111's syntax on CLIP-L's pooled vector and T5-XXL's token sequence.

- Emphasis `(word:1.2)`, `[word]`: on T5 (each piece is tokenized on its own, every
  token's vector is multiplied by its weight and the sequence scaled back to its mean, as
  A1111's "Original" emphasis); CLIP-L gives FLUX only a pooled vector, which no per-token
  weight can reach, so CLIP-L reads the text without weights.
- BREAK: CLIP-L's pooled vector is its first 75-token chunk (the text up to the first
  BREAK, as SDXL's pooled embedding); T5 reads the whole text, BREAK left out.
- Prompt editing `[a:b:0.5]` and alternation `[a|b]`: each step's text is encoded once and
  `follow_schedule` swaps it into the transformer's inputs at its step (a forward pre-hook
  on `pipe.transformer`; the pipeline calls it for the prompt, then for the negative
  prompt when CFG > 1).
- AND with weights (`a cat :1.2 AND a dog :0.8`): each sub-prompt is encoded (and
  scheduled) on its own; `flow_and` combines their predictions during sampling.
- Textual-inversion embeddings go into CLIP-L's pooled vector; clip skip changes nothing
  (FLUX reads no CLIP hidden layer), and the job is told so (`transformer_text`).

This module must never import a UI library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .conditioning import Conditioning, Encoded, Scheduled, _emphasis, _token_embedding_fixes
from .flow_and import and_parts
from .prompt_limits import check_prompts
from .prompts import extract_extra_networks, parse_attention, prompt_schedule
from .samplers import steps_done
from .transformer_text import (
    CLIP_L_KEY,
    clip_l_ids,
    clip_skip_warnings,
    embedding_warnings,
    named_embeddings,
)

T5_LENGTH = 512  # FLUX.1 dev's max_sequence_length (diffusers' default)
BREAK = "BREAK"
FLUX_CLIP_SKIP = ("FLUX reads only CLIP-L's pooled vector, which clip skip does not change "
                  "(as in Forge), and T5 takes none")  # fmt: skip


class FluxPromptEncoder:
    """Encodes prompt texts with a FluxPipeline's two text encoders, cached per text."""

    def __init__(self, pipe: Any, max_length: int = T5_LENGTH, embeddings: list[Any] = ()):
        self.pipe, self.max_length = pipe, max_length
        self.embeddings = list(embeddings)  # those with CLIP-L vectors (`transformer_text`)
        self.used_embeddings: dict[str, Any] = {}
        self._cache: dict[str, Encoded] = {}

    def encode(self, text: str) -> Encoded:
        if text not in self._cache:
            pieces = parse_attention(text)
            dtype = self.pipe.transformer.dtype  # the denoiser's (bf16 on a CPU that has it),
            # whatever the text encoders run in: the pipelines make their latents in it
            self._cache[text] = Encoded(
                self._t5(pieces).to(dtype), self._clip_pooled(pieces).to(dtype)
            )
        return self._cache[text]

    @torch.inference_mode()
    def _clip_pooled(self, pieces: list[tuple[str, float]]) -> torch.Tensor:
        words = []
        for piece, weight in pieces:
            if weight == -1.0 and piece == BREAK:
                break  # the pooled vector is the first chunk's
            words.append(piece)
        tokenizer, encoder = self.pipe.tokenizer, self.pipe.text_encoder
        if self.embeddings:  # CLIP-L's token vectors replaced where an embedding is named
            width = clip_l_width(self.pipe)
            ids, fixes, used = clip_l_ids(tokenizer, "".join(words), self.embeddings, width)
            if used:
                self.used_embeddings.update(used)
                with _token_embedding_fixes(encoder, fixes):
                    tokens = torch.tensor([ids], device=encoder.device)
                    return encoder(tokens, output_hidden_states=False).pooler_output
        ids = tokenizer("".join(words), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids  # fmt: skip
        return encoder(ids.to(encoder.device), output_hidden_states=False).pooler_output

    @torch.inference_mode()
    def _t5(self, pieces: list[tuple[str, float]]) -> torch.Tensor:
        tokenizer, encoder = self.pipe.tokenizer_2, self.pipe.text_encoder_2
        ids: list[int] = []
        weights: list[float] = []
        texts = [piece for piece, weight in pieces if not (weight == -1.0 and piece == BREAK)]
        kept = [w for piece, w in pieces if not (w == -1.0 and piece == BREAK)]
        tokenized = tokenizer(texts, add_special_tokens=False).input_ids if texts else []
        for piece_ids, weight in zip(tokenized, kept, strict=True):
            ids += piece_ids
            weights += [weight] * len(piece_ids)
        ids, weights = ids[: self.max_length - 1], weights[: self.max_length - 1]
        ids.append(tokenizer.eos_token_id)
        weights.append(1.0)
        padding = self.max_length - len(ids)
        ids += [tokenizer.pad_token_id] * padding
        weights += [1.0] * padding
        z = encoder(torch.tensor([ids], device=encoder.device), output_hidden_states=False)[0]
        if any(w != 1.0 for w in weights):
            z = _emphasis(z, torch.tensor(weights, dtype=z.dtype, device=z.device))
        return z


def flux_conditioning(
    pipe: Any, prompt: str, negative: str, *, steps: int, fields: tuple[str, str],
    clip_skip: int | None = 1, embeddings: Any = None,
) -> Conditioning:  # fmt: skip
    """A job's prompt and negative prompt for every step (schedules, emphasis, CLIP-L
    embeddings); what was not applied is in its warnings (`transformer_text`)."""
    check_prompts(prompt, negative, steps=steps, count_chunks=lambda text: 1, fields=fields)
    # stripped: T5 reads the space a trailing `<lora:...>` tag leaves as one more token
    prompt, negative = (extract_extra_networks(text)[0].strip() for text in (prompt, negative))
    width = clip_l_width(pipe)
    if embeddings is not None:
        embeddings.model_widths = {CLIP_L_KEY: width}  # what /embeddings judges against
    named = named_embeddings(embeddings, [prompt, negative])
    usable = [emb for emb in named if emb.vectors_for(CLIP_L_KEY, width) is not None]
    encoder = FluxPromptEncoder(pipe, embeddings=usable)
    conditioning = scheduled_conditioning(encoder, prompt, negative, steps)
    conditioning.warnings += clip_skip_warnings(clip_skip, FLUX_CLIP_SKIP)
    conditioning.warnings += embedding_warnings(
        [emb for emb in named if emb.vectors_for(CLIP_L_KEY, width) is None],
        f"it has no CLIP-L ({width}-wide) vectors",
    )
    conditioning.warnings += [f"Embedding {name}: applied to CLIP-L only (T5 reads its name "
                              "as words)" for name in conditioning.used_embeddings]  # fmt: skip
    return conditioning


def clip_l_width(pipe: Any) -> int:
    return pipe.text_encoder.get_input_embeddings().embedding_dim


def scheduled_conditioning(encoder: Any, prompt: str, negative: str, steps: int) -> Conditioning:
    """Both prompts encoded part by part along their prompt-editing schedules by an
    encoder with `encode(text)` (FLUX's, Z-Image's); each AND sub-prompt on its own, with
    its weight (`flow_and`)."""
    parts = and_parts(prompt)
    conds = [_scheduled(encoder, text, steps) for text, _ in parts]
    uncond = _scheduled(encoder, negative, steps)
    used = dict(getattr(encoder, "used_embeddings", {}))
    return Conditioning(uncond, conds, [weight for _, weight in parts], used)


def _scheduled(encoder: Any, text: str, steps: int) -> Scheduled:
    ends, items = [], []
    for end, part in prompt_schedule(text, steps):
        ends.append(end)
        items.append(encoder.encode(part))
    return Scheduled(ends, items)


@contextmanager
def follow_schedule(
    pipe: Any, conditioning: Conditioning, batch_size: int, *, first_step: int = 0
) -> Iterator[Callable]:
    """Swap each step's prompt (and negative prompt) into the transformer's inputs; yields
    a wrapper for the step callback that moves to the next step. A static prompt runs the
    pipeline untouched."""
    if conditioning.static:
        yield lambda on_step: on_step
        return
    schedules = (conditioning.conds[0], conditioning.uncond)  # the pipeline's call order

    def swap(state: dict, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        item = schedules[min(state["call"], 1)].at(state["step"])
        rows = kwargs["hidden_states"].shape[0]
        kwargs["encoder_hidden_states"] = item.embeds.to(kwargs["encoder_hidden_states"]).expand(
            rows, -1, -1
        )
        kwargs["pooled_projections"] = item.pooled.to(kwargs["pooled_projections"]).expand(rows, -1)
        return args, kwargs

    with per_step_inputs(pipe, first_step, swap) as wrap:
        yield wrap


@contextmanager
def per_step_inputs(
    pipe: Any, first_step: int, swap: Callable[[dict, tuple, dict], tuple[tuple, dict]]
) -> Iterator[Callable]:
    """`swap(state, args, kwargs)` changes the transformer's inputs before each call:
    `state["step"]` is the pipeline's step (counted from `first_step`), `state["call"]` the
    transformer call within it. Yields the wrapper for the step callback that moves on to
    the next step (the transformer families' prompt schedules)."""
    state = {"step": first_step, "call": 0}

    def pre_hook(module, args, kwargs):
        out = swap(state, args, kwargs)
        state["call"] += 1
        return out

    def wrap(on_step: Callable) -> Callable:
        def callback(p, i, t, tensors):
            state["step"], state["call"] = first_step + steps_done(p, i), 0
            return on_step(p, i, t, tensors)

        return callback

    handle = pipe.transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield wrap
    finally:
        handle.remove()
