"""FLUX.1 (dev, schnell and fine-tunes in their layout): the first transformer family.

- Recognised by Black Forest Labs' transformer keys (`double_blocks.*`, `single_blocks.*`)
  at the top level or under `model.diffusion_model.`, before the UNet families are asked
  (`transformer_layout`); every size comes from the tensors (`model_manager.flux_files`),
  schnell is the file without a guidance embedding. Diffusers folders: `FluxPipeline`
  (one whose transformer reads more than its latents is FLUX.1 Fill's).
- Loaded by `load_single_file`, not diffusers' `from_single_file`: the transformer, the
  autoencoder and the two text encoders come from the file itself (all-in-one files)
  or from the separate module files the job chose (Forge's "VAE / Text Encoder": ae,
  clip_l, t5xxl); a component found nowhere is a `MissingModuleError` naming the file to
  add and the folder. Tokenizers: CLIP's and T5 v1.1's, shipped in the package.
- Generation: txt2img, and img2img, inpaint and hires fix through the core's img2img path
  (`FluxImg2ImgPipeline`, `FluxInpaintPipeline` as `from_pipe` views; init latents with
  the autoencoder's shift; soft inpainting and mask_round off blend the packed latents
  unpacked, `core.soft_blend`); prompts through `core.flux_text`
  (T5 emphasis, prompt editing, AND with weights: `core.flow_and`), Forge's "Distilled
  CFG Scale" as the guidance embedding (`params.distilled_cfg_scale`, not for
  schnell's files, which have none), the CFG scale as true CFG with the negative prompt
  only above 1; the pipeline's packed latents unpacked for previews and decoding.
- Samplers: Euler on the flow-matching schedule (FLUX.1 dev's resolution-dependent shift,
  schnell: none) with Simple / Normal / SGM Uniform (its own spacing), Beta, Karras or
  Exponential sigmas; every other sampler is refused with a message. A job's "Shift"
  (`params.shift`, `core.flow_shift`) replaces that shift with a fixed one (Forge's and
  ComfyUI's FLUX shift, mu = ln(shift)); None keeps it.
- ControlNet units with FLUX ControlNets (InstantX, Shakker-Labs, XLabs) through
  `core.flux_controlnet` around each pipeline call (`follow_steps(control=...)`).
- Infotext: "Distilled CFG Scale", "Shift" when the job sets one; the modules ("Module 1: ae", ...) come from
  `processing.module_fields`. Latent preview: ComfyUI's 16-channel colour factors.

This module must never import a UI library.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ...errors import UserError
from ...model_manager import flux_files as ff
from ...model_manager import flux_keys as fk
from ...model_manager.identify import ModelSpec, Shapes
from ...model_manager.loader import MissingModuleError, read_shapes
from ...model_manager.tokenizers import clip_tokenizer, t5_tokenizer
from ..conditioning import Conditioning, TextEncoderSlot
from ..flow_and import composed, follow_rows
from ..flow_euler import FLOW_SAMPLER, FLOW_SCHEDULES, flow_euler_choice, flow_scheduler
from ..flow_shift import fixed_shift_options, job_shift
from ..flux_controlnet import flux_controlled
from ..flux_text import flux_conditioning, follow_schedule
from ..sampler_params import NGMS_OFF, Ngms
from ..samplers import SchedulerChoice
from .base import Family, Mode

FLUX_SCHEDULER = MappingProxyType(fk.FLUX_SCHEDULER)
SCHNELL_SCHEDULER = MappingProxyType(
    dict(FLUX_SCHEDULER, shift=1.0, use_dynamic_shifting=False)
)  # fmt: skip
FLUX_LATENT_RGB = (
    (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617), (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259), (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)  # fmt: skip
FLUX_SAMPLER = FLOW_SAMPLER
FLUX_SCHEDULES = FLOW_SCHEDULES  # the flow-matching Euler schedule types (core.flow_euler)
_PIPELINES = {"txt2img": "FluxPipeline", "img2img": "FluxImg2ImgPipeline",
              "inpaint": "FluxInpaintPipeline"}  # fmt: skip


class FluxFamily(Family):
    name = "flux1"
    label = "FLUX.1"
    default_size = 1024
    latent_space = "flux"
    transformer_layout = True  # identify asks it before looking for a UNet
    latent_rgb = FLUX_LATENT_RGB
    folder_classes = frozenset({"FluxPipeline"})
    folder_claims = folder_classes  # pipeline classes of folders it recognises (`accepts`)
    base_scheduler = FLUX_SCHEDULER
    # the "Shift" slider's value for "the model's own" (dev: from the image size)
    default_shift = 0.0
    schnell_shift = 1.0  # schnell's schedule is unshifted
    big_text_encoders = ("text_encoder_2",)  # T5-XXL (`text_encoder_from_file`)
    controlnet = True  # FLUX ControlNet units (`core.flux_controlnet`) feed its transformer

    # --- recognition and loading ----------------------------------------------------
    def spec_from_shapes(self, shapes: Shapes) -> ModelSpec | None:
        layout = fk.FluxLayout.of(shapes)
        if layout.transformer is None:
            return None
        transformer = fk.transformer_config(shapes, layout.transformer)
        if not self.accepts(transformer):  # FLUX.1 Fill is its own family (flux_fill.py)
            return None
        vae = fk.vae_config(shapes, layout.vae) if layout.vae is not None else {}
        encoders = (
            fk.clip_l_config(shapes, layout.clip_l) if layout.clip_l is not None else {},
            fk.t5_config(shapes, layout.t5xxl) if layout.t5xxl is not None else {},
        )
        return self._spec(transformer, vae, encoders, layout.missing())

    def accepts(self, transformer: dict) -> bool:
        """Whether a transformer config is this family's: one that reads the latents only."""
        return transformer["in_channels"] == transformer["out_channels"]

    def _spec(self, transformer: dict, vae: dict, encoders: tuple, missing=()) -> ModelSpec:
        schnell = not transformer["guidance_embeds"]
        return ModelSpec(
            family=self.name,
            family_label=f"{self.label} schnell" if schnell else self.label,
            pipeline_class="FluxPipeline",
            inpainting=False,
            prediction_type="flow",
            unet=transformer,
            vae=vae,
            text_encoders=encoders,
            missing=tuple(missing),
        )

    def spec_from_pipeline(self, pipe: Any) -> ModelSpec | None:
        """A diffusers folder's spec when its class is one this family claims and its
        transformer config (in_channels: FLUX.1 Fill's is wider) is this family's."""
        if type(pipe).__name__ not in self.folder_claims:
            return None
        if not self.accepts(dict(pipe.transformer.config)):
            return None
        encoders = (pipe.text_encoder.config.to_dict(), pipe.text_encoder_2.config.to_dict())
        return self._spec(dict(pipe.transformer.config), dict(pipe.vae.config), encoders)

    def pipeline_class(self, mode: Mode, inpainting: bool) -> str:
        return _PIPELINES[mode]

    def config_files(self, spec: ModelSpec) -> dict[str, dict]:
        """The diffusers folder layout of the spec's configs (what `load_single_file`
        builds; written for tools that want a config folder)."""
        return {
            "model_index.json": {"_class_name": "FluxPipeline"},
            "transformer/config.json": spec.unet,
            "vae/config.json": spec.vae,
            "scheduler/scheduler_config.json": dict(self.scheduler_config(spec)),
            "text_encoder/config.json": spec.text_encoders[0],
            "text_encoder_2/config.json": spec.text_encoders[1],
        }

    def scheduler_config(self, spec: ModelSpec) -> MappingProxyType:
        return SCHNELL_SCHEDULER if not spec.unet["guidance_embeds"] else FLUX_SCHEDULER

    def tokenizers(self, spec: ModelSpec) -> dict[str, Any]:
        return {"tokenizer": clip_tokenizer(), "tokenizer_2": t5_tokenizer()}

    def load_single_file(self, path: Path, spec: ModelSpec, modules, dtype) -> Any:
        """The `FluxPipeline` of a FLUX file, its missing components taken from
        `modules` (paths of separate module files; those of other kinds are ignored)."""
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

        sources = {name: (path, getattr(fk.FluxLayout.of(read_shapes(path)), name), None)
                   for name in fk.COMPONENTS}  # fmt: skip
        for module in modules:
            shapes = read_shapes(Path(module))
            kind = fk.module_kind(shapes)
            if kind is not None and sources[kind][1] is None:
                sources[kind] = (Path(module), "", shapes)
        missing = [name for name, (_, prefix, _) in sources.items() if prefix is None]
        if missing:
            raise MissingModuleError(fk.missing_message(path.name, missing))
        parts = {name: _component(name, *source, spec, dtype) for name, source in sources.items()}
        return FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler.from_config(dict(self.scheduler_config(spec))),
            vae=parts["vae"], text_encoder=parts["clip_l"], text_encoder_2=parts["t5xxl"],
            transformer=parts["transformer"], **self.tokenizers(spec),
        )  # fmt: skip

    def text_encoder_from_file(self, path: Path, spec: ModelSpec, modules, name: str,
                               dtype) -> Any:  # fmt: skip
        """T5-XXL again, from the file `load_single_file` took it from (released after
        encoding: `model_manager.text_encoder_release`)."""
        if name != "text_encoder_2":
            raise ValueError(f"{self.label} reloads only its T5 encoder, not {name}")
        shapes = read_shapes(path)
        prefix = fk.FluxLayout.of(shapes).t5xxl
        if prefix is not None:
            return _component("t5xxl", path, prefix, shapes, spec, dtype)
        for module in modules:
            module_shapes = read_shapes(Path(module))
            if fk.module_kind(module_shapes) == "t5xxl":
                return _component("t5xxl", Path(module), "", module_shapes, spec, dtype)
        raise MissingModuleError(fk.missing_message(path.name, ["t5xxl"]))

    # --- text ---------------------------------------------------------------------------
    def text_encoders(self, pipe: Any, clip_skip: int) -> list[TextEncoderSlot]:
        """CLIP-L (pooled) and T5-XXL; `flux_text` reads them, not the CLIP machinery."""
        return [TextEncoderSlot(pipe.tokenizer, pipe.text_encoder, "clip_l", 1, True, True),
                TextEncoderSlot(pipe.tokenizer_2, pipe.text_encoder_2, "t5xxl", 1, True, False)]  # fmt: skip

    def conditioning(
        self, pipe: Any, prompt: str, negative: str, clip_skip: int, *, steps: int,
        embeddings: Any = None, fields: tuple[str, str] = ("prompt", "negative_prompt"),
    ) -> Conditioning:  # fmt: skip
        return flux_conditioning(pipe, prompt, negative, steps=steps, fields=fields,
                                 clip_skip=clip_skip, embeddings=embeddings)  # fmt: skip

    def follow_steps(
        self, pipe: Any, conditioning: Conditioning, batch_size: int, ngms: Ngms = NGMS_OFF,
        *, first_step: int = 0, size: tuple[int, int] | None = None, control: Any = None,
    ) -> AbstractContextManager[Any]:  # fmt: skip
        if control is not None and control.guiding and not self.controlnet:
            raise UserError(f"ControlNet does not run {self.label} models")
        following = _following(pipe, conditioning, batch_size, first_step, size)
        return flux_controlled(following, control, pipe, size, first_step)  # FLUX ControlNets

    def pipeline_call_kwargs(self, conditioning: Conditioning, params: Any) -> dict[str, Any]:
        """Distilled guidance always; the negative prompt only with true CFG (CFG > 1)."""
        kwargs = conditioning.pipeline_kwargs()
        if params.cfg_scale <= 1:
            kwargs.pop("negative_prompt_embeds")
            kwargs.pop("negative_pooled_prompt_embeds")
        guidance = params.distilled_cfg_scale
        return {**kwargs, "guidance_scale": guidance, "true_cfg_scale": params.cfg_scale}

    def start_latents(self, pipe: Any, noise: Any) -> Any:
        batch, channels, height, width = noise.shape
        if height % 2 or width % 2:
            raise UserError(
                f"{self.label} packs 2x2 latent patches: width and height must be multiples "
                f"of {2 * pipe.vae_scale_factor}"
            )
        packed = pipe._pack_latents(noise, batch, channels, height, width)
        return packed.to(pipe.device, pipe.transformer.dtype)

    def finished_latents(self, pipe: Any, latents: Any, height: int, width: int) -> Any:
        return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)

    # --- sampling -----------------------------------------------------------------------
    def sampler(self, name: str | None, schedule: str | None) -> SchedulerChoice:
        """Euler on FLUX's flow-matching schedule; other samplers are refused."""
        return flow_euler_choice("FLUX", name, schedule)

    def scheduler(self, choice: SchedulerChoice, base_config: Mapping[str, Any], steps: int):
        return flow_scheduler(choice, base_config)

    def img2img_call_kwargs(self, height: int, width: int) -> dict[str, Any]:
        """Its img2img and inpaint pipelines take the size, not the init latents'."""
        return {"height": height, "width": width}

    def scheduler_options(self, params: Any) -> dict[str, Any]:
        """A job's fixed shift in place of dev's dynamic one (schnell's none); {}: keep it."""
        return fixed_shift_options(params)

    # --- infotext -----------------------------------------------------------------------
    def infotext_fields(self, params: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {"Distilled CFG Scale": params.distilled_cfg_scale}
        shift = job_shift(params)
        if shift is not None:
            fields["Shift"] = shift
        return fields

    # --- networks -----------------------------------------------------------------------
    def load_lora(self, pipe: Any, state: dict, adapter_name: str) -> None:
        """kohya, BFL-named, ai-toolkit/peft and XLabs files (`model_manager.flux_lora`);
        their T5-XXL layers on T5 (`model_manager.encoder_lora`)."""
        from ...model_manager import encoder_lora
        from ...model_manager.flux_lora import diffusers_lora_state, widen_fp8_lora

        state, t5_state = encoder_lora.split(state, encoder_lora.FLUX_T5)
        if state:
            state = diffusers_lora_state(state, pipe.transformer.config)
            pipe.load_lora_weights(dict(state), adapter_name=adapter_name)
            widen_fp8_lora(pipe, state, adapter_name)
        encoder_lora.attach(pipe, encoder_lora.FLUX_T5, t5_state, adapter_name)


@contextmanager
def _following(pipe, conditioning, batch_size, first_step, size) -> Iterator[Callable]:
    """The prompt schedule (and AND) on the transformer, and the step callback given
    unpacked latents (B, 16, h, w) for progress previews."""
    if composed(conditioning):  # AND: the sub-prompts' predictions combined (flow_and)
        following = follow_rows(pipe, conditioning, batch_size, first_step=first_step,
                                two_calls=True)  # fmt: skip
    else:
        following = follow_schedule(pipe, conditioning, batch_size, first_step=first_step)
    with following as follow:

        def wrap(on_step: Callable) -> Callable:
            inner = follow(on_step)
            if size is None:
                return inner

            def callback(p, i, t, tensors):
                latents = p._unpack_latents(tensors["latents"], *size, p.vae_scale_factor)
                return inner(p, i, t, {**tensors, "latents": latents})

            return callback

        yield wrap


def _component(name: str, path: Path, prefix: str, shapes: Shapes | None, spec: ModelSpec,
               dtype) -> Any:  # fmt: skip
    """One component from a file: its config from that file's tensors, then its weights."""
    shapes = shapes if shapes is not None else read_shapes(path)
    state = ff.read_state(path, prefix)
    if name == "transformer":
        return ff.build_transformer(spec.unet, state, dtype)
    if name == "vae":
        return ff.build_vae(fk.vae_config(shapes, prefix), state, dtype)
    if name == "clip_l":
        return ff.build_clip_l(fk.clip_l_config(shapes, prefix), state, dtype)
    return ff.build_t5(fk.t5_config(shapes, prefix), state, dtype)


FLUX1 = FluxFamily()
