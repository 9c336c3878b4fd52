"""The img2img tab's Interrogate buttons, under Generate as in A1111: "Interrogate CLIP",
"Interrogate DeepBooru" and "Interrogate WD14" (the tagger the Settings name, else the
first in models/interrogate). The answer replaces the prompt, as A1111 does.

Each click queues an "interrogate" job (`services.interrogate`; the worker owns the
models and the memory) and awaits its end without holding a thread. A missing model file
or an unknown tagger is a message in the page naming the file and its folder.

This module must never import torch or transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core import jobs as job_states
from ..core.events import wait_finished
from ..core.jobs import Job
from ..services.errors import RequestError
from ..services.interrogate import WD14, InterrogateService
from .common import InputError, owner_of
from .image_common import checked_image
from .job_stream import in_thread

if TYPE_CHECKING:
    from ..context import AppContext

BUTTONS = (
    ("clip", "Interrogate CLIP", "interrogate"),
    ("deepdanbooru", "Interrogate DeepBooru", "deepbooru"),
    (WD14, "Interrogate WD14", "wd14"),
)  # (model, label, elem_id tail)


def interrogate_buttons(prefix: str) -> dict[str, Any]:
    """The buttons, made where they stand (the column under Generate), by model name."""
    with gr.Row(elem_id=f"{prefix}_interrogate_row"):
        return {
            model: gr.Button(label, size="sm", elem_id=f"{prefix}_{tail}", min_width=60)
            for model, label, tail in BUTTONS
        }


def wire_interrogate(ctx: AppContext, buttons: dict[str, Any], image, prompt) -> None:
    """Each button: the picture in `image` to a prompt in `prompt`."""
    service = InterrogateService(ctx.jobs, ctx.flags.models_dir, ctx.options)

    def submit(request: gr.Request, picture: Any, model: str) -> Job:  # in a thread
        checked = checked_image(picture, "Image for img2img")
        if checked is None:
            raise InputError("Upload an image for img2img first (or paste or drop one)")
        try:
            return service.submit(checked.convert("RGB"), model, owner_of(request))
        except RequestError as exc:
            raise InputError(exc.message) from None

    for model, button in buttons.items():

        async def run(request: gr.Request, picture: Any, model: str = model) -> str:
            job = await in_thread(submit, request, picture, model)
            if not await wait_finished(ctx.jobs.events, job):
                raise InputError("The server stopped before the interrogation finished")
            if job.state == job_states.FAILED or job.result is None:
                raise InputError(f"Interrogate failed: {job.error or job.state}")
            return job.result.caption

        button.click(run, inputs=[image], outputs=[prompt], concurrency_limit=None,
                     show_progress="minimal")  # fmt: skip
