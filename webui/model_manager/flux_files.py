"""FLUX.1 weights in diffusers' and transformers' classes, offline.

The layouts and configs are read by `flux_keys` (shapes only); here the tensors of each
component are read (`read_state`), renamed and built into `FluxTransformer2DModel`,
`AutoencoderKL`, `CLIPTextModel` and `T5EncoderModel` without allocating the weights twice.

Two traps of diffusers 0.42's single-file path are avoided by converting here:
its FLUX converter splits `single_blocks.N.linear1` at FLUX.1's width 3072 whatever the
file's width (`transformer_state` splits at the width read from the tensors), and its T5
loader fills `shared.weight` but not `encoder.embed_tokens.weight` (`build_t5` ties them).

This module must never touch the network, never import `webui.core` or a UI library.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from .identify import UnsupportedModelError

if TYPE_CHECKING:
    import torch


# --- weights ----------------------------------------------------------------------------
def read_state(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of `path` under `prefix`, the prefix removed (memory-mapped; a GGUF
    file's quantized tensors as diffusers' `GGUFParameter`s, `flux_gguf`)."""
    from safetensors import safe_open

    from . import flux_gguf

    if flux_gguf.is_gguf(path):
        return flux_gguf.read_gguf_state(path, prefix)

    with safe_open(str(path), framework="pt") as handle:
        return {key[len(prefix) :]: handle.get_tensor(key) for key in handle.keys()
                if key.startswith(prefix)}  # fmt: skip


def _swap_halves(weight: torch.Tensor) -> torch.Tensor:
    """BFL's final modulation is (shift, scale); diffusers' AdaLayerNormContinuous wants
    (scale, shift)."""
    import torch

    shift, scale = weight.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


_DIRECT = {  # BFL name -> diffusers name, outside the blocks
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
}
_DOUBLE = {  # inside double_blocks.N -> transformer_blocks.N
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
}
_SINGLE = {  # inside single_blocks.N -> single_transformer_blocks.N
    "modulation.lin": "norm.linear",
    "norm.query_norm.scale": "attn.norm_q.weight",
    "norm.key_norm.scale": "attn.norm_k.weight",
    "linear2": "proj_out",
}
_QKV = {"img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
        "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")}  # fmt: skip


def _renamed(rest: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old) :]
    return None


def transformer_state(state: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """A BFL-layout transformer state dict (prefix removed) in diffusers' names. The fused
    projections are split at `width`, the file's own (never FLUX.1's 3072); a key this
    does not know raises `UnsupportedModelError` instead of being dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        block, _, rest = key.partition(".")
        if block in ("double_blocks", "single_blocks"):
            index, _, rest = rest.partition(".")
            out.update(_block_tensors(block, int(index), rest, value, width))
        elif key.startswith("final_layer.adaLN_modulation.1."):
            out["norm_out.linear." + key.rsplit(".", 1)[1]] = _swap_halves(value)
        elif (name := _renamed(key, _DIRECT)) is not None:
            out[name] = value
        else:
            raise UnsupportedModelError(f"unknown FLUX transformer tensor {key}")
    return out


def _block_tensors(block: str, index: int, rest: str, value: torch.Tensor, width: int) -> dict:
    kind = rest.rsplit(".", 1)[1]  # weight | bias | scale
    if block == "double_blocks":
        target = f"transformer_blocks.{index}."
        fused = rest.rsplit(".", 1)[0]
        if fused in _QKV:
            return {f"{target}{name}.{kind}": part
                    for name, part in zip(_QKV[fused], value.chunk(3, dim=0), strict=True)}  # fmt: skip
        name = _renamed(rest, _DOUBLE)
    else:
        target = f"single_transformer_blocks.{index}."
        if rest.startswith("linear1."):
            q, k, v, mlp = value.split([width, width, width, value.shape[0] - 3 * width], dim=0)
            names = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
            return {f"{target}{n}.{kind}": t for n, t in zip(names, (q, k, v, mlp), strict=True)}
        name = _renamed(rest, _SINGLE)
    if name is None:
        raise UnsupportedModelError(f"unknown FLUX transformer tensor {block}.{index}.{rest}")
    return {target + name: value}


def _empty(factory, *args: Any, **kwargs: Any):
    """A model built without allocating its weights (they are assigned from the file)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return factory(*args, **kwargs)


def _assign(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    wanted = model.state_dict().keys()
    missing = sorted(set(wanted) - set(state))
    if missing:
        raise UnsupportedModelError(f"{what}: tensors missing ({', '.join(missing[:3])} ...)")
    model.load_state_dict({k: v for k, v in state.items() if k in wanted}, assign=True)


def _in_dtype(model, dtype: torch.dtype, keep_wide: tuple[str, ...] = (), scales=None):
    """The model in the compute dtype, in eval mode; fp8 layers stay fp8, cast per layer
    (`weight_storage.keep_fp8`, with a scaled-fp8 file's `scales`), but for the layers
    named by `keep_wide`."""
    from .weight_storage import has_fp8, keep_fp8

    if has_fp8(model):
        return keep_fp8(model, dtype, keep_wide, scales)
    if any(p.dtype != dtype for p in model.parameters()):
        model = model.to(dtype)
    return model.eval()


def build_transformer(config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype):
    from diffusers import FluxTransformer2DModel

    from . import flux_gguf, fp8_scaled

    if flux_gguf.is_quantized(state):  # GGUF: the weights stay quantized
        return flux_gguf.build_gguf_transformer(config, state, dtype)
    model = _empty(FluxTransformer2DModel.from_config, config)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    state, scales = fp8_scaled.take_scales(state)  # ComfyUI's fp8_scaled files
    _assign(model, transformer_state(state, width), "FLUX transformer")
    scales = fp8_scaled.converted_scales(state, scales, lambda s: transformer_state(s, width))
    return _in_dtype(model, dtype, scales=scales)


def build_vae(config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    from .fp8_scaled import folded

    model = _empty(AutoencoderKL.from_config, config)
    _assign(model, convert_ldm_vae_checkpoint(folded(state), config), "FLUX autoencoder")
    return _in_dtype(model, dtype)


def build_clip_l(config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype):
    from transformers import CLIPTextConfig, CLIPTextModel

    from .fp8_scaled import take_scales

    model = _empty(CLIPTextModel, CLIPTextConfig(**config))
    if not any(k.startswith("text_model.") for k in model.state_dict()):  # transformers 5
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    state, scales = take_scales(state)  # a scaled-fp8 all-in-one file's (`fp8_scaled`)
    _assign(model, state, "CLIP-L text encoder")
    return _in_dtype(model, dtype, scales=scales)


def build_t5(config: dict, state: dict[str, torch.Tensor], dtype: torch.dtype):
    """T5's encoder; `encoder.embed_tokens` is `shared` (files keep only `shared.weight`)."""
    from transformers import T5Config, T5EncoderModel

    from . import gguf_text
    from .flux_gguf import is_quantized
    from .fp8_scaled import take_scales

    model = _empty(T5EncoderModel, T5Config(**config))
    if is_quantized(state):  # a GGUF file: the weights stay quantized
        return gguf_text.build_t5(model, state, dtype)
    state, scales = take_scales(state)  # t5xxl_fp8_e4m3fn_scaled (`fp8_scaled`)
    state.setdefault("encoder.embed_tokens.weight", state["shared.weight"])
    if "shared" in scales:
        scales["encoder.embed_tokens"] = scales["shared"]
    _assign(model, state, "T5 text encoder")
    model.encoder.embed_tokens.weight = model.shared.weight  # one tensor, as trained
    return _in_dtype(model, dtype, scales=scales)
