"""FLUX.1 Kontext: editing by instruction ("make it a watercolour", "add a hat") as the
img2img tab's behaviour for a Kontext checkpoint.

- Told apart by its file name: Kontext's transformer has FLUX.1 dev's layout and every
  one of its sizes (diffusers' `FluxKontextPipeline` loads the same
  `FluxTransformer2DModel`; ComfyUI loads it as FLUX and adds the reference with its
  `ReferenceLatent` node), so the tensors cannot say it. A FLUX.1 file whose name
  contains "kontext" (any case: `flux1-kontext-dev.safetensors`,
  `flux1-dev-kontext_fp8_scaled.safetensors`), or whose safetensors model-spec metadata
  names it (`modelspec.title`: "FLUX.1 Kontext [dev]"), or that its user marked as
  Kontext (`flux_variant: "kontext"` in its A1111 user metadata `name.json`,
  `model_manager.user_metadata`; the Models tab and `/webui/v1/models/flux-variant` set
  it), is this family (`spec_from_file_name`). Diffusers folders: `FluxKontextPipeline`,
  or a `FluxPipeline` folder named, marked (`name.json` beside it) or with a
  `_name_or_path` saying "kontext".
- img2img and inpaint run the core's img2img path as FLUX.1 does, and every transformer
  call also reads the init image's latents as reference tokens, as `FluxKontextPipeline`
  feeds them: packed 2x2 like the latents, appended after them, with position ids whose
  first axis is 1, and the prediction for the reference tokens dropped
  (`reference_tokens`). The reference is the init image as prepared (resize mode, crop
  of "Only masked"), before the masked content. The denoising strength works as for
  FLUX.1: at 1 the image starts from noise and the reference alone carries the picture,
  as in Black Forest Labs' pipeline; below 1 it also starts from the noised image.
- txt2img (and hires fix, whose second pass has no user image) run without a reference,
  as FLUX.1 dev.

This module must never import a UI library.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ...model_manager.identify import ModelSpec, Shapes
from ...model_manager.user_metadata import flux_variant
from ..noise import pack_2x2
from .flux import FLUX1, FluxFamily

NAME_MARK = "kontext"


class FluxKontextFamily(FluxFamily):
    name = "flux1-kontext"
    label = "FLUX.1 Kontext"
    folder_classes = frozenset({"FluxKontextPipeline"})
    folder_claims = folder_classes
    controlnet = False  # its reference tokens lengthen the sequence the residuals are added to

    def spec_from_shapes(self, shapes: Shapes) -> ModelSpec | None:
        return None  # the tensors are FLUX.1 dev's: recognised by name only

    def spec_from_file_name(self, spec: ModelSpec, path: Path) -> ModelSpec | None:
        """A FLUX.1 spec of a file (or diffusers folder) named, titled or marked as a Kontext
        checkpoint, as this family's."""
        if spec.family != FLUX1.name:
            return None
        if not (NAME_MARK in path.name.lower() or flux_variant(path) == NAME_MARK
                or _titled_kontext(path) or _folder_names_kontext(path)):  # fmt: skip
            return None
        return replace(spec, family=self.name, family_label=self.label)

    def spec_from_pipeline(self, pipe: Any) -> ModelSpec | None:
        """A `FluxKontextPipeline` folder (as Black Forest Labs publish Kontext); FLUX.1
        folders named or marked as Kontext are found by `spec_from_file_name`."""
        if type(pipe).__name__ not in self.folder_claims:
            return None
        return super().spec_from_pipeline(pipe)

    def with_reference(self, pipe: Any, reference: torch.Tensor | None):
        if reference is None:
            return super().with_reference(pipe, reference)
        return reference_tokens(pipe.transformer, reference)


def _titled_kontext(path: Path) -> bool:
    """Whether a safetensors file's model-spec metadata (`modelspec.title`,
    `modelspec.architecture`, ... as kohya's and ComfyUI's savers write them) names
    Kontext."""
    if path.suffix != ".safetensors":
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception:  # unreadable: identify has already said so, or will
        return False
    return any(key.startswith("modelspec.") and NAME_MARK in str(value).lower()
               for key, value in metadata.items())  # fmt: skip


def _folder_names_kontext(path: Path) -> bool:
    """Whether a diffusers folder's model_index.json or transformer config names Kontext
    in its `_name_or_path` (as folders saved from the Hub's repositories keep it)."""
    if not path.is_dir():
        return False
    for config in (path / "model_index.json", path / "transformer" / "config.json"):
        try:
            name = json.loads(config.read_text(encoding="utf-8")).get("_name_or_path", "")
        except (OSError, ValueError, AttributeError):
            continue
        if NAME_MARK in str(name).lower():
            return True
    return False


def reference_ids(height: int, width: int) -> torch.Tensor:
    """Position ids (tokens, 3) of packed reference latents of (height, width) latent
    pixels: (1, row, column), as `FluxKontextPipeline` gives its image."""
    ids = torch.zeros(height // 2, width // 2, 3)
    ids[..., 0] = 1
    ids[..., 1] = torch.arange(height // 2)[:, None]
    ids[..., 2] = torch.arange(width // 2)[None, :]
    return ids.reshape(-1, 3)


@contextmanager
def reference_tokens(transformer: Any, reference: torch.Tensor) -> Iterator[None]:
    """While open, every call of `transformer` reads `reference` (B, 16, h, w) as tokens
    after its latents; its output keeps the latents' tokens only."""
    tokens = pack_2x2(reference)
    ids = reference_ids(*reference.shape[-2:])
    counts: list[int] = []

    def pre_hook(module, args, kwargs):
        hidden = kwargs["hidden_states"]
        counts.append(hidden.shape[1])
        extra = tokens.to(hidden.device, hidden.dtype)
        if extra.shape[0] != hidden.shape[0]:
            extra = extra.repeat(hidden.shape[0] // extra.shape[0], 1, 1)
        img_ids = kwargs["img_ids"]
        return args, {**kwargs, "hidden_states": torch.cat([hidden, extra], dim=1),
                      "img_ids": torch.cat([img_ids, ids.to(img_ids)], dim=0)}  # fmt: skip

    def post_hook(module, args, kwargs, output):
        count = counts.pop()
        if isinstance(output, tuple):
            return (output[0][:, :count], *output[1:])
        output.sample = output.sample[:, :count]
        return output

    handles = [
        transformer.register_forward_pre_hook(pre_hook, with_kwargs=True),
        transformer.register_forward_hook(post_hook, with_kwargs=True),
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


FLUX1_KONTEXT = FluxKontextFamily()
