"""XLabs' FLUX.1 IP-Adapter (`ip_adapter.safetensors` of XLabs-AI/flux-ip-adapter, often
renamed `flux-ip-adapter.safetensors`), built with diffusers' own FLUX IP-Adapter layers.

The file holds `ip_adapter_proj_model.*` (the image projection: CLIP ViT-L/14's 768-wide
`image_embeds` to 4 tokens of the text width) and, per double block N,
`double_blocks.N.processor.ip_adapter_double_stream_{k,v}_proj.*`. `read_flux_ip_adapter`
renames them as `FluxIPAdapterMixin.load_ip_adapter` does; `load_flux_ip_adapter` builds
them with the transformer's converters (`FluxTransformer2DLoadersMixin.
_convert_ip_adapter_image_proj_to_diffusers` / `_convert_ip_adapter_attn_to_diffusers`):
diffusers' `ImageProjection` and one `FluxIPAdapterAttnProcessor` per double block. The
transformer itself is not touched here (`core/flux_controlnet.py` puts the processors on
it for one pipeline call).

The file is told by `flux_control_keys.is_flux_ip_adapter`.

This module must never import `webui.core` or a UI library.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from .flux_control_keys import IP_PROJ_PREFIX

PROJ_PREFIX = IP_PROJ_PREFIX
_KV = {"ip_adapter_double_stream_k_proj": "to_k_ip", "ip_adapter_double_stream_v_proj": "to_v_ip"}


class FluxIpAdapterError(UserError):
    """A FLUX IP-Adapter file that cannot be read or does not fit the checkpoint."""


def read_flux_ip_adapter(path: Path) -> dict[str, dict[str, Any]]:
    """{"image_proj": ..., "ip_adapter": ...} in diffusers' names."""
    from safetensors.torch import load_file

    state: dict[str, dict[str, Any]] = {"image_proj": {}, "ip_adapter": {}}
    for key, value in load_file(str(path)).items():
        if key.startswith(PROJ_PREFIX):
            state["image_proj"][key.removeprefix(PROJ_PREFIX)] = value.float()
        elif key.startswith("double_blocks."):
            index, _, rest = key.removeprefix("double_blocks.").partition(".")
            name, _, kind = rest.removeprefix("processor.").rpartition(".")
            if name not in _KV:
                raise FluxIpAdapterError(f"{path.name}: unknown FLUX IP-Adapter tensor {key}")
            state["ip_adapter"][f"{index}.{_KV[name]}.{kind}"] = value.float()
    if not state["image_proj"] or not state["ip_adapter"]:
        raise FluxIpAdapterError(f"{path.name} is not a FLUX IP-Adapter")
    return state


class FluxIpAdapterModel:
    """One FLUX IP-Adapter: its image projection and, per double-block attention processor
    name of the transformer, the `FluxIPAdapterAttnProcessor` holding its layers."""

    kind = "ip-adapter"
    plus = False  # CLIP's projected image_embeds, as XLabs' adapter reads them
    flux = True

    def __init__(self, image_proj: Any, processors: dict[str, Any]):
        import torch

        self.module = torch.nn.ModuleDict({"image_proj": image_proj,
                                           "processors": torch.nn.ModuleList(processors.values())})  # fmt: skip
        self.image_proj = image_proj
        self.names = list(processors)
        self.processors = list(processors.values())
        self.tokens = int(image_proj.num_image_text_embeds)

    @property
    def dtype(self) -> Any:
        return next(self.module.parameters()).dtype

    def to(self, *args: Any, **kwargs: Any) -> FluxIpAdapterModel:
        self.module.to(*args, **kwargs)
        return self

    def eval(self) -> FluxIpAdapterModel:
        self.module.eval()
        return self


def load_flux_ip_adapter(path: Path, transformer: Any) -> FluxIpAdapterModel:
    """The file's layers built for `transformer` (float32, CPU) by diffusers' converters."""
    state = read_flux_ip_adapter(path)
    try:
        proj = transformer._convert_ip_adapter_image_proj_to_diffusers(state["image_proj"],
                                                                       low_cpu_mem_usage=False)  # fmt: skip
        procs = transformer._convert_ip_adapter_attn_to_diffusers([state],
                                                                  low_cpu_mem_usage=False)  # fmt: skip
    except (KeyError, RuntimeError, ValueError, IndexError) as exc:
        raise FluxIpAdapterError(f"FLUX IP-Adapter {path.name}: does not fit this checkpoint "
                                 f"({type(exc).__name__}: {exc})") from exc  # fmt: skip
    layers = {name: proc.float() for name, proc in procs.items() if hasattr(proc, "to_k_ip")}
    return FluxIpAdapterModel(proj.float(), layers)
