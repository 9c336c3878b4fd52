"""Preview images of a textual-inversion run, and A1111's PNGs that carry the embedding.

`draw_preview` draws one image with the vectors as trained so far: the run's prompt at the
training size and 20 steps, or with `preview_from_txt2img` the preview prompt, negative
prompt, sampler, steps, CFG scale, seed and size the user gave. The prompts go through the
trainer's prompt encoder (so the embedding's name is the trained vectors) and reach the
pipeline as prompt embeddings. `save_stored_embedding_png` writes the image with A1111's
`sd-ti-embedding` text chunk (base64 JSON of the embedding, tensors as
`{"TORCHTENSOR": [...]}`), which A1111 reads back as an embedding.

Runs on the worker thread only; never imports a UI library.
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import torch
from PIL import Image, PngImagePlugin

from .samplers import resolve
from .schedulers import make_scheduler

DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0


@torch.no_grad()
def draw_preview(trainer, prompt: str) -> Image.Image:
    p, pipe = trainer.p, trainer.pipe
    if p.preview_from_txt2img:
        prompt, negative = p.preview_prompt or prompt, p.preview_negative_prompt
        steps, cfg, width, height = (
            p.preview_steps,
            p.preview_cfg_scale,
            p.preview_width,
            p.preview_height,
        )
        seed = p.preview_seed if p.preview_seed >= 0 else random.randrange(2**32)
        choice = resolve(p.preview_sampler_name, None)
    else:
        negative, steps, cfg, seed = "", DEFAULT_STEPS, DEFAULT_CFG, trainer.spec.seed
        width, height = p.training_width, p.training_height
        choice = resolve("Euler a", None)
    encoder = trainer.encoder
    cond, uncond = encoder.encode_uncached(prompt), encoder.encode_uncached(negative)
    kwargs = {"prompt_embeds": cond.embeds, "negative_prompt_embeds": uncond.embeds}
    if cond.pooled is not None:
        kwargs |= {
            "pooled_prompt_embeds": cond.pooled,
            "negative_pooled_prompt_embeds": uncond.pooled,
        }
    scheduler = pipe.scheduler
    pipe.scheduler = make_scheduler(choice, trainer.lease.model.base_scheduler_config, steps=steps)
    try:
        generator = torch.Generator("cpu").manual_seed(seed)
        return pipe(**kwargs, num_inference_steps=steps, guidance_scale=cfg, width=width,
                    height=height, generator=generator, output_type="pil").images[0]  # fmt: skip
    finally:
        pipe.scheduler = scheduler


def embedding_chunk(vectors: dict[str, torch.Tensor], meta: dict[str, object]) -> str:
    """A1111's `embedding_to_b64` of the embedding's `.pt` dict."""
    tensor = torch.cat([v.detach().float().cpu() for v in vectors.values()], dim=-1)
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": {"TORCHTENSOR": tensor.tolist()}},
        "name": meta.get("name"),
        "step": meta.get("step"),
        "sd_checkpoint": meta.get("sd_checkpoint"),
        "sd_checkpoint_name": meta.get("sd_checkpoint_name"),
    }
    return base64.b64encode(json.dumps(data).encode()).decode()


def save_stored_embedding_png(image: Image.Image, vectors, meta, target: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("sd-ti-embedding", embedding_chunk(vectors, meta))
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, format="PNG", pnginfo=info)
