"""What the job worker does with a job: lease the model it names, generate, save.

`make_runner` is given the model manager, the output store and the options by the
composition root, and returns the `Worker` that `JobQueue` runs on its worker thread
(through the extension runner, which passes each job's `RunHooks`). For a generation the
worker resolves the checkpoint, leases it, finds its model family (`webui.core.families`,
the ones the composition root passes in), applies the job's networks and builds the one
`RunContext` (`webui.core.run`) that the generation functions receive; every image it
saves goes through the store and then to the hooks' `on_saved` listeners.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from ..imaging.face_restoration import FaceRestorerCache
from ..imaging.store import OutputStore
from ..imaging.upscalers import UpscalerCache
from ..model_manager.annotators import AnnotatorCache
from ..model_manager.controlnet_loader import ControlNetCache
from ..model_manager.interrogators import InterrogatorCache
from ..model_manager.ip_adapter import ClipVisionCache
from ..model_manager.manager import ModelManager
from ..model_manager.registry import CheckpointInfo
from ..model_manager.text_encoder_release import JobRelease
from ..model_manager.vae_approx import ApproxModels
from .checkpoints import JobCheckpoints
from .controlnet import JobControl, prepare_control
from .extra_networks import Networks, applied_networks, styled
from .extras import ExtrasResult, NamedSaveFn, upscale_images
from .families import Families
from .image_embed import EmbedResult
from .image_embed_run import embed_images
from .img2img import img2img
from .img2img_batch import save_named
from .interrogate import InterrogateResult, interrogate
from .jobs import Job
from .merge_job import MergeResult, run_merge
from .oom import run_guarded
from .params import Txt2ImgParams
from .previews import draft_decoder, draft_encoder
from .processing import GeneratedImage, txt2img
from .run import NO_HOOKS, JobContext, JobInfo, MemoryRun, RunContext, RunHooks, SavedImage, SaveFn
from .sampler_params import SamplerDefaults
from .saving import SaveSettings, batch_grid, pattern_values
from .ti_jobs import TI_KINDS, run_ti_job
from .tiling import seamless
from .train_lora import TrainResult, run_lora_training
from .train_params import KIND as TRAIN_KIND

log = logging.getLogger(__name__)

Option = Callable[[str], Any]


class OptionSource(Protocol):
    """The persisted options (`webui.options.Options`): the current value of a key."""

    def get(self, key: str) -> Any: ...


@dataclass
class JobResult:
    images: list[GeneratedImage]
    params: Txt2ImgParams  # as run: seed fixed, checkpoint resolved to its title
    checkpoint_title: str
    model_family: str
    warnings: list[str] = field(default_factory=list)  # skipped LoRA tags, unknown styles...


def job_option(job: Job, options: OptionSource, key: str) -> Any:
    """The job's own value of an option (its snapshot with overrides), else the current one."""
    if key in job.options:
        return job.options[key]
    return options.get(key)


def resolve_checkpoint(
    models: ModelManager, requested: str | None, default: str | None
) -> CheckpointInfo:
    """The checkpoint a job runs with: its own choice, else the server default it was
    submitted under (never whatever another user loaded last), else the first one."""
    if requested:
        return models.resolve(requested)
    if default:
        try:
            return models.resolve(default)
        except LookupError:
            log.warning("default checkpoint %r not found; using the first one", default)
    return models.resolve(None)


class Worker:
    """Runs one job of any kind; only the job queue's worker thread calls it."""

    def __init__(
        self,
        models: ModelManager,
        store: OutputStore,
        options: OptionSource,
        networks: Networks | None = None,
        *,
        families: Families,
        annotators: AnnotatorCache | None = None,
    ):
        self.models, self.store, self.options, self.networks = models, store, options, networks
        self.families = families
        # upscaler models stay loaded between jobs (the last one); only this worker runs them
        half = str(models.plan.dtype) == "torch.float16"
        self.upscalers = UpscalerCache(models.plan.device, half=half)
        self.interrogators = interrogator_cache(models)  # loaded on the first interrogation
        self.faces = FaceRestorerCache(str(models.plan.device))  # GFPGAN / CodeFormer
        self.controlnets = ControlNetCache(models.plan.device, models.plan.dtype)
        self.clip_vision = ClipVisionCache(models.plan.device, models.plan.dtype)  # IP-Adapter
        self.annotators = annotators  # ControlNet preprocessors with weights (None: refused)

    def __call__(
        self, job: Job, hooks: RunHooks = NO_HOOKS
    ) -> (
        JobResult
        | ExtrasResult
        | InterrogateResult
        | EmbedResult
        | MergeResult
        | TrainResult
        | None
    ):
        models = self.models
        if job.kind == "load":  # preload a checkpoint (start-up, checkpoint switch in the UI)
            models.limit = int(job_option(job, self.options, "sd_checkpoints_limit"))
            info = models.resolve(job.params)
            modules = job_option(job, self.options, "forge_additional_modules")
            needed = models.needed_modules(info, modules)  # FLUX: Forge's modules
            models.acquire(info, needed) if needed else models.acquire(info)
            return None
        if job.kind == "unload":  # free the RAM/VRAM of every loaded checkpoint
            models.unload_all()
            self.upscalers.clear()
            self.interrogators.clear()
            self.faces.clear()
            if self._approx() is not None:
                self._approx().clear()
            self.controlnets.clear()
            self.clip_vision.clear()
            if self.annotators is not None:
                self.annotators.clear()
            return None
        if job.kind == "extras":  # upscaling: no checkpoint
            return self._extras(job, hooks)
        if job.kind == "interrogate":  # a picture to a prompt: no checkpoint
            opt = partial(job_option, job, self.options)
            return interrogate(job.params, self.interrogators, opt, job.progress)
        if job.kind == "embed_images":  # CLIP embeddings for the image browser's map
            return embed_images(job, str(models.plan.device))
        if job.kind == "merge":  # Checkpoint Merger, LoRA merge: a new file, no lease
            return run_merge(job, models, self.networks, self.families)
        if job.kind == TRAIN_KIND:  # LoRA training: the adapter on the leased checkpoint
            return run_lora_training(job, models, self.families, on_saved=self._refresh_loras)
        if job.kind in TI_KINDS:  # textual inversion: create or train an embedding
            default = job_option(job, self.options, "sd_model_checkpoint")
            info = resolve_checkpoint(models, job.params.params.checkpoint, default)
            return run_ti_job(job, models, self.families, info, self.networks)
        if job.kind not in ("txt2img", "img2img"):
            raise ValueError(f"unknown job kind: {job.kind}")
        return self._generate(job, hooks)

    def _refresh_loras(self) -> None:
        """A LoRA file was written: the Extra Networks list and `<lora:…>` see it."""
        loras = getattr(self.networks, "loras", None)
        if loras is not None:
            loras.refresh()

    def _generate(self, job: Job, hooks: RunHooks) -> JobResult:
        params, warnings = styled(job.params, self.networks)  # styles.csv into the prompts
        opt: Option = partial(job_option, job, self.options)
        if getattr(params, "initial_noise_multiplier", 0) is None:  # img2img: the option's
            params = replace(params, initial_noise_multiplier=opt("initial_noise_multiplier"))
        models = self.models
        info = resolve_checkpoint(models, params.checkpoint, opt("sd_model_checkpoint"))
        models.limit = int(opt("sd_checkpoints_limit"))
        job.progress.text = f"Loading {info.name}" if info.path not in models.loaded_paths() else ""
        modules = models.needed_modules(info, opt("forge_additional_modules"))  # Forge's
        lease = models.acquire(info, modules) if modules else models.acquire(info)
        family = self.families.of(lease.spec)
        job.progress.text = ""
        encoders = JobRelease.of(opt("text_encoder_release"), lease.model, models.plan)
        settings = SaveSettings.from_options(opt)
        save = self._saver(job, params, info.name, settings, hooks) if params.save_images else None
        # LoRAs, VAE and tiling are on the model for this job only, taken off however it ends;
        # on a refiner or hires checkpoint too, once the job leases it
        setup = partial(_job_setup, params=params, networks=self.networks, vae=opt("sd_vae"))
        with (
            setup(lease, family) as active,
            JobCheckpoints(
                models, self.families, lease, family, setup, opt("forge_additional_modules")
            ) as checkpoints,
        ):
            control = self._control(params, lease, opt, job)  # ControlNet units: maps, models
            run = RunContext(
                job=JobInfo.of(job), progress=job.progress, cancel=job, upscalers=self.upscalers,
                faces=self.faces, lease=lease, family=family, networks=active, save=save,
                memory=self._memory(opt, family),  # VAE tiling/slicing, TAESD; infotext notes
                preview_every=int(opt("show_progress_every_n_steps")),
                extra_noise=float(opt("img2img_extra_noise")),
                sampler_defaults=SamplerDefaults.from_options(opt),
                preview_full=opt("show_progress_type") == "Full",
                checkpoints=checkpoints,
                aesthetic_scores=(float(opt("sdxl_refiner_high_aesthetic_score")),
                                  float(opt("sdxl_refiner_low_aesthetic_score"))),
                preview_method=opt("show_progress_type"), approx=self._approx(),
                control=control, release_text_encoders=encoders.release,
            )  # fmt: skip
            generate = txt2img if job.kind == "txt2img" else img2img

            def attempt(memory: MemoryRun) -> list[GeneratedImage]:
                encoders.restore()  # a lower-memory retry encodes the prompts again
                return generate(replace(run, memory=memory), params)

            images = run_guarded(  # out of memory: a clear error, or one lower-memory retry
                attempt,
                memory=run.memory, pipe=lease.pipe, plan=models.plan,
                medvram_sdxl=family.medvram_sdxl,
                retry=bool(opt("oom_retry_lower_memory")), what=f"{params.width}x{params.height}",
            )  # fmt: skip
        encoders.release()  # every prompt of the job is encoded (option text_encoder_release)
        warnings += active.warnings + run.memory.messages() + run.warnings
        images = self._with_grid(job, params, images, info.name, settings, hooks)
        if control is not None and images:  # the extension appends its detected maps
            images += [GeneratedImage(m, params.seed, "") for m in control.maps]
        return JobResult(images, params, info.title, lease.spec.label, warnings)

    def _approx(self) -> ApproxModels | None:
        return getattr(self.networks, "approx", None)

    def _memory(self, opt: Option, family) -> MemoryRun:
        """The job's memory settings, with TAESD when it decodes or encodes with it (a
        missing file fails the job here, naming the file and the folder)."""
        plan = self.models.plan
        dtype = torch.float16 if str(plan.dtype) == "torch.float16" else torch.float32
        where = (family, self._approx(), plan.device, dtype)
        draft = draft_decoder(opt("sd_vae_decode_method"), *where)
        encoder = draft_encoder(opt("sd_vae_encode_method"), *where)
        return replace(MemoryRun.from_options(opt), draft_vae=draft, draft_encoder=encoder)

    def _control(self, params: Txt2ImgParams, lease, opt: Option, job: Job) -> JobControl | None:
        """The job's ControlNet units prepared (None: none enabled); an annotator's
        download shows in the job's progress text."""
        if not any(unit.active for unit in params.controlnet):
            return None
        denoiser = getattr(lease.pipe, "unet", None)
        if denoiser is None:  # a transformer family: FLUX ControlNets (core/flux_controlnet.py)
            denoiser = lease.pipe.transformer
        unet = dict(denoiser.config)
        annotate = None
        if self.annotators is not None:
            report = partial(setattr, job.progress, "text")
            annotate = partial(self.annotators.run, report=report)
        control = prepare_control(params, params.controlnet,
                                  lambda path: self.controlnets.get(path, unet, denoiser),
                                  save_maps=not opt("control_net_no_detectmap"),
                                  clip=self.clip_vision.get, annotate=annotate)  # fmt: skip
        job.progress.text = ""
        return control

    def _saver(
        self,
        job: Job,
        params: Txt2ImgParams,
        model_name: str,
        settings: SaveSettings,
        hooks: RunHooks,
    ) -> SaveFn:
        """Save into the outputs (the job's formats, name patterns and folders), then
        tell the hooks."""
        info = JobInfo.of(job)

        def save(image: Image.Image, seed: int, infotext: str) -> str:
            job.raise_if_aborted()  # the server shuts down: write nothing more
            # a rerun (after a restart or a lost worker): the first attempt's file of this
            # image (same seed, same picture) is kept instead of writing a second one
            values = pattern_values(job, params, model_name, infotext)
            path = job.saved_earlier(seed) or self.store.save(
                image, kind=job.kind, seed=seed, infotext=infotext, pattern_values=values,
                **settings.image_args(),
            )  # fmt: skip
            job.image_saved(str(path), seed=seed, infotext=infotext)  # recorded, published
            hooks.saved(SavedImage(info, Path(path), image, infotext, seed, job.kind))
            return str(path)

        return save

    def _with_grid(
        self,
        job: Job,
        params: Txt2ImgParams,
        images: list[GeneratedImage],
        model_name: str,
        settings: SaveSettings,
        hooks: RunHooks,
    ) -> list[GeneratedImage]:
        """The images, after the batch grid when the job shows one (A1111's return_grid)."""
        values = pattern_values(job, params, model_name, images[0].infotext if images else "")
        grid = batch_grid(job, params, images, settings, store=self.store, hooks=hooks,
                          values=values)  # fmt: skip
        if grid is None or not settings.return_grid:
            return images
        return [grid, *images]

    def _extras(self, job: Job, hooks: RunHooks) -> ExtrasResult:
        params = job.params
        context = JobContext(job=JobInfo.of(job), progress=job.progress, cancel=job,
                             upscalers=self.upscalers, faces=self.faces)  # fmt: skip
        save = self._extras_saver(job, context.job, hooks) if params.save_images else None
        return ExtrasResult(upscale_images(context, params, save), params)

    def _extras_saver(self, job: Job, info: JobInfo, hooks: RunHooks) -> NamedSaveFn:
        """Under the source's name into the job's output folder, else into the outputs."""
        params, opt = job.params, partial(job_option, job, self.options)
        settings = replace(SaveSettings.from_options(opt), filename_pattern="")

        def save(image: Image.Image, name: str, infotext: str) -> str:
            job.raise_if_aborted()  # the server shuts down: write nothing more
            earlier = job.saved_earlier(None)  # a rerun after a restart: written already
            if params.output_dir.strip():
                folder = Path(params.output_dir).expanduser()
                path = earlier or str(save_named(image, folder, name, infotext))
                job.image_saved(path, infotext=infotext)
                return path
            path = earlier or self.store.save(
                image, kind="extras", seed=None, infotext=infotext, pattern_values={},
                **settings.image_args(),
            )  # fmt: skip
            job.image_saved(str(path), infotext=infotext)
            hooks.saved(SavedImage(info, Path(path), image, infotext, None, "extras"))
            return str(path)

        return save


def interrogator_cache(models: ModelManager) -> InterrogatorCache:
    """On the models' device; half precision on a GPU in half, else float32."""
    device = torch.device(models.plan.device)
    half = str(models.plan.dtype) == "torch.float16" and device.type != "cpu"
    return InterrogatorCache(device, torch.float16 if half else torch.float32)


def make_runner(
    models: ModelManager,
    store: OutputStore,
    options: OptionSource,
    networks: Networks | None = None,
    *,
    families: Families,
    annotators: AnnotatorCache | None = None,
) -> Worker:
    return Worker(models, store, options, networks, families=families, annotators=annotators)


@contextmanager
def _job_setup(lease, family, *, params, networks, vae) -> Iterator:
    """What a job puts on a checkpoint for its duration: its LoRAs and VAE (yields the
    `ActiveNetworks`), and tiling (every pipeline view shares these modules)."""
    with (
        applied_networks(lease, family, params, networks, vae) as active,
        seamless(lease.pipe, params.tiling),
    ):
        yield active
