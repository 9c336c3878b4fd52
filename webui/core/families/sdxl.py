"""SDXL base (and its inpainting variant): two CLIP text encoders and a pooled embedding.

- Recognised by the second text encoder, OpenCLIP bigG (`conditioner.embedders.1.model.*`),
  next to OpenAI CLIP ViT-L (`conditioner.embedders.0.transformer.text_model.*`); a file
  with only the second one at that key is refused (the refiner keeps its one encoder at
  `embedders.0`: `sdxl_refiner.py`). The UNet takes the "text_time"
  additional embedding (pooled text embedding + six size/crop numbers). It predicts noise
  unless the file has a `v_pred` key. Diffusers folders: `StableDiffusionXL(Inpaint)Pipeline`.
- Loaded with `StableDiffusionXL(Inpaint)Pipeline.from_single_file`: 64-wide heads,
  1024 px, a VAE with scaling factor 0.13025 that needs float32 in half precision
  (`force_upcast`), empty prompts encoded as zeros (`force_zeros_for_empty_prompt`).
- Text: clip skip N reads layer -(N+1) of both encoders (the penultimate for N = 1)
  without the final norm, concatenated; the pooled embedding is the second encoder's
  projection of the first chunk; an empty negative prompt is all zeros.
- Embeddings: the `clip_l` and `clip_g` vectors of an SDXL embedding file, one set per
  encoder. LoRA: diffusers' SDXL loader (kohya files in SGM or diffusers naming, peft).
- --medvram-sdxl offloads this family. img2img and inpainting:
  `StableDiffusionXLImg2ImgPipeline` / `StableDiffusionXLInpaintPipeline`.

This module must never import a UI library.
"""

from __future__ import annotations

from typing import Any

from ...model_manager import identify as ldm
from ...model_manager.identify import ModelSpec, Shapes, UnsupportedModelError
from ...model_manager.tokenizers import OPEN_CLIP_PAD_TOKEN, clip_tokenizer
from ..conditioning import TextEncoderSlot, check_clip_skip
from ..sigmas import AYS_SDXL
from .sd import UNetClipFamily

TEXT_ENCODER_1 = "conditioner.embedders.0.transformer.text_model."
TEXT_ENCODER_2 = "conditioner.embedders.1.model."


class SDXLFamily(UNetClipFamily):
    name = "sdxl"
    label = "SDXL"
    align_your_steps = AYS_SDXL
    default_size = 1024
    medvram_sdxl = True
    latent_space = "sdxl"
    zero_empty_negative = True
    pipeline_prefix = "StableDiffusionXL"
    folder_classes = frozenset({"StableDiffusionXLPipeline", "StableDiffusionXLInpaintPipeline"})
    latent_rgb = ((0.3448, 0.4168, 0.4395), (-0.1953, -0.0290, 0.0250),
                  (0.1074, 0.0886, -0.0163), (-0.3730, -0.2499, -0.2088))  # fmt: skip
    vae_approx, taesd = "vaeapprox-sdxl", "taesdxl"  # models/VAE-approx: A1111's SDXL files

    def spec_from_shapes(self, shapes: Shapes) -> ModelSpec | None:
        if f"{TEXT_ENCODER_2}positional_embedding" not in shapes:
            return None
        if f"{TEXT_ENCODER_1}embeddings.token_embedding.weight" not in shapes:
            raise UnsupportedModelError("SDXL checkpoint without its first text encoder (CLIP-L)")
        te1 = ldm.hf_clip_config(shapes, TEXT_ENCODER_1, "quick_gelu")
        te2 = ldm.open_clip_config(shapes, TEXT_ENCODER_2, with_projection=True)
        unet = ldm.unet_config(shapes, sample_size=self.default_size // 8, head_dim=None,
                               layers_per_level=True)  # fmt: skip
        pooled = te2["projection_dim"]
        label_in = shapes[f"{ldm.UNET}label_emb.0.0.weight"][1]
        unet.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(label_in - pooled) // 6,
            projection_class_embeddings_input_dim=label_in,
        )
        ldm.check_context_width(unet, te1["hidden_size"] + te2["hidden_size"])
        vae = ldm.vae_config(shapes, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
        prediction = ldm.v_prediction_key(shapes) or "epsilon"
        return self.make_spec(unet, vae, (te1, te2), prediction)

    def owns_unet(self, unet: dict) -> bool:
        return unet.get("addition_embed_type") == "text_time"

    def model_index(self, spec: ModelSpec) -> dict:
        te_class = spec.text_encoders[1]["architectures"][0]
        return {
            **super().model_index(spec),
            "text_encoder_2": ["transformers", te_class],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "force_zeros_for_empty_prompt": True,
        }

    def config_files(self, spec: ModelSpec) -> dict[str, dict]:
        return {**super().config_files(spec), "text_encoder_2/config.json": spec.text_encoders[1]}

    def tokenizers(self, spec: ModelSpec) -> dict[str, Any]:
        return {"tokenizer": clip_tokenizer(), "tokenizer_2": clip_tokenizer(OPEN_CLIP_PAD_TOKEN)}

    def text_encoders(self, pipe: Any, clip_skip: int) -> list[TextEncoderSlot]:
        slots = []
        for tokenizer, encoder, key, pooled in (
            (getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None), "clip_l", False),
            (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g", True),
        ):  # fmt: skip
            if encoder is not None and tokenizer is not None:
                check_clip_skip(encoder, clip_skip)
                slots.append(TextEncoderSlot(tokenizer, encoder, key, clip_skip + 1, False, pooled))
        return slots


SDXL = SDXLFamily()
