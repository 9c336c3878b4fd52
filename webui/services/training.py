"""The training service: a LoRA training request becomes a "train_lora" job on the queue.

The Train tab and `POST /webui/v1/train/lora` call `TrainingService.submit_lora`, which
checks what can be checked before the job waits in the queue: the fields
(`train_params.check_train_params`), the checkpoint, the dataset folder (empty, an image
that cannot be read, a batch larger than the images: `train_dataset.scan_dataset`), the
8-bit optimizer (bitsandbytes must be installed), the output name (an existing LoRA is
kept unless overwriting or resuming is asked for) and the state to resume from. Each
problem is a `RequestError` naming the field (422 in the API, a message in the UI). The
seed is fixed here (-1 becomes a random one) so a rerun after a restart trains the same.
The worker (`webui.core.train_lora`) does the training.

This module must never import torch or a front end; it runs in request threads.
"""

from __future__ import annotations

import importlib.util
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.jobs import Job, JobQueue
from ..core.train_dataset import DatasetError, check_batch, scan_dataset
from ..core.train_params import (
    KIND,
    LoraTrainJob,
    LoraTrainParams,
    TrainInputError,
    check_train_params,
)
from .errors import RequestError
from .protocols import Models
from .server_paths import request_folder

TRAINING_FOLDER = "training"  # in the data folder: states and samples


class TrainingService:
    def __init__(self, *, models: Models, jobs: JobQueue, lora_dir: Path, work_dir: Path,
                 data_dir: Path | None = None, server_folders: bool = True):  # fmt: skip
        self.models, self.jobs = models, jobs
        self.lora_dir, self.work_dir = Path(lora_dir), Path(work_dir)
        self.data_dir = Path(data_dir) if data_dir is not None else self.work_dir.parent
        self.server_folders = server_folders  # folders outside the data folder (server_paths)

    def submit_lora(self, params: LoraTrainParams, owner: str) -> Job:
        """Check and queue a LoRA training job; RequestError names the bad field."""
        try:
            check_train_params(params)
        except TrainInputError as exc:
            raise RequestError((exc.field,), exc.message) from None
        try:
            self.models.resolve(params.checkpoint)
        except LookupError as exc:
            raise RequestError(("checkpoint",), str(exc)) from None
        folder = request_folder(params.train_data_dir, "train_data_dir", self.data_dir,
                                self.server_folders)  # fmt: skip
        params = replace(params, train_data_dir=str(folder))  # the folder the check read
        try:
            dataset = scan_dataset(params.train_data_dir, params.caption_extension)
        except DatasetError as exc:
            raise RequestError(("train_data_dir",), str(exc)) from None
        try:
            check_batch(dataset, params.train_batch_size)
        except DatasetError as exc:
            raise RequestError(("train_batch_size",), str(exc)) from None
        eight_bit = params.optimizer_type == "AdamW8bit"
        if eight_bit and importlib.util.find_spec("bitsandbytes") is None:
            raise RequestError(("optimizer_type",), "AdamW8bit needs bitsandbytes, which is not "
                               "installed here (it needs a CUDA GPU); choose AdamW")  # fmt: skip
        if params.resume and not (self.state_folder(params.resume) / "state.json").is_file():
            raise RequestError(("resume",), f"no saved training state named {params.resume!r}")
        target = self.lora_dir / f"{params.output_name}.safetensors"
        if target.exists() and not params.overwrite and params.resume != params.output_name:
            raise RequestError(("output_name",), f"{target.name} already exists in the LoRA "
                               "folder; choose another name or allow overwriting")  # fmt: skip
        seed = params.seed if params.seed >= 0 else random.randrange(2**32)
        spec = LoraTrainJob(params, str(self.lora_dir), str(self.work_dir), seed)
        return self.jobs.submit(KIND, spec, owner=owner)

    def state_folder(self, name: str) -> Path:
        return self.work_dir / name / "state"

    def saved_states(self) -> list[str]:
        """The names training can resume from (newest first)."""
        if not self.work_dir.is_dir():
            return []
        found = [p for p in self.work_dir.iterdir() if (p / "state" / "state.json").is_file()]
        return [p.name for p in sorted(found, key=lambda p: -p.stat().st_mtime)]

    @classmethod
    def of(cls, ctx: Any) -> TrainingService:
        """The service over an `AppContext`'s models, queue and folders."""
        return cls(models=ctx.models, jobs=ctx.jobs, lora_dir=ctx.flags.lora_dir,
                   work_dir=ctx.flags.data_dir / TRAINING_FOLDER, data_dir=ctx.flags.data_dir,
                   server_folders=ctx.flags.server_folders_allowed)  # fmt: skip
