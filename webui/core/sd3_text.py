"""SD 3.5 prompts: A1111's syntax on CLIP-L, CLIP-G and T5-XXL, laid out as diffusers'
`StableDiffusion3Pipeline` takes them.

- CLIP-L and CLIP-G are read as SDXL reads them (`conditioning.PromptEncoder`): 75-token
  chunks (BREAK starts one), emphasis `(word:1.2)` / `[word]` per token, clip skip N takes
  layer -(N+1) (the penultimate for 1) without the final norm, textual-inversion vectors;
  the two widths are concatenated (768 + 1280) and padded with zeros to T5's width. The
  pooled vector is CLIP-L's and CLIP-G's of the first chunk, concatenated.
- T5-XXL reads the whole text (BREAK left out) with emphasis, 256 tokens
  (`max_sequence_length`), through `flux_text.FluxPromptEncoder`'s T5 path; its sequence
  follows the CLIP chunks: (1, 77 * chunks + 256, width). A model loaded without T5
  (`pipe.text_encoder_3` None: no T5 module chosen, none in the file) gets zeros there,
  as diffusers' pipeline does with `text_encoder_3=None`.
- Prompt editing `[a:b:0.5]` and alternation `[a|b]`: `follow_schedule` swaps each step's
  encoding into the transformer's inputs (a forward pre-hook); with CFG the pipeline calls
  the transformer once on the negative and positive rows together.
- AND with weights: each sub-prompt encoded (CLIP and T5, padded to one length) on its
  own; `flow_and.follow_rows` combines their predictions during sampling.

This module must never import a UI library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import torch

from ..errors import UserError
from .conditioning import Conditioning, Encoded, PromptEncoder, Scheduled, TextEncoding, _pad_all
from .flow_and import and_parts
from .flow_euler import steps_done
from .flux_text import FluxPromptEncoder
from .prompt_limits import check_prompts
from .prompts import extract_extra_networks, parse_attention, prompt_schedule

T5_LENGTH = 256  # StableDiffusion3Pipeline's max_sequence_length


class SD3PromptEncoder(PromptEncoder):
    """`encode` gives the CLIP part (both widths, both pooled vectors); `t5` the T5 part."""

    def __init__(self, pipe: Any, family: TextEncoding, clip_skip: int, embeddings: Any = None):
        super().__init__(pipe, family, clip_skip, embeddings)
        t5 = SimpleNamespace(tokenizer_2=pipe.tokenizer_3, text_encoder_2=pipe.text_encoder_3)
        self._t5_encoder = FluxPromptEncoder(t5, T5_LENGTH)
        self._t5_cache: dict[str, torch.Tensor] = {}
        # without T5 (no T5 file chosen, none in the checkpoint): zeros, as diffusers' pipeline
        # with text_encoder_3=None
        self._no_t5 = None
        if pipe.text_encoder_3 is None:
            self._no_t5 = torch.zeros(1, T5_LENGTH, pipe.transformer.config.joint_attention_dim)

    @torch.inference_mode()
    def _encode(self, text: str) -> Encoded:
        chunks = self.chunks(text)
        parts, pooled = [], []
        for slot in self.slots:
            encoded = [self._encode_chunk(slot, chunk) for chunk in chunks]
            parts.append(torch.cat([z for z, _ in encoded], dim=1))
            pooled.append(encoded[0][1])
        return Encoded(torch.cat(parts, dim=-1), torch.cat(pooled, dim=-1))

    def t5(self, text: str) -> torch.Tensor:
        if self._no_t5 is not None:
            return self._no_t5
        if text not in self._t5_cache:
            self._t5_cache[text] = self._t5_encoder._t5(parse_attention(text))
        return self._t5_cache[text]


def sd3_conditioning(
    pipe: Any, family: TextEncoding, prompt: str, negative: str, clip_skip: int, *,
    steps: int, embeddings: Any = None, fields: tuple[str, str],
) -> Conditioning:  # fmt: skip
    """A job's prompt and negative prompt for every step (schedules, emphasis, chunks)."""
    encoder = SD3PromptEncoder(pipe, family, clip_skip, embeddings)
    check_prompts(prompt, negative, steps=steps, count_chunks=lambda text: len(encoder.chunks(text)),
                  fields=fields)  # fmt: skip
    # stripped: T5 reads the space a trailing `<lora:...>` tag leaves as one more token
    prompt, negative = (extract_extra_networks(text)[0].strip() for text in (prompt, negative))
    parts = and_parts(prompt)
    schedules, texts = [], []
    for text in (negative, *(text for text, _ in parts)):
        steps_parts = prompt_schedule(text, steps)
        schedules.append(
            Scheduled([end for end, _ in steps_parts], [encoder.encode(p) for _, p in steps_parts])
        )
        texts.append([part for _, part in steps_parts])
    _pad_all(schedules, encoder)  # every CLIP part as many chunks long
    for schedule, scheduled_texts in zip(schedules, texts, strict=True):
        schedule.items = [_joined(item, encoder.t5(part))
                          for item, part in zip(schedule.items, scheduled_texts, strict=True)]  # fmt: skip
    uncond, *conds = schedules
    return Conditioning(uncond, conds, [weight for _, weight in parts], encoder.used_embeddings)


def _joined(clip: Encoded, t5: torch.Tensor) -> Encoded:
    """CLIP's tokens (zero-padded to T5's width), then T5's, as one sequence."""
    padding = t5.shape[-1] - clip.embeds.shape[-1]
    if padding < 0:
        raise UserError(f"SD 3.5: the CLIP encoders' width {clip.embeds.shape[-1]} exceeds "
                        f"T5's {t5.shape[-1]}")  # fmt: skip
    embeds = torch.nn.functional.pad(clip.embeds, (0, padding))
    return Encoded(torch.cat([embeds, t5.to(embeds)], dim=1), clip.pooled)


@contextmanager
def follow_schedule(
    pipe: Any, conditioning: Conditioning, batch_size: int, *, first_step: int = 0
) -> Iterator[Callable]:
    """Swap each step's prompt and negative prompt into the transformer's inputs; yields a
    wrapper for the step callback that moves to the next step. A static prompt runs the
    pipeline untouched."""
    if conditioning.static:
        yield lambda on_step: on_step
        return
    state = {"step": first_step}

    def pre_hook(module, args, kwargs):
        rows = kwargs["hidden_states"].shape[0]
        step = state["step"]
        parts = [conditioning.conds[0].at(step)]
        if rows > batch_size:  # CFG: the negative rows first, as the pipeline batches them
            parts.insert(0, conditioning.uncond.at(step))
        each = rows // len(parts)
        like_embeds, like_pooled = kwargs["encoder_hidden_states"], kwargs["pooled_projections"]
        kwargs["encoder_hidden_states"] = torch.cat(
            [p.embeds.to(like_embeds).expand(each, -1, -1) for p in parts]
        )
        kwargs["pooled_projections"] = torch.cat(
            [p.pooled.to(like_pooled).expand(each, -1) for p in parts]
        )
        return args, kwargs

    def wrap(on_step: Callable) -> Callable:
        def callback(p, i, t, tensors):
            state["step"] = first_step + steps_done(p, i)
            return on_step(p, i, t, tensors)

        return callback

    handle = pipe.transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        yield wrap
    finally:
        handle.remove()
