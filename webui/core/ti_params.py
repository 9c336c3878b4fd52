"""What textual-inversion jobs ask for: A1111's "Create embedding" and "Train" fields.

`CreateEmbeddingParams` (`name`, `init_text`, `num_vectors_per_token`, `overwrite_old`) and
`TrainEmbeddingParams` (A1111's `train_embedding` arguments: `embedding_name`,
`learn_rate`, `batch_size`, `gradient_step`, `data_root`, ...) carry the fields of the
Train tab and of `POST /sdapi/v1/create/embedding` and `/sdapi/v1/train/embedding`;
`check_create_params` and `check_train_embedding_params` refuse what is wrong without
reading a file (`TrainInputError` names the field). `LearnSchedule` reads A1111's
learning-rate schedules (`0.005:100, 1e-3:1000, 1e-5`: 0.005 until step 100, 1e-3 until
1000, then 1e-5), also used for the gradient clipping value. `CreateEmbeddingJob` and
`TrainEmbeddingJob` are the queue jobs' params (the user's fields and the server's
folders); `webui.core.ti_create` and `webui.core.ti_train` run them in the worker.
Prompt templates (`[name]`, `[filewords]`) ship in `ti_templates/`; a user's own go in
`<data>/textual_inversion_templates` (the same file name wins over the shipped one).

Standard library only: the services and the job store's codec import it. This module
must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

from . import samplers
from .train_params import TrainInputError

CREATE_KIND = "create_embedding"
TRAIN_KIND = "train_embedding"
NAME = re.compile(r"^[\w][\w .-]{0,99}$")  # A1111 keeps letters, digits and "._- " in a name
SHIPPED_TEMPLATES = Path(__file__).with_name("ti_templates")
USER_TEMPLATES = "textual_inversion_templates"  # in the data folder
CLIP_GRAD_MODES = ("disabled", "value", "norm")
LATENT_SAMPLING = ("once", "deterministic", "random")
MAX_SIZE = 2048
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".avif"}
SCHEDULE_HELP = ('a number or, for example, "0.005:100, 1e-3:1000, 1e-5" (0.005 until step '
                 "100, 1e-3 until step 1000, then 1e-5)")  # fmt: skip


@dataclass(frozen=True)
class CreateEmbeddingParams:
    name: str
    init_text: str = "*"
    num_vectors_per_token: int = 1
    overwrite_old: bool = False
    checkpoint: str = ""  # not A1111's: empty is the server's checkpoint


@dataclass(frozen=True)
class TrainEmbeddingParams:
    embedding_name: str
    learn_rate: str = "0.005"
    batch_size: int = 1
    gradient_step: int = 1
    data_root: str = ""
    log_directory: str = "textual_inversion"
    training_width: int = 512
    training_height: int = 512
    varsize: bool = False
    steps: int = 100000
    clip_grad_mode: str = "disabled"
    clip_grad_value: str = "0.1"
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    latent_sampling_method: str = "once"
    use_weight: bool = False
    create_image_every: int = 500
    save_embedding_every: int = 500
    template_filename: str = "style_filewords.txt"
    save_image_with_stored_embedding: bool = True
    preview_from_txt2img: bool = False
    preview_prompt: str = ""
    preview_negative_prompt: str = ""
    preview_steps: int = 20
    preview_sampler_name: str = "DPM++ 2M"
    preview_cfg_scale: float = 7.0
    preview_seed: int = -1
    preview_width: int = 512
    preview_height: int = 512
    checkpoint: str = ""  # not A1111's: empty is the server's checkpoint


@dataclass(frozen=True)
class CreateEmbeddingJob:
    params: CreateEmbeddingParams
    embeddings_dir: str

    @property
    def prompt(self) -> str:
        """What the queue panel lists for the job: the embedding's name."""
        return self.params.name


@dataclass(frozen=True)
class TrainEmbeddingJob:
    """A queued training job: the fields, the embedding's file, the template's lines, the
    log folder (absolute) and the fixed seed."""

    params: TrainEmbeddingParams
    embedding_path: str
    template_lines: tuple[str, ...]
    log_directory: str
    seed: int

    @property
    def prompt(self) -> str:
        return self.params.embedding_name


class LearnSchedule:
    """A1111's schedule: (rate, until step) pairs; `rate_at(step)` or None once past it."""

    def __init__(self, text: str, max_steps: int):
        self.pairs: list[tuple[float, int]] = []
        for part in str(text).split(","):
            if not part.strip():
                continue
            rate_text, _, until = part.partition(":")
            try:
                rate = float(rate_text)
                end = int(until) if until.strip() else -1
            except ValueError:
                raise ValueError(f"invalid schedule; give {SCHEDULE_HELP}") from None
            if not math.isfinite(rate) or rate < 0:
                raise ValueError(f"invalid rate {rate_text.strip()}; give {SCHEDULE_HELP}")
            if end == -1 or end >= max_steps:
                self.pairs.append((rate, max_steps))
                break
            self.pairs.append((rate, end))
        if not self.pairs:
            raise ValueError(f"empty; give {SCHEDULE_HELP}")

    def rate_at(self, step: int) -> float | None:
        for rate, end in self.pairs:
            if step < end:
                return rate
        return None


def check_create_params(p: CreateEmbeddingParams) -> None:
    """Raise TrainInputError for the first bad field (no file is read)."""
    _require(bool(NAME.match(p.name)) and not p.name.endswith("."), "name",
             "1-100 letters, digits, spaces, _ - . ; no slashes")  # fmt: skip
    _require(1 <= p.num_vectors_per_token <= 75, "num_vectors_per_token", "from 1 to 75")


def check_train_embedding_params(p: TrainEmbeddingParams) -> None:
    """Raise TrainInputError for the first bad field (no file is read)."""
    _require(bool(NAME.match(p.embedding_name)), "embedding_name", "choose an embedding")
    _require(1 <= p.steps <= 10_000_000, "steps", "a whole number of 1 or more")
    for name in ("learn_rate", "clip_grad_value"):
        if name == "clip_grad_value" and p.clip_grad_mode == "disabled":
            continue
        try:
            LearnSchedule(getattr(p, name), p.steps)
        except ValueError as exc:
            raise TrainInputError(name, str(exc)) from None
    _require(1 <= p.batch_size <= 256, "batch_size", "from 1 to 256")
    _require(1 <= p.gradient_step <= 1024, "gradient_step", "from 1 to 1024")
    _require(bool(p.data_root.strip()), "data_root", "give the folder of images")
    _require(bool(p.log_directory.strip()), "log_directory", "give a folder for the logs")
    for name in ("training_width", "training_height", "preview_width", "preview_height"):
        value = getattr(p, name)
        _require(64 <= value <= MAX_SIZE and value % 8 == 0, name,
                 f"a multiple of 8 from 64 to {MAX_SIZE}")  # fmt: skip
    _require(p.clip_grad_mode in CLIP_GRAD_MODES, "clip_grad_mode",
             f"one of {', '.join(CLIP_GRAD_MODES)}")  # fmt: skip
    _require(0 <= p.tag_drop_out <= 1, "tag_drop_out", "from 0 to 1")
    _require(p.latent_sampling_method in LATENT_SAMPLING, "latent_sampling_method",
             f"one of {', '.join(LATENT_SAMPLING)}")  # fmt: skip
    for name in ("create_image_every", "save_embedding_every"):
        _require(0 <= getattr(p, name) <= 10_000_000, name, "0 (never) or more")
    _require(1 <= p.preview_steps <= 150, "preview_steps", "from 1 to 150")
    try:
        samplers.resolve(p.preview_sampler_name, None)
    except ValueError as exc:
        raise TrainInputError("preview_sampler_name", str(exc)) from None
    _require(math.isfinite(p.preview_cfg_scale) and 0 <= p.preview_cfg_scale <= 100,
             "preview_cfg_scale", "from 0 to 100")  # fmt: skip
    _require(-1 <= p.preview_seed < 2**32, "preview_seed", "-1 (random) or from 0 to 4294967295")


def template_files(data_dir: Path | None) -> dict[str, Path]:
    """Prompt templates by file name: the shipped ones, then the user's folder's."""
    found = {p.name: p for p in sorted(SHIPPED_TEMPLATES.glob("*.txt"))}
    user = Path(data_dir) / USER_TEMPLATES if data_dir is not None else None
    if user is not None and user.is_dir():
        found.update({p.name: p for p in sorted(user.glob("*.txt")) if p.is_file()})
    return dict(sorted(found.items()))


def template_lines(path: Path) -> tuple[str, ...]:
    """The template's prompt lines (A1111: one per line, blank lines left out)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def dataset_images(root: Path) -> list[Path]:
    """The images directly in the dataset folder (A1111 reads no sub-folders); ValueError."""
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{root} has no images")
    return files


def _require(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise TrainInputError(field, message)


def create_field_names() -> list[str]:
    return [f.name for f in fields(CreateEmbeddingParams)]


def train_field_names() -> list[str]:
    return [f.name for f in fields(TrainEmbeddingParams)]
