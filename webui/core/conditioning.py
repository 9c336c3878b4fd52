"""Text conditioning: prompts to the embeddings the UNet is conditioned on.

Encodes the prompt and negative prompt once per job (not once per batch) and applies
A1111's clip skip: "Clip skip: N" takes the output of the N-th layer from the end of the
text encoder, through its final layer norm (SD 1.x/2.x); SDXL uses the penultimate layer
of both encoders by default and goes N-1 layers further back.

This module must never import a UI library.
"""

from __future__ import annotations

import torch


def encode_prompts(pipe, family: str, prompt: str, negative: str, clip_skip: int) -> dict:
    """Pipeline keyword arguments carrying the encoded prompt and negative prompt."""
    if family == "sdxl":
        embeds, negative_embeds, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompt,
            negative_prompt=negative or None,
            device=pipe._execution_device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=True,
            clip_skip=clip_skip - 1 or None,
        )
        return {
            "prompt_embeds": embeds,
            "negative_prompt_embeds": negative_embeds,
            "pooled_prompt_embeds": pooled,
            "negative_pooled_prompt_embeds": negative_pooled,
        }
    return {
        "prompt_embeds": _encode_clip(pipe, prompt, clip_skip),
        "negative_prompt_embeds": _encode_clip(pipe, negative, clip_skip),
    }


@torch.inference_mode()
def _encode_clip(pipe, text: str, clip_skip: int) -> torch.Tensor:
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    ids = tokenizer(
        text,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(encoder.device)
    output = encoder(ids, output_hidden_states=clip_skip > 1)
    if clip_skip == 1:
        return output.last_hidden_state
    layers = len(output.hidden_states) - 1
    if clip_skip > layers:
        raise ValueError(f"Clip skip {clip_skip} is more than the text encoder's {layers} layers")
    # transformers 5 dropped the `text_model` wrapper of CLIPTextModel; older ones have it
    transformer = getattr(encoder, "text_model", encoder)
    return transformer.final_layer_norm(output.hidden_states[-clip_skip])
