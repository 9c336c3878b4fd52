"""Interrogation requests (a picture to a prompt) for the UI and the API alike.

`InterrogateService.submit(image, model, owner)` checks the model name, finds its files
(`webui.model_manager.interrogate_files`: models/interrogate, models/torch_deepdanbooru)
and queues an "interrogate" job; the worker thread runs it (it owns the memory). Model
names: "clip", "deepdanbooru" (as A1111's POST /sdapi/v1/interrogate), a WD14 tagger's
folder name, or "wd14": the tagger the option interrogate_wd14_model names (empty: the
first one). An unknown name or a missing file is a `RequestError` on "model" whose
message names the file and the folder it belongs in.

This module must never import torch, gradio or fastapi; it loads no model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.interrogate import InterrogateParams
from ..core.jobs import Job, JobQueue
from ..core.params import ParamError
from ..model_manager.interrogate_files import (
    CLIP,
    DEEPBOORU,
    MissingModelError,
    clip_files,
    deepbooru_files,
    tagger_files,
    tagger_names,
)
from ..options import Options
from .errors import RequestError

WD14 = "wd14"


class InterrogateService:
    """Names the interrogate models and queues interrogate jobs."""

    def __init__(self, jobs: JobQueue, models_dir: Path, options: Options):
        self.jobs, self.options = jobs, options
        self.interrogate_dir = Path(models_dir) / "interrogate"
        self.deepbooru_dir = Path(models_dir) / "torch_deepdanbooru"

    def models(self) -> list[str]:
        """Every name `submit` takes: clip, deepdanbooru, wd14 and the tagger folders."""
        return [CLIP, DEEPBOORU, WD14, *tagger_names(self.interrogate_dir)]

    def params(self, image: Any, model: str) -> InterrogateParams:
        """The job's params with its files found; raises RequestError."""
        try:
            params = self._resolved(image, str(model))
            return params.validated()
        except MissingModelError as exc:
            raise RequestError(("model",), str(exc)) from None
        except ParamError as exc:
            raise RequestError((exc.field,), exc.message) from None

    def submit(self, image: Any, model: str, owner: str) -> Job:
        """Queue the interrogation; raises RequestError, QueueFullError."""
        return self.jobs.submit("interrogate", self.params(image, model), owner=owner)

    def _resolved(self, image: Any, model: str) -> InterrogateParams:
        if model == CLIP:
            return InterrogateParams(image, model, clip=clip_files(self.interrogate_dir))
        if model == DEEPBOORU:
            return InterrogateParams(image, model, onnx=deepbooru_files(self.deepbooru_dir))
        taggers = tagger_names(self.interrogate_dir)
        if model == WD14:
            model = str(self.options.get("interrogate_wd14_model") or "")
            if not model and not taggers:
                raise MissingModelError(
                    f"no WD14 tagger: put a folder with model.onnx and selected_tags.csv "
                    f"into {self.interrogate_dir}"
                )
            model = model or taggers[0]
        elif model not in taggers:
            names = ", ".join([CLIP, DEEPBOORU, WD14, *taggers])
            raise RequestError(("model",), f"unknown model {model!r}; one of: {names}")
        return InterrogateParams(image, model, onnx=tagger_files(self.interrogate_dir, model))
