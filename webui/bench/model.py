"""The benchmark's checkpoint: random weights in the exact Stable Diffusion 1.5 architecture.

Built once from the published SD 1.5 component configs (UNet, VAE, CLIP ViT-L/14 text
encoder) with the real diffusers/transformers classes, exported as a single-file A1111/LDM
`.safetensors` (fp16, like the common pruned checkpoints), and cached outside the
repository (default `~/.cache/webui-bench/`). For speed and memory only the sizes matter;
the images are noise.

This module must never download anything and never import a UI library.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SD15_NAME = "bench-random-sd15.safetensors"

# runwayml/stable-diffusion-v1-5 unet/config.json (diffusers layout)
SD15_UNET = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}
# vae/config.json
SD15_VAE = {
    "act_fn": "silu",
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}
# text_encoder/config.json (OpenAI CLIP ViT-L/14 text tower)
SD15_TEXT = {
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "projection_dim": 768,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
}


def default_cache_dir() -> Path:
    """`$WEBUI_BENCH_CACHE`, else `$XDG_CACHE_HOME/webui-bench`, else `~/.cache/webui-bench`."""
    if os.environ.get("WEBUI_BENCH_CACHE"):
        return Path(os.environ["WEBUI_BENCH_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "webui-bench"


def build_sd15_pipeline(seed: int = 0):
    """A StableDiffusionPipeline with SD 1.5's exact architecture and random weights."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..model_manager.tokenizers import clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**SD15_UNET).eval()
        vae = AutoencoderKL(**SD15_VAE).eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).eval()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(**SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def ensure_sd15_checkpoint(cache_dir: Path | None = None, builder=build_sd15_pipeline) -> Path:
    """The cached random-weight SD 1.5 single file, created on first use."""
    from ..model_manager.export import export_single_file

    folder = Path(cache_dir or default_cache_dir()) / "models"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SD15_NAME
    if path.exists():
        return path
    log.info("Creating the random-weight SD 1.5 benchmark checkpoint at %s (once)", path)
    export_single_file(builder(), path, dtype=torch.float16)
    return path
