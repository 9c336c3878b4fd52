"""The worker's side of a "train_lora" job: a LoRA trained on the leased checkpoint.

`run_lora_training` scans the dataset (`train_dataset`), leases the checkpoint through the
model manager (the one the user picked, whatever its format; the memory plan's device and
dtype), puts a peft adapter on it (`train_lora_io.add_network`) and trains it with
kohya's recipe: aspect-ratio buckets, cached latents, caption dropout and tag shuffle,
noise offset, min-SNR weighting (`diffusers.training_utils.compute_snr`), AdamW, a
`diffusers.optimization` schedule with warm-up, gradient accumulation and checkpointing,
and mixed precision on a GPU (float32 on the CPU). Every random draw of a step comes from
the seed and the step number alone, so a resumed run ends where an uninterrupted one does.

While it runs: `job.progress` has the step, total, ETA and a "loss" line; its `details`
is the `TrainingLog` (losses per step, sample images) the Train tab draws. Sample images
every N steps go to the work folder. Every N epochs, at the end and at an interrupt, the
LoRA (`models/Lora/<name>.safetensors`, kohya layout and `ss_*` metadata, a preview
image) and the resume state are saved atomically (`train_lora_io`); a server shutdown
(`JobAborted`) writes nothing. The adapter is taken off the checkpoint however the job
ends. With the option `training_yield_to_jobs`, waiting generation jobs run between the
steps (`train_yield`), the adapter disabled while they do. Runs on the queue's worker
thread only; never imports a UI library.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import compute_snr
from PIL import Image, ImageOps

from ..errors import UserError
from ..model_manager.manager import ModelManager
from .families import Families
from .job import Job
from .train_dataset import (
    Dataset,
    TrainImage,
    assign_buckets,
    batches_per_epoch,
    caption_for,
    check_batch,
    epoch_batches,
    scan_dataset,
)
from .train_lora_io import add_network, load_state, remove_network, trainable_groups
from .train_lora_save import Saver
from .train_params import LoraTrainJob, LoraTrainParams
from .train_yield import Trained, TrainingYield

log = logging.getLogger(__name__)
MAX_GRAD_NORM = 1.0  # kohya's default


class TrainingError(RuntimeError, UserError):
    """Training cannot start or go on; the message says why."""


@dataclass
class TrainingLog:
    """What the Train tab draws while the job runs (read from other threads)."""

    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    samples: list[str] = field(default_factory=list)  # sample image paths, newest last
    notes: list[str] = field(default_factory=list)  # caption encodings, refusals
    epoch: int = 0
    epochs: int = 0


@dataclass
class TrainResult:
    path: str | None  # the LoRA file saved last (None: nothing saved)
    message: str
    log: TrainingLog
    steps: int


def run_lora_training(job: Job, models: ModelManager, families: Families, on_saved=None):
    spec: LoraTrainJob = job.params
    p = spec.params
    try:
        dataset = scan_dataset(p.train_data_dir, p.caption_extension)
        check_batch(dataset, p.train_batch_size)
    except ValueError as exc:
        raise TrainingError(f"train_data_dir: {exc}") from None
    if p.optimizer_type == "AdamW8bit":
        _bitsandbytes()
    info = models.resolve(p.checkpoint)
    job.progress.text = f"Loading {info.name}"
    lease = models.acquire(info)
    family = families.of(lease.spec)
    try:
        family.check_mode("txt2img")
    except Exception as exc:
        raise TrainingError(f"checkpoint: {info.name} cannot be trained on ({exc})") from None
    pipe = lease.pipe
    scheduler = pipe.scheduler
    try:
        trainer = Trainer(job, spec, dataset, lease, models)
        trained = Trained(Path(info.path), lora=p.output_name)
        trainer.yielder = TrainingYield.of(job, models, pipe, trained)  # other jobs between steps
        return trainer.run(on_saved)
    finally:
        remove_network(pipe)
        pipe.scheduler = scheduler


def _bitsandbytes() -> None:
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:
        raise TrainingError(
            f"optimizer_type: AdamW8bit needs bitsandbytes, which does not run here ({exc}); "
            "choose AdamW"
        ) from None


class Trainer:
    """One training run on a leased pipeline (the adapter is added here)."""

    def __init__(self, job: Job, spec: LoraTrainJob, dataset: Dataset, lease, models) -> None:
        self.job, self.spec, self.p, self.dataset = job, spec, spec.params, dataset
        self.pipe, self.lease = lease.pipe, lease
        p = self.p
        self.device = torch.device(getattr(self.pipe, "_execution_device", models.plan.device))
        self.sdxl = getattr(self.pipe, "text_encoder_2", None) is not None
        # kohya's "v2": SD 2.x, read from the model (its OpenCLIP-H text encoder is 1024 wide)
        self.v2 = not self.sdxl and self.pipe.text_encoder.config.hidden_size == 1024
        self.log = TrainingLog(notes=list(dataset.notes))
        job.progress.details = self.log
        self.buckets = assign_buckets(dataset.images, p.resolution, p.enable_bucket)
        self.bucket_by_path = {i.path: b for b, items in self.buckets.items() for i in items}
        per_epoch = math.ceil(batches_per_epoch(self.buckets, p.train_batch_size)
                              / p.gradient_accumulation_steps)  # fmt: skip
        self.total = p.max_train_steps or p.max_train_epochs * per_epoch
        self.epochs = math.ceil(self.total / per_epoch)
        self.log.epochs = self.epochs
        self.noise = DDPMScheduler.from_config(lease.model.base_scheduler_config)
        self.latents: dict[tuple[Path, tuple[int, int]], torch.Tensor] = {}
        self.autocast, self.scaler = self._precision()
        self.saver = Saver(spec, dataset, lease, models, self)
        self.yielder: TrainingYield | None = None

    def _precision(self):
        p, unet_dtype = self.p, self.pipe.unet.dtype
        if self.device.type != "cuda":
            return contextlib.nullcontext, None  # float32 on the CPU
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(p.mixed_precision)
        dtype = dtype or (unet_dtype if unet_dtype != torch.float32 else None)
        if dtype is None:
            return contextlib.nullcontext, None
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return (lambda: torch.autocast("cuda", dtype=dtype)), scaler

    # --- the loop ---------------------------------------------------------------------
    def run(self, on_saved) -> TrainResult:
        p, progress = self.p, self.job.progress
        with torch.random.fork_rng(devices=[]):  # the adapter's first weights from the seed
            torch.manual_seed(self.spec.seed)
            params = add_network(self.pipe, p)
        groups = trainable_groups(self.pipe, p)
        optimizer = self._optimizer(groups)
        warm_constant = p.lr_scheduler == "constant" and p.lr_warmup_steps
        schedule = "constant_with_warmup" if warm_constant else p.lr_scheduler
        lr_scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=p.lr_warmup_steps,
                                     num_training_steps=self.total,
                                     num_cycles=p.lr_scheduler_num_cycles,
                                     power=p.lr_scheduler_power)  # fmt: skip
        self._checkpointing(p.gradient_checkpointing)
        step, epoch, skip = 0, 0, 0
        if p.resume:
            step, epoch, skip = self._resume(optimizer, lr_scheduler)
        if p.cache_latents:
            self._cache_latents()
        progress.batches, progress.batch, progress.started_at = 1, 0, time.monotonic()
        progress.advance(step, self.total)
        stopped = False
        while step < self.total and not stopped:
            self.log.epoch = epoch + 1
            batches = epoch_batches(self.buckets, p.train_batch_size, self.spec.seed, epoch)
            index = skip
            while index < len(batches) and step < self.total:
                group = batches[index : index + p.gradient_accumulation_steps]
                loss = self._optimizer_step(group, step, params, optimizer, lr_scheduler)
                step, index = step + 1, index + len(group)
                self._after_step(step, epoch, loss, lr_scheduler)
                self.job.raise_if_aborted()  # the server shuts down: nothing more is written
                if self.job.interrupt_requested:  # save where it stands (a skip means nothing)
                    stopped = True
                    break
                if self.yielder is not None and step < self.total:
                    self.yielder.between_steps()  # waiting jobs run; the model comes back as it was
            if index >= len(batches):
                epoch, skip = epoch + 1, 0
            else:
                skip = index
            at_end = step >= self.total or stopped
            every = p.save_every_n_epochs
            if at_end or (every and epoch % every == 0 and not skip):
                self.job.raise_if_aborted()
                self.saver.save(step, epoch, skip, optimizer, lr_scheduler, final=at_end)
                if on_saved is not None:
                    on_saved()
        return self._result(step, stopped)

    def _result(self, step: int, stopped: bool) -> TrainResult:
        path = self.saver.last_path
        head = f"Interrupted at step {step} of {self.total}" if stopped else f"Trained {step} steps"
        message = f"{head}; LoRA saved to {path}" if path else f"{head}; nothing was saved"
        if self.log.notes:
            message += " (" + "; ".join(self.log.notes[:5]) + ")"
        return TrainResult(str(path) if path else None, message, self.log, step)

    def _optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        if self.p.optimizer_type == "AdamW8bit":
            import bitsandbytes

            return bitsandbytes.optim.AdamW8bit(groups, weight_decay=0.01)
        return torch.optim.AdamW(groups, weight_decay=0.01)

    def _checkpointing(self, on: bool) -> None:
        if not on:
            return
        self.pipe.unet.enable_gradient_checkpointing()
        self.pipe.unet.train()  # diffusers checkpoints only in training mode (no dropout)

    def _resume(self, optimizer, lr_scheduler) -> tuple[int, int, int]:
        folder = self.saver.state_folder(self.p.resume)
        if not (folder / "state.json").is_file():
            raise TrainingError(f"resume: no saved state named {self.p.resume!r}")
        info = load_state(folder, self.pipe, optimizer, lr_scheduler)
        self.log.losses = [tuple(x) for x in info.get("losses", [])]
        self.saver.started_at = info.get("started_at", self.saver.started_at)
        log.info("resuming %s at step %d", self.p.resume, info["step"])
        return int(info["step"]), int(info["epoch"]), int(info.get("skip", 0))

    def _after_step(self, step: int, epoch: int, loss: float, lr_scheduler) -> None:
        self.log.losses.append((step, loss))
        lr = lr_scheduler.get_last_lr()[0]
        self.job.progress.text = (f"Epoch {epoch + 1}/{self.epochs}, loss {loss:.4f}, "
                                  f"lr {lr:.2e}")  # fmt: skip
        every = self.p.sample_every_n_steps
        if every and step % every == 0 and step < self.total:
            self.log.samples += self.saver.samples(step)
        self.job.progress.advance(step, self.total)

    def _optimizer_step(self, group, step, params, optimizer, lr_scheduler) -> float:
        losses = []
        for micro, batch in enumerate(group):
            with self.autocast():
                loss = self._loss(batch, step * 1009 + micro)
            scaled = loss / len(group)
            (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            losses.append(float(loss.detach()))
        if self.scaler:
            self.scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            raise TrainingError(f"the loss became {losses[-1]} at step {step + 1}: lower the "
                                "learning rate or use fp32 / bf16")  # fmt: skip
        return sum(losses) / len(losses)

    # --- one batch ----------------------------------------------------------------------
    def _loss(self, batch: list[TrainImage], draw: int) -> torch.Tensor:
        p, pipe = self.p, self.pipe
        gen = torch.Generator("cpu").manual_seed(self.spec.seed * 1_000_003 + draw)
        rng = random.Random(self.spec.seed * 1_000_003 + draw)
        bucket = self._bucket_of(batch[0])
        latents = torch.cat([self._latent(image, bucket) for image in batch]).to(self.device)
        noise = torch.randn(latents.shape, generator=gen)
        if p.noise_offset:
            noise += p.noise_offset * torch.randn((*latents.shape[:2], 1, 1), generator=gen)
        count = self.noise.config.num_train_timesteps
        timesteps = torch.randint(0, count, (len(batch),), generator=gen)
        noise, timesteps = noise.to(self.device, latents.dtype), timesteps.to(self.device)
        noisy = self.noise.add_noise(latents, noise, timesteps)
        captions = [caption_for(i.caption, rng, dropout=p.caption_dropout_rate,
                                shuffle=p.shuffle_caption, keep_tokens=p.keep_tokens)
                    for i in batch]  # fmt: skip
        unet_dtype = pipe.unet.dtype
        kwargs = self._conditioning(captions, batch, bucket, unet_dtype)
        pred = pipe.unet(noisy.to(unet_dtype), timesteps, **kwargs).sample.float()
        prediction = self.noise.config.prediction_type
        v_prediction = prediction == "v_prediction"
        target = self.noise.get_velocity(latents, noise, timesteps) if v_prediction else noise
        per_sample = F.mse_loss(pred, target.float(), reduction="none").mean(dim=(1, 2, 3))
        if p.min_snr_gamma:
            snr = compute_snr(self.noise, timesteps)
            weight = torch.clamp(snr, max=p.min_snr_gamma) / (snr + 1 if v_prediction else snr)
            per_sample = per_sample * weight
        return per_sample.mean()

    def _conditioning(self, captions, batch, bucket, dtype) -> dict[str, Any]:
        pipe = self.pipe
        context = contextlib.nullcontext() if self.p.text_encoder_lr > 0 else torch.no_grad()
        with context:
            out = pipe.encode_prompt(prompt=captions, device=self.device, num_images_per_prompt=1,
                                     do_classifier_free_guidance=False)  # fmt: skip
        if not self.sdxl:
            return {"encoder_hidden_states": out[0].to(dtype)}
        width, height = bucket
        ids = [[*i.size[::-1], *_crop(i.size, bucket)[::-1], height, width] for i in batch]
        time_ids = torch.tensor(ids, dtype=dtype, device=self.device)
        return {"encoder_hidden_states": out[0].to(dtype),
                "added_cond_kwargs": {"text_embeds": out[2].to(dtype), "time_ids": time_ids}}  # fmt: skip

    def _bucket_of(self, image: TrainImage) -> tuple[int, int]:
        return self.bucket_by_path[image.path]

    def _latent(self, image: TrainImage, bucket: tuple[int, int]) -> torch.Tensor:
        key = (image.path, bucket)
        if key in self.latents:
            return self.latents[key]
        latent = self._encode(image, bucket)
        if self.p.cache_latents:
            self.latents[key] = latent
        return latent

    def _cache_latents(self) -> None:
        progress = self.job.progress
        images = [(i, b) for b, items in self.buckets.items() for i in items]
        for done, (image, bucket) in enumerate(images):
            progress.text = f"Caching latents {done + 1}/{len(images)}"
            self.job.raise_if_aborted()
            self._latent(image, bucket)

    @torch.no_grad()
    def _encode(self, image: TrainImage, bucket: tuple[int, int]) -> torch.Tensor:
        vae = self.pipe.vae
        with Image.open(image.path) as src:
            picture = ImageOps.fit(ImageOps.exif_transpose(src).convert("RGB"), bucket,
                                   Image.Resampling.LANCZOS)  # fmt: skip
        array = np.asarray(picture, dtype=np.float32) / 127.5 - 1.0
        pixels = torch.from_numpy(array).permute(2, 0, 1)[None]
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        dtype = torch.float32 if upcast else vae.dtype
        if upcast:
            vae.to(torch.float32)
        try:
            latent = vae.encode(pixels.to(self.device, dtype)).latent_dist.mode()
        finally:
            if upcast:
                vae.to(torch.float16)
        return (latent * vae.config.scaling_factor).float()


def _crop(size: tuple[int, int], bucket: tuple[int, int]) -> tuple[int, int]:
    """The (left, top) of the centred crop of the image scaled to cover the bucket."""
    scale = max(bucket[0] / size[0], bucket[1] / size[1])
    width, height = round(size[0] * scale), round(size[1] * scale)
    return (width - bucket[0]) // 2, (height - bucket[1]) // 2


__all__ = ["LoraTrainParams", "TrainResult", "TrainingError", "TrainingLog", "run_lora_training"]
