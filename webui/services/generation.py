"""The generation service: a request from any front end becomes a queued job, in one place.

The Generate buttons of the UI and the API routes (POST /sdapi/v1/txt2img, /img2img,
/webui/v1/txt2img, the extras routes) all build a `GenerationRequest` from what they were
sent and call `GenerationService.submit`, which

1. turns `override_settings` into params fields (the checkpoint, clip skip) and the job's
   own options (never the server's: two users never change each other's settings),
2. applies the chosen script: an extension script (X/Y/Z plot, Prompt matrix, Prompts
   from file, ...) by title or name, or img2img's built-in "SD upscale",
3. validates the params, then the script's and the always-on extensions' args through the
   extension host (by name, or as A1111's positional list mapped onto the declared names),
4. fixes a random seed (after the script's check: a script may treat -1 as "random per
   run"), refuses a generation when there is no checkpoint at all, and queues the job.

Errors: `RequestError` (loc in the services' names: a params field such as ("steps",) or
("batch_count",); ("override_settings", key); ("script_name",); ("script_args", name);
("alwayson_scripts", name, "args", ...); ("job_id",)), `NoCheckpointError`, and the
queue's `QueueFullError`. The API maps the names onto A1111's request fields; the UI shows
the message.

This module must never import torch, diffusers, gradio or fastapi.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core import skip_layer_guidance as slg
from ..core.flow_shift import no_shift_message
from ..core.jobs import Job, JobQueue
from ..core.params import ParamError, Txt2ImgParams
from ..core.params_img2img import ExtrasParams, Img2ImgParams, SDUpscaleParams
from ..errors import UserError
from ..ext.api import ArgError, Control
from ..ext.host import ExtensionHost
from ..imaging.face_restorer_list import (
    CODEFORMER,
    GFPGAN,
    FaceRestorerFolders,
    FaceRestorerRef,
    MissingFaceModelError,
    UnknownFaceRestorerError,
)
from ..model_manager.approx_files import any_taesd_file, missing_message
from ..options import Options
from .controlnet import controlnet_fields, split_controlnet
from .detailer import detailer_fields, split_detailer
from .errors import NoCheckpointError, RequestError
from .options import CHECKPOINT, CLIP_SKIP, OVERRIDES, checkpoint_info, job_options
from .protocols import Models
from .upscalers import UnknownUpscalerError, Upscalers

__all__ = [
    "GenerationRequest",
    "GenerationService",
    "NoCheckpointError",
    "RequestError",
    "SD_UPSCALE",
]

KINDS: dict[str, type] = {"txt2img": Txt2ImgParams, "img2img": Img2ImgParams,
                          "extras": ExtrasParams}  # fmt: skip
SD_UPSCALE = "SD upscale"  # img2img's built-in script (a params field, not an extension)
SD_UPSCALE_ARGS = ("info", "overlap", "upscaler", "scale")  # A1111's positional order
_NO_SCRIPT = ("", "none")
FACE_MODEL, FACE_WEIGHT = "face_restoration_model", "code_former_weight"  # options
MODULES = "forge_additional_modules"  # Forge's "VAE / Text Encoder" option
DECODE_METHOD = "sd_vae_decode_method"  # A1111's VAE for Decoding: "Full" or "TAESD"
ENCODE_METHOD = "sd_vae_encode_method"  # A1111's VAE type for encode: "Full" or "TAESD"
_FROM_OVERRIDES = {"checkpoint": CHECKPOINT, "clip_skip": CLIP_SKIP}  # params field -> key
_SD_UPSCALE_FIELDS = {"sd_upscale_upscaler": "upscaler", "sd_upscale_scale": "scale",
                      "scale": "scale", "overlap": "overlap"}  # fmt: skip


@dataclass(frozen=True)
class GenerationRequest:
    """One generation as a front end asks for it, in internal terms."""

    kind: str  # "txt2img" | "img2img" | "extras"
    params: Any  # Txt2ImgParams | Img2ImgParams | ExtrasParams, not yet validated
    owner: str
    script: str | None = None  # title or name; None/""/"None": no script
    script_args: Any = None  # dict by name, or A1111's positional list
    alwayson: Mapping[str, Any] = field(default_factory=dict)  # ext name -> {"args": ...} | args
    override_settings: Mapping[str, Any] = field(default_factory=dict)
    job_id: str | None = None  # A1111 force_task_id


class GenerationService:
    """Turns `GenerationRequest`s into jobs of the one queue (see the module docstring)."""

    def __init__(self, *, models: Models, options: Options, jobs: JobQueue,
                 extensions: ExtensionHost | None, upscalers: Upscalers,
                 checkpoint_dir: Path, detector_dir: Path | None = None,
                 faces: FaceRestorerFolders | None = None,
                 approx_dirs: tuple[Path, ...] | None = None,
                 controlnet_dir: Path | None = None,
                 clip_vision_dir: Path | None = None) -> None:  # fmt: skip
        self.approx_dirs = approx_dirs  # Approx NN and TAESD files (None: not checked)
        self.models = models
        self.options = options
        self.jobs = jobs
        self.extensions = extensions
        self.upscalers = upscalers
        self.checkpoint_dir = Path(checkpoint_dir)
        # ADetailer's detectors (models/adetailer next to models/Stable-diffusion by default)
        self.detector_dir = Path(detector_dir or self.checkpoint_dir.parent / "adetailer")
        self.faces = faces  # GFPGAN / CodeFormer folders; None: no face restoration
        # ControlNet models (models/ControlNet next to models/Stable-diffusion by default)
        self.controlnet_dir = Path(controlnet_dir or self.checkpoint_dir.parent / "ControlNet")
        # IP-Adapter units' CLIP vision encoders (models/clip_vision)
        self.clip_vision_dir = Path(clip_vision_dir or self.checkpoint_dir.parent / "clip_vision")

    def submit(self, request: GenerationRequest) -> Job:
        """Validate the request and queue its job. Raises RequestError, NoCheckpointError,
        QueueFullError (the owner's limit of unfinished jobs)."""
        params = self.prepare(request)
        options = job_options(request.override_settings, self.options)
        if request.kind != "extras" and not self.models.checkpoints():
            raise NoCheckpointError(self.checkpoint_dir)
        if request.kind != "extras":
            self._check_modules(request, params, options)
            self._check_draft_decoder(options)
        try:
            return self.jobs.submit(request.kind, params, owner=request.owner,
                                    job_id=request.job_id or None, options=options)  # fmt: skip
        except ValueError as exc:  # a bad or taken job id
            raise RequestError(("job_id",), str(exc)) from None

    def prepare(self, request: GenerationRequest) -> Any:
        """The params the job will run with: overrides, script and extension args applied,
        everything validated, the seed fixed. Raises RequestError; queues nothing."""
        expected = KINDS.get(request.kind)
        if expected is None or not isinstance(request.params, expected):
            raise TypeError(f"a {request.kind!r} request needs {expected}, got {request.params!r}")
        if request.kind == "extras":
            return self._extras(request)
        overrides = self._override_fields(request.override_settings, request.params.clip_skip)
        params = replace(request.params, **overrides)
        detailer, alwayson = split_detailer(request.alwayson)
        if detailer is not None:  # ADetailer: built in, asked for as the extension is
            params = replace(params, **detailer_fields(detailer, request.kind, self.detector_dir))
            request = replace(request, alwayson=alwayson)
        control, alwayson = split_controlnet(request.alwayson)
        if control is not None:  # ControlNet: built in, asked for as the extension is
            params = replace(params, **controlnet_fields(control, self.controlnet_dir,
                                                         self.clip_vision_dir))  # fmt: skip
            request = replace(request, alwayson=alwayson)
        params = self._with_face_restorer(request, params)
        params = self._other_checkpoints(params)
        script = _script_name(request.script)
        if request.kind == "img2img" and script.lower() == SD_UPSCALE.lower():
            params = replace(
                params, sd_upscale=sd_upscale_params(request.script_args, self.upscalers)
            )
            script = ""
        try:
            params = params.validated()
        except ParamError as exc:
            raise RequestError(self._param_loc(request, params, exc.field), exc.message) from None
        params = self._with_extension_args(request, params, script)
        return params.with_seed()

    def _check_modules(self, request: GenerationRequest, params: Any, options: dict) -> None:
        """A FLUX transformer-only checkpoint needs Forge's "VAE / Text Encoder" files: a
        RequestError naming what to add and where, before the job is queued."""
        modules = options.get(MODULES, self.options.get(MODULES))
        title = getattr(params, "checkpoint", None) or self.options.get(CHECKPOINT)
        try:
            info = self.models.resolve(title)
        except LookupError:
            return  # no such checkpoint: the job says so as it does for every model
        problem = self.models.module_problem(info, modules)
        if problem is not None:
            overridden = request.override_settings.get(MODULES) is not None
            raise RequestError((OVERRIDES, MODULES) if overridden else (MODULES,), problem)
        self._check_family(request, params, info)
        if getattr(params, "refiner_checkpoint", None):
            self._check_refiner(info, params.refiner_checkpoint, modules)

    def _check_family(self, request: GenerationRequest, params: Any, info: Any) -> None:
        """What the checkpoint's family cannot run (FLUX's img2img, a sampler or schedule
        it lacks, a shift without a flow-matching schedule): a RequestError before the job
        is queued, read from the file's header."""
        modes = ["txt2img" if request.kind == "txt2img" else "img2img"]
        if getattr(params, "hires", None) is not None:
            modes.append("img2img")  # the second pass is an img2img pass
        refiner = ["refiner"] if getattr(params, "refiner_checkpoint", None) else []
        checks = (((), modes, None, None, None),
                  (("sampler_name",), (), params.sampler_name, None, None),
                  (("scheduler",), (), params.sampler_name, params.scheduler, None),
                  (("cfg_scale",), (), None, None, params),
                  (("refiner_checkpoint",), refiner, None, None, None))  # fmt: skip
        for loc, check_modes, sampler, schedule, job in checks:
            problem = self.models.family_problem(info, check_modes, sampler, schedule, job)
            if problem is not None:
                raise RequestError(loc, problem)
        if getattr(params, "shift", None) is not None and self.models.flow_shift(info) is None:
            raise RequestError(("shift",), no_shift_message(info.name))
        if slg.requested(params) and not self.models.skip_layer_guidance(info):
            raise RequestError(("skip_layer_guidance_scale",), slg.not_for_message(info.name))

    def _check_refiner(self, main: Any, name: str, modules: Any) -> None:
        """A refiner that cannot continue the main checkpoint's latents (another latent
        space), cannot take over a job (FLUX.1 Fill) or lacks a module file (a
        transformer-only file): a RequestError before the job is queued."""
        try:
            info, loc = self.models.resolve(name), ("refiner_checkpoint",)
        except LookupError:
            return  # an unknown name is refused with the other checkpoints' names
        problem = self.models.family_problem(info, ["refiner"], None, None)
        problem = problem or self.models.module_problem(info, modules)
        if problem is not None:
            raise RequestError(loc, problem)
        spaces = self.models.latent_space(main), self.models.latent_space(info)
        if None not in spaces and spaces[0] != spaces[1]:
            raise RequestError(loc, f"{info.name} ({self._label(info)}) cannot continue the "
                               f"latents of {main.name} ({self._label(main)}): different "
                               "latent spaces")  # fmt: skip

    def _label(self, info: Any) -> str:
        """A checkpoint's family label ("FLUX.1") from its header, else its name."""
        try:
            return self.models.family_label(info)
        except (UserError, OSError, ValueError):
            return info.name

    def scripts(self, kind: str) -> list[str]:
        """Titles of the scripts a request of `kind` may choose (what GET /scripts lists)."""
        host = self.extensions
        titles = [e.display_title for e in host.scripts(kind)] if host is not None else []
        return [*titles, SD_UPSCALE] if kind == "img2img" else titles

    def sd_upscale_controls(self) -> tuple[Control, ...]:
        """SD upscale's arguments in A1111's order, as GET /script-info describes them."""
        names = self.upscalers.names()
        return (
            Control("info", "Will upscale the image by the selected scale factor; use "
                    "width and height sliders to set tile size", "textbox", ""),
            Control("overlap", "Tile overlap", "slider", 64, minimum=0, maximum=256, step=16),
            Control("upscaler", "Upscaler", "radio", "Lanczos", choices=tuple(names)),
            Control("scale", "Scale Factor", "slider", 2.0, minimum=1.0, maximum=4.0, step=0.05),
        )  # fmt: skip

    # --- the steps -------------------------------------------------------------------
    def _check_draft_decoder(self, options: Mapping[str, Any]) -> None:
        """Decoding (or encoding) with TAESD needs a TAESD decoder (and encoder) file: a
        RequestError now, not a failed job (the worker names the family's own file if only
        another family's is there)."""
        checks = ((DECODE_METHOD, "VAE for Decoding", ("decoder",)),
                  (ENCODE_METHOD, "VAE type for encode", ("decoder", "encoder")))  # fmt: skip
        for key, what, parts in checks:
            if options.get(key, self.options.get(key)) != "TAESD" or self.approx_dirs is None:
                continue
            for part in parts:
                if any_taesd_file(self.approx_dirs, part):
                    continue
                loc = (OVERRIDES, key) if key in options else (key,)
                message = missing_message(f"{what}: TAESD", f"taesd_{part}", self.approx_dirs)
                raise RequestError(loc, f"{message} (taesdxl_{part} for SDXL)")

    def _override_fields(
        self, settings: Mapping[str, Any], params_clip_skip: int | None
    ) -> dict[str, Any]:
        """override_settings that are params fields: the checkpoint and clip skip (None in
        the params: the option's value)."""
        out: dict[str, Any] = {}
        checkpoint = settings.get(CHECKPOINT)
        if checkpoint not in (None, ""):
            out["checkpoint"] = checkpoint_info(
                checkpoint, self.models, (OVERRIDES, CHECKPOINT)
            ).title
        clip_skip = settings.get(CLIP_SKIP)
        if clip_skip is None and params_clip_skip is None:  # the API: the option, as A1111
            clip_skip = self.options.get(CLIP_SKIP)
        if clip_skip is not None:
            definition = self.options.definitions[CLIP_SKIP]
            try:
                out["clip_skip"] = definition.validate(clip_skip)
            except (TypeError, ValueError) as exc:
                raise RequestError((OVERRIDES, CLIP_SKIP), str(exc)) from None
        return out

    def _other_checkpoints(self, params: Any) -> Any:
        """The refiner's and the hires. fix checkpoint's titles; RequestError if unknown."""
        changes: dict[str, Any] = {}
        if getattr(params, "refiner_checkpoint", None):
            loc = ("refiner_checkpoint",)
            changes["refiner_checkpoint"] = checkpoint_info(
                params.refiner_checkpoint, self.models, loc
            ).title
        hires = getattr(params, "hires", None)
        if hires is not None and hires.checkpoint:
            info = checkpoint_info(hires.checkpoint, self.models, ("hr_checkpoint_name",))
            changes["hires"] = replace(hires, checkpoint=info.title)
        return replace(params, **changes) if changes else params

    def _param_loc(self, request: GenerationRequest, params: Any, name: str) -> tuple[str, ...]:
        """Where a bad params field came from: an override, SD upscale's args, or itself."""
        key = _FROM_OVERRIDES.get(name)
        if key is not None and request.override_settings.get(key) not in (None, ""):
            return (OVERRIDES, key)
        if name in _SD_UPSCALE_FIELDS and getattr(params, "sd_upscale", None) is not None:
            return ("script_args", _SD_UPSCALE_FIELDS[name])
        return (name,)

    def _with_extension_args(self, request: GenerationRequest, params: Any, script: str) -> Any:
        """`params` with the job's script and every always-on extension's args, checked."""
        host = self.extensions
        if host is None:
            if script:
                raise RequestError(("script_name",), f"script not found: {request.script}")
            if request.alwayson:
                name = str(next(iter(request.alwayson)))
                raise RequestError(
                    ("alwayson_scripts", name), f"always-on script not found: {name}"
                )
            return params
        try:
            return host.prepare(params, script=script or None, script_args=request.script_args,
                                alwayson=request.alwayson, tab=request.kind)  # fmt: skip
        except ArgError as exc:
            raise RequestError(exc.loc, exc.message) from None

    def _extras(self, request: GenerationRequest) -> ExtrasParams:
        if _script_name(request.script):
            raise RequestError(("script_name",), "the Upscale (extras) tab runs no scripts")
        if request.alwayson:
            name = str(next(iter(request.alwayson)))
            raise RequestError(
                ("alwayson_scripts", name), "the Upscale (extras) tab runs no scripts"
            )
        params = request.params
        for name, restorer in (("gfpgan", GFPGAN), ("codeformer", CODEFORMER)):
            visibility = getattr(params, f"{name}_visibility")
            if isinstance(visibility, int | float) and visibility > 0:
                ref = self._face_restorer(restorer, 0.5, f"{name}_visibility")
                params = replace(params, **{name: ref})
        try:
            return params.validated()
        except ParamError as exc:
            raise RequestError((exc.field,), exc.message) from None

    def _with_face_restorer(self, request: GenerationRequest, params: Any) -> Any:
        """With `restore_faces`: the job's restorer (its `face_restoration_model` and
        `code_former_weight` options, overrides included) and its files."""
        if params.restore_faces is not True:
            return params
        own = job_options(request.override_settings, self.options)
        model = own.get(FACE_MODEL, self.options.get(FACE_MODEL))
        weight = own.get(FACE_WEIGHT, self.options.get(FACE_WEIGHT))
        return replace(params, face_restorer=self._face_restorer(model, weight, "restore_faces"))

    def _face_restorer(self, name: str, weight: float, field: str) -> FaceRestorerRef:
        """The restorer's files, or RequestError naming `field` and the missing file."""
        if self.faces is None:
            raise RequestError((field,), "face restoration is not set up on this server")
        try:
            return self.faces.resolve(name, weight, field=field)
        except (MissingFaceModelError, UnknownFaceRestorerError) as exc:
            raise RequestError((field,), str(exc).removeprefix(f"{field}: ")) from None


def _script_name(script: str | None) -> str:
    """The chosen script's name, "" for none (None, "" and A1111's "None")."""
    name = (script or "").strip()
    return "" if name.lower() in _NO_SCRIPT else name


def sd_upscale_params(args: Any, upscalers: Upscalers) -> SDUpscaleParams:
    """A1111's "SD upscale" script args: by name ({"overlap", "upscaler", "scale"}) or
    positional ([info, overlap, upscaler, scale]; `info` is A1111's HTML note, unused).
    The upscaler is a name or an index into the upscaler list. Raises RequestError."""
    if args is None:
        args = {}
    if isinstance(args, list | tuple):
        if len(args) > len(SD_UPSCALE_ARGS):
            raise RequestError(("script_args",), "SD upscale takes at most 4 arguments: "
                               f"{', '.join(SD_UPSCALE_ARGS)}, got {len(args)}")  # fmt: skip
        args = dict(zip(SD_UPSCALE_ARGS, args, strict=False))
    if not isinstance(args, Mapping):
        raise RequestError(("script_args",), "args must be an object by name or a list")
    for key in args:
        if key not in SD_UPSCALE_ARGS:
            raise RequestError(("script_args", str(key)),
                               "unknown argument; known: overlap, upscaler, scale")  # fmt: skip
    overlap = _number(args.get("overlap"), 64, "overlap", whole=True)
    scale = _number(args.get("scale"), 2.0, "scale", whole=False)
    upscaler = args.get("upscaler")
    try:
        ref = upscalers.resolve("Lanczos" if upscaler is None else upscaler, field="upscaler")
    except UnknownUpscalerError as exc:
        message = str(exc).removeprefix("upscaler: ")
        raise RequestError(("script_args", "upscaler"), message) from None
    return SDUpscaleParams(upscaler=ref, scale=float(scale), overlap=int(overlap))


def _number(value: Any, default: float, name: str, *, whole: bool) -> float:
    if value is None:
        return default
    loc = ("script_args", name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(loc, f"expected a number, got {value!r}")
    if whole and value != int(value):
        raise RequestError(loc, f"expected a whole number, got {value}")
    return value
