"""Stable Diffusion 1.x and 2.x (and their inpainting variants): one CLIP text encoder.

- Recognised by the text encoder in the LDM single file: SD 1.x has OpenAI CLIP in the
  transformers layout (`cond_stage_model.transformer.text_model.*`), SD 2.x OpenCLIP
  (`cond_stage_model.model.*`). A 9-channel UNet is the inpainting variant. SD 1.x
  predicts noise; an SD 2.x file says v-prediction only with a `v_pred` key, otherwise
  the loader asks the UNet. Diffusers folders: `StableDiffusion(Inpaint)Pipeline`, SD 2.x
  told apart by its linear attention projections.
- Loaded with `StableDiffusion(Inpaint)Pipeline.from_single_file`, given a config folder
  written from the tensors (SD 1.x: 8 attention heads per block, 512 px; SD 2.x: 64-wide
  heads, 768 px), the Euler scheduler config A1111 files load with, and CLIP tokenizers
  from the shipped vocabulary (OpenCLIP's pads with "!").
- Text: one encoder; clip skip N reads the N-th layer from the end through the final
  layer norm (A1111). Conditioning is the CLIP machinery in `core.conditioning`.
- Samplers and schedules: the A1111 table (`core.samplers`) on the model's own noise
  schedule; LoRA through diffusers' `load_lora_weights` (kohya and peft files);
  embeddings: one vector set per name (key ""); infotext: "Clip skip" above 1.
- img2img and inpainting: `StableDiffusionImg2ImgPipeline` and
  `StableDiffusionInpaintPipeline` views of the loaded weights; an inpainting checkpoint
  does every mode with its own pipeline.

`UNetClipFamily` is what SDXL (`sdxl.py`) shares with these.

This module must never import a UI library.
"""

from __future__ import annotations

from abc import abstractmethod
from types import MappingProxyType
from typing import Any

from ...model_manager import identify as ldm
from ...model_manager.identify import ModelSpec, Shapes
from ...model_manager.tokenizers import EOS_TOKEN, OPEN_CLIP_PAD_TOKEN, clip_tokenizer
from ..conditioning import TextEncoderSlot, check_clip_skip
from .base import Family, Mode

# the scheduler a single file loads with (A1111's defaults; a sampler replaces it per job)
SD_SCHEDULER = MappingProxyType({
    "_class_name": "EulerDiscreteScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
})  # fmt: skip
# linear maps from the 4 latent channels to RGB: a preview without running the VAE
SD_LATENT_RGB = ((0.298, 0.207, 0.208), (0.187, 0.286, 0.173), (-0.158, 0.189, 0.264),
                 (-0.184, -0.271, -0.473))  # fmt: skip


class UNetClipFamily(Family):
    """What the Stable Diffusion UNet families share: LDM single files, pipelines named
    `StableDiffusion{XL}{mode}Pipeline`, the A1111 sampler table, CLIP text encoders."""

    pipeline_prefix = "StableDiffusion"
    base_scheduler = SD_SCHEDULER

    def pipeline_class(self, mode: Mode, inpainting: bool) -> str:
        if inpainting:  # a 9-channel checkpoint does every mode with its own pipeline
            return f"{self.pipeline_prefix}InpaintPipeline"
        suffix = {"txt2img": "", "img2img": "Img2Img", "inpaint": "Inpaint"}[mode]
        return f"{self.pipeline_prefix}{suffix}Pipeline"

    def make_spec(
        self, unet: dict, vae: dict, text_encoders: tuple[dict, ...], prediction: str | None
    ) -> ModelSpec:
        inpainting = unet["in_channels"] == 9
        return ModelSpec(
            family=self.name,
            family_label=self.label,
            pipeline_class=self.pipeline_class("txt2img", inpainting),
            inpainting=inpainting,
            prediction_type=prediction,
            unet=unet,
            vae=vae,
            text_encoders=text_encoders,
        )

    @abstractmethod
    def owns_unet(self, unet: dict) -> bool:
        """Whether a diffusers folder's UNet config is this family's."""

    def spec_from_pipeline(self, pipe: Any) -> ModelSpec | None:
        unet = dict(pipe.unet.config)
        if not self.owns_unet(unet):
            return None
        encoders = [pipe.text_encoder.config.to_dict()]
        if getattr(pipe, "text_encoder_2", None) is not None:
            encoders.append(pipe.text_encoder_2.config.to_dict())
        prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
        return self.make_spec(unet, dict(pipe.vae.config), tuple(encoders), prediction)

    def model_index(self, spec: ModelSpec) -> dict:
        """model_index.json of the config folder."""
        te_classes = [te["architectures"][0] for te in spec.text_encoders]
        return {
            "_class_name": spec.pipeline_class,
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "scheduler": ["diffusers", self.base_scheduler["_class_name"]],
            "text_encoder": ["transformers", te_classes[0]],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "image_encoder": [None, None],
        }

    def config_files(self, spec: ModelSpec) -> dict[str, dict]:
        scheduler = dict(self.base_scheduler, prediction_type=spec.prediction_type or "epsilon")
        return {
            "model_index.json": self.model_index(spec),
            "unet/config.json": dict(spec.unet, _class_name="UNet2DConditionModel"),
            "vae/config.json": dict(spec.vae, _class_name="AutoencoderKL"),
            "scheduler/scheduler_config.json": scheduler,
            "text_encoder/config.json": spec.text_encoders[0],
        }

    def infotext_fields(self, params: Any) -> dict[str, Any]:
        return {"Clip skip": params.clip_skip if params.clip_skip > 1 else None}


class SDFamily(UNetClipFamily):
    """SD 1.x or 2.x: one text encoder, OpenAI CLIP or OpenCLIP."""

    folder_classes = frozenset({"StableDiffusionPipeline", "StableDiffusionInpaintPipeline"})
    folder_kwargs = MappingProxyType({"safety_checker": None, "requires_safety_checker": False})
    latent_rgb = SD_LATENT_RGB
    vae_approx, taesd = "model", "taesd"  # models/VAE-approx/model.pt, taesd_decoder.*

    def __init__(
        self, *, name: str, label: str, default_size: int, open_clip: bool, text_encoder: str
    ):
        self.name, self.label, self.default_size = name, label, default_size
        self.open_clip = open_clip  # SD 2.x: OpenCLIP, 64-wide heads, linear projections
        self.text_encoder_prefix = text_encoder  # its tensors in the LDM file

    def spec_from_shapes(self, shapes: Shapes) -> ModelSpec | None:
        prefix = self.text_encoder_prefix
        if self.open_clip:
            if f"{prefix}token_embedding.weight" not in shapes:
                return None
            encoder = ldm.open_clip_config(shapes, prefix, with_projection=False)
            prediction = ldm.v_prediction_key(shapes)  # None: the loader asks the UNet
        else:
            if f"{prefix}embeddings.token_embedding.weight" not in shapes:
                return None
            encoder = ldm.hf_clip_config(shapes, prefix, "quick_gelu")
            prediction = "epsilon"
        unet = ldm.unet_config(
            shapes, sample_size=self.default_size // 8, head_dim=None if self.open_clip else 8,
            layers_per_level=self.open_clip,
        )  # fmt: skip
        ldm.check_context_width(unet, encoder["hidden_size"])
        vae = ldm.vae_config(shapes, sample_size=512, scaling_factor=0.18215, force_upcast=False)
        return self.make_spec(unet, vae, (encoder,), prediction)

    def owns_unet(self, unet: dict) -> bool:
        if unet.get("addition_embed_type") == "text_time":
            return False
        return bool(unet.get("use_linear_projection")) == self.open_clip

    def model_index(self, spec: ModelSpec) -> dict:
        return {**super().model_index(spec), "requires_safety_checker": False}

    def tokenizers(self, spec: ModelSpec) -> dict[str, Any]:
        return {"tokenizer": clip_tokenizer(OPEN_CLIP_PAD_TOKEN if self.open_clip else EOS_TOKEN)}

    def text_encoders(self, pipe: Any, clip_skip: int) -> list[TextEncoderSlot]:
        check_clip_skip(pipe.text_encoder, clip_skip)
        return [TextEncoderSlot(pipe.tokenizer, pipe.text_encoder, "", clip_skip, True, False)]


SD1 = SDFamily(name="sd1", label="SD 1.x", default_size=512, open_clip=False,
               text_encoder="cond_stage_model.transformer.text_model.")  # fmt: skip
SD2 = SDFamily(name="sd2", label="SD 2.x", default_size=768, open_clip=True,
               text_encoder="cond_stage_model.model.")  # fmt: skip
