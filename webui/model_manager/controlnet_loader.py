"""Load a ControlNet file or folder as diffusers' `ControlNetModel`, offline; keep a few.

`load_control_model` also loads the other kinds of unit models of `models/ControlNet`
(IP-Adapter: `ip_adapter.py`; T2I-Adapter: `t2i_adapter.py`, its style adapter
`t2i_style.py`; FLUX ControlNets:
`flux_controlnet.py`), told apart by their keys; a model of another family than the
checkpoint's (a FLUX ControlNet on a UNet, an SD one on FLUX) raises `ControlNetLoadError`.

- lllyasviel's layout (`control_model.*` or bare `input_blocks.*` keys, `.safetensors` or
  `.pth`): read with safetensors or the project's restricted unpickler
  (`loader._load_ckpt`), converted with diffusers' own `convert_controlnet_checkpoint`.
- diffusers' layout as a single file: used as it is; a ControlNet Union (xinsir's
  `task_embedding`, `control_add_embedding.*`, `transformer_layes.*` keys) as diffusers'
  `ControlNetUnionModel`, its mode count and widths read from the tensors.
- a diffusers folder (`config.json` + weights): `ControlNetModel.from_pretrained`, local.

A single file's config is the checkpoint UNet's (a ControlNet copies its encoder: head
sizes, projections, SDXL's added embeddings), with what the tensors say put over it
(channels, layers, transformer depth, context width, hint encoder). A file that does not
fit the checkpoint raises `ControlNetLoadError` naming it.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from ..errors import UserError
from .loader import _load_ckpt

log = logging.getLogger(__name__)
LDM_PREFIX = "control_model."
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_UNET_KEYS = ("attention_head_dim", "use_linear_projection", "addition_embed_type",
              "addition_time_embed_dim", "projection_class_embeddings_input_dim",
              "num_attention_heads", "upcast_attention", "only_cross_attention",
              "class_embed_type", "num_class_embeds", "norm_num_groups", "norm_eps",
              "act_fn", "flip_sin_to_cos", "freq_shift", "downsample_padding",
              "mid_block_type", "resnet_time_scale_shift", "encoder_hid_dim",
              "encoder_hid_dim_type", "addition_embed_type_num_heads",
              "global_pool_conditions")  # fmt: skip


class ControlNetLoadError(UserError):
    """A ControlNet file that cannot be read or does not fit the checkpoint."""


def _read(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_file(str(path))
    return _load_ckpt(path)


def _count(state: dict, pattern: str) -> int:
    n = 0
    while any(k.startswith(pattern.format(n)) for k in state):
        n += 1
    return n


def _to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lllyasviel's layout converted by diffusers; diffusers' layout as it is."""
    if "time_embedding.linear_1.weight" in state:
        return state
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    bare = {k.removeprefix(LDM_PREFIX): v for k, v in state.items()}
    per_level = 0  # input blocks up to the first downsample: conv_in, then the resnets
    for i in range(1, _count(bare, "input_blocks.{}.")):
        if f"input_blocks.{i}.0.op.weight" in bare:
            break
        per_level += 1
    return convert_controlnet_checkpoint(bare, {"layers_per_block": per_level})


def config_from_tensors(state: dict[str, torch.Tensor], unet_config: dict) -> dict:
    """The ControlNetModel config of a diffusers-layout state dict on this UNet."""
    levels = _count(state, "down_blocks.{}.")
    channels = [state[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(levels)]
    attention = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in state)
                 for i in range(levels)]  # fmt: skip
    depth = [max(1, _count(state, f"down_blocks.{i}.attentions.0.transformer_blocks.{{}}."))
             for i in range(levels)]  # fmt: skip
    key = next(k for k in state if k.endswith("attn2.to_k.weight"))
    hint = [state["controlnet_cond_embedding.conv_in.weight"].shape[0]] + [
        state[f"controlnet_cond_embedding.blocks.{2 * i + 1}.weight"].shape[0]
        for i in range(_count(state, "controlnet_cond_embedding.blocks.{}.") // 2)
    ]
    config = {k: unet_config[k] for k in _UNET_KEYS if k in unet_config}
    config.update({
        "in_channels": state["conv_in.weight"].shape[1],
        "block_out_channels": channels,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "layers_per_block": _count(state, "down_blocks.0.resnets.{}."),
        "transformer_layers_per_block": depth,
        "cross_attention_dim": state[key].shape[1],
        "conditioning_embedding_out_channels": hint,
        "conditioning_channels": state["controlnet_cond_embedding.conv_in.weight"].shape[1],
    })  # fmt: skip
    if isinstance(config.get("attention_head_dim"), list | tuple):
        config["attention_head_dim"] = list(config["attention_head_dim"])[:levels]
    if "add_embedding.linear_1.weight" in state:
        config["projection_class_embeddings_input_dim"] = state[
            "add_embedding.linear_1.weight"
        ].shape[1]
    return config


def union_config(state: dict[str, torch.Tensor]) -> dict:
    """The ControlNetUnionModel part of a union file's config (xinsir's layout; the head
    count is not in the tensors: xinsir's 8)."""
    modes, channels = state["task_embedding"].shape
    return {"num_control_type": modes, "num_trans_channel": channels,
            "num_trans_layer": _count(state, "transformer_layes.{}."),
            "num_proj_channel": state["spatial_ch_projs.weight"].shape[0],
            "num_trans_head": 8}  # fmt: skip


def _model_class(path: Path, state: dict | None) -> Any:
    from diffusers import ControlNetModel, ControlNetUnionModel

    from .controlnet_files import union_modes

    if state is not None:
        return ControlNetUnionModel if "task_embedding" in state else ControlNetModel
    return ControlNetUnionModel if union_modes(path / DIFFUSERS_WEIGHTS) else ControlNetModel


def load_controlnet(path: Path, unet_config: dict) -> Any:
    """A ControlNetModel (a ControlNetUnionModel for a union file; float32, CPU) from a
    file or a diffusers folder."""
    try:
        if path.is_dir():
            return _model_class(path, None).from_pretrained(str(path), local_files_only=True)
        state = _to_diffusers(_read(path))
        config = config_from_tensors(state, unet_config)
        model_class = _model_class(path, state)
        if "task_embedding" in state:
            config.update(union_config(state))
        model = model_class.from_config(config)
        model.load_state_dict(state, strict=True)
        return model
    except UserError:
        raise
    except (RuntimeError, KeyError, ValueError, StopIteration, OSError) as exc:
        raise ControlNetLoadError(f"ControlNet {path.name}: cannot load it ({exc})") from exc


def file_kind(path: Path) -> str:
    """ "controlnet", "ip-adapter", "t2i-adapter" or "t2i-style", from the keys (the name
    for pickles)."""
    from .controlnet_files import _read_kind

    if path.is_dir():
        from .flux_control_keys import is_folder

        config = path / "config.json"
        if is_folder(path):
            return "flux-controlnet"
        if is_folder(path, "SD3ControlNetModel"):
            return "sd3-controlnet"
        return "t2i-adapter" if config.is_file() and "T2IAdapter" in config.read_text() else (
            "controlnet")  # fmt: skip
    return _read_kind(path)[1]


def load_control_model(path: Path, unet_config: dict, unet: Any = None) -> Any:
    """The model of a unit's file, by its kind (float32, CPU)."""
    kind = file_kind(path)
    flux_ip = kind == "ip-adapter" and _is_flux_ip(path)
    _check_family(path, "flux-controlnet" if flux_ip else kind, unet_config)
    if kind == "flux-controlnet":
        from .flux_controlnet import load_flux_controlnet

        return load_flux_controlnet(path)
    if kind == "sd3-controlnet":
        from .sd3_controlnet import load_sd3_controlnet

        return load_sd3_controlnet(path, unet_config)
    if flux_ip:
        from .flux_ip_adapter import load_flux_ip_adapter

        return load_flux_ip_adapter(path, unet)
    if kind == "ip-adapter":
        from .ip_adapter import load_ip_adapter

        if unet is None:
            raise ControlNetLoadError(f"IP-Adapter {path.name}: no UNet to fit it to")
        return load_ip_adapter(path, unet)
    if kind in ("t2i-adapter", "t2i-style"):  # the file's keys tell which (t2i_adapter.py)
        from .t2i_adapter import load_t2i_adapter

        return load_t2i_adapter(path)
    return load_controlnet(path, unet_config)


def _is_flux_ip(path: Path) -> bool:
    from .flux_control_keys import is_flux_ip_adapter
    from .sniff import HeaderError, read_header

    try:
        return path.suffix == ".safetensors" and is_flux_ip_adapter(read_header(path).shapes)
    except (HeaderError, OSError):
        return False


def _check_family(path: Path, kind: str, config: dict) -> None:
    """A ControlNetLoadError when the unit's model is not of the checkpoint's kind: FLUX
    ControlNets run on FLUX transformers (`num_single_layers`), SD 3.5 ControlNets on SD 3
    transformers (`caption_projection_dim`), the others on UNets."""
    if not config:  # no checkpoint to compare with (a file read on its own)
        return
    for family_kind, (marker, label) in _TRANSFORMER_KINDS.items():
        if kind == family_kind and marker not in config:
            raise ControlNetLoadError(f"{path.name} is {label} model: choose {label} "
                                      "checkpoint or a ControlNet of this checkpoint's "
                                      "family")  # fmt: skip
    if kind not in _TRANSFORMER_KINDS and "block_out_channels" not in config:  # a transformer
        raise ControlNetLoadError(f"{path.name} is an SD/SDXL {kind}: it does not run on this "
                                  "checkpoint (FLUX.1 and SD 3.5 take their own "
                                  "ControlNets)")  # fmt: skip


_TRANSFORMER_KINDS = {"flux-controlnet": ("num_single_layers", "a FLUX"),
                      "sd3-controlnet": ("caption_projection_dim", "an SD 3.5")}  # fmt: skip


class ControlNetCache:
    """The last few ControlNets used (by path and modification time), on the models' device."""

    def __init__(self, device: str | torch.device, dtype: torch.dtype, size: int = 2):
        self.device, self.dtype, self.size = torch.device(device), dtype, size
        self._models: OrderedDict[tuple, Any] = OrderedDict()

    def get(self, path: Path, unet_config: dict, unet: Any = None) -> Any:
        """The model of a ControlNet, IP-Adapter (needs `unet`) or T2I-Adapter file."""
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        model = self._models.pop(key, None)
        if model is None:
            log.info("Loading ControlNet %s", path.name)
            model = load_control_model(path, unet_config, unet).to(self.device, self.dtype).eval()
            while len(self._models) >= self.size:
                self._models.popitem(last=False)
        self._models[key] = model
        if "num_single_layers" in unet_config and hasattr(model, "controlnet_x_embedder"):
            from .flux_controlnet import check_fits as check_flux

            check_flux(model, unet_config, path.name)  # FLUX: the transformer's width
        if "caption_projection_dim" in unet_config and hasattr(model, "pos_embed_input"):
            from .sd3_controlnet import fit_to

            fit_to(model, unet, path.name)  # SD 3.5: its width; Stability's: its positions
        if getattr(getattr(model, "config", None), "adapter_type", None):  # T2I: at each use
            from .t2i_adapter import check_fits

            check_fits(model, unet_config, path.name)
        if getattr(model, "kind", "") == "t2i-style":  # its tokens: the prompt's width
            from .t2i_style import check_fits as check_style

            check_style(model, unet_config, path.name)
        return model

    def clear(self) -> None:
        self._models.clear()
