"""Prompt history: an example extension to copy when writing your own.

Shows every part of the extension API (webui.ext, docs/EXTENSIONS.md):
- `on_startup` reads the saved history from the extension's own data folder;
- a `Section` with one named control in the txt2img/img2img tabs ("record this job");
- `after_job` records each finished job's prompt, seed and infotext (per user);
- an extra tab lists your recent prompts, with search and "Send to txt2img/img2img";
- an API router under /ext/prompt_history: GET / lists your entries, DELETE / clears them.

Gradio and FastAPI are imported inside the functions that need them, so the job worker
never loads them for this extension.
"""

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from webui.ext import Control, Extension, ExtensionContext, Section, Tab

MAX_ENTRIES = 500


class History:
    """Recent prompts per owner, kept in a JSON file; safe to share between threads."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.entries: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def load(self, path: Path) -> None:
        self.path = path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = []
        with self.lock:
            self.entries = [e for e in data if isinstance(e, dict)][-MAX_ENTRIES:]

    def add(self, entry: dict[str, Any]) -> None:
        with self.lock:
            self.entries = [*self.entries, entry][-MAX_ENTRIES:]
            self._save()

    def of(self, owner: str, search: str = "") -> list[dict[str, Any]]:
        words = search.lower().split()
        with self.lock:
            mine = [e for e in self.entries if e.get("owner") == owner]
        found = [e for e in mine if all(w in e.get("prompt", "").lower() for w in words)]
        return list(reversed(found))

    def clear(self, owner: str) -> int:
        with self.lock:
            before = len(self.entries)
            self.entries = [e for e in self.entries if e.get("owner") != owner]
            self._save()
            return before - len(self.entries)

    def _save(self) -> None:
        if self.path is None:
            return
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.entries, fh, ensure_ascii=False)
        os.replace(tmp, self.path)


def setup() -> Extension:
    history = History()

    def on_startup(ctx: ExtensionContext) -> None:
        history.load(ctx.data_path("history.json"))
        ctx.log.info("prompt history: %d entries", len(history.entries))

    def after_job(job, result, args: dict) -> None:
        if not args["record"] or result is None or not result.images:
            return
        first = result.images[0]
        history.add({
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "owner": job.owner,
            "kind": job.kind,
            "prompt": result.params.prompt,
            "negative_prompt": result.params.negative_prompt,
            "seed": first.seed,
            "infotext": first.infotext,
        })  # fmt: skip

    def build_tab(ui) -> None:
        import gradio as gr

        from webui.ui.common import owner_of

        with gr.Row():
            search = gr.Textbox(label="Search prompts", scale=4, elem_id="prompt_history_search")
            refresh = gr.Button("🔄", scale=0, min_width=40, elem_id="prompt_history_refresh")
        table = gr.Dataframe(headers=["Time", "Prompt", "Negative prompt", "Seed"],
                             interactive=False, wrap=True, elem_id="prompt_history_table")  # fmt: skip
        chosen = gr.Textbox(label="Parameters of the chosen prompt", lines=4, interactive=False,
                            elem_id=f"{ui.prefix}_infotext_source")  # fmt: skip
        ui.send_to_buttons(chosen, targets=("txt2img", "img2img"))
        clear = gr.Button("Clear my history", variant="stop", elem_id="prompt_history_clear")
        rows = gr.State([])

        def show(text: str, request: gr.Request):
            entries = history.of(owner_of(request), text or "")
            table_rows = [
                [e["time"], e["prompt"], e["negative_prompt"], e["seed"]] for e in entries
            ]
            return table_rows, [e["infotext"] for e in entries]

        def pick(texts: list[str], evt: gr.SelectData):
            row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
            return texts[row] if isinstance(row, int) and 0 <= row < len(texts) else ""

        def clear_mine(request: gr.Request):
            history.clear(owner_of(request))
            return [], [], ""

        for event in (refresh.click, search.submit):
            event(show, inputs=search, outputs=[table, rows])
        table.select(pick, inputs=rows, outputs=chosen)
        clear.click(clear_mine, outputs=[table, rows, chosen])

    def router(ctx: ExtensionContext):
        from typing import Annotated

        from fastapi import APIRouter, Depends

        from webui.api.auth import api_user

        api = APIRouter(tags=["prompt history"])
        User = Annotated[str, Depends(api_user)]

        @api.get("/")
        def entries(user: User, search: str = "") -> list[dict[str, Any]]:
            """Your recorded prompts, newest first (API jobs belong to the API user)."""
            return history.of(user, search)

        @api.delete("/")
        def clear_entries(user: User) -> dict[str, int]:
            return {"removed": history.clear(user)}

        return api

    return Extension(
        name="prompt_history",
        title="Prompt history",
        version="1.0",
        description="Remembers the prompts of your finished jobs; search them and send them back.",
        section=Section(
            "Prompt history",
            (Control("record", "Save this job's prompt in the history", "checkbox", True),),
        ),  # fmt: skip
        tab=Tab("Prompt history", build_tab),
        router=router,
        on_startup=on_startup,
        after_job=after_job,
    )
