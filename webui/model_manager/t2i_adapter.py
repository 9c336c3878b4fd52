"""T2I-Adapter files of `models/ControlNet` as diffusers' `T2IAdapter`, offline.

Layouts read:
- TencentARC's originals (`t2iadapter_canny_sd15v2.pth`, `t2iadapter_color_sd14v1.pth`,
  ...): `conv_in.*` and a flat `body.N.block1/2.*` (`body.N.in_conv.*` where the width
  changes) for the full adapter; `body.I.in_conv`, `body.I.body.J.block1/2`,
  `body.I.out_conv` for the light one (color). `.pth` only through the project's
  restricted unpickler. Keys are renamed to diffusers' (`adapter.body.I.resnets.J.*`).
- diffusers' layout as one file (`t2i-adapter_diffusers_xl_canny.safetensors`: `adapter.*`)
  or a folder (`config.json` of a `T2IAdapter` with its weights).

The config is read from the tensors: input channels and pixel-unshuffle factor from
`conv_in` (SD 1.x adapters unshuffle by 8, SDXL ones by 16: then `full_adapter_xl`),
channels and residual blocks per level. A file with the style adapter's keys
(`style_embedding`: CLIP tokens, not residuals) is read as `t2i_style.StyleAdapter`.

This module must never import a UI library.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

StateDict = dict[str, torch.Tensor]
_FLAT = re.compile(r"body\.(\d+)\.(block1|block2|in_conv)\.(weight|bias)$")
_LIGHT = re.compile(r"body\.(\d+)\.body\.(\d+)\.(.+)$")


class T2IAdapterLoadError(UserError):
    """A T2I-Adapter file that cannot be read or is not a residual adapter."""


def _count(state: StateDict, pattern: str) -> int:
    n = 0
    while any(k.startswith(pattern.format(n)) for k in state):
        n += 1
    return n


def original_to_diffusers(state: StateDict) -> StateDict:
    """TencentARC's key names -> diffusers' `T2IAdapter` names (`adapter.*`)."""
    out: StateDict = {}
    if any(".out_conv." in k for k in state):  # the light adapter
        for key, value in state.items():
            m = _LIGHT.match(key)
            out["adapter." + (f"body.{m[1]}.resnets.{m[2]}.{m[3]}" if m else key)] = value
        return out
    blocks = sorted({int(m[1]) for k in state if (m := _FLAT.match(k))})
    first = state["body.0.block1.weight"].shape[0]
    per_level = sum(1 for b in blocks if state[f"body.{b}.block1.weight"].shape[0] == first
                    and f"body.{b}.in_conv.weight" not in state)  # fmt: skip
    for key, value in state.items():
        m = _FLAT.match(key)
        if m is None:
            out[f"adapter.{key}"] = value
            continue
        level, block = divmod(int(m[1]), max(per_level, 1))
        if m[2] == "in_conv":
            out[f"adapter.body.{level}.in_conv.{m[3]}"] = value
        else:
            out[f"adapter.body.{level}.resnets.{block}.{m[2]}.{m[3]}"] = value
    return out


def config_from_tensors(state: StateDict) -> dict[str, Any]:
    """The `T2IAdapter` config of a diffusers-layout state dict."""
    levels = _count(state, "adapter.body.{}.")
    blocks = _count(state, "adapter.body.0.resnets.{}.")
    if "adapter.body.0.out_conv.weight" in state:  # light: one more block at the last width
        channels = [state[f"adapter.body.{i}.out_conv.weight"].shape[0] for i in range(levels - 1)]
        unshuffled = state["adapter.body.0.in_conv.weight"].shape[1]
        return {"in_channels": unshuffled // 64, "channels": channels, "num_res_blocks": blocks,
                "downscale_factor": 8, "adapter_type": "light_adapter"}  # fmt: skip
    channels = [state[f"adapter.body.{i}.resnets.0.block1.weight"].shape[0] for i in range(levels)]
    unshuffled = state["adapter.conv_in.weight"].shape[1]
    xl = levels == 4 and unshuffled in (256, 768)
    factor = 16 if xl else 8
    return {"in_channels": unshuffled // factor**2, "channels": channels,
            "num_res_blocks": blocks, "downscale_factor": factor,
            "adapter_type": "full_adapter_xl" if xl else "full_adapter"}  # fmt: skip


def _read(path: Path) -> StateDict:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    from .loader import _load_ckpt

    return _load_ckpt(path)


def load_t2i_adapter(path: Path) -> Any:
    """A `T2IAdapter` (float32, CPU) from a file or a diffusers folder; the style
    adapter's file gives a `t2i_style.StyleAdapter`."""
    from diffusers import T2IAdapter

    from .t2i_style import is_style_state, style_from_state

    try:
        if path.is_dir():
            return T2IAdapter.from_pretrained(str(path), local_files_only=True)
        state = _read(path)
        if is_style_state(state):
            return style_from_state(state, path.name)
        if not any(k.startswith("adapter.") for k in state):
            state = original_to_diffusers(state)
        model = T2IAdapter(**config_from_tensors(state))
        model.load_state_dict(state, strict=True)
        return model
    except UserError:
        raise
    except (RuntimeError, KeyError, ValueError, OSError, IndexError) as exc:
        raise T2IAdapterLoadError(f"T2I-Adapter {path.name}: cannot load it ({exc})") from exc


def check_fits(model: Any, unet_config: dict, name: str) -> None:
    """T2IAdapterLoadError when an adapter's features do not fit the checkpoint's UNet
    (SDXL's adapters unshuffle by 16 and feed SDXL's UNet; SD 1.x ones the others)."""
    xl_unet = unet_config.get("addition_embed_type") == "text_time"
    xl_adapter = model.config.adapter_type == "full_adapter_xl"
    first = list(unet_config.get("block_out_channels") or [0])[0]
    if xl_unet != xl_adapter or list(model.config.channels)[0] != first:
        family = "SDXL" if xl_adapter else "SD 1.x"
        raise T2IAdapterLoadError(f"T2I-Adapter {name} is made for {family}; it does not fit "
                                  "this checkpoint")  # fmt: skip
