"""The textual-inversion service: "Create embedding" and "Train" become jobs on the queue.

`TiService.submit_create` and `submit_train` check what can be checked before the job
waits in the queue: the fields (`ti_params`), the checkpoint, the embedding's name (a new
name must not be taken unless overwriting; a trained one must exist and be a
`.safetensors` file, the only kind training writes), the dataset folder (it exists and
has images; the batch fits), the prompt template (a shipped one or one in
`<data>/textual_inversion_templates`). Each problem is a `RequestError` naming A1111's
field (422 in the API, a message in the UI). The seed of a training run is fixed here so
a rerun after a restart trains the same. The worker (`core.ti_jobs`) does the work.

This module must never import torch or a front end; it runs in request threads.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..core.jobs import Job, JobQueue
from ..core.ti_params import (
    CREATE_KIND,
    TRAIN_KIND,
    CreateEmbeddingJob,
    CreateEmbeddingParams,
    TrainEmbeddingJob,
    TrainEmbeddingParams,
    check_create_params,
    check_train_embedding_params,
    dataset_images,
    template_files,
    template_lines,
)
from ..core.train_params import TrainInputError
from .errors import RequestError
from .protocols import Models
from .server_paths import request_folder


class TiService:
    def __init__(self, *, models: Models, jobs: JobQueue, embeddings, embeddings_dir: Path,
                 data_dir: Path, server_folders: bool = True):  # fmt: skip
        self.models, self.jobs, self.embeddings = models, jobs, embeddings
        self.embeddings_dir, self.data_dir = Path(embeddings_dir), Path(data_dir)
        self.server_folders = server_folders  # folders outside the data folder (server_paths)

    def submit_create(self, params: CreateEmbeddingParams, owner: str) -> Job:
        try:
            check_create_params(params)
        except TrainInputError as exc:
            raise RequestError((exc.field,), exc.message) from None
        self._checkpoint(params.checkpoint)
        existing = self.embedding_file(params.name)
        if existing is not None and not params.overwrite_old:
            raise RequestError(("name",), f"file {existing} already exists; choose another name "
                               "or allow overwriting the old embedding")  # fmt: skip
        spec = CreateEmbeddingJob(params, str(self.embeddings_dir))
        return self.jobs.submit(CREATE_KIND, spec, owner=owner)

    def submit_train(
        self, params: TrainEmbeddingParams, owner: str, job_id: str | None = None
    ) -> Job:
        try:
            check_train_embedding_params(params)
        except TrainInputError as exc:
            raise RequestError((exc.field,), exc.message) from None
        self._checkpoint(params.checkpoint)
        path = self.embedding_file(params.embedding_name)
        if path is None:
            raise RequestError(("embedding_name",), f"no embedding named {params.embedding_name!r}"
                               " in the embeddings folder; create it first")  # fmt: skip
        if path.suffix.lower() != ".safetensors":
            raise RequestError(("embedding_name",), f"{path.name} is not a .safetensors file; "
                               "training writes .safetensors only: create a new embedding")  # fmt: skip
        data_root = request_folder(params.data_root, "data_root", self.data_dir,
                                   self.server_folders)  # fmt: skip
        try:
            count = len(dataset_images(data_root))
        except ValueError as exc:
            raise RequestError(("data_root",), str(exc)) from None
        if count < params.batch_size * params.gradient_step:
            raise RequestError(("batch_size",), f"batch size {params.batch_size} x gradient "
                               f"accumulation {params.gradient_step} is more than the {count} "
                               "images")  # fmt: skip
        template = self.templates().get(params.template_filename)
        if template is None:
            raise RequestError(("template_filename",), "prompt template file not found: "
                               f"{params.template_filename}; one of {', '.join(self.templates())}")  # fmt: skip
        lines = template_lines(template)
        if not lines:
            raise RequestError(("template_filename",), f"{template.name} has no lines")
        log_dir = request_folder(params.log_directory, "log_directory", self.data_dir,
                                 self.server_folders)  # fmt: skip
        seed = random.randrange(2**32)
        params = replace(params, data_root=str(data_root))  # the folder the check read
        spec = TrainEmbeddingJob(params, str(path), lines, str(log_dir), seed)
        try:
            return self.jobs.submit(TRAIN_KIND, spec, owner=owner, job_id=job_id)
        except ValueError as exc:  # a bad or taken id (QueueFullError is not a ValueError)
            raise RequestError(("id_task",), str(exc)) from None

    def templates(self) -> dict[str, Path]:
        return template_files(self.data_dir)

    def embedding_names(self) -> list[str]:
        """Embeddings training can go on from (the .safetensors ones), by name."""
        files = self.embeddings.refresh() if self.embeddings is not None else []
        return sorted(f.name for f in files if f.path.suffix.lower() == ".safetensors")

    def embedding_file(self, name: str) -> Path | None:
        if self.embeddings is not None:
            for file in self.embeddings.refresh():
                if file.name == name:
                    return file.path
        found = sorted(self.embeddings_dir.glob(f"{name}.*"))
        return found[0] if found else None

    def _checkpoint(self, name: str) -> None:
        if not name:
            return
        try:
            self.models.resolve(name)
        except LookupError as exc:
            raise RequestError(("checkpoint",), str(exc)) from None

    @classmethod
    def of(cls, ctx: Any) -> TiService:
        """The service over an `AppContext`'s models, queue, embeddings and folders."""
        networks = getattr(ctx, "networks", None)
        return cls(models=ctx.models, jobs=ctx.jobs,
                   embeddings=getattr(networks, "embeddings", None),
                   embeddings_dir=ctx.flags.embeddings_dir, data_dir=ctx.flags.data_dir,
                   server_folders=ctx.flags.server_folders_allowed)  # fmt: skip
