"""Tiny random-weight Z-Image models for tests and manual checks, saved in the layouts
users download (see `zimage_files`).

Real diffusers and transformers classes at tiny sizes, deterministic for a seed:
transformer width 32 (2 heads of 16, never Z-Image's 3840, so a width assumed from the
family fails), 1 main layer and 1 refiner layer, 16 latent channels; a Qwen3 text encoder
of width 32 and 2 layers with Qwen3's full 151 936-entry embedding table (the shipped
tokenizer's ids all fit); FLUX.1's autoencoder shape at 2 levels (`tiny_flux`'s).

Layouts written: `save_transformer` (ComfyUI's names, optionally under
`model.diffusion_model.`; any dtype, fp8 too), `save_gguf` (ComfyUI-GGUF's Q8_0 file),
`save_all_in_one` (ComfyUI's checkpoint with VAE and Qwen3), `save_modules`
(`ae.safetensors`, `qwen_3_4b.safetensors` with transformers' `model.` names),
`save_diffusers` (a ZImagePipeline folder).

This module must never touch the network or import a UI library.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .ldm_keys import vae_to_ldm
from .tiny_flux import _cast, _jitter, write_gguf
from .zimage_keys import DIFFUSION_PREFIX, QWEN3_PREFIX, VAE_PREFIX, ZIMAGE_SCHEDULER

WIDTH, HEAD_DIM = 32, 16
TEXT_WIDTH = 32
QWEN_VOCAB = 151_936  # Qwen3-4B's embedding rows


def build_tiny_zimage(seed: int = 0):
    """A tiny `ZImagePipeline` with random weights."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    from .qwen_tokenizer import qwen_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = ZImageTransformer2DModel(
            dim=WIDTH, n_layers=1, n_refiner_layers=1, n_heads=WIDTH // HEAD_DIM,
            n_kv_heads=WIDTH // HEAD_DIM, cap_feat_dim=TEXT_WIDTH, axes_dims=[4, 6, 6],
        )  # fmt: skip
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 32), layers_per_block=1, latent_channels=16,
            norm_num_groups=32, sample_size=64, scaling_factor=0.3611, shift_factor=0.1159,
            use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
        )  # fmt: skip
        qwen = Qwen3Model(Qwen3Config(
            vocab_size=QWEN_VOCAB, hidden_size=TEXT_WIDTH, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
            max_position_embeddings=40960, rope_theta=1_000_000.0, tie_word_embeddings=True,
        ))  # fmt: skip
        for module in (transformer, vae, qwen):
            _jitter(module)
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler.from_config(ZIMAGE_SCHEDULER),
        vae=vae.eval(), text_encoder=qwen.eval(), tokenizer=qwen_tokenizer(),
        transformer=transformer.eval(),
    )  # fmt: skip


def comfy_transformer_state(transformer) -> dict[str, torch.Tensor]:
    """A diffusers Z-Image transformer's weights in ComfyUI's names (the inverse of
    diffusers' single-file converter)."""
    state = {k: v.detach().clone().contiguous() for k, v in transformer.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for key in [k for k in state if k.endswith(".attention.to_q.weight")]:
        block = key.removesuffix("to_q.weight")
        parts = [state.pop(f"{block}to_{x}.weight") for x in "qkv"]
        out[f"{block}qkv.weight"] = torch.cat(parts, dim=0)
    renames = {"all_final_layer.2-1.": "final_layer.", "all_x_embedder.2-1.": "x_embedder.",
               ".attention.to_out.0.": ".attention.out.", ".attention.norm_k.": ".attention.k_norm.",
               ".attention.norm_q.": ".attention.q_norm."}  # fmt: skip
    for key, value in state.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        out[key] = value
    return out


def save_transformer(pipe, path: Path, prefix: str = "", dtype=torch.float16) -> Path:
    """The transformer alone in ComfyUI's layout (z_image_turbo_bf16.safetensors)."""
    state = {prefix + k: v for k, v in comfy_transformer_state(pipe.transformer).items()}
    save_file(_cast(state, dtype), str(path))
    return path


def save_modules(pipe, folder: Path, dtype=torch.float16) -> dict[str, Path]:
    """ae.safetensors and qwen_3_4b.safetensors in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    vae = {k: v.contiguous() for k, v in pipe.vae.state_dict().items()}
    states = {
        "vae": vae_to_ldm(vae, len(pipe.vae.config.block_out_channels)),
        "qwen3": {f"model.{k}": v.contiguous() for k, v in pipe.text_encoder.state_dict().items()},
    }
    names = {"vae": "ae", "qwen3": "qwen_3_4b"}
    paths = {}
    for kind, state in states.items():
        paths[kind] = folder / f"{names[kind]}.safetensors"
        save_file(_cast(state, dtype), str(paths[kind]))
    return paths


def save_gguf(pipe, path: Path) -> Path:
    """The transformer as ComfyUI-GGUF's Z-Image files hold it: ComfyUI's names,
    architecture "lumina2", 2-D weights in Q8_0 (the pad tokens too), the rest F32."""
    return write_gguf(comfy_transformer_state(pipe.transformer), path, arch="lumina2")


def save_all_in_one(pipe, path: Path, dtype=torch.float16) -> Path:
    """Transformer, autoencoder and Qwen3 in one file, as ComfyUI's checkpoint save writes a
    Z-Image model (`model.diffusion_model.`, `vae.`, `text_encoders.qwen3_4b.transformer.`)."""
    state = {DIFFUSION_PREFIX + k: v for k, v in comfy_transformer_state(pipe.transformer).items()}
    vae = {k: v.contiguous() for k, v in pipe.vae.state_dict().items()}
    ldm = vae_to_ldm(vae, len(pipe.vae.config.block_out_channels))
    state.update({VAE_PREFIX + k: v for k, v in ldm.items()})
    qwen = pipe.text_encoder.state_dict().items()
    state.update({f"{QWEN3_PREFIX}model.{k}": v.contiguous() for k, v in qwen})
    save_file(_cast(state, dtype), str(path))
    return path


def save_diffusers(pipe, folder: Path) -> Path:
    """A ZImagePipeline folder, as Tongyi-MAI/Z-Image-Turbo is published."""
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder
