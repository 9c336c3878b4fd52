"""The trained network's layers and files: peft adapters in, kohya `.safetensors` out.

`add_network` puts a peft LoRA adapter on the UNet (kohya's targets: every linear and 1x1
layer of the transformer blocks; with `conv_dim`, LoCon on the ResNet, down- and
upsampling convolutions) and on the text encoders (attention and MLP layers).
`remove_network` takes it off again, so the leased pipeline generates as before.

`kohya_state_dict` writes the adapters in kohya's key layout (`lora_unet_...`,
`lora_te_`/`lora_te1_`/`lora_te2_`, `lora_down`/`lora_up`/`alpha`); SDXL UNet keys in
the SGM block naming kohya's SDXL files use (`input_blocks_4_1_...`).
`save_lora_file` writes it with kohya's `ss_*` metadata and its `sshs_model_hash`
atomically: a hidden temporary file in the same folder, then `os.replace`, so a reader
never sees half a file and the previous file of that name stays until the new one is
whole. `save_state` / `load_state` keep what a resume needs (adapter weights in float32,
optimizer, LR scheduler, step, RNG) in a folder under the data folder's `training/`,
swapped in whole.

This module must never import a UI library.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers.utils.peft_utils import delete_adapter_layers
from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save, save_file

ADAPTER = "webui_training"  # not "train": that would shadow nn.Module.train
UNET_LINEAR = (
    r".*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.("
    r"attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)))$"
)
UNET_CONV = (
    r".*(resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)|(down|up)samplers\.0\.conv)$"
)
CONV_NAMES = re.compile(r"(resnets_\d+_(conv1|conv2|conv_shortcut|time_emb_proj)|samplers_0_conv)")
TEXT_TARGETS = r".*(q_proj|k_proj|v_proj|out_proj|fc1|fc2)$"
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def add_network(pipe: Any, p: Any) -> list[torch.nn.Parameter]:
    """The adapter on the UNet (and the text encoders when their LR is above 0); returns
    the trainable parameters in float32 (the base weights stay frozen)."""
    for part in ("unet", "vae", *TEXT_ENCODERS):
        module = getattr(pipe, part, None)
        if module is not None:
            module.requires_grad_(False)
    pattern = f"({UNET_LINEAR})" + (f"|({UNET_CONV})" if p.conv_dim else "")
    conv_ranks = _conv_patterns(pipe.unet, p) if p.conv_dim else ({}, {})
    config = LoraConfig(r=p.network_dim, lora_alpha=p.network_alpha, target_modules=pattern,
                        init_lora_weights=True, rank_pattern=conv_ranks[0],
                        alpha_pattern=conv_ranks[1])  # fmt: skip
    inject_adapter_in_model(config, pipe.unet, ADAPTER)
    if p.text_encoder_lr > 0:
        te_config = LoraConfig(r=p.network_dim, lora_alpha=p.network_alpha,
                               target_modules=TEXT_TARGETS, init_lora_weights=True)  # fmt: skip
        for name in TEXT_ENCODERS:
            if getattr(pipe, name, None) is not None:
                inject_adapter_in_model(te_config, getattr(pipe, name), ADAPTER)
    params = []
    for module in _parts(pipe):
        _only_ours(module, True)
        for name, param in module.named_parameters():
            if ADAPTER in name:
                param.data = param.data.float()  # diffusers' cast_training_params
                param.requires_grad_(True)
                params.append(param)
    return params


def _only_ours(module: torch.nn.Module, on: bool) -> None:
    """Every LoRA layer computes the training adapter alone (on), or none (off): the
    adapters generation jobs left resident are disabled between jobs."""
    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            if on and ADAPTER in getattr(layer, "lora_A", {}):
                layer.enable_adapters(True)
                layer.set_adapter(ADAPTER)
            else:
                layer.enable_adapters(False)


def _conv_patterns(unet: torch.nn.Module, p: Any) -> tuple[dict, dict]:
    """peft rank/alpha patterns giving LoCon's layers conv_dim and conv_alpha."""
    names = [n for n, _ in unet.named_modules() if re.fullmatch(UNET_CONV, n)]
    return ({n: p.conv_dim for n in names}, {n: p.conv_alpha for n in names})


def trainable_groups(pipe: Any, p: Any) -> list[dict]:
    """Optimizer groups: the UNet's adapter at unet_lr, the text encoders' at theirs."""
    groups = []
    for part in _parts(pipe):
        is_text = part is not pipe.unet
        lr = p.text_encoder_lr if is_text else p.unet_lr
        params = [q for n, q in part.named_parameters() if ADAPTER in n and q.requires_grad]
        if params and lr > 0:
            groups.append({"params": params, "lr": lr})
    return groups


def _parts(pipe: Any) -> list[torch.nn.Module]:
    parts = [pipe.unet]
    parts += [getattr(pipe, n) for n in TEXT_ENCODERS if getattr(pipe, n, None) is not None]
    return parts


def remove_network(pipe: Any) -> None:
    """Take the training adapter off every part; the frozen model is as it was."""
    for module in _parts(pipe):
        if any(ADAPTER in n for n, _ in module.named_modules()):
            delete_adapter_layers(module, ADAPTER)
            config = getattr(module, "peft_config", None)
            if isinstance(config, dict):
                config.pop(ADAPTER, None)
                if not config:
                    del module.peft_config
        _only_ours(module, False)  # other LoRAs stay disabled, as between two jobs
        module.requires_grad_(False)
        module.eval()
    if hasattr(pipe.unet, "disable_gradient_checkpointing"):
        pipe.unet.disable_gradient_checkpointing()


def peft_state(pipe: Any) -> dict[str, torch.Tensor]:
    """The adapter weights, keyed "unet.…"/"text_encoder.…" in peft's layout."""
    state: dict[str, torch.Tensor] = {}
    for name in ("unet", *TEXT_ENCODERS):
        module = getattr(pipe, name, None)
        if module is None or not any(ADAPTER in n for n, _ in module.named_modules()):
            continue
        part = get_peft_model_state_dict(module, adapter_name=ADAPTER)
        state.update({f"{name}.{k}": v.detach().float().cpu().clone() for k, v in part.items()})
    return state


def load_peft_state(pipe: Any, state: dict[str, torch.Tensor]) -> None:
    for name in ("unet", *TEXT_ENCODERS):
        part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        if part:
            set_peft_model_state_dict(getattr(pipe, name), part, adapter_name=ADAPTER)


def kohya_state_dict(pipe: Any, p: Any, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The adapters in kohya's layout, with each module's alpha."""
    kohya = convert_state_dict_to_kohya(peft_state(pipe))
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    layers = int(pipe.unet.config.layers_per_block)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in kohya.items():
        module, _, rest = key.partition(".")
        module = re.sub(r"^(lora_te\d?)_encoder_", r"\1_text_model_encoder_", module)
        if not sdxl:
            module = module.replace("lora_te1_", "lora_te_")
        elif module.startswith("lora_unet_"):
            module = "lora_unet_" + sgm_name(module[len("lora_unet_") :], layers)
        if rest == "alpha":
            conv = p.conv_dim and CONV_NAMES.search(module) and module.startswith("lora_unet_")
            tensor = torch.tensor(float(p.conv_alpha if conv else p.network_alpha))
        else:
            tensor = tensor.to(dtype).contiguous()
        out[f"{module}.{rest}"] = tensor
    return out


def sgm_name(name: str, layers: int) -> str:
    """A diffusers UNet module name (underscored) in SGM's block naming (SDXL kohya)."""
    per = layers + 1
    resnet = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
              "conv_shortcut": "skip_connection"}  # fmt: skip

    def inner(kind: str, rest: str) -> str:
        if kind == "resnets":
            return resnet.get(rest, rest)
        return rest

    if m := re.match(r"down_blocks_(\d+)_(resnets|attentions)_(\d+)_(.+)", name):
        block, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks_{1 + per * block + index}_{0 if kind == 'resnets' else 1}_{inner(kind, rest)}"  # noqa: E501
    if m := re.match(r"down_blocks_(\d+)_downsamplers_0_conv", name):
        return f"input_blocks_{per * (int(m[1]) + 1)}_0_op"
    if m := re.match(r"mid_block_(resnets|attentions)_(\d+)_(.+)", name):
        index = 1 if m[1] == "attentions" else 2 * int(m[2])
        return f"middle_block_{index}_{inner(m[1], m[3])}"
    if m := re.match(r"up_blocks_(\d+)_(resnets|attentions)_(\d+)_(.+)", name):
        block, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks_{per * block + index}_{0 if kind == 'resnets' else 1}_{inner(kind, rest)}"  # noqa: E501
    return name  # up-sampler convolutions are found by the loaders in both namings


def save_lora_file(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically with kohya's model hashes in the metadata."""
    metadata = dict(metadata)
    digest = _addnet_hash(state, metadata)
    metadata["sshs_model_hash"] = digest
    metadata["sshs_legacy_hash"] = digest[:8]
    _atomic(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))


def _addnet_hash(state: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """sha256 of the file's bytes after its header (the tensors), as kohya computes it."""
    data = save(state, metadata={k: v for k, v in metadata.items() if k.startswith("ss_")})
    header = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header :]).hexdigest()


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.partial.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_state(folder: Path, pipe: Any, optimizer, scheduler, info: dict[str, Any]) -> None:
    """The resume point, written beside and swapped in whole (old state kept until then)."""
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(peft_state(pipe), str(tmp / "adapter.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state()}, tmp / "optimizer.pt")  # fmt: skip
    (tmp / "state.json").write_text(json.dumps(info, indent=1), encoding="utf-8")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_state(folder: Path, pipe: Any, optimizer, scheduler) -> dict[str, Any]:
    info = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    load_peft_state(pipe, load_file(str(folder / "adapter.safetensors")))
    saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["rng"])
    return info
