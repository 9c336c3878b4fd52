"""CLIP vision models from `models/clip_vision`: image embeddings for the browser's map.

A model is a transformers folder (`config.json` + weights, optionally
`preprocessor_config.json`) or one `.safetensors` file (for IP-Adapter units also a
`.pth` / `.bin`, read by the restricted unpickler) in the transformers key layout
(`vision_model.*`, `visual_projection.weight`): the `clip_vision_g.safetensors` /
ViT-H / ViT-L files IP-Adapter users have. A single file's config is read from its tensor
shapes (width, depth, patch and image size, projection); the head count and activation
come from the known OpenAI/OpenCLIP widths (768: ViT-B, 1024: ViT-L, 1280: ViT-H,
1664: ViT-bigG), else one head per 64 channels. Files in the OpenCLIP key layout
(`visual.transformer.*`) are refused with a message, not guessed at.

`ClipVisionEmbedder.embed` gives L2-normalised `image_embeds` (float32 numpy), in
batches, on the CPU or the device it is given. Loading never uses the network.

Only the job queue's worker thread calls this (it imports torch and transformers).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open

from ..errors import UserError

log = logging.getLogger(__name__)

SUFFIXES = (".safetensors",)  # listed for the browser; IP-Adapter units also read .pth
# width -> (heads, activation) of the released CLIP vision towers
_KNOWN_WIDTHS = {768: (12, "quick_gelu"), 1024: (16, "quick_gelu"), 1280: (16, "gelu"),
                 1664: (16, "gelu")}  # fmt: skip
_EMBED = "vision_model.embeddings"
_LAYER_RE = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.")


def list_models(folder: Path) -> list[Path]:
    """The usable models in `folder`: sub-folders with a config.json and .safetensors files."""
    if not folder.is_dir():
        return []
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and (entry / "config.json").is_file():
            found.append(entry)
        elif entry.is_file() and entry.suffix.lower() in SUFFIXES:
            found.append(entry)
    return found


def config_from_file(path: Path):
    """A CLIPVisionConfig read from the tensor shapes of a single file."""
    if path.suffix.lower() == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    else:
        shapes = {k: tuple(v.shape) for k, v in _read_pickled(path).items()}
    return config_from_shapes(shapes, path.name)


def _read_pickled(path: Path) -> dict:
    """A `.pth` / `.bin` state dict (sd-webui-controlnet's `clip_h.pth`) through the
    project's restricted unpickler."""
    from .loader import _load_ckpt

    return _load_ckpt(path)


def config_from_shapes(shapes: dict[str, tuple], name: str):
    """A CLIPVisionConfig from a transformers-layout state dict's tensor shapes."""
    from transformers import CLIPVisionConfig

    keys = set(shapes)
    if f"{_EMBED}.patch_embedding.weight" not in keys:
        if any(k.startswith("visual.") for k in keys):
            raise UserError(f"{name}: OpenCLIP key layout; convert it to the "
                            "transformers layout (vision_model.*)")  # fmt: skip
        raise UserError(f"{name} is not a CLIP vision model (no vision_model.* keys)")
    width, _, patch, _ = shapes[f"{_EMBED}.patch_embedding.weight"]
    positions = shapes[f"{_EMBED}.position_embedding.weight"][0]
    fc1 = shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0]
    projection = shapes.get("visual_projection.weight", (width,))[0]
    layers = 1 + max(int(m.group(1)) for k in keys if (m := _LAYER_RE.match(k)))
    side = round((positions - 1) ** 0.5) * patch
    heads, act = _KNOWN_WIDTHS.get(width, (max(1, width // 64), "gelu"))
    return CLIPVisionConfig(hidden_size=width, intermediate_size=fc1, num_hidden_layers=layers,
                            num_attention_heads=heads, image_size=side, patch_size=patch,
                            projection_dim=projection, hidden_act=act)  # fmt: skip


class ClipVisionEmbedder:
    """One loaded CLIP vision model and its preprocessing."""

    def __init__(self, model, processor, device: str = "cpu"):
        self.model, self.processor, self.device = model, processor, device

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> ClipVisionEmbedder:
        from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

        path = Path(path)
        if not path.exists():
            raise UserError(f"CLIP vision model not found: {path}")
        if path.is_dir():
            model = CLIPVisionModelWithProjection.from_pretrained(path, local_files_only=True)
            if (path / "preprocessor_config.json").is_file():
                processor = CLIPImageProcessor.from_pretrained(path, local_files_only=True)
            else:
                processor = _processor(model.config.image_size)
        else:
            from safetensors.torch import load_file

            config = config_from_file(path)
            model = CLIPVisionModelWithProjection(config)
            pickled = path.suffix.lower() != ".safetensors"
            state = _read_pickled(path) if pickled else load_file(str(path))
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = [k for k in missing if not k.endswith("position_ids")]
            if missing:
                raise UserError(f"{path.name}: missing tensors {', '.join(missing[:3])}...")
            if unexpected:
                log.info("%s: %d tensors not used", path.name, len(unexpected))
            processor = _processor(config.image_size)
        return cls(model.to(device).eval(), processor, device)

    def embed(self, images: list[Image.Image], batch: int = 8) -> np.ndarray:
        """L2-normalised image embeddings, one row per image."""
        rows = []
        for start in range(0, len(images), batch):
            part = [im.convert("RGB") for im in images[start : start + batch]]
            pixels = self.processor(images=part, return_tensors="pt")["pixel_values"]
            dtype = next(self.model.parameters()).dtype
            with torch.inference_mode():
                out = self.model(pixel_values=pixels.to(self.device, dtype)).image_embeds
            out = torch.nn.functional.normalize(out.float(), dim=-1)
            rows.append(out.cpu().numpy())
        return np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)


def _processor(side: int):
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": side},
                              crop_size={"height": side, "width": side})  # fmt: skip
