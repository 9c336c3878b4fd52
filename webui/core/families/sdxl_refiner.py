"""The SDXL refiner (sd_xl_refiner_1.0 and fine-tunes of it): SDXL with one text encoder.

- Recognised by its only text encoder, OpenCLIP bigG stored as
  `conditioner.embedders.0.model.*` (where SDXL base keeps OpenAI CLIP), and a UNet whose
  "text_time" embedding takes the pooled text embedding and five numbers (original size,
  crop, aesthetic score) instead of SDXL base's six (no target size).
- Loaded with `StableDiffusionXLImg2ImgPipeline.from_single_file` (no `text_encoder` nor
  `tokenizer`, `requires_aesthetics_score`), 1024 px, SDXL's VAE. It shares SDXL's latent
  space, so it can refine an SDXL base run (`webui.core.refiner`) or do img2img and
  inpainting; txt2img with the refiner as the main checkpoint is refused with a message.
- Text: SDXL's second encoder alone (`SDXLFamily.text_encoders` skips the missing first).
- The aesthetic scores (A1111's `sdxl_refiner_high_aesthetic_score` 6.0 for the prompt,
  `sdxl_refiner_low_aesthetic_score` 2.5 for the negative) are the job's options
  (`webui.core.refiner.aesthetic_time_ids`, and `aesthetic_kwargs` for img2img).

This module must never import a UI library.
"""

from __future__ import annotations

from typing import Any

from ...model_manager import identify as ldm
from ...model_manager.identify import ModelSpec, Shapes, UnsupportedModelError
from ...model_manager.tokenizers import OPEN_CLIP_PAD_TOKEN, clip_tokenizer
from .base import Mode
from .sdxl import SDXLFamily

TEXT_ENCODER = "conditioner.embedders.0.model."
TIME_NUMBERS = 5  # original size (2), crop top-left (2), aesthetic score (1)


class SDXLRefinerFamily(SDXLFamily):
    name = "sdxl_refiner"
    label = "SDXL refiner"
    folder_classes = frozenset({"StableDiffusionXLImg2ImgPipeline"})

    def spec_from_shapes(self, shapes: Shapes) -> ModelSpec | None:
        if f"{TEXT_ENCODER}positional_embedding" not in shapes:
            return None
        te = ldm.open_clip_config(shapes, TEXT_ENCODER, with_projection=True)
        unet = ldm.unet_config(shapes, sample_size=self.default_size // 8, head_dim=None,
                               layers_per_level=True)  # fmt: skip
        label_in = shapes[f"{ldm.UNET}label_emb.0.0.weight"][1]
        unet.update(
            addition_embed_type="text_time",
            addition_time_embed_dim=(label_in - te["projection_dim"]) // TIME_NUMBERS,
            projection_class_embeddings_input_dim=label_in,
        )
        ldm.check_context_width(unet, te["hidden_size"])
        vae = ldm.vae_config(shapes, sample_size=1024, scaling_factor=0.13025, force_upcast=True)
        return self.make_spec(unet, vae, (te,), ldm.v_prediction_key(shapes) or "epsilon")

    def spec_from_pipeline(self, pipe: Any) -> ModelSpec | None:
        if getattr(pipe, "text_encoder", None) is not None or pipe.text_encoder_2 is None:
            return None
        unet = dict(pipe.unet.config)
        prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
        encoders = (pipe.text_encoder_2.config.to_dict(),)
        return self.make_spec(unet, dict(pipe.vae.config), encoders, prediction)

    def pipeline_class(self, mode: Mode, inpainting: bool) -> str:
        if inpainting or mode == "inpaint":
            return "StableDiffusionXLInpaintPipeline"
        return "StableDiffusionXLImg2ImgPipeline"  # txt2img: refused by the processing

    def model_index(self, spec: ModelSpec) -> dict:
        return {
            **super(SDXLFamily, self).model_index(spec),  # SDXL base reads two encoders
            "text_encoder": [None, None],
            "tokenizer": [None, None],
            "text_encoder_2": ["transformers", spec.text_encoders[0]["architectures"][0]],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "requires_aesthetics_score": True,
            "force_zeros_for_empty_prompt": False,
        }

    def config_files(self, spec: ModelSpec) -> dict[str, dict]:
        files = super(SDXLFamily, self).config_files(spec)
        del files["text_encoder/config.json"]
        return {**files, "text_encoder_2/config.json": spec.text_encoders[0]}

    def tokenizers(self, spec: ModelSpec) -> dict[str, Any]:
        return {"tokenizer": None, "tokenizer_2": clip_tokenizer(OPEN_CLIP_PAD_TOKEN)}

    def check_mode(self, mode: Mode) -> None:
        if mode == "txt2img":
            raise UnsupportedModelError(
                "the SDXL refiner cannot start an image from noise: choose it as the "
                "Refiner of an SDXL checkpoint, or use it in img2img"
            )


SDXL_REFINER = SDXLRefinerFamily()
