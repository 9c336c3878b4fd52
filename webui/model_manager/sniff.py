"""What a model file is (kind and family), read from its safetensors header alone.

`read_header` reads the 8-byte length and the JSON header of a `.safetensors` file (tensor
names, shapes and the `__metadata__` strings: kohya's `ss_*` training tags) without
reading any weight. `sniff` turns that into a `Sniffed`: the kind (checkpoint, LoRA,
embedding, VAE, ControlNet, upscaler, text encoder, CLIP vision) and the family (SD 1.x,
SD 2.x, SDXL, SD 3, FLUX, Z-Image) when the names and shapes tell it. `gguf_family` reads a
GGUF file's architecture (city96's FLUX files: "FLUX"; the text encoders "t5encoder" and
"qwen3", `gguf_text`). Pickled files (`.ckpt`, `.pt`, `.pth`) are never opened here
(unpickling can run code): their kind comes from the folder they are in or the site that
offered them.

This module must never load weights, touch the network or import a UI library.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MAX_HEADER = 100 << 20  # a larger header is not a safetensors file

KIND_LABELS = {
    "checkpoint": "Checkpoint",
    "lora": "LoRA",
    "embedding": "Textual Inversion",
    "vae": "VAE",
    "controlnet": "ControlNet",
    "upscaler": "Upscaler",
    "text_encoder": "Text encoder",
    "clip_vision": "CLIP vision",
}
# kohya's ss_base_model_version prefixes -> family label
_KOHYA_BASE = (("sdxl", "SDXL"), ("sd_v2", "SD 2.x"), ("sd_v1", "SD 1.x"), ("sd3", "SD 3"),
               ("flux", "FLUX"))  # fmt: skip
_CROSS_WIDTH = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


class HeaderError(ValueError):
    """The file is not a readable safetensors file."""


@dataclass(frozen=True)
class Header:
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Sniffed:
    kind: str | None  # a key of KIND_LABELS, None when the tensors do not tell
    family: str  # "SD 1.x", "SDXL", ...; "" when unknown


def read_header(path: Path) -> Header:
    """Tensor shapes and metadata of a safetensors file; reads the header only."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HeaderError(f"{path.name}: too short for a safetensors file")
        (size,) = struct.unpack("<Q", head)
        if size <= 1 or size > MAX_HEADER:
            raise HeaderError(f"{path.name}: not a safetensors file (header size {size})")
        raw = f.read(size)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise HeaderError(f"{path.name}: unreadable safetensors header ({exc})") from None
    if not isinstance(data, dict):
        raise HeaderError(f"{path.name}: unreadable safetensors header")
    metadata = data.pop("__metadata__", None) or {}
    shapes = {
        name: tuple(info.get("shape", ())) for name, info in data.items() if isinstance(info, dict)
    }
    return Header(shapes, {str(k): str(v) for k, v in metadata.items()})


def sniff(header: Header) -> Sniffed:
    keys = header.shapes
    for test in (_flux_controlnet, _checkpoint, _lora, _embedding, _controlnet, _vae, _upscaler,
                 _encoders):  # fmt: skip
        found = test(keys, header.metadata)
        if found is not None:
            return found
    return Sniffed(None, "")


def sniff_file(path: Path) -> Sniffed:
    if path.suffix.lower() != ".safetensors":
        return Sniffed(None, "")
    return sniff(read_header(path))


def gguf_family(path: Path) -> str:
    """The family label of a GGUF file from its `general.architecture` ("FLUX"; "Z-Image"
    for a "lumina2" file with Z-Image's pad tokens), "" when
    it names none we know or the file cannot be read (the gguf package maps the file and
    reads the header; no tensor data)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        field = reader.get_field("general.architecture")
        architecture = str(field.contents() if field is not None else "").lower()
        if architecture == "lumina2":  # ComfyUI-GGUF's name for Z-Image (and Lumina 2)
            pads = any(t.name.endswith("x_pad_token") for t in reader.tensors)
            return "Z-Image" if pads else ""
    except Exception as exc:  # a damaged or foreign file: gguf raises many kinds
        log.warning("%s: cannot read the GGUF header (%s)", path.name, exc)
        return ""
    return _GGUF_FAMILIES.get(architecture, "")


_GGUF_FAMILIES = {"flux": "FLUX", "sd3": "SD 3", "qwen3": "Qwen3 (Z-Image)",
                  "t5encoder": "T5-XXL (FLUX, SD 3)"}  # fmt: skip  # text encoders: gguf_text


def _any(keys: dict, *parts: str) -> bool:
    return any(part in key for key in keys for part in parts)


def _starts(keys: dict, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in keys)


def _checkpoint(keys: dict, meta: dict) -> Sniffed | None:
    unet = "model.diffusion_model."
    if any(k.startswith((unet + "double_blocks.", "double_blocks.")) and k.endswith(
        ".img_attn.qkv.weight") for k in keys):  # fmt: skip  # LoRAs use these names too
        return Sniffed("checkpoint", "FLUX")
    if _starts(keys, unet + "joint_blocks"):
        return Sniffed("checkpoint", "SD 3")
    if any(f"{p}cap_embedder.1.weight" in keys and f"{p}x_pad_token" in keys for p in ("", unet)):
        return Sniffed("checkpoint", "Z-Image")  # ComfyUI's layout (Lumina 2 has no pad token)
    if not _starts(keys, unet):
        return None
    if _starts(keys, "conditioner.embedders.1."):
        family = "SDXL"
    elif _starts(keys, "conditioner.embedders.0.model."):
        family = "SDXL refiner"
    elif _starts(keys, "cond_stage_model.model."):
        family = "SD 2.x"
    else:
        family = "SD 1.x"
    first = keys.get(unet + "input_blocks.0.0.weight", ())
    if len(first) > 1 and first[1] == 9:
        family += " inpainting"
    return Sniffed("checkpoint", family)


def _lora(keys: dict, meta: dict) -> Sniffed | None:
    if _any(keys, ".processor.qkv_lora", ".processor.proj_lora"):  # XLabs' FLUX LoRAs
        return Sniffed("lora", "FLUX")
    if not _any(keys, "lora_down", "lora_up", "lora_A", "lora_B", "hada_w1", "lokr_w1"):
        return None
    base = meta.get("ss_base_model_version", "").lower()
    for prefix, label in _KOHYA_BASE:
        if base.startswith(prefix):
            return Sniffed("lora", label)
    if _any(keys, "double_blocks", "single_blocks", "single_transformer_blocks"):
        return Sniffed("lora", "FLUX")
    if _any(keys, "noise_refiner", "context_refiner") or (
        _any(keys, "attention.to_q", "attention_to_q", "attention.qkv", "attention_qkv")
        and _any(keys, "layers.", "layers_")
    ):  # Z-Image's transformer (diffusers', kohya's or ComfyUI's names)
        return Sniffed("lora", "Z-Image")
    if _any(keys, "joint_blocks"):  # SD 3's MMDiT in Stability's names (kohya, ComfyUI)
        return Sniffed("lora", "SD 3")
    if _any(keys, "lora_te2_", "te2_text_model"):
        return Sniffed("lora", "SDXL")
    for key, shape in keys.items():
        if ("attn2_to_k" in key or "attn2.to_k" in key) and "down" in key and len(shape) == 2:
            return Sniffed("lora", _CROSS_WIDTH.get(shape[1], ""))
    return Sniffed("lora", "SD 2.x" if meta.get("ss_v2") == "True" else "")


def lora_family(keys: dict, meta: dict | None = None) -> str:
    """The family label a LoRA's tensor names ({name: shape}) look like ("FLUX",
    "Z-Image", "SDXL", ...), "" when they tell none (or it is no LoRA)."""
    found = _lora(keys, meta or {})
    return found.family if found is not None else ""


def _embedding(keys: dict, meta: dict) -> Sniffed | None:
    if set(keys) >= {"clip_l", "clip_g"}:
        return Sniffed("embedding", "SDXL")
    if "emb_params" in keys and len(keys) <= 2:
        width = keys["emb_params"][-1] if keys["emb_params"] else 0
        return Sniffed("embedding", _CROSS_WIDTH.get(width, ""))
    return None


def _flux_controlnet(keys: dict, meta: dict) -> Sniffed | None:
    """FLUX and SD 3.5 ControlNets (XLabs' use the transformer's block names: asked first)."""
    from .flux_control_keys import layout_of, sd3_layout_of

    if sd3_layout_of(keys) is not None:
        return Sniffed("controlnet", "SD 3")
    return Sniffed("controlnet", "FLUX") if layout_of(keys) is not None else None


def _controlnet(keys: dict, meta: dict) -> Sniffed | None:
    if not _any(keys, "input_hint_block", "controlnet_cond_embedding", "control_model."):
        return None
    for key, shape in keys.items():
        if re.search(r"attn2\.to_k\.weight$", key) and len(shape) == 2:
            return Sniffed("controlnet", _CROSS_WIDTH.get(shape[1], ""))
    return Sniffed("controlnet", "")


def _vae(keys: dict, meta: dict) -> Sniffed | None:
    for prefix in ("", "first_stage_model.", "vae."):
        conv = keys.get(prefix + "encoder.conv_out.weight")
        if conv and prefix + "decoder.conv_in.weight" in keys:
            channels = conv[0] // 2
            return Sniffed("vae", {4: "SD (4-channel latents)", 16: "SD 3 / FLUX"}.get(
                channels, f"{channels}-channel latents"))  # fmt: skip
    return None


def _upscaler(keys: dict, meta: dict) -> Sniffed | None:
    if "conv_first.weight" in keys or ("model.0.weight" in keys and _starts(keys, "model.1.sub")):
        return Sniffed("upscaler", "")
    return None


def _encoders(keys: dict, meta: dict) -> Sniffed | None:
    if _any(keys, "vision_model.encoder.layers"):
        return Sniffed("clip_vision", "")
    if _any(keys, "text_model.encoder.layers", "encoder.block.0.layer", "transformer.resblocks"):
        return Sniffed("text_encoder", "")
    if _any(keys, "layers.0.self_attn.q_norm.weight"):  # qwen_3_4b.safetensors
        return Sniffed("text_encoder", "Qwen3 (Z-Image)")
    return None
