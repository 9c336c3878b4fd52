"""The internal contract: what a generation job asks for, validated, immutable.

UI handlers and API mapping build these; processing reads them. Validation raises
`ParamError` naming the field, so the API can answer 422 and the UI can show a message.

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from ..imaging.face_restorer_list import FaceRestorerRef
from . import skip_layer_guidance as slg
from .controlnet_units import ControlUnit, check_units
from .errors import ParamError
from .params_detailer import SAME_SCHEDULER, DetailerUnit, UnitError, unit_from_dict
from .prompt_limits import check_prompts
from .sampler_params import check_for_sampler
from .samplers import UnknownSamplerError, missing_requirements, resolve

if TYPE_CHECKING:
    from .params_img2img import HiresParams

MAX_SEED = 4294967294
MAX_SIDE = 4096
MAX_STEPS = 150
MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100


@dataclass(frozen=True)
class Txt2ImgParams:
    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str | None = None  # A1111 label; None = default
    scheduler: str | None = None  # schedule type label or API name; None = Automatic
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = -1
    subseed: int = -1  # A1111's variation seed; -1 = random
    subseed_strength: float = 0.0  # variation strength; 0 = no variation
    seed_resize_from_w: int = 0  # "Resize seed from" width x height; 0 = off
    seed_resize_from_h: int = 0
    batch_count: int = 1  # A1111 "n_iter"
    batch_size: int = 1
    clip_skip: int | None = 1  # None: the CLIP_stop_at_last_layers option (the API's way)
    checkpoint: str | None = None  # title, name or hash; None = the current/first one
    save_images: bool = True  # the API saves nothing unless asked (A1111's save_images)
    grid: bool = True  # a grid of the images when there are several (not do_not_save_grid)
    hires: HiresParams | None = None  # hires. fix (txt2img only); None = off
    vae: str | None = None  # "Automatic", "None" or a file in models/VAE; None = the option
    styles: tuple[str, ...] = ()  # names from styles.csv, applied in order
    script: str | None = None  # extension that runs this job (X/Y/Z plot, ...); None = plain
    extension_args: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # by name
    tiling: bool = False  # seamless: circular padding in the UNet and VAE (core/tiling.py)
    # sampler parameters (core/sampler_params.py); None: the job's option
    eta: float | None = None
    s_churn: float | None = None
    s_tmin: float | None = None
    s_tmax: float | None = None  # 0: infinity
    s_noise: float | None = None
    s_min_uncond: float | None = None  # NGMS: skip the uncond pass below this sigma
    # the detailer (ADetailer's units, core/params_detailer.py; core/detailer.py runs them)
    adetailer: tuple[DetailerUnit, ...] = ()
    adetailer_skip_img2img: bool = False  # img2img: detail the init image, no img2img pass
    restore_faces: bool = False  # A1111's "Restore faces" (the job's face_restoration_model)
    face_restorer: FaceRestorerRef | None = None  # resolved by the service when restoring
    # A1111's Refiner (core/refiner.py): this checkpoint takes over at this fraction of steps
    refiner_checkpoint: str | None = None  # title, name or hash; None = no refiner
    refiner_switch_at: float = 0.8
    # FLUX.1's guidance embedding (Forge's "Distilled CFG Scale"; other families ignore it)
    distilled_cfg_scale: float = 3.5
    # ControlNet units (sd-webui-controlnet's, core/controlnet_units.py; core/controlnet.py)
    controlnet: tuple[ControlUnit, ...] = ()
    # the flow-matching shift of SD 3.5, FLUX.1 and Z-Image (None: the model's own; other
    # families refuse a set one: core/flow_shift.py)
    shift: float | None = None
    # SD 3.5's Skip Layer Guidance (core/skip_layer_guidance.py; scale 0: off), diffusers' names
    skip_layer_guidance_scale: float = 0.0
    skip_guidance_layers: tuple[int, ...] = slg.DEFAULT_LAYERS
    skip_layer_guidance_start: float = slg.DEFAULT_START
    skip_layer_guidance_stop: float = slg.DEFAULT_STOP

    def validated(self) -> Txt2ImgParams:
        """Check every field; raise ParamError naming the first bad one."""
        _require_int(self, "steps", 1, MAX_STEPS)
        _require_int(self, "batch_size", 1, MAX_BATCH_SIZE)
        _require_int(self, "batch_count", 1, MAX_BATCH_COUNT)
        _require_int(self, "clip_skip", 1, 12)
        for side in ("width", "height"):
            _require_int(self, side, 64, MAX_SIDE)
            if getattr(self, side) % 8:
                raise ParamError(side, f"must be a multiple of 8, got {getattr(self, side)}")
        cfg = self.cfg_scale
        if isinstance(cfg, bool) or not isinstance(cfg, int | float) or not math.isfinite(cfg):
            raise ParamError("cfg_scale", f"must be a finite number, got {cfg!r}")
        if not 0 <= cfg <= 100:
            raise ParamError("cfg_scale", f"must be between 0 and 100, got {cfg}")
        _require_int(self, "seed", -1, MAX_SEED)
        guidance = self.distilled_cfg_scale
        if isinstance(guidance, bool) or not isinstance(guidance, int | float) or not (
            math.isfinite(guidance) and 0 <= guidance <= 30
        ):  # fmt: skip
            raise ParamError("distilled_cfg_scale", f"must be between 0 and 30, got {guidance!r}")
        shift = self.shift
        if shift is not None and (isinstance(shift, bool) or not isinstance(shift, int | float)
                                  or not (math.isfinite(shift) and 0 < shift <= 30)):  # fmt: skip
            raise ParamError("shift", f"must be above 0 and at most 30, got {shift!r}")
        problem = slg.check(self)
        if problem is not None:
            raise ParamError(*problem)
        self._check_variation()
        self._check_sampler()
        if not isinstance(self.tiling, bool):
            raise ParamError("tiling", f"must be true or false, got {self.tiling!r}")
        if not isinstance(self.restore_faces, bool):
            raise ParamError("restore_faces", f"must be true or false, got {self.restore_faces!r}")
        if self.restore_faces and not isinstance(self.face_restorer, FaceRestorerRef):
            raise ParamError("restore_faces", "no face restoration model was chosen")
        if self.hires is not None:
            self.hires.check(self)
        if self.vae is not None and not isinstance(self.vae, str):
            raise ParamError("vae", f"must be a VAE name, got {self.vae!r}")
        if isinstance(self.styles, str) or not all(isinstance(s, str) for s in self.styles):
            raise ParamError("styles", "must be a list of style names")
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise ParamError(name, "must be text")
            if "\x00" in value:
                raise ParamError(name, "must not contain NUL characters")
        self._check_prompt_limits()
        self._check_detailer()
        self._check_refiner()
        check_units(self.controlnet)
        return self

    def _check_detailer(self) -> None:
        """Each unit's fields and prompts (the API and the UI build units with
        `params_detailer.unit_from_dict`, which names the bad ad_* key)."""
        for index, unit in enumerate(self.adetailer):
            if not isinstance(unit, DetailerUnit):
                raise ParamError("adetailer", f"unit {index + 1} is not a detailer unit")
            try:
                unit_from_dict({k: v for k, v in vars(unit).items() if k != "model_path"}, index)
            except UnitError as exc:
                raise ParamError("adetailer", str(exc)) from None
            if unit.active and unit.ad_use_sampler:
                schedule = None if unit.ad_scheduler == SAME_SCHEDULER else unit.ad_scheduler
                try:
                    resolve(unit.ad_sampler, schedule)
                except UnknownSamplerError as exc:
                    raise ParamError("adetailer", f"unit {index + 1}: {exc}") from None
            if unit.active and (unit.ad_prompt or unit.ad_negative_prompt):
                check_prompts(unit.ad_prompt or self.prompt,
                              unit.ad_negative_prompt or self.negative_prompt,
                              steps=unit.ad_steps if unit.ad_use_steps else self.steps,
                              fields=("adetailer", "adetailer"))  # fmt: skip

    def _check_refiner(self) -> None:
        switch_at = self.refiner_switch_at
        if isinstance(switch_at, bool) or not isinstance(switch_at, int | float):
            raise ParamError("refiner_switch_at", f"must be a number, got {switch_at!r}")
        if not 0 <= switch_at <= 1:  # also refuses NaN
            raise ParamError("refiner_switch_at", f"must be between 0 and 1, got {switch_at}")
        if self.refiner_checkpoint is not None and not isinstance(self.refiner_checkpoint, str):
            raise ParamError("refiner_checkpoint", "must be a checkpoint name")

    def _check_prompt_limits(self) -> None:
        """Length, nesting, AND parts, chunks: see prompt_limits (PromptLimitError)."""
        check_prompts(self.prompt, self.negative_prompt, steps=self.steps)
        hires = self.hires
        if hires is not None and (hires.prompt or hires.negative_prompt):
            check_prompts(  # the second pass's own prompts, as hires.py encodes them
                hires.prompt or self.prompt,
                hires.negative_prompt or self.negative_prompt,
                steps=hires.steps or self.steps,
                fields=(
                    "hr_prompt" if hires.prompt else "prompt",
                    "hr_negative_prompt" if hires.negative_prompt else "negative_prompt",
                ),
            )

    def _check_variation(self) -> None:
        """Variation seed, its strength and "resize seed from" (both sides or neither)."""
        _require_int(self, "subseed", -1, MAX_SEED)
        strength = self.subseed_strength
        if isinstance(strength, bool) or not isinstance(strength, int | float):
            raise ParamError("subseed_strength", f"must be a number, got {strength!r}")
        if not 0 <= strength <= 1:  # also refuses NaN
            raise ParamError("subseed_strength", f"must be between 0 and 1, got {strength}")
        for side in ("seed_resize_from_w", "seed_resize_from_h"):
            _require_int(self, side, 0, MAX_SIDE)
            if 0 < getattr(self, side) < 8:
                raise ParamError(side, f"must be 0 (off) or at least 8, got {getattr(self, side)}")
        if (self.seed_resize_from_w == 0) != (self.seed_resize_from_h == 0):
            side = "seed_resize_from_h" if self.seed_resize_from_h == 0 else "seed_resize_from_w"
            raise ParamError(side, "set both resize-seed-from sides, or neither (0: off)")

    def _check_sampler(self) -> None:
        try:
            resolve(self.sampler_name, None)
        except UnknownSamplerError as exc:
            raise ParamError("sampler_name", str(exc)) from None
        try:
            choice = resolve(self.sampler_name, self.scheduler)
        except UnknownSamplerError as exc:
            raise ParamError("scheduler", str(exc)) from None
        missing = missing_requirements(choice)
        if missing:
            raise ParamError(
                "sampler_name",
                f"{choice.sampler} ({choice.schedule}) needs {', '.join(missing)}: "
                f"pip install {' '.join(missing)}",
            )
        if choice.max_steps is not None and self.steps > choice.max_steps:
            raise ParamError("steps", f"{choice.sampler} allows at most {choice.max_steps} steps")
        check_for_sampler(choice.sampler, self)  # eta, s_churn, ...: honoured or refused

    def with_seed(self, rng: random.Random | None = None) -> Txt2ImgParams:
        """A copy whose seed and variation seed are fixed: -1 becomes a random seed in
        [0, 4294967294]."""
        if self.seed != -1 and self.subseed != -1:
            return self
        rng = rng or random.SystemRandom()
        seed = rng.randint(0, MAX_SEED) if self.seed == -1 else self.seed
        subseed = rng.randint(0, MAX_SEED) if self.subseed == -1 else self.subseed
        return replace(self, seed=seed, subseed=subseed)

    def image_seeds(self) -> list[int]:
        """Seed of every image in order: image i gets seed + i, or the seed itself when
        a variation strength is set (then the variation seed counts up; A1111)."""
        total = self.batch_count * self.batch_size
        step = 0 if self.subseed_strength > 0 else 1
        return [(self.seed + i * step) % (MAX_SEED + 1) for i in range(total)]

    def image_subseeds(self) -> list[int]:
        """Variation seed of every image in order: image i gets subseed + i (A1111)."""
        total = self.batch_count * self.batch_size
        return [(self.subseed + i) % (MAX_SEED + 1) for i in range(total)]

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _require_int(params, name: str, low: int, high: int) -> None:
    value = getattr(params, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamError(name, f"must be a whole number, got {value!r}")
    if not low <= value <= high:
        raise ParamError(name, f"must be between {low} and {high}, got {value}")
