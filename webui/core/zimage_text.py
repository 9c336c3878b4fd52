"""Z-Image prompts: A1111's syntax on the Qwen3 text encoder's hidden states.

- A prompt is wrapped in Qwen3's chat template as diffusers' `ZImagePipeline` builds it
  (`<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n`) and read from the
  encoder's second-to-last hidden state, the template's tokens included, padding left out
  (the pipeline pads to 512 tokens and drops the padding again; causal attention makes the
  result the same). Text longer than 512 tokens is cut there, as in the pipeline.
- A prompt without weights is tokenized whole, so its ids are the Qwen tokenizer's own
  (Chinese and every other script reach it unchanged). Emphasis `(word:1.2)`, `[word]`:
  each piece is tokenized on its own, and its tokens' vectors are multiplied by its weight
  and the sequence scaled back to its mean (A1111's "Original" emphasis, as FLUX's T5).
- BREAK is left out (no chunks); prompt editing `[a:b:0.5]` and alternation `[a|b]`: each
  step's text is encoded once and `follow_schedule` swaps it into the transformer's caption
  list at its step. AND with weights: each sub-prompt encoded on its own, combined during
  sampling by `flow_and.follow_captions`.
- Clip skip and textual-inversion embeddings: Qwen3 takes neither; the job is told
  (`Conditioning.warnings`, `transformer_text`) and the infotext claims neither.

This module must never import a UI library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from .conditioning import Conditioning, Encoded, _emphasis
from .flow_euler import steps_done
from .flux_text import scheduled_conditioning
from .prompt_limits import check_prompts
from .prompts import extract_extra_networks, parse_attention
from .transformer_text import clip_skip_warnings, embedding_warnings, named_embeddings

MAX_LENGTH = 512  # ZImagePipeline's max_sequence_length
BREAK = "BREAK"
QWEN3_TAKES_NONE = "Z-Image's Qwen3 text encoder takes none (it has no CLIP layers to skip)"


class ZImagePromptEncoder:
    """Encodes prompt texts with a ZImagePipeline's Qwen3 encoder, cached per text."""

    def __init__(self, pipe: Any, max_length: int = MAX_LENGTH):
        self.pipe, self.max_length = pipe, max_length
        self._cache: dict[str, Encoded] = {}

    def encode(self, text: str) -> Encoded:
        if text not in self._cache:
            pieces = [(p, w) for p, w in parse_attention(text) if not (w == -1.0 and p == BREAK)]
            self._cache[text] = Encoded(self._hidden(*self.token_ids(pieces)))
        return self._cache[text]

    def token_ids(self, pieces: list[tuple[str, float]]) -> tuple[list[int], list[float]]:
        """The chat-templated prompt's token ids and each token's weight."""
        tokenizer = self.pipe.tokenizer
        template = tokenizer.apply_chat_template(
            [{"role": "user", "content": "\0"}], tokenize=False, add_generation_prompt=True,
            enable_thinking=True,
        )  # fmt: skip
        head, tail = template.split("\0")
        if all(weight == 1.0 for _, weight in pieces):  # the text whole: Qwen's own ids
            ids = tokenizer(head + "".join(p for p, _ in pieces) + tail).input_ids
            return ids[: self.max_length], [1.0] * min(len(ids), self.max_length)
        ids, weights = [], []
        texts = [head, *(p for p, _ in pieces), tail]
        for piece_ids, weight in zip(tokenizer(texts).input_ids,
                                     [1.0, *(w for _, w in pieces), 1.0], strict=True):  # fmt: skip
            ids += piece_ids
            weights += [weight] * len(piece_ids)
        return ids[: self.max_length], weights[: self.max_length]

    @torch.inference_mode()
    def _hidden(self, ids: list[int], weights: list[float]) -> torch.Tensor:
        encoder = self.pipe.text_encoder
        input_ids = torch.tensor([ids], device=encoder.device)
        mask = torch.ones_like(input_ids, dtype=torch.bool)
        out = encoder(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
        z = out.hidden_states[-2]  # (1, L, D), as ZImagePipeline reads it
        if any(w != 1.0 for w in weights):
            z = _emphasis(z, torch.tensor(weights, dtype=z.dtype, device=z.device))
        return z


def zimage_conditioning(
    pipe: Any, prompt: str, negative: str, *, steps: int, fields: tuple[str, str],
    clip_skip: int | None = 1, embeddings: Any = None,
) -> Conditioning:  # fmt: skip
    """A job's prompt and negative prompt for every step (schedules, emphasis); a clip
    skip or an embedding named in them is a warning: Qwen3 takes neither."""
    check_prompts(prompt, negative, steps=steps, count_chunks=lambda text: 1, fields=fields)
    # stripped: Qwen3 reads the space a trailing `<lora:...>` tag leaves as one more token
    prompt, negative = (extract_extra_networks(text)[0].strip() for text in (prompt, negative))
    conditioning = scheduled_conditioning(ZImagePromptEncoder(pipe), prompt, negative, steps)
    if embeddings is not None:
        embeddings.model_widths = {"qwen3": 0}  # no embedding file fits (what /embeddings says)
    conditioning.warnings += clip_skip_warnings(clip_skip, QWEN3_TAKES_NONE)
    conditioning.warnings += embedding_warnings(
        named_embeddings(embeddings, [prompt, negative]),
        "Z-Image's Qwen3 text encoder takes no textual-inversion embeddings (it reads the "
        "name as words)",
    )
    return conditioning


def caption_lists(conditioning: Conditioning, step: int, dtype) -> tuple[list, list]:
    """The prompt's and the negative prompt's embeddings at `step`, as the pipeline's
    `prompt_embeds` / `negative_prompt_embeds` lists (one (L, D) tensor per prompt)."""
    cond = conditioning.conds[0].at(step).embeds[0].to(dtype)
    uncond = conditioning.uncond.at(step).embeds[0].to(dtype)
    return [cond], [uncond]


@contextmanager
def follow_schedule(
    pipe: Any, conditioning: Conditioning, batch_size: int, *, first_step: int = 0
) -> Iterator[Callable]:
    """Swap each step's prompt (and negative prompt) into the transformer's caption list;
    yields a wrapper for the step callback that moves to the next step. A static prompt
    runs the pipeline untouched."""
    if conditioning.static:
        yield lambda on_step: on_step
        return
    state = {"step": first_step}

    def pre_hook(module, args, kwargs):
        x, t, captions = args[:3]
        cond, uncond = caption_lists(conditioning, state["step"], captions[0].dtype)
        rows = [*cond * batch_size, *uncond * batch_size][: len(captions)]  # CFG: both halves
        return (x, t, rows, *args[3:]), kwargs

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
