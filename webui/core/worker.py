"""What the job worker does with a job: lease the model it names, generate, save.

`make_runner` is given the model manager, the output store and the options by the
composition root, and returns the callable that `JobQueue` runs on its worker thread.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from ..imaging.upscalers import UpscalerCache
from .decode import MemoryRun
from .extra_networks import Networks, applied_networks, styled
from .extras import run_extras_job
from .img2img import img2img
from .jobs import Job
from .oom import run_guarded
from .params import Txt2ImgParams
from .processing import GeneratedImage, txt2img

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    images: list[GeneratedImage]
    params: Txt2ImgParams  # as run: seed fixed, checkpoint resolved to its title
    checkpoint_title: str
    model_family: str
    warnings: list[str] = field(default_factory=list)  # skipped LoRA tags, unknown styles...


def job_option(job: Job, options, key: str):
    """The job's own value of an option (its snapshot with overrides), else the current one."""
    if key in job.options:
        return job.options[key]
    return options.get(key)


def resolve_checkpoint(models, requested: str | None, default: str | None):
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


def make_runner(
    models, store, options, networks: Networks | None = None
) -> Callable[[Job], JobResult | None]:
    # upscaler models stay loaded between jobs (the last one); only this worker runs them
    upscalers = UpscalerCache(models.plan.device, half=str(models.plan.dtype) == "torch.float16")

    def run(job: Job) -> JobResult | None:
        if job.kind == "load":  # preload a checkpoint (start-up, checkpoint switch in the UI)
            models.limit = int(job_option(job, options, "sd_checkpoints_limit"))  # RAM cache
            models.acquire(models.resolve(job.params))
            return None
        if job.kind == "unload":  # free the RAM/VRAM of every loaded checkpoint
            models.unload_all()
            upscalers.clear()
            return None
        if job.kind == "extras":  # upscaling: no checkpoint
            return run_extras_job(job, store, partial(job_option, job, options), upscalers)
        if job.kind not in ("txt2img", "img2img"):
            raise ValueError(f"unknown job kind: {job.kind}")
        params: Txt2ImgParams = job.params
        params, warnings = styled(params, networks)  # styles.csv texts into the prompts
        opt = partial(job_option, job, options)
        info = resolve_checkpoint(models, params.checkpoint, opt("sd_model_checkpoint"))
        models.limit = int(opt("sd_checkpoints_limit"))
        job.progress.text = f"Loading {info.name}" if info.path not in models.loaded_paths() else ""
        lease = models.acquire(info)
        job.progress.text = ""
        fmt = opt("samples_format")

        pattern = opt("samples_filename_pattern") or None
        pattern_values = {
            "prompt": params.prompt,
            "model_name": info.name,
            "steps": params.steps,
            "sampler": params.sampler_name or "",
        }

        def save(image, seed, infotext):
            job.raise_if_aborted()  # the server shuts down: write nothing more
            path = store.save(
                image,
                kind=job.kind,
                seed=seed,
                infotext=infotext,
                fmt=fmt,
                filename_pattern=pattern,
                pattern_values=pattern_values,
                outdir=opt("outdir_samples"),
            )
            job.image_saved(str(path))  # publishes the job's "saved" event
            return str(path)

        # LoRAs and VAE are on the model for this job only, taken off however it ends
        with applied_networks(lease, params, networks, opt("sd_vae")) as active:
            generate = txt2img if job.kind == "txt2img" else img2img
            memory = MemoryRun.from_options(opt)  # VAE tiling/slicing; notes for the infotext
            images = run_guarded(  # out of memory: a clear error, or one lower-memory retry
                lambda: generate(
                    lease,
                    params,
                    progress=job.progress,
                    should_stop=job.should_stop,  # interrupt, or skip the current image
                    save=save if params.save_images else None,
                    preview_every=int(opt("show_progress_every_n_steps")),
                    networks=active,
                    upscalers=upscalers,
                ),
                pipe=lease.pipe, plan=models.plan, family=lease.spec.family, run=memory,
                retry=bool(opt("oom_retry_lower_memory")), what=f"{params.width}x{params.height}",
            )  # fmt: skip
        warnings += active.warnings + memory.messages()
        return JobResult(images, params, info.title, lease.spec.label, warnings)

    return run
