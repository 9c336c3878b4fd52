"""`Family`: everything the program knows about one kind of checkpoint, in one object.

A model family declares, in its own module (`sd.py`, `sdxl.py`, ...):

- recognition: how its single files are recognised from their tensor shapes, and which
  diffusers folders are its own (`spec_from_shapes`, `spec_from_pipeline`,
  `folder_classes`);
- loading offline: the diffusers pipeline classes and the config folder written for
  `from_single_file` (`pipeline_class`, `config_files`, `tokenizers`, `base_scheduler`);
- text: its text encoders and how they are read (`text_encoders`, clip skip,
  `zero_empty_negative`), and how a prompt becomes conditioning with A1111's weights,
  75-token chunks, prompt editing and AND (`conditioning`, `follow_steps`);
- sampling: which samplers and schedules it runs and how they are built (`sampler`,
  `scheduler`), its defaults (`default_size`);
- networks: how a LoRA file is put on its pipeline (`load_lora`); which embedding vectors
  each text encoder reads (the `key` of its `TextEncoderSlot`s);
- infotext fields of its own (`infotext_fields`), the img2img/inpaint pipeline variants
  (`pipeline_class(mode, inpainting)`), and the latent preview coefficients
  (`latent_rgb`) and small decoders' files (`vae_approx`, `taesd`).

Core code asks the job's family (`RunContext.family`) instead of testing family names.
The model manager sees families through `webui.model_manager.identify.ModelFamily` and
gets them from the composition root (`Families`), never by importing this package.

This module must never import a UI library.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from types import MappingProxyType
from typing import Any, overload

from ...errors import UserError
from ...model_manager.identify import ModelSpec, Shapes
from ..composable import hooked, sigma_of_timestep
from ..conditioning import Conditioning, TextEncoderSlot, prepare_conditioning
from ..controlnet import controlled
from ..flow_shift import refuse_shift
from ..sampler_params import NGMS_OFF, Ngms
from ..samplers import SchedulerChoice, resolve
from ..schedulers import make_scheduler
from ..sigmas import AYS_SD15

Mode = str  # "txt2img" | "img2img" | "inpaint"


class Family(ABC):
    """One model family. Instances are immutable; one per family is enough."""

    name: str  # "sd1": ModelSpec.family
    label: str  # "SD 1.x": what users read (logs, result info)
    default_size: int  # the side its base models were trained at, in pixels
    medvram_sdxl: bool = False  # --medvram-sdxl offloads this family
    zero_empty_negative: bool = False  # an empty negative prompt is all zeros
    latent_rgb: tuple[tuple[float, float, float], ...]  # latent channel -> RGB (preview)
    folder_classes: frozenset[str] = frozenset()  # diffusers folders it loads
    folder_kwargs: Mapping[str, Any] = MappingProxyType({})  # from_pretrained kwargs for them
    base_scheduler: Mapping[str, Any]  # the scheduler config its files load with
    align_your_steps: tuple[float, ...] = AYS_SD15  # its published Align Your Steps sigmas
    latent_space: str = "sd"  # families with the same one can refine each other's latents
    # small decoders (webui.model_manager.approx_files): A1111's Approx NN file stem in
    # models/VAE-approx ("model"), and the TAESD files' prefix ("taesd": taesd_decoder.*,
    # taesd_encoder.*); None: the family has none (previews fall back to Approx cheap)
    vae_approx: str | None = None
    taesd: str | None = None
    refiner: bool = True  # A1111's Refiner can take over its jobs, or be one (not Fill)
    # pipeline attributes of its big text encoders (T5-XXL, Qwen3), freed after encoding
    # when the option says so (`model_manager.text_encoder_release`, `text_encoder_from_file`)
    big_text_encoders: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<family {self.name}>"

    # --- recognition and loading ----------------------------------------------------
    @abstractmethod
    def spec_from_shapes(self, shapes: Shapes) -> ModelSpec | None:
        """The spec of a single file of this family (LDM layout), else None."""

    @abstractmethod
    def spec_from_pipeline(self, pipe: Any) -> ModelSpec | None:
        """The spec of a pipeline loaded from a diffusers folder, else None."""

    @abstractmethod
    def pipeline_class(self, mode: Mode, inpainting: bool) -> str:
        """The diffusers pipeline class for a mode, for the plain or inpainting variant."""

    @abstractmethod
    def config_files(self, spec: ModelSpec) -> dict[str, dict]:
        """The diffusers config folder (relative path -> JSON) for `from_single_file`."""

    @abstractmethod
    def tokenizers(self, spec: ModelSpec) -> dict[str, Any]:
        """Its tokenizers, built offline, as pipeline keyword arguments."""

    # --- text -------------------------------------------------------------------------
    @abstractmethod
    def text_encoders(self, pipe: Any, clip_skip: int) -> list[TextEncoderSlot]:
        """The pipeline's text encoders and how each is read at this clip skip."""

    def conditioning(
        self, pipe: Any, prompt: str, negative: str, clip_skip: int, *, steps: int,
        embeddings: Any = None, fields: tuple[str, str] = ("prompt", "negative_prompt"),
    ) -> Conditioning:  # fmt: skip
        """A job's prompt and negative prompt as conditioning for every step (A1111's
        weights, chunks, prompt editing and AND), after the prompt limits (an error
        names `fields`)."""
        return prepare_conditioning(pipe, self, prompt, negative, clip_skip, steps=steps,
                                    embeddings=embeddings, fields=fields)  # fmt: skip

    def follow_steps(
        self, pipe: Any, conditioning: Conditioning, batch_size: int, ngms: Ngms = NGMS_OFF,
        *, first_step: int = 0, size: tuple[int, int] | None = None, control: Any = None,
    ) -> AbstractContextManager[Any]:  # fmt: skip
        """Around one pipeline call: conditions every denoiser call on the current step's
        prompts (schedules, AND) and skips the unconditional pass below `ngms`'s sigma;
        yields a wrapper for the step callback. `first_step`: where a call that continues
        a run starts (the refiner's); `size`: the image's (height, width), for families
        whose pipelines pack their latents (FLUX); `control`: the job's ControlNet units
        (`core.controlnet.JobControl`), fed to every UNet call."""
        sigma_of = None
        if ngms.min_sigma > 0:
            sigma_of = sigma_of_timestep(pipe.scheduler.alphas_cumprod)
        hooks = hooked(pipe.unet, conditioning, batch_size, ngms, sigma_of, first_step=first_step)
        return controlled(hooks, control, pipe, batch_size, first_step,
                          conds=len(conditioning.conds))  # fmt: skip

    def pipeline_call_kwargs(self, conditioning: Conditioning, params: Any) -> dict[str, Any]:
        """The pipeline call's conditioning and guidance keyword arguments."""
        return {**conditioning.pipeline_kwargs(), "guidance_scale": params.cfg_scale}

    def start_latents(self, pipe: Any, noise: Any) -> Any:
        """The initial noise (B, C, h, w) as the pipeline takes its `latents`."""
        return noise.to(pipe.device, pipe.unet.dtype)

    def finished_latents(self, pipe: Any, latents: Any, height: int, width: int) -> Any:
        """What a pipeline call with output_type="latent" returns, as (B, C, h, w)."""
        return latents

    def masked_image_latents(self, pipe: Any, pixels: Any, mask: Any) -> Any:
        """An inpainting model's image conditioning for a batch (`pixels` (B, 3, H, W),
        the processing-size mask); None: the core's 9-channel one (SD inpainting models)."""
        return None

    def with_reference(self, pipe: Any, reference: Any) -> AbstractContextManager[Any]:
        """Around one img2img/inpaint pipeline call: the init image's latents `reference`
        (B, C, h, w) given to the denoiser as the family reads one (FLUX.1 Kontext's
        reference tokens); the others denoise from the init latents only."""
        return nullcontext()

    def img2img_call_kwargs(self, height: int, width: int) -> dict[str, Any]:
        """Extra keyword arguments of its img2img and inpaint pipelines' calls (FLUX's
        need the image size; Stable Diffusion's take it from the init latents)."""
        return {}

    # --- sampling ---------------------------------------------------------------------
    def sampler(self, name: str | None, schedule: str | None) -> SchedulerChoice:
        """An A1111 sampler and schedule type (None: the defaults) for this family."""
        return resolve(name, schedule)

    def scheduler(self, choice: SchedulerChoice, base_config: Mapping[str, Any], steps: int):
        """The diffusers scheduler for `choice` on a loaded model's noise schedule."""
        return make_scheduler(choice, base_config, steps=steps, ays_sigmas=self.align_your_steps)

    def scheduler_options(self, params: Any) -> dict[str, Any]:
        """Scheduler config entries a job sets (the flow-matching shift of SD 3.5, FLUX.1
        and Z-Image); {}: none. A family without flow matching refuses a set shift."""
        return refuse_shift(self.label, params)

    def check_mode(self, mode: Mode) -> None:
        """Raise a `UserError` when the family cannot do `mode` (the SDXL refiner: txt2img;
        also "refiner": A1111's Refiner taking over its job, or it refining another's)."""
        if mode == "refiner" and not self.refiner:
            raise UserError(f"The Refiner does not run with {self.label} models")

    def check_params(self, params: Any) -> None:
        """Raise a `UserError` for a job's setting the family cannot run (FLUX.1 Fill: a
        CFG scale above 1); the generation service asks before the job is queued."""
        return None

    # --- networks and infotext --------------------------------------------------------
    def load_lora(self, pipe: Any, state: dict, adapter_name: str) -> None:
        """Put a LoRA file's tensors on the pipeline as a (disabled) adapter."""
        pipe.load_lora_weights(state, adapter_name=adapter_name)

    def infotext_fields(self, params: Any) -> dict[str, Any]:
        """The family's own A1111 infotext fields, between "VAE" and "RNG"."""
        return {}


class Families(Sequence[Family]):
    """The families a program knows, in recognition order (the composition root's)."""

    def __init__(self, families: Iterable[Family]):
        self._items = tuple(families)
        names = [f.name for f in self._items]
        if len(set(names)) != len(names):
            raise ValueError(f"family names must be unique: {names}")

    @overload
    def __getitem__(self, index: int) -> Family: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Family]: ...
    def __getitem__(self, index: int | slice) -> Family | Sequence[Family]:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def get(self, name: str) -> Family:
        for family in self._items:
            if family.name == name:
                return family
        raise LookupError(f"no model family {name!r} (known: {', '.join(self.names())})")

    def of(self, spec: ModelSpec) -> Family:
        """The family of a loaded model."""
        return self.get(spec.family)

    def names(self) -> list[str]:
        return [f.name for f in self._items]
