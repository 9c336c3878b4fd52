"""What a LoRA training run writes: the LoRA file, its preview, samples and resume state.

`Saver.save` writes `models/Lora/<output_name>.safetensors` (at the end or an interrupt)
or `<output_name>-<epoch:06d>.safetensors` (every N epochs, kohya's names) in kohya's
layout with kohya's `ss_*` metadata (network dim/alpha/module/args, base model version,
checkpoint name and hashes, resolution, image count, dataset folders, tag frequency,
bucket info, schedule and optimizer, training start and end, seed...), then its preview
image `<name>.preview.png` (a sample with the first sample prompt, or the first
caption), then the resume state under `<data>/training/<output_name>/state` (all of it
atomically, `train_lora_io`). `Saver.samples` draws the sample images with the adapter
on (Euler, the run's seed) into `<data>/training/<output_name>/samples`.

Runs on the worker thread only; never imports a UI library.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from diffusers import EulerDiscreteScheduler

from ..model_manager.merge import legacy_hash
from .train_dataset import Dataset
from .train_lora_io import kohya_state_dict, save_lora_file, save_state
from .train_params import LoraTrainJob

log = logging.getLogger(__name__)
SAVE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}
SAMPLE_PROMPTS = 4
OPTIMIZER_NAMES = {"AdamW": "torch.optim.AdamW(weight_decay=0.01)",
                   "AdamW8bit": "bitsandbytes.optim.AdamW8bit(weight_decay=0.01)"}  # fmt: skip
GUIDANCE = 7.0


class Saver:
    def __init__(self, spec: LoraTrainJob, dataset: Dataset, lease, models, trainer) -> None:
        self.spec, self.p, self.dataset, self.lease = spec, spec.params, dataset, lease
        self.models, self.trainer = models, trainer
        self.lora_dir = Path(spec.lora_dir)
        self.work = Path(spec.work_dir) / self.p.output_name
        self.started_at = time.time()
        self.session = uuid.uuid4().hex
        self.last_path: Path | None = None

    def state_folder(self, name: str) -> Path:
        return Path(self.spec.work_dir) / name / "state"

    def save(self, step: int, epoch: int, skip: int, optimizer, scheduler, *, final: bool) -> None:
        p, pipe = self.p, self.lease.pipe
        name = p.output_name if final else f"{p.output_name}-{epoch:06d}"
        self.lora_dir.mkdir(parents=True, exist_ok=True)
        path = self.lora_dir / f"{name}.safetensors"
        self.trainer.job.progress.text = f"Saving {path.name}"
        state = kohya_state_dict(pipe, p, SAVE_DTYPES[p.save_precision])
        save_lora_file(path, state, self.metadata(step, epoch, name))
        self._preview(path, step, final)
        info = {"step": step, "epoch": epoch, "skip": skip, "seed": self.spec.seed,
                "losses": self.trainer.log.losses, "started_at": self.started_at,
                "output_name": p.output_name, "checkpoint": self.lease.info.title}  # fmt: skip
        save_state(self.state_folder(p.output_name), pipe, optimizer, scheduler, info)
        self.last_path = path
        log.info("LoRA saved to %s (step %d)", path, step)

    # --- images ---------------------------------------------------------------------------
    def prompts(self) -> list[str]:
        lines = [line.strip() for line in self.p.sample_prompts.splitlines() if line.strip()]
        return lines[:SAMPLE_PROMPTS] or [self.dataset.images[0].caption]

    def samples(self, step: int, prompts: list[str] | None = None) -> list[str]:
        """One image per sample prompt with the adapter as trained so far."""
        folder = self.work / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, prompt in enumerate(prompts or self.prompts()):
            image = self._draw(prompt)
            path = folder / f"{self.p.output_name}_{step:06d}_{index}.png"
            image.save(path)
            paths.append(str(path))
        return paths

    def _draw(self, prompt: str):
        pipe, res = self.lease.pipe, self.p.resolution
        scheduler, training = pipe.scheduler, pipe.unet.training
        pipe.scheduler = EulerDiscreteScheduler.from_config(self.lease.model.base_scheduler_config)
        pipe.unet.eval()
        try:
            generator = torch.Generator("cpu").manual_seed(self.spec.seed)
            return pipe(prompt=prompt, negative_prompt="", num_inference_steps=self.p.sample_steps,
                        guidance_scale=GUIDANCE, height=res, width=res, generator=generator,
                        output_type="pil").images[0]  # fmt: skip
        finally:
            pipe.scheduler = scheduler
            pipe.unet.train(training)

    def _preview(self, path: Path, step: int, final: bool) -> None:
        """`<name>.preview.png` beside the file: a new sample at the end, else the last."""
        target = path.with_name(f"{path.stem}.preview.png")
        samples = self.trainer.log.samples
        if final:
            image = self._draw(self.prompts()[0])
        elif samples:
            from PIL import Image

            image = Image.open(samples[-1])
        else:
            return
        tmp = target.with_name(f".{target.name}.partial.tmp")
        try:
            image.save(tmp, format="PNG")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    # --- metadata -------------------------------------------------------------------------
    def metadata(self, step: int, epoch: int, name: str) -> dict[str, str]:
        p, trainer, info = self.p, self.trainer, self.lease.info
        sdxl = trainer.sdxl
        v2 = trainer.v2
        network_args = {"conv_dim": p.conv_dim, "conv_alpha": p.conv_alpha} if p.conv_dim else {}
        base = "sdxl_base_v1-0" if sdxl else ("sd_v2" if v2 else "sd_v1")
        buckets = {str(i): {"resolution": list(k), "count": sum(x.repeats for x in v)}
                   for i, (k, v) in enumerate(sorted(trainer.buckets.items()))}  # fmt: skip
        meta: dict[str, Any] = {
            "ss_session_id": self.session,
            "ss_training_started_at": self.started_at,
            "ss_training_finished_at": time.time(),
            "ss_output_name": name,
            "ss_network_module": "networks.lora",
            "ss_network_dim": p.network_dim,
            "ss_network_alpha": p.network_alpha,
            "ss_network_args": json.dumps(network_args),
            "ss_base_model_version": base,
            "ss_v2": v2,
            "ss_sd_model_name": info.name,
            "ss_sd_model_hash": "" if info.is_folder else legacy_hash(info.path),
            "ss_new_sd_model_hash": info.sha256 or "",
            "ss_resolution": f"({p.resolution}, {p.resolution})",
            "ss_enable_bucket": p.enable_bucket,
            "ss_bucket_info": json.dumps({"buckets": buckets}),
            "ss_num_train_images": self.dataset.count,
            "ss_num_reg_images": 0,
            "ss_num_batches_per_epoch": trainer.total // max(1, trainer.epochs),
            "ss_num_epochs": trainer.epochs,
            "ss_epoch": epoch,
            "ss_steps": step,
            "ss_max_train_steps": trainer.total,
            "ss_batch_size_per_device": p.train_batch_size,
            "ss_total_batch_size": p.train_batch_size * p.gradient_accumulation_steps,
            "ss_gradient_accumulation_steps": p.gradient_accumulation_steps,
            "ss_gradient_checkpointing": p.gradient_checkpointing,
            "ss_learning_rate": p.unet_lr,
            "ss_unet_lr": p.unet_lr,
            "ss_text_encoder_lr": p.text_encoder_lr,
            "ss_lr_scheduler": p.lr_scheduler,
            "ss_lr_warmup_steps": p.lr_warmup_steps,
            "ss_optimizer": OPTIMIZER_NAMES[p.optimizer_type],
            "ss_mixed_precision": p.mixed_precision if trainer.device.type == "cuda" else "no",
            "ss_full_fp16": False,
            "ss_max_grad_norm": 1.0,
            "ss_caption_dropout_rate": p.caption_dropout_rate,
            "ss_shuffle_caption": p.shuffle_caption,
            "ss_keep_tokens": p.keep_tokens,
            "ss_noise_offset": p.noise_offset,
            "ss_min_snr_gamma": p.min_snr_gamma,
            "ss_seed": self.spec.seed,
            "ss_cache_latents": p.cache_latents,
            "ss_clip_skip": "None",
            "ss_caption_extension": p.caption_extension,
            "ss_dataset_dirs": json.dumps(self.dataset.folders(), ensure_ascii=False),
            "ss_tag_frequency": json.dumps(self.dataset.tag_frequency(), ensure_ascii=False),
            "ss_training_comment": p.training_comment,
            "ss_sd_scripts_commit_hash": "webui",
        }
        return {k: v if isinstance(v, str) else str(v) for k, v in meta.items()}  # as kohya
