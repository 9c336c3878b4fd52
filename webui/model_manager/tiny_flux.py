"""Tiny random-weight FLUX.1 models for tests and manual checks, saved in the layouts users
download (see `flux_files`).

Real diffusers and transformers classes at tiny sizes, deterministic for a seed:
transformer width 64 (2 heads of 32, never FLUX.1's 3072, so a width assumed from the
family fails), 1 double and 1 single block, 16 latent channels; CLIP-L width 32 with the
real vocabulary; T5 width 32 with T5 v1.1's 32 128-entry vocabulary; an autoencoder with
2 levels (a scale factor of 2) and 16 latent channels, no quant convolutions (as
ae.safetensors). `schnell=True` leaves out the guidance embedding; `fill=True` widens the
input layer as FLUX.1 Fill's.

Layouts written: `save_transformer` (BFL keys, optionally under `model.diffusion_model.`),
`save_all_in_one` (ComfyUI/Forge prefixes), `save_modules` (`ae.safetensors`,
`clip_l.safetensors`, `t5xxl_fp16.safetensors` without `encoder.embed_tokens.weight`, as
the published file), `save_diffusers` (a FluxPipeline folder).

This module must never touch the network or import a UI library.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .flux_keys import (
    CLIP_L_PREFIX,
    DIFFUSION_PREFIX,
    FLUX_SCHEDULER,  # the family's scheduler config
    T5_PREFIX,
    VAE_PREFIX,
)
from .ldm_keys import vae_to_ldm
from .tiny import _text_config

HEAD_DIM, HEADS = 32, 2
TEXT_WIDTH = 32
T5_VOCAB = 32128
FILL_IN_CHANNELS = 64 + 64 + 4 * 2 * 2  # the autoencoder's scale factor is 2


def build_tiny_flux(seed: int = 0, schnell: bool = False, fill: bool = False):
    """A tiny `FluxPipeline` with random weights; `fill`: a FLUX.1 Fill transformer (its
    input layer also reads the masked image's latents and the mask, 64 + 64 + 4 x 2 x 2
    features here as 64 + 64 + 4 x 8 x 8 = 384 in FLUX.1 Fill)."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    from .tokenizers import clip_tokenizer, t5_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            in_channels=FILL_IN_CHANNELS if fill else 64, out_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=HEAD_DIM,
            num_attention_heads=HEADS, joint_attention_dim=TEXT_WIDTH,
            pooled_projection_dim=TEXT_WIDTH, guidance_embeds=not schnell,
            axes_dims_rope=(4, 14, 14),
        )  # fmt: skip
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(32, 32), layers_per_block=1, latent_channels=16,
            norm_num_groups=32, sample_size=64, scaling_factor=0.3611, shift_factor=0.1159,
            use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
        )  # fmt: skip
        clip = CLIPTextModel(_text_config(TEXT_WIDTH, open_clip=False))
        t5 = T5EncoderModel(T5Config(
            vocab_size=T5_VOCAB, d_model=TEXT_WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
        ))  # fmt: skip
        for module in (transformer, vae, clip, t5):
            _jitter(module)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(
        dict(FLUX_SCHEDULER, **({"shift": 1.0, "use_dynamic_shifting": False} if schnell else {}))
    )
    return FluxPipeline(
        scheduler=scheduler, vae=vae.eval(), text_encoder=clip.eval(),
        tokenizer=clip_tokenizer(), text_encoder_2=t5.eval(), tokenizer_2=t5_tokenizer(),
        transformer=transformer.eval(),
    )  # fmt: skip


def _jitter(module: torch.nn.Module) -> None:
    """Random weights everywhere (diffusers zero-initialises some output layers)."""
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn_like(param) * 0.02)


def _cat(state: dict, names: list[str]) -> torch.Tensor:
    return torch.cat([state.pop(name) for name in names], dim=0)


def bfl_transformer_state(transformer) -> dict[str, torch.Tensor]:
    """A diffusers FLUX transformer's weights in Black Forest Labs' names (the inverse of
    `flux_files.transformer_state`)."""
    from .flux_files import _DIRECT, _DOUBLE, _SINGLE, _swap_halves

    state = {k: v.detach().clone().contiguous() for k, v in transformer.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for i in range(transformer.config.num_layers):
        src, dst = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}img_attn.qkv.{kind}"] = _cat(
                state, [f"{src}attn.to_{x}.{kind}" for x in "qkv"]
            )
            out[f"{dst}txt_attn.qkv.{kind}"] = _cat(
                state, [f"{src}attn.add_{x}_proj.{kind}" for x in "qkv"]
            )
        _rename_block(state, out, src, dst, _DOUBLE)
    for i in range(transformer.config.num_single_layers):
        src, dst = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        for kind in ("weight", "bias"):
            names = [f"{src}attn.to_{x}.{kind}" for x in "qkv"] + [f"{src}proj_mlp.{kind}"]
            out[f"{dst}linear1.{kind}"] = _cat(state, names)
        _rename_block(state, out, src, dst, _SINGLE)
    for kind in ("weight", "bias"):
        out[f"final_layer.adaLN_modulation.1.{kind}"] = _swap_halves(
            state.pop(f"norm_out.linear.{kind}")
        )
    for old, new in _DIRECT.items():
        for kind in ("weight", "bias"):
            if f"{new}.{kind}" in state:
                out[f"{old}.{kind}"] = state.pop(f"{new}.{kind}")
    if state:
        raise KeyError(f"not written: {sorted(state)[:3]}")
    return out


def _rename_block(state: dict, out: dict, src: str, dst: str, table: dict[str, str]) -> None:
    for old, new in table.items():
        for key in [k for k in state if k.startswith(src + new)]:
            out[dst + old + key[len(src + new) :]] = state.pop(key)


def _module_states(pipe) -> dict[str, dict[str, torch.Tensor]]:
    vae = {k: v.contiguous() for k, v in pipe.vae.state_dict().items()}
    t5 = {k: v.contiguous() for k, v in pipe.text_encoder_2.state_dict().items()}
    t5.pop("encoder.embed_tokens.weight")  # as t5xxl_fp16.safetensors: only shared.weight
    return {
        "vae": vae_to_ldm(vae, len(pipe.vae.config.block_out_channels)),
        "clip_l": {
            _text_model(k): v.contiguous() for k, v in pipe.text_encoder.state_dict().items()
        },
        "t5xxl": t5,
    }


def _text_model(key: str) -> str:
    """CLIP-L's names as the published files have them (transformers 5 drops the prefix)."""
    return key if key.startswith("text_model.") else f"text_model.{key}"


def _cast(state: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def save_transformer(pipe, path: Path, prefix: str = "", dtype=torch.float16) -> Path:
    """The transformer alone in BFL's layout (flux1-dev.safetensors)."""
    state = {prefix + k: v for k, v in bfl_transformer_state(pipe.transformer).items()}
    save_file(_cast(state, dtype), str(path))
    return path


def save_modules(pipe, folder: Path, dtype=torch.float16) -> dict[str, Path]:
    """ae.safetensors, clip_l.safetensors and t5xxl_fp16.safetensors in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    names = {"vae": "ae", "clip_l": "clip_l", "t5xxl": "t5xxl_fp16"}
    paths = {}
    for kind, state in _module_states(pipe).items():
        paths[kind] = folder / f"{names[kind]}.safetensors"
        save_file(_cast(state, dtype), str(paths[kind]))
    return paths


def save_all_in_one(pipe, path: Path, dtype=torch.float16) -> Path:
    """Transformer, autoencoder and both text encoders in one file, as ComfyUI saves it."""
    modules = _module_states(pipe)
    state = {DIFFUSION_PREFIX + k: v for k, v in bfl_transformer_state(pipe.transformer).items()}
    state.update({VAE_PREFIX + k: v for k, v in modules["vae"].items()})
    state.update({CLIP_L_PREFIX + k: v for k, v in modules["clip_l"].items()})
    state.update({T5_PREFIX + k: v for k, v in modules["t5xxl"].items()})
    save_file(_cast(state, dtype), str(path))
    return path


def save_diffusers(pipe, folder: Path) -> Path:
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def save_gguf(pipe, path: Path, kquant: str | None = None) -> Path:
    """The transformer as city96's GGUF files hold it: BFL keys, 2-D weights in Q8_0 (their
    rows in blocks of 32), 1-D tensors in F32. `kquant` ("Q4_K", "Q5_K"): the weights whose
    rows are whole 256-blocks (the MLPs' second layers) in that K-quant instead; gguf's
    writer cannot quantize K-quants, so those get valid random blocks (small scales), and
    the model computes with whatever they decode to."""
    return write_gguf(bfl_transformer_state(pipe.transformer), path, kquant)


def write_gguf(state: dict[str, torch.Tensor], path: Path, kquant: str | None = None,
               arch: str = "flux") -> Path:  # fmt: skip
    """A BFL-keyed transformer state as `save_gguf` writes it (also the benchmark's
    full-width block stacks, `webui.bench.flux_memory`; Z-Image's ComfyUI-keyed transformer
    with `arch` "lumina2", `tiny_zimage.save_gguf`; SD 3.5's Stability-keyed state with
    `arch="sd3"`, as city96's SD 3.5 files)."""
    import gguf
    import numpy as np
    from gguf import quants

    writer = gguf.GGUFWriter(str(path), arch=arch)
    rng = np.random.default_rng(0)
    for name, tensor in state.items():
        array = tensor.float().numpy()
        if kquant and array.ndim == 2 and array.shape[1] % 256 == 0:
            kind = getattr(gguf.GGMLQuantizationType, kquant)
            _, type_size = gguf.GGML_QUANT_SIZES[kind]
            blocks = rng.integers(0, 256, (array.shape[0], array.shape[1] // 256, type_size),
                                  dtype=np.uint8)  # fmt: skip
            scales = np.array([0.0004, 0.0002], dtype=np.float16).view(np.uint8)
            blocks[:, :, :4] = scales  # d and dmin, the block's two f16 scales
            writer.add_tensor(name, blocks.reshape(array.shape[0], -1), raw_dtype=kind)
        elif array.ndim == 2 and array.shape[1] % 32 == 0:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, quants.quantize(array, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
