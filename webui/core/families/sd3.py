"""SD 3.5 (Large, Large Turbo, Medium; SD 3 Medium's layout too): an MMDiT transformer
family with three text encoders.

- Recognised by Stability's MMDiT keys (`joint_blocks.N.context_block.*`) under
  `model.diffusion_model.` or at the top level, before the UNet families are asked; every
  size comes from the tensors (`model_manager.sd3_keys`): Medium is the file with dual
  attention layers (`x_block.attn2`), Large the one without; Large Turbo has Large's layout
  (its few steps and CFG 1 are the user's choice). Diffusers folders:
  `StableDiffusion3Pipeline`.
- Loaded by `load_single_file`: the transformer, the 16-channel autoencoder and the three
  text encoders (CLIP-L, CLIP-G, T5-XXL) from the file itself, or from the module files
  the job chose (Forge's "VAE / Text Encoder"; CLIP-L and CLIP-G told apart by width); a
  component found nowhere is a `MissingModuleError` naming the file to add and the folder
  (`needed_modules`, asked by the model manager before the job is queued), except T5-XXL:
  without it the model runs with zeros in T5's place, as diffusers' pipeline does with
  `text_encoder_3=None` (Forge and ComfyUI let users leave it out; `core.sd3_text`).
- Generation: txt2img, and img2img, inpaint and hires fix through the core's img2img path
  (`StableDiffusion3Img2ImgPipeline`, `StableDiffusion3InpaintPipeline` as `from_pipe`
  views, the job's shift on their schedule; soft inpainting and mask_round off blend the
  velocity's denoised latents, `core.soft_blend`):
  prompts through `core.sd3_text` (emphasis on all three encoders, chunks, prompt editing,
  AND with weights: `core.flow_and`), real CFG with the negative prompt (none at CFG 1,
  as for Turbo), the flow-matching shift (`params.shift`, default 3.0: SD 3's; infotext
  "Shift"), Skip Layer Guidance (`core.skip_layer_guidance`, in every mode).
- ControlNet units with SD 3.5 ControlNets (Stability's, InstantX's, diffusers'
  `SD3ControlNetModel`) through `core.sd3_controlnet` around each pipeline call.
- LoRA (`<lora:name:w>`): kohya / ComfyUI files in Stability's layer names and diffusers /
  peft files (`load_lora`, `model_manager.sd3_lora`).
- Samplers: Euler on the flow-matching schedule with Simple / Normal / SGM Uniform, Beta,
  Karras or Exponential sigmas; others are refused with a message. Latent preview:
  ComfyUI's SD 3 colour factors; TAESD: taesd3.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ...errors import UserError
from ...model_manager import sd3_files as sf
from ...model_manager import sd3_keys as sk
from ...model_manager.identify import ModelSpec, Shapes
from ...model_manager.loader import MissingModuleError, read_shapes
from ...model_manager.modules import module_shapes
from ...model_manager.sniff import HeaderError
from ...model_manager.tokenizers import OPEN_CLIP_PAD_TOKEN, clip_tokenizer, t5_tokenizer
from .. import skip_layer_guidance as slg
from ..conditioning import Conditioning, TextEncoderSlot, check_clip_skip
from ..flow_and import composed, follow_rows
from ..flow_euler import FLOW_SAMPLER, flow_euler_choice, flow_scheduler
from ..sampler_params import NGMS_OFF, Ngms
from ..samplers import SchedulerChoice
from ..sd3_controlnet import sd3_controlled
from ..sd3_text import follow_schedule, sd3_conditioning
from .base import Family, Mode

log = logging.getLogger(__name__)
SD3_SCHEDULER = MappingProxyType(sk.SD3_SCHEDULER)
SD3_LATENT_RGB = (
    (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458),
    (0.0856, 0.0339, 0.0902), (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309),
    (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358), (-0.0194, 0.0020, 0.0669),
    (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
    (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293),
    (-0.1448, -0.1463, -0.1189),
)  # fmt: skip
SD3_SAMPLER = FLOW_SAMPLER
DEFAULT_SHIFT = 3.0
OPTIONAL = ("t5xxl",)  # modules a file may run without (T5-XXL: zeros, as in diffusers)
_PIPELINES = {"txt2img": "StableDiffusion3Pipeline", "img2img": "StableDiffusion3Img2ImgPipeline",
              "inpaint": "StableDiffusion3InpaintPipeline"}  # fmt: skip


class SD3Family(Family):
    name = "sd3"
    label = "SD 3.5"
    default_size = 1024
    latent_space = "sd3"
    transformer_layout = True  # identify asks it before looking for a UNet
    latent_rgb = SD3_LATENT_RGB
    folder_classes = frozenset({"StableDiffusion3Pipeline"})
    base_scheduler = SD3_SCHEDULER
    taesd = "taesd3"
    big_text_encoders = ("text_encoder_3",)  # T5-XXL (`text_encoder_from_file`)
    default_shift = DEFAULT_SHIFT  # the model manager tells the UI (the "Shift" slider)
    # what the UI sets when an SD 3.5 checkpoint is chosen (Stability's Large)
    preset = MappingProxyType({"cfg_scale": 3.5, "sampler": SD3_SAMPLER, "schedule": "Simple"})
    skip_layer_guidance = True  # the generation service refuses SLG for the others

    # --- recognition and loading ----------------------------------------------------
    def spec_from_shapes(self, shapes: Shapes) -> ModelSpec | None:
        layout = sk.SD3Layout.of(shapes)
        if layout.transformer is None:
            return None
        transformer = sk.transformer_config(shapes, layout.transformer)
        vae = sk.vae_config(shapes, layout.vae) if layout.vae is not None else {}
        return self._spec(transformer, vae, sk.encoder_configs(shapes, layout), layout.missing())

    def _spec(self, transformer: dict, vae: dict, encoders: tuple, missing=()) -> ModelSpec:
        if transformer.get("dual_attention_layers"):
            variant = "SD 3.5 Medium"
        elif transformer.get("qk_norm"):
            variant = "SD 3.5 Large"
        else:
            variant = "SD 3"
        return ModelSpec(family=self.name, family_label=variant,
                         pipeline_class="StableDiffusion3Pipeline", inpainting=False,
                         prediction_type="flow", unet=transformer, vae=vae,
                         text_encoders=encoders, missing=tuple(missing))  # fmt: skip

    def spec_from_pipeline(self, pipe: Any) -> ModelSpec | None:
        if type(pipe).__name__ not in self.folder_classes:
            return None
        encoders = tuple(getattr(pipe, name).config.to_dict()
                         for name in ("text_encoder", "text_encoder_2", "text_encoder_3")
                         if getattr(pipe, name, None) is not None)  # fmt: skip
        return self._spec(dict(pipe.transformer.config), dict(pipe.vae.config), encoders)

    def pipeline_class(self, mode: Mode, inpainting: bool) -> str:
        return _PIPELINES[mode]

    def config_files(self, spec: ModelSpec) -> dict[str, dict]:
        """The diffusers folder layout of the spec's configs (what `load_single_file`
        builds; written for tools that want a config folder)."""
        files = {"model_index.json": {"_class_name": "StableDiffusion3Pipeline"},
                 "transformer/config.json": spec.unet, "vae/config.json": spec.vae,
                 "scheduler/scheduler_config.json": dict(SD3_SCHEDULER)}  # fmt: skip
        for i, config in enumerate(spec.text_encoders):
            files[f"text_encoder{'' if i == 0 else f'_{i + 1}'}/config.json"] = config
        return files

    def tokenizers(self, spec: ModelSpec) -> dict[str, Any]:
        return {"tokenizer": clip_tokenizer(), "tokenizer_2": clip_tokenizer(OPEN_CLIP_PAD_TOKEN),
                "tokenizer_3": t5_tokenizer()}  # fmt: skip

    def module_kinds(self, spec: ModelSpec, modules: Sequence[Path]) -> dict[str, Path]:
        """kind -> the first of the module files that is one (headers only)."""
        kinds: dict[str, Path] = {}
        for path in modules:
            try:
                shapes = module_shapes(Path(path))  # safetensors, or a GGUF T5
            except (OSError, HeaderError):
                continue
            kind = sk.module_kind(shapes, spec.unet["pooled_projection_dim"])
            if kind is not None:
                kinds.setdefault(kind, Path(path))
        return kinds

    def needed_modules(
        self, path: Path, spec: ModelSpec, modules: Sequence[Path]
    ) -> tuple[Path, ...]:
        """The module files that complete a partial file, in Forge's order (vae, clip_l,
        clip_g, t5xxl); MissingModuleError names what is still missing and where it goes.
        T5-XXL may be left out (Forge and ComfyUI run SD 3.5 without it: zeros instead)."""
        return tuple(self._chosen_modules(path, spec, modules).values())

    def _chosen_modules(self, path: Path, spec: ModelSpec, modules: Sequence[Path]) -> dict:
        kinds = self.module_kinds(spec, modules)
        lacking = [name for name in spec.missing if name not in kinds and name not in OPTIONAL]
        if lacking:
            raise MissingModuleError(sk.missing_message(path.name, lacking))
        return {name: kinds[name] for name in spec.missing if name in kinds}

    def load_single_file(self, path: Path, spec: ModelSpec, modules, dtype) -> Any:
        """The `StableDiffusion3Pipeline` of an SD 3.5 file, its missing components taken
        from `modules` (paths of separate module files); without T5 when neither has it."""
        from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

        shapes = read_shapes(path)
        layout = sk.SD3Layout.of(shapes)
        sources = {name: (path, getattr(layout, name), shapes) for name in sk.COMPONENTS}
        chosen = self._chosen_modules(path, spec, modules) if spec.missing else {}
        for name, module in chosen.items():
            sources[name] = (module, "", read_shapes(module))
        parts = {name: sf.build_component(name, *source, spec.unet, dtype)
                 for name, source in sources.items() if source[1] is not None}  # fmt: skip
        if "t5xxl" not in parts:
            log.info("%s: no T5-XXL in the file or the chosen modules; running without it",
                     path.name)  # fmt: skip
        return StableDiffusion3Pipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(dict(SD3_SCHEDULER)),
            vae=parts["vae"], text_encoder=parts["clip_l"], text_encoder_2=parts["clip_g"],
            text_encoder_3=parts.get("t5xxl"), transformer=parts["transformer"],
            **self.tokenizers(spec),
        )  # fmt: skip

    def text_encoder_from_file(self, path: Path, spec: ModelSpec, modules, name: str,
                               dtype) -> Any:  # fmt: skip
        """T5-XXL again, from the file `load_single_file` took it from (released after
        encoding: `model_manager.text_encoder_release`)."""
        if name != "text_encoder_3":
            raise ValueError(f"{self.label} reloads only its T5 encoder, not {name}")
        shapes = read_shapes(path)
        source = (path, sk.SD3Layout.of(shapes).t5xxl, shapes)
        if source[1] is None:
            module = self._chosen_modules(path, spec, modules).get("t5xxl")
            if module is None:
                raise MissingModuleError(sk.missing_message(path.name, ["t5xxl"]))
            source = (module, "", read_shapes(module))
        return sf.build_component("t5xxl", *source, spec.unet, dtype)

    # --- text ---------------------------------------------------------------------------
    def text_encoders(self, pipe: Any, clip_skip: int) -> list[TextEncoderSlot]:
        """CLIP-L and CLIP-G as SDXL reads them (layer -(clip skip + 1), no final norm),
        both pooled; T5 is read by `sd3_text`."""
        slots = []
        for tokenizer, encoder, key in ((pipe.tokenizer, pipe.text_encoder, "clip_l"),
                                        (pipe.tokenizer_2, pipe.text_encoder_2, "clip_g")):  # fmt: skip
            check_clip_skip(encoder, clip_skip)
            slots.append(TextEncoderSlot(tokenizer, encoder, key, clip_skip + 1, False, True))
        return slots

    def conditioning(
        self, pipe: Any, prompt: str, negative: str, clip_skip: int, *, steps: int,
        embeddings: Any = None, fields: tuple[str, str] = ("prompt", "negative_prompt"),
    ) -> Conditioning:  # fmt: skip
        return sd3_conditioning(pipe, self, prompt, negative, clip_skip, steps=steps,
                                embeddings=embeddings, fields=fields)  # fmt: skip

    def follow_steps(
        self, pipe: Any, conditioning: Conditioning, batch_size: int, ngms: Ngms = NGMS_OFF,
        *, first_step: int = 0, size: tuple[int, int] | None = None, control: Any = None,
    ) -> AbstractContextManager[Any]:  # fmt: skip
        if size is not None:  # img2img and hires fix: the size of the denoised latents
            self._check_size(
                pipe, size[0] // pipe.vae_scale_factor, size[1] // pipe.vae_scale_factor
            )
        following = _following(pipe, conditioning, batch_size, first_step)
        return sd3_controlled(following, control, pipe, size, batch_size, first_step)

    def pipeline_call_kwargs(self, conditioning: Conditioning, params: Any) -> dict[str, Any]:
        """Real CFG with the negative prompt (the pipeline skips it at CFG 1), and the
        job's Skip Layer Guidance for `core.skip_layer_guidance.guided`."""
        return {**conditioning.pipeline_kwargs(), "guidance_scale": params.cfg_scale,
                **slg.call_kwargs(params)}  # fmt: skip

    def start_latents(self, pipe: Any, noise: Any) -> Any:
        """The noise as the transformer takes it; a size the model cannot make is a
        message (patches of 2x2 latents, at most its position embedding's side)."""
        self._check_size(pipe, *noise.shape[-2:])
        return noise.to(pipe.device, pipe.transformer.dtype)

    def _check_size(self, pipe: Any, height: int, width: int) -> None:
        """Latents of `height` x `width` the transformer can read, else a message."""
        config, factor = pipe.transformer.config, pipe.vae_scale_factor
        step = config.patch_size * factor
        if height % config.patch_size or width % config.patch_size:
            raise UserError(f"{self.label}: width and height must be multiples of {step}")
        largest = config.pos_embed_max_size * step
        if max(height, width) * factor > largest:
            raise UserError(
                f"{self.label}: this model makes images of at most {largest}x{largest} pixels "
                f"(its position embedding); asked for {width * factor}x{height * factor}"
            )

    # --- sampling -----------------------------------------------------------------------
    def sampler(self, name: str | None, schedule: str | None) -> SchedulerChoice:
        """Euler on SD 3's flow-matching schedule; other samplers are refused."""
        return flow_euler_choice("SD 3.5", name, schedule)

    def scheduler(self, choice: SchedulerChoice, base_config: Mapping[str, Any], steps: int):
        return flow_scheduler(choice, base_config)

    def scheduler_options(self, params: Any) -> dict[str, Any]:
        """The job's shift on the flow-matching schedule (None: SD 3's 3.0)."""
        return {"shift": shift_of(params)}

    def img2img_call_kwargs(self, height: int, width: int) -> dict[str, Any]:
        """Its img2img and inpaint pipelines take the size, not the init latents'."""
        return {"height": height, "width": width}

    # --- infotext -----------------------------------------------------------------------
    def infotext_fields(self, params: Any) -> dict[str, Any]:
        return {"Shift": shift_of(params), **slg.infotext_fields(params)}

    # --- networks -----------------------------------------------------------------------
    def load_lora(self, pipe: Any, state: dict, adapter_name: str) -> None:
        """kohya / ComfyUI files in Stability's names (`model_manager.sd3_lora`) and
        diffusers / peft files, also on fp8 and GGUF models; a LoRA of another family is
        refused with a message; their T5-XXL layers on T5 (`model_manager.encoder_lora`)."""
        from ...model_manager import encoder_lora
        from ...model_manager.flux_lora import diffusers_lora_state, widen_fp8_lora
        from ...model_manager.sd3_lora import SD3_LORA

        state, t5_state = encoder_lora.split(state, encoder_lora.SD3_T5)
        if state:
            state = diffusers_lora_state(state, pipe.transformer.config, SD3_LORA)
            pipe.load_lora_weights(dict(state), adapter_name=adapter_name)
            widen_fp8_lora(pipe, state, adapter_name)
        encoder_lora.attach(pipe, encoder_lora.SD3_T5, t5_state, adapter_name)


@contextmanager
def _following(pipe: Any, conditioning: Conditioning, batch_size: int,
               first_step: int) -> Iterator[Callable]:  # fmt: skip
    """The prompt schedule (AND: the sub-prompts' predictions combined, `flow_and`) and
    Skip Layer Guidance on the transformer for one call."""
    follow = follow_rows if composed(conditioning) else follow_schedule
    with slg.guided(pipe) as track, follow(
        pipe, conditioning, batch_size, first_step=first_step
    ) as wrap:  # fmt: skip
        yield lambda on_step: track(wrap(on_step))


def shift_of(params: Any) -> float:
    shift = getattr(params, "shift", None)
    return DEFAULT_SHIFT if shift is None else shift


SD3 = SD3Family()
