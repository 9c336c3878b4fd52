"""Tiny random-weight SD 3.5 models for tests and manual checks, saved in the layouts users
download (see `sd3_keys`).

Real diffusers and transformers classes at tiny sizes, deterministic for a seed: an MMDiT
of width 64 (2 heads of 32, q/k RMS norms as SD 3.5), 2 joint blocks (the first with
Medium's dual attention when `medium=True`), 16 latent channels; CLIP-L width 32 and
CLIP-G width 64 (a `CLIPTextModelWithProjection`) with the real vocabulary; T5 width 128
with T5 v1.1's vocabulary; an autoencoder with 2 levels and 16 latent channels, no quant
convolutions (as SD 3's).

Layouts written: `save_all_in_one` (Stability's single file: `model.diffusion_model.`,
`first_stage_model.`, `text_encoders.{clip_l,clip_g,t5xxl}.transformer.`; without the
encoders with `encoders=False`), `save_transformer` (the MMDiT alone),
`save_modules` (`clip_l.safetensors`, `clip_g.safetensors`, `t5xxl_fp16.safetensors`,
`sd3_vae.safetensors`), `save_diffusers` (a StableDiffusion3Pipeline folder).

This module must never touch the network or import a UI library.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .ldm_keys import vae_to_ldm
from .sd3_keys import (
    BLOCK_NAMES,
    CLIP_G_PREFIX,
    CLIP_L_PREFIX,
    DIFFUSION_PREFIX,
    QKV_NAMES,
    SD3_SCHEDULER,
    T5_PREFIX,
    TOP_NAMES,
    VAE_PREFIX,
    VAE_SCALING,
    VAE_SHIFT,
)
from .tiny import _text_config
from .tiny_flux import T5_VOCAB, _cast, _jitter, _text_model

HEAD_DIM, HEADS = 32, 2
CLIP_L_WIDTH, CLIP_G_WIDTH, T5_WIDTH = 32, 64, 128  # T5 wider than both CLIPs, as in SD 3


def build_tiny_sd3(seed: int = 0, medium: bool = False, positions: int = 16):
    """A tiny `StableDiffusion3Pipeline` with random weights; `positions`: the side of its
    position embedding in patches (16: images of at most 64x64 pixels)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from .tokenizers import OPEN_CLIP_PAD_TOKEN, clip_tokenizer, t5_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=16, num_layers=2,
            attention_head_dim=HEAD_DIM, num_attention_heads=HEADS, joint_attention_dim=T5_WIDTH,
            caption_projection_dim=HEAD_DIM * HEADS,
            pooled_projection_dim=CLIP_L_WIDTH + CLIP_G_WIDTH, out_channels=16,
            pos_embed_max_size=positions, dual_attention_layers=(0,) if medium else (),
            qk_norm="rms_norm",
        )  # fmt: skip
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 32), layers_per_block=1, latent_channels=16,
            norm_num_groups=32, sample_size=64, scaling_factor=VAE_SCALING,
            shift_factor=VAE_SHIFT, use_quant_conv=False, use_post_quant_conv=False,
            force_upcast=True,
        )  # fmt: skip
        clip_l = CLIPTextModelWithProjection(_text_config(CLIP_L_WIDTH, open_clip=False))
        clip_g = CLIPTextModelWithProjection(_text_config(CLIP_G_WIDTH, open_clip=True))
        t5 = T5EncoderModel(T5Config(
            vocab_size=T5_VOCAB, d_model=T5_WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
        ))  # fmt: skip
        for module in (transformer, vae, clip_l, clip_g, t5):
            _jitter(module)
        with torch.no_grad():  # CLIP-L's pooled vector is read unprojected (SD 3's reference)
            clip_l.text_projection.weight.copy_(torch.eye(CLIP_L_WIDTH))
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(SD3_SCHEDULER),
        vae=vae.eval(), text_encoder=clip_l.eval(), tokenizer=clip_tokenizer(),
        text_encoder_2=clip_g.eval(), tokenizer_2=clip_tokenizer(OPEN_CLIP_PAD_TOKEN),
        text_encoder_3=t5.eval(), tokenizer_3=t5_tokenizer(), transformer=transformer.eval(),
    )  # fmt: skip


# --- diffusers names -> Stability's ----------------------------------------------------
def _swap(weight: torch.Tensor) -> torch.Tensor:
    first, second = weight.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def stability_transformer_state(transformer) -> dict[str, torch.Tensor]:
    """A diffusers SD 3 transformer's weights in Stability's names (the inverse of
    diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`)."""
    state = {k: v.detach().clone().contiguous() for k, v in transformer.state_dict().items()}
    out = {"pos_embed": state.pop("pos_embed.pos_embed")}
    last = transformer.config.num_layers - 1
    for i in range(transformer.config.num_layers):
        src, dst = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        for kind in ("weight", "bias"):
            for fused_src, fused_dst in QKV_NAMES.items():
                names = [f"{src}{fused_src}{x}.{kind}" if fused_src != "attn.add_"
                         else f"{src}attn.add_{x}_proj.{kind}" for x in "qkv"]  # fmt: skip
                if names[0] in state:
                    out[f"{dst}{fused_dst}.{kind}"] = torch.cat([state.pop(n) for n in names])
        for old, new in BLOCK_NAMES.items():
            for key in [k for k in state if k.startswith(src + old + ".")]:
                value = state.pop(key)
                if i == last and old == "norm1_context.linear":
                    value = _swap(value)  # the last context block's (shift, scale)
                out[dst + new + key[len(src + old) :]] = value
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap(state.pop(f"norm_out.linear.{kind}"))
    for old, new in TOP_NAMES.items():
        for kind in ("weight", "bias"):
            out[f"{new}.{kind}"] = state.pop(f"{old}.{kind}")
    if state:
        raise KeyError(f"not written: {sorted(state)[:3]}")
    return out


def _clip_state(encoder) -> dict[str, torch.Tensor]:
    return {_clip_key(k): v.contiguous() for k, v in encoder.state_dict().items()}


def _clip_key(key: str) -> str:
    return key if key.startswith("text_projection") else _text_model(key)


def _module_states(pipe) -> dict[str, dict[str, torch.Tensor]]:
    vae = {k: v.contiguous() for k, v in pipe.vae.state_dict().items()}
    t5 = {k: v.contiguous() for k, v in pipe.text_encoder_3.state_dict().items()}
    t5.pop("encoder.embed_tokens.weight")  # as t5xxl_fp16.safetensors: only shared.weight
    return {
        "vae": vae_to_ldm(vae, len(pipe.vae.config.block_out_channels)),
        "clip_l": _clip_state(pipe.text_encoder),
        "clip_g": _clip_state(pipe.text_encoder_2),
        "t5xxl": t5,
    }


def save_transformer(pipe, path: Path, prefix: str = DIFFUSION_PREFIX,
                     dtype=torch.float16) -> Path:  # fmt: skip
    """The MMDiT alone in Stability's names (a transformer-only file)."""
    state = {prefix + k: v for k, v in stability_transformer_state(pipe.transformer).items()}
    save_file(_cast(state, dtype), str(path))
    return path


def save_modules(pipe, folder: Path, dtype=torch.float16) -> dict[str, Path]:
    """clip_l, clip_g, t5xxl_fp16 and sd3_vae .safetensors in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {"vae": "sd3_vae", "clip_l": "clip_l", "clip_g": "clip_g", "t5xxl": "t5xxl_fp16"}
    paths = {}
    for kind, state in _module_states(pipe).items():
        paths[kind] = folder / f"{names[kind]}.safetensors"
        save_file(_cast(state, dtype), str(paths[kind]))
    return paths


def save_all_in_one(pipe, path: Path, dtype=torch.float16, encoders: bool = True) -> Path:
    """Transformer and autoencoder (and the three text encoders) in one file, as
    Stability publishes sd3.5_large.safetensors."""
    modules = _module_states(pipe)
    state = {DIFFUSION_PREFIX + k: v
             for k, v in stability_transformer_state(pipe.transformer).items()}  # fmt: skip
    state.update({VAE_PREFIX + k: v for k, v in modules["vae"].items()})
    if encoders:
        for prefix, kind in ((CLIP_L_PREFIX, "clip_l"), (CLIP_G_PREFIX, "clip_g"),
                             (T5_PREFIX, "t5xxl")):  # fmt: skip
            state.update({prefix + k: v for k, v in modules[kind].items()})
    save_file(_cast(state, dtype), str(path))
    return path


def save_diffusers(pipe, folder: Path) -> Path:
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
