"""Tiny LoRA, embedding and VAE files for the tiny test models, in the formats users have.

- kohya/A1111 LoRA: `lora_unet_<module>.lora_down.weight` / `.lora_up.weight` / `.alpha`,
  `lora_te_text_model_...` (SDXL: `lora_te1_`/`lora_te2_`), LoCon convolutions; SDXL UNet
  keys in kohya's SGM block naming (`input_blocks_4_1_...`).
- diffusers/peft LoRA: `unet.<module>.lora_A.weight` / `lora_B.weight`,
  `text_encoder.text_model.<module>...`.
- A1111 `.pt` embedding (`string_to_param`), `.safetensors` embeddings (SD 1.x single
  tensor, SDXL `clip_l`/`clip_g`).
- VAE `.safetensors` in the LDM layout (`encoder.down.0.block.0...`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.2")
TE_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def _lora_pair(module, rank: int, gen: torch.Generator, scale: float):
    if isinstance(module, torch.nn.Conv2d):
        down = torch.randn(rank, module.in_channels, *module.kernel_size, generator=gen)
        up = torch.randn(module.out_channels, rank, 1, 1, generator=gen)
    else:
        down = torch.randn(rank, module.in_features, generator=gen)
        up = torch.randn(module.out_features, rank, generator=gen)
    return down * scale, up * scale


def _targets(model, names: tuple[str, ...], conv: bool):
    for name, module in model.named_modules():
        if ".lora_" in name or ".base_layer" in name:
            continue  # a model that has LoRA adapters already: target the wrapped layers
        if name.endswith(names) or (conv and name.endswith("resnets.0.conv1")):
            yield name, getattr(module, "base_layer", module)


def _sgm_name(name: str, layers_per_block: int) -> str:
    """diffusers UNet module name -> kohya's SGM (LDM) naming, for attention blocks."""
    parts = name.split(".")
    if parts[0] == "down_blocks" and parts[2] == "attentions":
        index = 1 + int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        return ".".join(["input_blocks", str(index), "1", *parts[4:]])
    if parts[0] == "up_blocks" and parts[2] == "attentions":
        index = int(parts[1]) * (layers_per_block + 1) + int(parts[3])
        return ".".join(["output_blocks", str(index), "1", *parts[4:]])
    if parts[0] == "mid_block" and parts[1] == "attentions":
        return ".".join(["middle_block", "1", *parts[3:]])
    return name


def write_kohya_lora(path: Path, pipe, *, rank=4, seed=1, scale=0.3, conv=True, sgm=False) -> Path:
    gen = torch.Generator().manual_seed(seed)
    state = {}

    def add(key, module):
        down, up = _lora_pair(module, rank, gen, scale)
        state[f"{key}.lora_down.weight"] = down
        state[f"{key}.lora_up.weight"] = up
        state[f"{key}.alpha"] = torch.tensor(float(rank))

    lpb = pipe.unet.config.layers_per_block
    for name, module in _targets(pipe.unet, UNET_TARGETS, conv and not sgm):
        add("lora_unet_" + (_sgm_name(name, lpb) if sgm else name).replace(".", "_"), module)
    encoders = [("lora_te_", pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        encoders = [("lora_te1_", pipe.text_encoder), ("lora_te2_", pipe.text_encoder_2)]
    for prefix, encoder in encoders:
        for name, module in _targets(encoder, TE_TARGETS, False):
            name = name.removeprefix("text_model.")
            add(prefix + "text_model_" + name.replace(".", "_"), module)
    metadata = {"ss_network_module": "networks.lora", "ss_output_name": path.stem}
    save_file(state, str(path), metadata=metadata)
    return path


def write_peft_lora(path: Path, pipe, *, rank=4, seed=2, scale=0.3) -> Path:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in _targets(pipe.unet, UNET_TARGETS, False):
        down, up = _lora_pair(module, rank, gen, scale)
        state[f"unet.{name}.lora_A.weight"] = down
        state[f"unet.{name}.lora_B.weight"] = up
    for name, module in _targets(pipe.text_encoder, TE_TARGETS, False):
        down, up = _lora_pair(module, rank, gen, scale)
        name = "text_model." + name.removeprefix("text_model.")
        state[f"text_encoder.{name}.lora_A.weight"] = down
        state[f"text_encoder.{name}.lora_B.weight"] = up
    save_file(state, str(path))
    return path


def write_loha(path: Path) -> Path:
    """A LyCORIS LoHa file (which diffusers cannot load for Stable Diffusion)."""
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    state = {f"{key}.hada_w1_a": torch.zeros(32, 4), f"{key}.hada_w1_b": torch.zeros(4, 32),
             f"{key}.hada_w2_a": torch.zeros(32, 4), f"{key}.hada_w2_b": torch.zeros(4, 32),
             f"{key}.alpha": torch.tensor(4.0)}  # fmt: skip
    save_file(state, str(path))
    return path


def write_a1111_embedding(path: Path, vectors: int = 2, width: int = 32, seed: int = 3) -> Path:
    """A1111's textual_inversion .pt layout (loads through the tensors-only unpickler)."""
    gen = torch.Generator().manual_seed(seed)
    data = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": torch.randn(vectors, width, generator=gen)},
        "name": path.stem,
        "step": 500,
        "sd_checkpoint": "0123456789",
        "sd_checkpoint_name": "tiny-sd1",
    }
    torch.save(data, str(path))
    return path


def write_safetensors_embedding(path: Path, vectors=1, width=32, sdxl_widths=None, seed=4) -> Path:
    gen = torch.Generator().manual_seed(seed)
    if sdxl_widths:
        state = {"clip_l": torch.randn(vectors, sdxl_widths[0], generator=gen),
                 "clip_g": torch.randn(vectors, sdxl_widths[1], generator=gen)}  # fmt: skip
    else:
        state = {"emb_params": torch.randn(vectors, width, generator=gen)}
    save_file(state, str(path))
    return path


def write_ldm_vae(path: Path, pipe, *, seed=5, noise=0.05) -> Path:
    """The pipeline's VAE, perturbed, saved in the LDM layout A1111 VAE files use."""
    from webui.model_manager.ldm_keys import vae_to_ldm

    gen = torch.Generator().manual_seed(seed)
    state = {
        k: v + noise * torch.randn(v.shape, generator=gen) for k, v in pipe.vae.state_dict().items()
    }
    ldm = vae_to_ldm(state, len(pipe.vae.config.block_out_channels))
    save_file({k: v.contiguous() for k, v in ldm.items()}, str(path))
    return path
