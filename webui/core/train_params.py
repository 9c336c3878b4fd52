"""What a LoRA training job asks for: kohya's `train_network.py` settings under its names.

`LoraTrainParams` carries the fields of the Train tab and of `POST /webui/v1/train/lora`
(kohya's argument names: `network_dim`, `unet_lr`, `train_batch_size`, ...);
`check_train_params` refuses what is wrong without touching a file (`TrainInputError`
names the field). `LoraTrainJob` is the params of a queue job of kind "train_lora": the
user's settings plus the folders the server chose (the LoRA folder, the training work
folder) and the fixed seed; `webui.core.train_lora` runs it in the worker.

Standard library only: the services and the job store's codec import it. This module
must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

KIND = "train_lora"
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "cosine",
    "cosine_with_restarts",
    "linear",
    "polynomial",
)  # diffusers.optimization names
OPTIMIZERS = ("AdamW", "AdamW8bit")
MIXED_PRECISION = ("no", "fp16", "bf16")  # on a GPU; the CPU always trains in float32
SAVE_PRECISION = ("fp16", "fp32", "bf16")
MAX_RESOLUTION = 2048
NAME = re.compile(r"^[\w][\w .()+-]{0,99}$")


class TrainInputError(ValueError):
    """A bad training field; `field` is its name (kohya's)."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class LoraTrainParams:
    checkpoint: str  # a checkpoint title or name in models/Stable-diffusion
    train_data_dir: str  # images with same-name captions; kohya's N_name subfolders
    output_name: str  # models/Lora/<output_name>.safetensors
    resolution: int = 512
    enable_bucket: bool = True
    network_dim: int = 8
    network_alpha: float = 8.0
    conv_dim: int = 0  # LoCon: 0 trains no 3x3 convolution
    conv_alpha: float = 1.0
    unet_lr: float = 1e-4
    text_encoder_lr: float = 5e-5  # 0: the text encoder is not trained
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 0
    lr_scheduler_num_cycles: int = 1
    lr_scheduler_power: float = 1.0
    optimizer_type: str = "AdamW"
    max_train_epochs: int = 10
    max_train_steps: int = 0  # 0: the epochs decide
    train_batch_size: int = 1
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = False
    mixed_precision: str = "fp16"
    save_precision: str = "fp16"
    caption_extension: str = ".txt"
    caption_dropout_rate: float = 0.0
    shuffle_caption: bool = False
    keep_tokens: int = 0
    noise_offset: float = 0.0
    min_snr_gamma: float = 0.0  # 0: no min-SNR weighting
    seed: int = -1
    cache_latents: bool = True
    save_every_n_epochs: int = 0  # 0: only at the end
    sample_every_n_steps: int = 0  # 0: no samples while training
    sample_prompts: str = ""  # one per line; empty: the first caption
    sample_steps: int = 20
    resume: str = ""  # a saved state's name (the output name it was saved under)
    overwrite: bool = False
    training_comment: str = ""


@dataclass(frozen=True)
class LoraTrainJob:
    """A queued training job: the settings, the seed fixed, and the server's folders."""

    params: LoraTrainParams
    lora_dir: str  # models/Lora
    work_dir: str  # <data>/training: saved states and sample images
    seed: int


def check_train_params(p: LoraTrainParams) -> None:
    """Raise TrainInputError for the first bad field (no file is read)."""
    _require(bool(p.checkpoint.strip()), "checkpoint", "choose a checkpoint to train on")
    _require(bool(p.train_data_dir.strip()), "train_data_dir", "give the folder of images")
    _require(
        bool(NAME.match(p.output_name)) and not p.output_name.endswith("."),
        "output_name",
        "1-100 letters, digits, spaces, _ - . ( ) +; no slashes",
    )
    _require(64 <= p.resolution <= MAX_RESOLUTION and p.resolution % 64 == 0, "resolution",
             f"a multiple of 64 from 64 to {MAX_RESOLUTION}")  # fmt: skip
    _require(1 <= p.network_dim <= 1024, "network_dim", "from 1 to 1024")
    _require(0 <= p.conv_dim <= 1024, "conv_dim", "from 0 (off) to 1024")
    for name in ("network_alpha", "conv_alpha", "unet_lr", "text_encoder_lr", "noise_offset",
                 "min_snr_gamma", "lr_scheduler_power"):  # fmt: skip
        value = getattr(p, name)
        _require(math.isfinite(value) and value >= 0, name, "a number of 0 or more")
    _require(p.unet_lr > 0 or p.text_encoder_lr > 0, "unet_lr",
             "the UNet and the text encoder learning rates cannot both be 0")  # fmt: skip
    _require(p.lr_scheduler in LR_SCHEDULERS, "lr_scheduler", f"one of {', '.join(LR_SCHEDULERS)}")
    _require(p.optimizer_type in OPTIMIZERS, "optimizer_type", f"one of {', '.join(OPTIMIZERS)}")
    _require(p.mixed_precision in MIXED_PRECISION, "mixed_precision",
             f"one of {', '.join(MIXED_PRECISION)}")  # fmt: skip
    _require(p.save_precision in SAVE_PRECISION, "save_precision",
             f"one of {', '.join(SAVE_PRECISION)}")  # fmt: skip
    for name, low in (("lr_warmup_steps", 0), ("lr_scheduler_num_cycles", 1),
                      ("max_train_epochs", 0), ("max_train_steps", 0), ("keep_tokens", 0),
                      ("save_every_n_epochs", 0), ("sample_every_n_steps", 0)):  # fmt: skip
        _require(low <= getattr(p, name) <= 10_000_000, name, f"a whole number of {low} or more")
    _require(p.max_train_epochs > 0 or p.max_train_steps > 0, "max_train_epochs",
             "give a number of epochs or max_train_steps")  # fmt: skip
    _require(1 <= p.train_batch_size <= 256, "train_batch_size", "from 1 to 256")
    _require(1 <= p.gradient_accumulation_steps <= 1024, "gradient_accumulation_steps",
             "from 1 to 1024")  # fmt: skip
    _require(0 <= p.caption_dropout_rate <= 1, "caption_dropout_rate", "from 0 to 1")
    _require(1 <= p.sample_steps <= 150, "sample_steps", "from 1 to 150")
    _require(p.caption_extension.startswith(".") and len(p.caption_extension) <= 16
             and "/" not in p.caption_extension, "caption_extension", 'like ".txt"')  # fmt: skip
    _require(not p.resume or bool(NAME.match(p.resume)), "resume", "the name of a saved state")
    _require(-1 <= p.seed < 2**32, "seed", "-1 (random) or from 0 to 4294967295")


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise TrainInputError(field, message)


def field_names() -> list[str]:
    return [f.name for f in fields(LoraTrainParams)]
