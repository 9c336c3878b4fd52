"""The worker's side of a "train_embedding" job: A1111's textual-inversion training.

`train_embedding` leases the checkpoint, reads the embedding's vectors (its file in
`models/embeddings`, and its `step`: training goes on from there) and the dataset
(`ti_dataset`), and trains only those vectors: the UNet, VAE and text encoders are frozen
(and given back as they were), float32 on the CPU, AdamW without weight decay, the
learning rate from A1111's schedule (`ti_params.LearnSchedule`; the run ends early when
the schedule does), `gradient_step` batches accumulated per step, gradients clipped by
value or norm (the clip value is a schedule too), latents encoded once, once without
sampling ("deterministic"), or sampled each time ("random"), the loss weighted by the
images' alpha with `use_weight`. Prompts come from the template's lines with `[name]` and
`[filewords]`; they go through the same conditioning as generation (A1111 weights,
75-token chunks), with the trainable vectors put at the embedding's tokens.

While it runs: `job.progress` has the step, ETA and a loss line; `details` is the
`TrainingLog` the Train tab plots. Every `save_embedding_every` steps a copy
`<name>-<step>.safetensors` goes to `<log_directory>/<date>/<name>/embeddings`, every
`create_image_every` steps a preview image to `.../images` (and, as A1111, a PNG with the
embedding in its `sd-ti-embedding` chunk to `.../image_embeddings`); the loss goes to
`textual_inversion_loss.csv`. At the end and at an interrupt the embedding file itself is
replaced atomically (`ti_create.save_embedding`) with A1111's `step`, `sd_checkpoint` and
`sd_checkpoint_name`; a server shutdown (`JobAborted`) writes nothing. With the option
`training_yield_to_jobs` waiting generation jobs run between the steps (`train_yield`);
the trained vectors live in this module's prompt encoder, never in the model, so they
cannot reach those jobs.

Runs on the worker thread only; never imports a UI library.
"""

from __future__ import annotations

import csv
import datetime
import logging
import math
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..model_manager.embeddings import parse_embedding
from ..model_manager.manager import ModelManager
from ..model_manager.network_files import NetworkFileError, load_tensors, safetensors_metadata
from .conditioning import PromptEncoder
from .families import Families
from .job import Job
from .ti_create import EmbeddingError, checkpoint_meta, save_embedding
from .ti_dataset import DatasetError, TiImage, epoch_batches, loss_weight, prompt_text, read_images
from .ti_params import LearnSchedule, TrainEmbeddingJob
from .ti_preview import draw_preview, save_stored_embedding_png
from .train_lora import TrainingLog
from .train_yield import Trained, TrainingYield

log = logging.getLogger(__name__)


@dataclass
class EmbeddingTrainResult:
    path: str | None  # the embedding file written at the end (None: nothing written)
    message: str  # A1111's API "info"
    log: TrainingLog
    steps: int


class TrainableEmbedding:
    """The vectors being trained, as the prompt encoder's embedding hook reads them."""

    def __init__(self, name: str, vectors: dict[str, torch.Tensor]):
        self.name = name
        self.vectors = {
            k: v.detach().clone().float().requires_grad_(True) for k, v in vectors.items()
        }

    @property
    def vector_count(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])

    def vectors_for(self, key: str, width: int):
        vectors = self.vectors.get(key)
        if vectors is None and len(self.vectors) == 1 and key in ("", "clip_l"):
            vectors = self.vectors.get("")
        return vectors if vectors is not None and int(vectors.shape[-1]) == width else None


class OneEmbedding:
    """Stands in for the embeddings registry: only the embedding being trained is known."""

    model_widths: dict[str, int] | None = None

    def __init__(self, embedding: TrainableEmbedding):
        self.embedding = embedding

    def candidates(self, text: str) -> list[TrainableEmbedding]:
        return [self.embedding] if self.embedding.name.lower() in text.lower() else []


def read_embedding(path: Path) -> tuple[dict[str, torch.Tensor], int]:
    """(vectors by encoder key, step) of an embedding file."""
    try:
        vectors, info = parse_embedding(path.name, load_tensors(path))
    except NetworkFileError as exc:
        raise EmbeddingError(f"embedding_name: {exc}") from None
    step = info.get("step") or safetensors_metadata(path).get("step") or 0
    try:
        return vectors, int(step)
    except (TypeError, ValueError):
        return vectors, 0


def train_embedding(
    job: Job, models: ModelManager, families: Families, info
) -> EmbeddingTrainResult:
    spec: TrainEmbeddingJob = job.params
    p = spec.params
    path = Path(spec.embedding_path)
    if not path.is_file():
        raise EmbeddingError(f"embedding_name: {path.name} is no longer in the embeddings folder")
    vectors, start = read_embedding(path)
    try:
        images = read_images(Path(p.data_root), p.training_width, p.training_height, p.varsize,
                             p.use_weight)  # fmt: skip
    except DatasetError as exc:
        raise EmbeddingError(f"data_root: {exc}") from None
    if start >= p.steps:
        message = (f"train embedding complete: filename: {path} error: the embedding has "
                   f"already been trained {start} steps (max steps {p.steps})")  # fmt: skip
        return EmbeddingTrainResult(None, message, TrainingLog(), start)
    job.progress.text = f"Loading {info.name}"
    lease = models.acquire(info)
    family = families.of(lease.spec)
    trainer = EmbeddingTrainer(job, spec, lease, family, TrainableEmbedding(path.stem, vectors),
                               images)  # fmt: skip
    trained = Trained(Path(info.path), embedding=path.stem)
    trainer.yielder = TrainingYield.of(job, models, lease.pipe, trained)  # jobs between steps
    with _frozen(lease.pipe):
        return trainer.run(start, path)


@contextmanager
def _frozen(pipe):
    """No gradients for the model's own weights; their flags and modes are given back."""
    modules = [m for m in (getattr(pipe, n, None) for n in
               ("unet", "vae", "text_encoder", "text_encoder_2")) if m is not None]  # fmt: skip
    flags = [[q.requires_grad for q in m.parameters()] for m in modules]
    modes = [m.training for m in modules]
    for m in modules:
        m.requires_grad_(False)
        m.eval()
    try:
        yield
    finally:
        for m, saved, mode in zip(modules, flags, modes, strict=True):
            for q, flag in zip(m.parameters(), saved, strict=True):
                q.requires_grad_(flag)
            m.train(mode)


class EmbeddingTrainer:
    def __init__(self, job: Job, spec: TrainEmbeddingJob, lease, family, embedding, images):
        self.job, self.spec, self.p, self.lease = job, spec, spec.params, lease
        self.pipe, self.family, self.embedding, self.images = lease.pipe, family, embedding, images
        self.device = torch.device(getattr(self.pipe, "_execution_device", "cpu"))
        self.encoder = PromptEncoder(self.pipe, family, 1, OneEmbedding(embedding))
        widths = {s.key: s.encoder.get_input_embeddings().embedding_dim for s in self.encoder.slots}
        if any(embedding.vectors_for(k, w) is None for k, w in widths.items()):
            raise EmbeddingError(f"embedding_name: {embedding.name} was made for another model "
                                 f"(its vectors do not fit {lease.info.name})")  # fmt: skip
        self.sdxl = any(s.pooled for s in self.encoder.slots)
        self.noise = DDPMScheduler.from_config(lease.model.base_scheduler_config)
        self.latents: dict[int, torch.Tensor] = {}
        self.log = TrainingLog()
        job.progress.details = self.log
        day = datetime.date.today().strftime("%Y-%m-%d")
        self.log_dir = Path(spec.log_directory) / day / embedding.name
        self.last_copy: Path | None = None
        self.yielder: TrainingYield | None = None

    # --- the loop ---------------------------------------------------------------------
    def run(self, start: int, path: Path) -> EmbeddingTrainResult:
        p, progress = self.p, self.job.progress
        schedule = LearnSchedule(p.learn_rate, p.steps)
        clip_schedule = (
            LearnSchedule(p.clip_grad_value, p.steps) if p.clip_grad_mode != "disabled" else None
        )
        params = list(self.embedding.vectors.values())
        optimizer = torch.optim.AdamW(params, lr=schedule.rate_at(start) or 0.0, weight_decay=0.0)
        self._encode_latents()
        per_epoch = (
            len(epoch_batches(self.images, p.batch_size, self.spec.seed, 0)) // p.gradient_step
        )
        if per_epoch == 0:
            raise EmbeddingError(f"batch_size: {p.batch_size} x gradient_step {p.gradient_step} "
                                 f"is more than the {len(self.images)} images")  # fmt: skip
        progress.batches, progress.batch, progress.started_at = 1, 0, time.monotonic()
        progress.advance(start, p.steps)
        step, stopped = start, False
        while step < p.steps and not stopped:
            epoch = step // per_epoch
            batches = epoch_batches(self.images, p.batch_size, self.spec.seed, epoch)
            index = (step % per_epoch) * p.gradient_step
            while index + p.gradient_step <= len(batches) and step < p.steps:
                rate = schedule.rate_at(step)
                if rate is None:  # the schedule ended before max steps (A1111 stops too)
                    stopped = True
                    break
                for group in optimizer.param_groups:
                    group["lr"] = rate
                loss = self._step(batches[index : index + p.gradient_step], step, optimizer,
                                  params, clip_schedule)  # fmt: skip
                step, index = step + 1, index + p.gradient_step
                self._after_step(step, per_epoch, loss, rate)
                self.job.raise_if_aborted()  # the server shuts down: nothing more is written
                if self.job.interrupt_requested:
                    stopped = True
                    break
                if self.yielder is not None and step < p.steps:
                    self.yielder.between_steps()  # waiting jobs run; the model comes back as it was
        self.job.raise_if_aborted()
        self._save(path, step)
        head = f"Interrupted at step {step}" if self.job.interrupt_requested else "done"
        message = f"train embedding complete: filename: {path} error: None ({head})"
        return EmbeddingTrainResult(str(path), message, self.log, step)

    def _step(self, group, step, optimizer, params, clip_schedule) -> float:
        total = 0.0
        for micro, batch in enumerate(group):
            loss = self._loss(batch, step * 1009 + micro) / len(group)
            loss.backward()
            total += float(loss.detach())
        if clip_schedule is not None:
            value = clip_schedule.rate_at(step) or 0.0
            if self.p.clip_grad_mode == "value":
                torch.nn.utils.clip_grad_value_(params, value)
            else:
                torch.nn.utils.clip_grad_norm_(params, value)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not math.isfinite(total):
            raise EmbeddingError(f"learn_rate: the loss became {total} at step {step + 1}; "
                                 "lower the learning rate")  # fmt: skip
        return total

    def _after_step(self, step: int, per_epoch: int, loss: float, rate: float) -> None:
        p = self.p
        self.log.losses.append((step, loss))
        self.log.epoch = (step - 1) // per_epoch
        self.job.progress.text = (f"[Epoch {(step - 1) // per_epoch}: {(step - 1) % per_epoch + 1}"
                                  f"/{per_epoch}] loss: {loss:.7f}, lr {rate:.2e}")  # fmt: skip
        self._write_loss(step, per_epoch, loss, rate)
        if p.save_embedding_every and step % p.save_embedding_every == 0:
            folder = self.log_dir / "embeddings"
            self.last_copy = folder / f"{self.embedding.name}-{step}.safetensors"
            save_embedding(self.last_copy, self.embedding.vectors, self._meta(step))
        if p.create_image_every and step % p.create_image_every == 0:
            self._preview(step)
        self.job.progress.advance(step, p.steps)

    # --- one batch ----------------------------------------------------------------------
    def _loss(self, batch: list[int], draw: int) -> torch.Tensor:
        p = self.p
        gen = torch.Generator("cpu").manual_seed(self.spec.seed * 1_000_003 + draw)
        rng = random.Random(self.spec.seed * 1_000_003 + draw)
        latents = torch.cat([self._latent(i, gen) for i in batch]).to(self.device)
        noise = torch.randn(latents.shape, generator=gen).to(self.device)
        timesteps = torch.randint(0, self.noise.config.num_train_timesteps, (len(batch),),
                                  generator=gen).to(self.device)  # fmt: skip
        noisy = self.noise.add_noise(latents, noise, timesteps)
        texts = [self._text(self.images[i], rng) for i in batch]
        unet = self.pipe.unet
        kwargs = self._conditioning(texts, latents.shape)
        pred = unet(noisy.to(unet.dtype), timesteps, **kwargs).sample.float()
        if self.noise.config.prediction_type == "v_prediction":
            target = self.noise.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        error = F.mse_loss(pred, target.float(), reduction="none")
        if p.use_weight:
            weights = torch.stack([loss_weight(self.images[i], latents.shape[1:]) for i in batch])
            error = error * weights.to(error.device)
        return error.mean()

    def _text(self, image: TiImage, rng: random.Random) -> str:
        line = rng.choice(self.spec.template_lines)
        return prompt_text(line, image.filewords, self.embedding.name, rng,
                           drop_out=self.p.tag_drop_out, shuffle=self.p.shuffle_tags)  # fmt: skip

    def _conditioning(self, texts: list[str], shape) -> dict:
        encoded = [self.encoder.encode_uncached(text) for text in texts]
        length = max(e.embeds.shape[1] for e in encoded)
        # A1111 pads a shorter prompt with empty chunks
        empty = self.encoder.encode("").embeds.clone()
        embeds = []
        for e in encoded:
            pad = [empty] * ((length - e.embeds.shape[1]) // empty.shape[1])
            embeds.append(torch.cat([e.embeds, *pad], dim=1))
        dtype = self.pipe.unet.dtype
        kwargs: dict = {"encoder_hidden_states": torch.cat(embeds).to(dtype)}
        if self.sdxl:
            height, width = shape[2] * 8, shape[3] * 8
            ids = torch.tensor([[height, width, 0, 0, height, width]] * len(texts), dtype=dtype)
            pooled = torch.cat([e.pooled for e in encoded]).to(dtype)
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": ids.to(self.device)}
        return kwargs

    # --- latents ------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_latents(self) -> None:
        vae = self.pipe.vae
        self.job.progress.text = f"Preparing dataset from {self.p.data_root}"
        gen = torch.Generator("cpu").manual_seed(self.spec.seed)
        self.dists = {}
        for index, image in enumerate(self.images):
            pixels = image.pixels.unsqueeze(0).to(self.device, vae.dtype)
            dist = vae.encode(pixels).latent_dist
            if self.p.latent_sampling_method == "random":
                self.dists[index] = dist
            elif self.p.latent_sampling_method == "deterministic":
                self.latents[index] = self._scaled(dist.mode())
            else:
                self.latents[index] = self._scaled(dist.sample(gen))

    def _latent(self, index: int, gen: torch.Generator) -> torch.Tensor:
        if index in self.latents:
            return self.latents[index]
        with torch.no_grad():
            return self._scaled(self.dists[index].sample(gen))

    def _scaled(self, latent: torch.Tensor) -> torch.Tensor:
        config = self.pipe.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        return ((latent - shift) * config.scaling_factor).float()

    # --- what is written ----------------------------------------------------------------
    def _meta(self, step: int) -> dict[str, object]:
        return {"name": self.embedding.name, "step": step, **checkpoint_meta(self.lease)}

    def _save(self, path: Path, step: int) -> None:
        self.job.progress.text = f"Saving {path.name}"
        save_embedding(path, self.embedding.vectors, self._meta(step))

    def _write_loss(self, step: int, per_epoch: int, loss: float, rate: float) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        target = self.log_dir / "textual_inversion_loss.csv"
        new = not target.exists()
        with target.open("a", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            if new:
                writer.writerow(["step", "epoch", "epoch_step", "loss", "learn_rate"])
            writer.writerow([step, (step - 1) // per_epoch, (step - 1) % per_epoch + 1,
                             f"{loss:.7f}", rate])  # fmt: skip

    def _preview(self, step: int) -> None:
        folder = self.log_dir / "images"
        prompt = self._text(self.images[0], random.Random(step))
        image = draw_preview(self, prompt)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{self.embedding.name}-{step}.png"
        image.save(target)
        self.log.samples.append(str(target))
        if self.p.save_image_with_stored_embedding and self.last_copy is not None:
            meta = self._meta(step)
            save_stored_embedding_png(image, self.embedding.vectors, meta,
                                      self.log_dir / "image_embeddings" / target.name)  # fmt: skip
