"""Seconds per LoRA training step: ours (the "train_lora" job's trainer) against a bare
diffusers + peft loop with the same settings, in one run, on the bench's random SD 1.5.

    python -m webui.bench.train [--resolution 128] [--steps 4] [--rank 8]

Both train the UNet's attention layers (rank and alpha as given, no text encoder, no
LoCon) with AdamW at 1e-4, batch 1, float32 on the CPU (mixed precision on a GPU: ours
by its setting, the bare loop under the same autocast), on one random image whose
latent is cached. The first step of each is a warm-up and not counted; the result is the
median of the others. The checkpoint is `model.ensure_sd15_checkpoint`'s (made once).

This module must never download anything and never import a UI library.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

log = logging.getLogger(__name__)


def _dataset(folder: Path, resolution: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (np.random.default_rng(0).random((resolution, resolution, 3)) * 255).astype("uint8")
    Image.fromarray(pixels).save(folder / "image.png")
    (folder / "image.txt").write_text("a photo of a thing", encoding="utf-8")
    return folder


def ours(checkpoint: Path, work: Path, args) -> list[float]:
    from ..core.families import default_families
    from ..core.job import Job
    from ..core.train_lora import run_lora_training
    from ..core.train_params import LoraTrainJob, LoraTrainParams
    from ..model_manager.manager import ModelManager
    from ..model_manager.memory import plan_memory
    from ..model_manager.registry import CheckpointRegistry, HashCache

    families = default_families()
    registry = CheckpointRegistry(checkpoint.parent, HashCache(work / "hashes.json"))
    models = ModelManager(registry, plan_memory(use_cpu_all=not torch.cuda.is_available()),
                          families=families, hashing=False)  # fmt: skip
    params = LoraTrainParams(checkpoint=checkpoint.name, train_data_dir=str(work / "data"),
                             output_name="bench", resolution=args.resolution,
                             network_dim=args.rank, network_alpha=args.rank, unet_lr=1e-4,
                             text_encoder_lr=0, lr_scheduler="constant", max_train_epochs=0,
                             max_train_steps=args.steps, sample_steps=1, seed=1)  # fmt: skip
    job = Job(kind="train_lora", params=LoraTrainJob(params, str(work / "Lora"),
              str(work / "training"), 1), owner="bench", options={})  # fmt: skip
    stamps: list[float] = []
    job.progress.listeners.append(lambda p: stamps.append(time.perf_counter()))
    run_lora_training(job, models, families)
    # the first stamp is step 0 (before any step), the second ends the warm-up step
    return [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]


def bare(checkpoint: Path, args) -> list[float]:
    """The diffusers LoRA-script loop (train_text_to_image_lora.py) without accelerate."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from ..core.families import default_families
    from ..model_manager.loader import load_checkpoint

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_checkpoint(checkpoint, device, torch.float32, default_families()).pipe
    unet, vae = pipe.unet, pipe.vae
    for module in (unet, vae, pipe.text_encoder):
        module.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))  # fmt: skip
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    res = args.resolution
    pixels = torch.rand(1, 3, res, res, device=device) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mode() * vae.config.scaling_factor
        ids = pipe.tokenizer(["a photo of a thing"], padding="max_length", truncation=True,
                             max_length=77, return_tensors="pt").input_ids.to(device)  # fmt: skip
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        with torch.no_grad():
            hidden = pipe.text_encoder(ids)[0]
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (1,), device=device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        pred = unet(noisy, t, hidden).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return times[1:]


def main(argv: list[str] | None = None) -> int:
    from .model import ensure_sd15_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4, help="including one warm-up step")
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    checkpoint = ensure_sd15_checkpoint()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _dataset(work / "data", args.resolution)
        mine = ours(checkpoint, work, args)
    theirs = bare(checkpoint, args)
    result = {"resolution": args.resolution, "rank": args.rank, "steps": args.steps - 1,
              "ours_s_per_step": statistics.median(mine),
              "bare_s_per_step": statistics.median(theirs),
              "ours": mine, "bare": theirs}  # fmt: skip
    print(json.dumps(result, indent=1))  # noqa: T201 - the benchmark's output
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
