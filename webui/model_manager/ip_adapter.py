"""IP-Adapter files of `models/ControlNet` and the CLIP vision encoders they pair with.

An IP-Adapter file (`ip-adapter_sd15.safetensors`, `ip-adapter-plus_sd15.safetensors`,
`ip-adapter_sdxl_vit-h.safetensors`, or the `.bin` of the same) holds `image_proj.*` (the
image projection: a linear map of CLIP's image embedding, or the "plus" Resampler over
CLIP's penultimate hidden states) and `ip_adapter.*` (for every cross-attention layer of
the UNet, `to_k_ip` / `to_v_ip`). `load_ip_adapter` builds them with diffusers' own
converters (`UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers` and
`_convert_ip_adapter_attn_to_diffusers`, what `load_ip_adapter` of a pipeline calls), so
the layers are diffusers' `ImageProjection` / `IPAdapterPlusImageProjection` and the
`to_k_ip` / `to_v_ip` of `IPAdapterAttnProcessor2_0`; the UNet itself is not touched here
(`core/ip_adapter.py` puts the processors on it for one pipeline call).

The CLIP vision encoder of a preprocessor is found by `controlnet_files.find_clip_vision`
and loaded here (`ClipVisionCache`).

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

log = logging.getLogger(__name__)


class IpAdapterLoadError(UserError):
    """An IP-Adapter file that cannot be read or does not fit the checkpoint's UNet."""


def read_ip_adapter(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{"image_proj": ..., "ip_adapter": ...} of a `.safetensors` or pickled file."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        flat = load_file(str(path))
    else:
        from .loader import _load_ckpt

        flat = _load_ckpt(path)
    if isinstance(flat.get("image_proj"), dict):  # the .bin layout: nested dicts
        return {"image_proj": flat["image_proj"], "ip_adapter": flat["ip_adapter"]}
    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        if head in state:
            state[head][rest] = value
    if not state["image_proj"] or not state["ip_adapter"]:
        raise IpAdapterLoadError(f"{path.name} is not an IP-Adapter (no image_proj.* and "
                                 "ip_adapter.* tensors)")  # fmt: skip
    return state


class IpAdapterModel(torch.nn.Module):
    """One IP-Adapter: its image projection and, per cross-attention processor name of
    the UNet, the `IPAdapterAttnProcessor2_0` holding its `to_k_ip` / `to_v_ip`."""

    kind = "ip-adapter"

    def __init__(self, image_proj: torch.nn.Module, processors: dict[str, Any], plus: bool):
        super().__init__()
        self.image_proj = image_proj
        self.names = list(processors)
        self.processors = torch.nn.ModuleList(processors.values())
        self.plus = plus  # the Resampler: CLIP's penultimate hidden states, not image_embeds
        self.tokens = int(next(iter(processors.values())).num_tokens[0])

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def load_ip_adapter(path: Path, unet: Any) -> IpAdapterModel:
    """The file's layers built for `unet` (float32, CPU) by diffusers' converters."""
    state = read_ip_adapter(path)
    try:
        proj = unet._convert_ip_adapter_image_proj_to_diffusers(state["image_proj"],
                                                                low_cpu_mem_usage=False)  # fmt: skip
        procs = unet._convert_ip_adapter_attn_to_diffusers([state], low_cpu_mem_usage=False)
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        raise IpAdapterLoadError(f"IP-Adapter {path.name}: does not fit this checkpoint "
                                 f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
    cross = {name: proc for name, proc in procs.items() if hasattr(proc, "to_k_ip")}
    if not cross:
        raise IpAdapterLoadError(f"IP-Adapter {path.name}: the UNet has no cross-attention")
    return IpAdapterModel(proj.float(), cross, plus="latents" in state["image_proj"])


class ClipVisionCache:
    """The last CLIP vision encoder IP-Adapter units used (by path and modification time)."""

    def __init__(self, device: str | torch.device, dtype: torch.dtype):
        self.device, self.dtype = str(device), dtype
        self._key: tuple | None = None
        self._embedder: Any = None

    def get(self, path: Path) -> Any:
        from .clip_vision import ClipVisionEmbedder

        if not path.exists():
            raise UserError(f"CLIP vision model not found: {path.name} in {path.parent}")
        stat = path.stat()
        key = (str(path), stat.st_mtime_ns, stat.st_size)
        if key != self._key:
            self._embedder = None  # free the previous one before loading
            log.info("Loading CLIP vision %s", path.name)
            embedder = ClipVisionEmbedder.load(path, self.device)
            embedder.model.to(self.dtype)
            self._key, self._embedder = key, embedder
        return self._embedder

    def clear(self) -> None:
        self._key, self._embedder = None, None
