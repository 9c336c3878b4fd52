"""Z-Image (Turbo): a single-stream DiT with a Qwen3 text encoder and FLUX.1's autoencoder.

- Recognised by ComfyUI's transformer keys (`cap_embedder.*`, `noise_refiner.*`,
  `x_pad_token`; top level or under `model.diffusion_model.`) or the same in diffusers'
  names, before the UNet families are asked (`transformer_layout`); every size comes from
  the tensors (`model_manager.zimage_keys`). Diffusers folders: `ZImagePipeline`.
- Loaded by `load_single_file`: the transformer from the file (bf16/fp16, fp8 kept fp8,
  GGUF kept quantized), the autoencoder (`ae.safetensors`) and the Qwen3 text encoder
  (`qwen_3_4b.safetensors`) from the file itself (ComfyUI's all-in-one checkpoints) or the
  module files the job chose (Forge's "VAE / Text Encoder"); a component found nowhere is a
  `MissingModuleError` naming the file to add and the folder. Tokenizer: Qwen3's, shipped
  in the package (`model_manager.qwen_tokenizer`).
- Generation: txt2img, and img2img, inpaint and hires fix through the core's img2img path
  (diffusers' Z-Image img2img and inpaint pipelines as `from_pipe` views that take init
  latents: `model_manager.zimage_pipelines`; soft inpainting and mask_round off blend the
  velocity's denoised latents, `core.soft_blend`):
  prompts through `core.zimage_text` (Qwen3's chat template as diffusers builds it,
  emphasis, prompt editing, AND with weights: `core.flow_and`); the CFG scale as A1111's (Z-Image Turbo: 1, no
  negative prompt; above 1 the negative prompt is used, diffusers' scale being CFG - 1).
- Samplers: Euler on the flow-matching schedule (Z-Image Turbo's shift 3, or the job's
  "Shift", `params.shift`) with FLUX.1's schedule types (`core.flow_euler`: Simple, Normal,
  SGM Uniform, Beta, Karras, Exponential); every other sampler is refused.
- Infotext: "Shift" (3 unless the job sets one), the modules ("Module 1: ae", ...) from
  `processing.module_fields`. Latent preview: FLUX.1's 16-channel colour factors (the same autoencoder).
- LoRA: `<lora:name:w>` on the transformer in the layouts users have
  (`model_manager.zimage_lora`); a LoRA of another family is refused with a message.

This module must never import a UI library.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ...errors import UserError
from ...model_manager import flux_files as ff
from ...model_manager import flux_keys as fk
from ...model_manager import zimage_files as zf
from ...model_manager import zimage_keys as zk
from ...model_manager.identify import ModelSpec, Shapes
from ...model_manager.loader import MissingModuleError, read_shapes
from ...model_manager.qwen_tokenizer import qwen_tokenizer
from ..conditioning import Conditioning, TextEncoderSlot
from ..flow_and import composed, follow_captions
from ..flow_euler import FLOW_SAMPLER, flow_euler_choice, flow_scheduler
from ..flow_shift import fixed_shift_options, job_shift
from ..sampler_params import NGMS_OFF, Ngms
from ..samplers import SchedulerChoice
from ..zimage_text import caption_lists, follow_schedule, zimage_conditioning
from .base import Family, Mode
from .flux import FLUX_LATENT_RGB

ZIMAGE_SCHEDULER = MappingProxyType(zk.ZIMAGE_SCHEDULER)
ZIMAGE_SAMPLER, ZIMAGE_SCHEDULE = FLOW_SAMPLER, "Simple"
DEFAULT_STEPS = 9  # what Z-Image Turbo's model card runs
DEFAULT_SHIFT = float(ZIMAGE_SCHEDULER["shift"])  # Z-Image Turbo's 3
_PIPELINES = {"txt2img": "ZImagePipeline", "img2img": "ZImageLatentImg2ImgPipeline",
              "inpaint": "ZImageLatentInpaintPipeline"}  # fmt: skip


class ZImageFamily(Family):
    name = "zimage"
    label = "Z-Image"
    default_size = 1024
    latent_space = "flux"  # FLUX.1's autoencoder
    transformer_layout = True  # identify asks it before looking for a UNet
    latent_rgb = FLUX_LATENT_RGB
    folder_classes = frozenset({"ZImagePipeline"})
    base_scheduler = ZIMAGE_SCHEDULER
    default_shift = DEFAULT_SHIFT  # the model manager tells the UI (the "Shift" slider)
    big_text_encoders = ("text_encoder",)  # Qwen3 (`text_encoder_from_file`)
    # what the UI sets when a Z-Image checkpoint is chosen (Turbo: few steps, no CFG)
    preset = MappingProxyType({"steps": DEFAULT_STEPS, "cfg_scale": 1.0,
                               "sampler": ZIMAGE_SAMPLER, "schedule": ZIMAGE_SCHEDULE})  # fmt: skip

    # --- recognition and loading ----------------------------------------------------
    def spec_from_shapes(self, shapes: Shapes) -> ModelSpec | None:
        inside = zk.layout(shapes)
        if inside["transformer"] is None:
            return None
        vae = fk.vae_config(shapes, inside["vae"]) if inside["vae"] is not None else {}
        qwen3 = zk.qwen3_config(shapes, zk.QWEN3_PREFIX) if inside["qwen3"] is not None else {}
        transformer = zk.transformer_config(shapes, inside["transformer"])
        return self._spec(transformer, vae, (qwen3,), zk.missing_components(shapes))

    def _spec(self, transformer: dict, vae: dict, encoders: tuple, missing=()) -> ModelSpec:
        return ModelSpec(
            family=self.name,
            family_label=self.label,
            pipeline_class="ZImagePipeline",
            inpainting=False,
            prediction_type="flow",
            unet=transformer,
            vae=vae,
            text_encoders=encoders,
            missing=tuple(missing),
        )

    def spec_from_pipeline(self, pipe: Any) -> ModelSpec | None:
        if type(pipe).__name__ not in self.folder_classes:
            return None
        encoders = (pipe.text_encoder.config.to_dict(),)
        return self._spec(dict(pipe.transformer.config), dict(pipe.vae.config), encoders)

    def pipeline_class(self, mode: Mode, inpainting: bool) -> str:
        return _PIPELINES[mode]

    def config_files(self, spec: ModelSpec) -> dict[str, dict]:
        """The diffusers folder layout of the spec's configs (what `load_single_file`
        builds; written for tools that want a config folder)."""
        return {
            "model_index.json": {"_class_name": "ZImagePipeline"},
            "transformer/config.json": spec.unet,
            "vae/config.json": spec.vae,
            "scheduler/scheduler_config.json": dict(ZIMAGE_SCHEDULER),
            "text_encoder/config.json": spec.text_encoders[0],
        }

    def tokenizers(self, spec: ModelSpec) -> dict[str, Any]:
        return {"tokenizer": qwen_tokenizer()}

    def missing_message(self, file_name: str, missing) -> str:
        return zk.missing_message(file_name, missing)

    def load_single_file(self, path: Path, spec: ModelSpec, modules, dtype) -> Any:
        """The `ZImagePipeline` of a transformer file (or an all-in-one checkpoint), what it
        lacks taken from its module files (paths; those of other kinds are ignored)."""
        from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

        shapes = read_shapes(path)
        prefix = zk.transformer_prefix(shapes)
        found = _components(path, shapes, modules)
        missing = [name for name in ("vae", "qwen3") if name not in found]
        if missing:
            raise MissingModuleError(zk.missing_message(path.name, missing))
        transformer = zf.build_transformer(spec.unet, ff.read_state(path, prefix),
                                           not zk.diffusers_names(shapes, prefix), dtype)  # fmt: skip
        vae_path, vae_prefix, vae_shapes = found["vae"]
        vae_state = ff.read_state(vae_path, vae_prefix)
        vae = ff.build_vae(fk.vae_config(vae_shapes, vae_prefix), vae_state, dtype)
        return ZImagePipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(dict(ZIMAGE_SCHEDULER)),
            vae=vae, text_encoder=_qwen3(*found["qwen3"], dtype), transformer=transformer,
            **self.tokenizers(spec),
        )  # fmt: skip

    def text_encoder_from_file(self, path: Path, spec: ModelSpec, modules, name: str,
                               dtype) -> Any:  # fmt: skip
        """Qwen3 again, from the file `load_single_file` took it from (released after
        encoding: `model_manager.text_encoder_release`)."""
        found = _components(path, read_shapes(path), modules)
        if "qwen3" not in found:
            raise MissingModuleError(zk.missing_message(path.name, ["qwen3"]))
        return _qwen3(*found["qwen3"], dtype)

    # --- text ---------------------------------------------------------------------------
    def text_encoders(self, pipe: Any, clip_skip: int) -> list[TextEncoderSlot]:
        """Qwen3; `zimage_text` reads it, not the CLIP machinery."""
        return [TextEncoderSlot(pipe.tokenizer, pipe.text_encoder, "qwen3", 2, True, False)]

    def conditioning(
        self, pipe: Any, prompt: str, negative: str, clip_skip: int, *, steps: int,
        embeddings: Any = None, fields: tuple[str, str] = ("prompt", "negative_prompt"),
    ) -> Conditioning:  # fmt: skip
        return zimage_conditioning(pipe, prompt, negative, steps=steps, fields=fields,
                                   clip_skip=clip_skip, embeddings=embeddings)  # fmt: skip

    def follow_steps(
        self, pipe: Any, conditioning: Conditioning, batch_size: int, ngms: Ngms = NGMS_OFF,
        *, first_step: int = 0, size: tuple[int, int] | None = None, control: Any = None,
    ) -> AbstractContextManager[Any]:  # fmt: skip
        if control is not None:
            raise UserError(f"ControlNet does not run {self.label} models yet")
        if composed(conditioning):  # AND: the sub-prompts' predictions combined (flow_and)
            return follow_captions(pipe, conditioning, batch_size, first_step=first_step)
        return follow_schedule(pipe, conditioning, batch_size, first_step=first_step)

    def pipeline_call_kwargs(self, conditioning: Conditioning, params: Any) -> dict[str, Any]:
        """The first step's captions; the negative prompt only with CFG above 1 (diffusers'
        Z-Image scale g gives cond + g * (cond - uncond): A1111's CFG scale minus 1)."""
        dtype = conditioning.conds[0].at(0).embeds.dtype
        cond, uncond = caption_lists(conditioning, 0, dtype)
        if params.cfg_scale <= 1:
            return {"prompt_embeds": cond, "guidance_scale": 0.0}
        return {"prompt_embeds": cond, "negative_prompt_embeds": uncond,
                "guidance_scale": params.cfg_scale - 1}  # fmt: skip

    def start_latents(self, pipe: Any, noise: Any) -> Any:
        batch, channels, height, width = noise.shape
        if height % 2 or width % 2:
            raise UserError(
                f"{self.label} reads 2x2 latent patches: width and height must be multiples "
                f"of {2 * pipe.vae_scale_factor}"
            )
        return noise.float().to(pipe.device)  # the pipeline keeps its latents in fp32

    # --- sampling -----------------------------------------------------------------------
    def sampler(self, name: str | None, schedule: str | None) -> SchedulerChoice:
        """Euler on Z-Image's flow-matching schedule, with FLUX.1's and SD 3.5's schedule
        types (`core.flow_euler`); other samplers are refused."""
        return flow_euler_choice("Z-Image", name, schedule)

    def scheduler(self, choice: SchedulerChoice, base_config: Mapping[str, Any], steps: int):
        return flow_scheduler(choice, base_config)

    def scheduler_options(self, params: Any) -> dict[str, Any]:
        """A job's shift in place of Z-Image Turbo's 3; {}: keep it."""
        return fixed_shift_options(params)

    def img2img_call_kwargs(self, height: int, width: int) -> dict[str, Any]:
        """Its img2img and inpaint pipelines take the size, not the init latents'."""
        return {"height": height, "width": width}

    # --- infotext -----------------------------------------------------------------------
    def infotext_fields(self, params: Any) -> dict[str, Any]:
        shift = job_shift(params)
        return {"Shift": DEFAULT_SHIFT if shift is None else shift}

    # --- networks -----------------------------------------------------------------------
    def load_lora(self, pipe: Any, state: dict, adapter_name: str) -> None:
        """diffusers/peft, ai-toolkit, kohya/musubi and ComfyUI-named files
        (`model_manager.zimage_lora`); on fp8 weights the LoRA layers computed wide. Their
        Qwen3 layers on Qwen3 (`model_manager.encoder_lora`)."""
        from ...model_manager import encoder_lora
        from ...model_manager.flux_lora import widen_fp8_lora
        from ...model_manager.zimage_lora import diffusers_lora_state

        state, qwen3_state = encoder_lora.split(state, encoder_lora.ZIMAGE_QWEN3)
        if state:
            state = diffusers_lora_state(pipe, state)
            pipe.load_lora_weights(dict(state), adapter_name=adapter_name)
            widen_fp8_lora(pipe, state, adapter_name)
        encoder_lora.attach(pipe, encoder_lora.ZIMAGE_QWEN3, qwen3_state, adapter_name)


def _components(path: Path, shapes: Shapes, modules) -> dict[str, tuple[Path, str, Shapes]]:
    """Where the autoencoder and Qwen3 come from: (file, prefix, its shapes), the
    checkpoint's own first (an all-in-one file), else the first module file of the kind."""
    inside = zk.layout(shapes)
    found = {kind: (path, inside[kind], shapes) for kind in ("vae", "qwen3")
             if inside[kind] is not None}  # fmt: skip
    for module in modules:
        module_shapes = read_shapes(Path(module))
        kind = fk.module_kind(module_shapes) or zk.module_kind(module_shapes)
        if kind in ("vae", "qwen3"):
            found.setdefault(kind, (Path(module), "", module_shapes))
    return found


def _qwen3(path: Path, outer: str, shapes: Shapes, dtype) -> Any:
    prefix = zk.qwen3_prefix(shapes, outer)
    return zf.build_qwen3(zk.qwen3_config(shapes, outer), ff.read_state(path, prefix), "", dtype)


ZIMAGE = ZImageFamily()
