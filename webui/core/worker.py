"""What the job worker does with a job: lease the model it names, generate, save.

`make_runner` is given the model manager, the output store and the options by the
composition root, and returns the callable that `JobQueue` runs on its worker thread.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from .jobs import Job
from .params import Txt2ImgParams
from .processing import GeneratedImage, txt2img

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    images: list[GeneratedImage]
    params: Txt2ImgParams  # as run: seed fixed, checkpoint resolved to its title
    checkpoint_title: str
    model_family: str


def make_runner(models, store, options) -> Callable[[Job], JobResult | None]:
    def run(job: Job) -> JobResult | None:
        if job.kind == "load":  # preload a checkpoint (start-up, checkpoint switch in the UI)
            models.acquire(models.resolve(job.params))
            return None
        if job.kind == "unload":  # free the RAM/VRAM of every loaded checkpoint
            models.unload_all()
            return None
        if job.kind != "txt2img":
            raise ValueError(f"unknown job kind: {job.kind}")
        params: Txt2ImgParams = job.params
        info = models.resolve(params.checkpoint)
        models.limit = int(options.get("sd_checkpoints_limit"))
        job.progress.text = f"Loading {info.name}" if info.path not in models.loaded_paths() else ""
        lease = models.acquire(info)
        job.progress.text = ""
        fmt = options.get("samples_format")

        pattern = options.get("samples_filename_pattern") or None
        pattern_values = {
            "prompt": params.prompt,
            "model_name": info.name,
            "steps": params.steps,
            "sampler": params.sampler_name or "",
        }

        def save(image, seed, infotext):
            path = store.save(
                image,
                kind="txt2img",
                seed=seed,
                infotext=infotext,
                fmt=fmt,
                filename_pattern=pattern,
                pattern_values=pattern_values,
            )
            return str(path)

        images = txt2img(
            lease,
            params,
            progress=job.progress,
            should_stop=lambda: job.interrupt_requested,
            save=save if params.save_images else None,
            preview_every=int(options.get("show_progress_every_n_steps")),
        )
        return JobResult(images, params, info.title, lease.spec.label)

    return run
