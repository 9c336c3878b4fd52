"""Tiny random-weight Stable Diffusion pipelines for tests and the ``--demo`` flag.

They use the real diffusers/transformers classes at tiny sizes and are deterministic for
a given seed. A loader can rebuild their configs from tensor shapes, given these
conventions:

- UNet: block_out_channels (32, 64), layers_per_block 1, norm_num_groups 32,
  cross_attention_dim = text hidden size (SDXL: sum of both encoders).
  SD1: attention at both levels, ``attention_head_dim=8`` (8 heads), conv proj_in.
  SD2/SDXL: heads per level = max(1, channels // 64), linear proj_in.
  SDXL: no attention at level 0, transformer depth (1, 2), ``text_time`` embedding with
  addition_time_embed_dim 8.
- VAE: block_out_channels (32, 64), 4 latent channels, layers_per_block 1, sample 64.
- Text encoders: CLIP with the real 49408-token vocabulary, 77 positions, 2 layers,
  intermediate size 2 x hidden, one head per 64 channels (at least one).
  SD1 / SDXL encoder 1: hidden 32, quick_gelu. SD2: hidden 32, gelu.
  SDXL encoder 2: hidden 64, gelu, projection 32. The two SDXL encoders need different
  widths: diffusers' ``from_single_file`` tells them apart by width.
- SDXL refiner (``sdxl-refiner``): the SDXL layout with only the OpenCLIP encoder (hidden
  64, stored as ``conditioner.embedders.0.model.*`` as in sd_xl_refiner_1.0), cross
  attention 64, and the aesthetic-score time embedding (5 numbers instead of 6).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from webui.model_manager.tokenizers import EOS_TOKEN, OPEN_CLIP_PAD_TOKEN

FAMILIES = ("sd1", "sd1-inpaint", "sd2", "sd2-v", "sdxl", "sdxl-refiner")

BLOCK_OUT_CHANNELS = (32, 64)
NORM_NUM_GROUPS = 32
VAE_SAMPLE_SIZE = 64
TEXT_HIDDEN = 32
SDXL_TEXT_2_HIDDEN = 64
SDXL_PROJECTION_DIM = 32
SDXL_TIME_EMBED_DIM = 8
SD1_HEADS = 8
BOS_ID, EOS_ID = 49406, 49407
SCHEDULER_BETAS = {
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "num_train_timesteps": 1000,
    "steps_offset": 1,
}


def _heads(channels: int) -> int:
    return max(1, channels // 64)


def _text_config(hidden: int, open_clip: bool, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=_heads(hidden),
        max_position_embeddings=77,
        hidden_act="gelu" if open_clip else "quick_gelu",
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=0 if open_clip else EOS_ID,
        projection_dim=projection_dim or hidden,
    )


def _text_encoder(hidden: int, open_clip: bool):
    from transformers import CLIPTextModel

    return CLIPTextModel(_text_config(hidden, open_clip)).eval()


def _tokenizer(open_clip: bool):
    from webui.model_manager.tokenizers import clip_tokenizer

    return clip_tokenizer(OPEN_CLIP_PAD_TOKEN if open_clip else EOS_TOKEN)


def _vae(scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(BLOCK_OUT_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(BLOCK_OUT_CHANNELS),
        block_out_channels=BLOCK_OUT_CHANNELS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=NORM_NUM_GROUPS,
        sample_size=VAE_SAMPLE_SIZE,
        scaling_factor=scaling_factor,
    ).eval()


def _unet(family: str):
    from diffusers import UNet2DConditionModel

    common = {
        "sample_size": VAE_SAMPLE_SIZE // 2 ** (len(BLOCK_OUT_CHANNELS) - 1),
        "in_channels": 9 if family == "sd1-inpaint" else 4,
        "out_channels": 4,
        "block_out_channels": BLOCK_OUT_CHANNELS,
        "layers_per_block": 1,
        "norm_num_groups": NORM_NUM_GROUPS,
    }
    if family.startswith("sdxl"):
        refiner = family == "sdxl-refiner"  # OpenCLIP only; 5 time numbers (aesthetic score)
        extra = {
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "transformer_layers_per_block": (1, 2),
            "cross_attention_dim": SDXL_TEXT_2_HIDDEN + (0 if refiner else TEXT_HIDDEN),
            "attention_head_dim": tuple(_heads(c) for c in BLOCK_OUT_CHANNELS),
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": SDXL_TIME_EMBED_DIM,
            "projection_class_embeddings_input_dim": (5 if refiner else 6) * SDXL_TIME_EMBED_DIM
            + SDXL_PROJECTION_DIM,
        }
    else:
        sd2 = family.startswith("sd2")
        extra = {
            "down_block_types": ("CrossAttnDownBlock2D",) * len(BLOCK_OUT_CHANNELS),
            "up_block_types": ("CrossAttnUpBlock2D",) * len(BLOCK_OUT_CHANNELS),
            "cross_attention_dim": TEXT_HIDDEN,
            "attention_head_dim": (
                tuple(_heads(c) for c in BLOCK_OUT_CHANNELS) if sd2 else SD1_HEADS
            ),
            "use_linear_projection": sd2,
        }
    return UNet2DConditionModel(**common, **extra).eval()


def _scheduler(family: str):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    if family.startswith("sdxl"):
        return EulerDiscreteScheduler(**SCHEDULER_BETAS, timestep_spacing="leading")
    prediction = "v_prediction" if family == "sd2-v" else "epsilon"
    return DDIMScheduler(
        **SCHEDULER_BETAS,
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type=prediction,
    )


@torch.no_grad()
def _jitter(*modules: torch.nn.Module) -> None:
    # Norm layers start as exact ones/zeros; jitter every parameter so that every tensor
    # is distinct and a swapped key in a conversion cannot go unnoticed.
    for module in modules:
        for param in module.parameters():
            param.add_(torch.randn_like(param) * 0.02)


def _build_sdxl(seed: int):
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet, vae = _unet("sdxl"), _vae(0.13025)
    text_encoder = _text_encoder(TEXT_HIDDEN, open_clip=False)
    config_2 = _text_config(SDXL_TEXT_2_HIDDEN, open_clip=True, projection_dim=SDXL_PROJECTION_DIM)
    text_encoder_2 = CLIPTextModelWithProjection(config_2).eval()
    _jitter(unet, vae, text_encoder, text_encoder_2)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=_tokenizer(open_clip=False),
        tokenizer_2=_tokenizer(open_clip=True),
        unet=unet,
        scheduler=_scheduler("sdxl"),
    )


def _build_sdxl_refiner(seed: int):
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet, vae = _unet("sdxl-refiner"), _vae(0.13025)
    config_2 = _text_config(SDXL_TEXT_2_HIDDEN, open_clip=True, projection_dim=SDXL_PROJECTION_DIM)
    text_encoder_2 = CLIPTextModelWithProjection(config_2).eval()
    _jitter(unet, vae, text_encoder_2)
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=None,
        text_encoder_2=text_encoder_2,
        tokenizer=None,
        tokenizer_2=_tokenizer(open_clip=True),
        unet=unet,
        scheduler=_scheduler("sdxl"),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def _build_sd(family: str, seed: int):
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    open_clip = family.startswith("sd2")
    torch.manual_seed(seed)
    unet, vae = _unet(family), _vae(0.18215)
    text_encoder = _text_encoder(TEXT_HIDDEN, open_clip)
    _jitter(unet, vae, text_encoder)
    cls = StableDiffusionInpaintPipeline if family == "sd1-inpaint" else StableDiffusionPipeline
    return cls(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=_tokenizer(open_clip),
        unet=unet,
        scheduler=_scheduler(family),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_pipeline(family: str, seed: int = 0):
    """A tiny random-weight diffusers pipeline of ``family`` (see ``FAMILIES``)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    with torch.random.fork_rng(devices=[]):
        if family == "sdxl":
            return _build_sdxl(seed)
        if family == "sdxl-refiner":
            return _build_sdxl_refiner(seed)
        return _build_sd(family, seed)


def save_tiny_checkpoint(path: str | os.PathLike, family: str, seed: int = 0) -> Path:
    """Build a tiny pipeline and write it as a single-file LDM ``.safetensors``."""
    from webui.model_manager.export import export_single_file

    return export_single_file(build_tiny_pipeline(family, seed), path)


def save_tiny_diffusers(folder: str | os.PathLike, family: str, seed: int = 0) -> Path:
    """Build a tiny pipeline and save it as a diffusers folder (safetensors weights)."""
    folder = Path(folder)
    build_tiny_pipeline(family, seed).save_pretrained(folder, safe_serialization=True)
    return folder


__all__ = [
    "FAMILIES",
    "build_tiny_pipeline",
    "save_tiny_checkpoint",
    "save_tiny_diffusers",
]
