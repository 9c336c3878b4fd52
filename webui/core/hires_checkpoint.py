"""Hires. fix with another checkpoint (A1111's `hr_checkpoint_name`, "Hires checkpoint").

`hires_model` gives `webui.core.hires.hires_pass` the run of its second pass: the hires
checkpoint's lease and family (leased through the job's `JobCheckpoints`, so the model
manager's cache rules apply) and the prompts encoded by its own text encoders; the
upscaling, sampler, steps, prompts and noise of hires. fix stay as they are. The
checkpoint must share the first pass's latent space and prediction type
(`webui.core.checkpoints.check_compatible`): the first pass's latents go on in it. The
job's LoRAs and VAE stay on the main checkpoint. Infotext: `Hires checkpoint: name [hash]`.

This module must never import a UI library or change global options.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .checkpoints import check_compatible
from .conditioning import Conditioning
from .params import Txt2ImgParams
from .run import RunContext

FIELD = "hr_checkpoint_name"


def short_title(run: RunContext, name: str) -> str:
    """A1111's short title of a checkpoint: "name [hash]"."""
    info = run.checkpoints.info(name)
    return f"{info.name} [{info.shorthash}]" if info.shorthash else info.name


def hires_checkpoint_fields(run: RunContext, params: Txt2ImgParams) -> dict[str, Any]:
    hires = params.hires
    if hires is None or not hires.checkpoint or run.checkpoints is None:
        return {}
    return {"Hires checkpoint": short_title(run, hires.checkpoint)}


def hires_model(
    run: RunContext, params: Txt2ImgParams, conditioning: Conditioning
) -> tuple[RunContext, Conditioning]:
    """The second pass's run and first-pass prompts: the hires checkpoint's when the job
    names one other than its own, else `run` and `conditioning` as they are."""
    hires = params.hires
    if hires is None or not hires.checkpoint or run.checkpoints is None:
        return run, conditioning
    lease, family = run.checkpoints.lease(hires.checkpoint)
    if lease is run.lease:
        return run, conditioning
    check_compatible(run.family, family, run.lease.spec, lease.spec, FIELD)
    family.check_mode("img2img")
    run.checkpoints.use(lease)
    conditioning = family.conditioning(
        lease.pipe, params.prompt, params.negative_prompt, params.clip_skip,
        steps=hires.steps or params.steps, embeddings=run.networks.embeddings,
    )  # fmt: skip
    return replace(run, lease=lease, family=family), conditioning
