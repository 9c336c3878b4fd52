"""The Models tab: every model file with filters and search, its details, and downloads.

A table lists one page of the catalog (`ctx.model_files.catalog`, SQLite: a page opens
no model file, with 10,000 LoRAs as with ten), filtered by kind and family and searched
by name, trigger words, notes and hash. Selecting a row shows the model's preview,
safetensors metadata and Civitai info, and offers notes, rename, move, delete (to the
trash folder), hashing, a Civitai look-up and, for a FLUX.1 checkpoint, its variant
mark (Kontext, in its user metadata). The download box takes a URL (or a Hugging
Face repo and file) and shows progress with speed and ETA until the file is in place;
downloads are refused on a server reachable from other machines.

This module must never import torch or diffusers: it talks to the service in the context.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
from PIL import Image

from ..model_manager.catalog import CatalogError
from ..model_manager.fetch import DownloadError
from ..model_manager.sniff import KIND_LABELS
from ..services.models import DownloadAccessError, DownloadRequest, ModelsService
from .common import InputError

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

PAGE = 50
HEADERS = ["Kind", "File", "Family", "Size", "Date", "SHA256", "Trigger words"]
KIND_CHOICES = [("All", "")] + [(label, key) for key, label in KIND_LABELS.items()]
# a FLUX.1 checkpoint's variant mark (`model_manager.user_metadata`): Kontext's tensors are dev's
VARIANT_CHOICES = [("From the file name", ""), ("Kontext", "kontext")]
ACCESS_NOTE = ("Downloading models is disabled: the server is reachable from other machines. "
               "Start it with --enable-insecure-extension-access to allow it.")  # fmt: skip


def size_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def table_page(service: ModelsService, kind: str, family: str, search: str, page: int):
    """The table's rows for one page, the (kind, rel) of each row, and the page line."""
    service.catalog.ensure_fresh()
    total, rows = service.catalog.query(kind or None, family or None, search or "",
                                        page * PAGE, PAGE)  # fmt: skip
    data = [[KIND_LABELS.get(r.kind, r.kind), r.rel, r.family, size_text(r.size),
             dt.datetime.fromtimestamp(r.mtime).strftime("%Y-%m-%d %H:%M"),
             (r.sha256 or "")[:10], r.trigger] for r in rows]  # fmt: skip
    pages = max(1, -(-total // PAGE))
    line = f"{total} models · page {min(page + 1, pages)} of {pages}"
    return data, [(r.kind, r.rel) for r in rows], line


def details_markdown(info: dict) -> str:
    lines = [f"**{html.escape(info['rel'])}** · {KIND_LABELS.get(info['kind'], info['kind'])}"
             f" · {info['family'] or 'family unknown'} · {size_text(info['size'])}"]  # fmt: skip
    if info.get("sha256"):
        lines.append(f"SHA256: `{info['sha256']}`")
    if info.get("addnet"):
        lines.append(f"LoRA hash (addnet): `{info['addnet'][:12]}`")
    if info.get("trigger"):
        lines.append(f"Trigger words: {html.escape(info['trigger'])}")
    if info.get("base_model"):
        lines.append(f"Base model: {html.escape(info['base_model'])}")
    civitai = info.get("civitai")
    if civitai and civitai.get("found"):
        words = ", ".join(civitai.get("trained_words") or [])
        lines.append(f"Civitai: {html.escape(civitai['model'])} {html.escape(civitai['version'])}"
                     f" · {html.escape(civitai.get('base_model', ''))}"
                     + (f" · trigger words: {html.escape(words)}" if words else ""))  # fmt: skip
    elif civitai is not None:
        lines.append("Civitai does not know this file.")
    return "  \n".join(lines)


def progress_html(task: dict | None) -> str:
    if task is None:
        return ""
    done, total = task["done"], task["total"]
    percent = 100.0 * done / total if total else 0.0
    parts = [task["state"].capitalize()]
    if task["state"] in ("done", "failed", "cancelled"):
        percent = 100.0 if task["state"] == "done" else percent
        parts.append(task["message"])
    else:
        parts.append(size_text(done) + (f" of {size_text(total)}" if total else ""))
        if task["speed"]:
            parts.append(f"{size_text(task['speed'])}/s")
        if task["eta"] is not None:
            parts.append(f"ETA {int(task['eta']) // 60}:{int(task['eta']) % 60:02d}")
        if task["retries"]:
            parts.append(f"resumed {task['retries']}×")
    text = " · ".join(f"<span>{html.escape(p)}</span>" for p in parts if p)
    return (f'<div class="job-progress" role="progressbar" aria-valuenow="{percent:.0f}">'
            f'<div class="job-progress-fill" style="width:{percent:.1f}%"></div>'
            f'<span class="job-progress-text">{text}</span></div>')  # fmt: skip


def _thumbnail(path: str | None) -> Image.Image | None:
    if not path or not Path(path).is_file():
        return None
    try:
        with Image.open(path) as image:
            image.thumbnail((384, 384))
            return image.convert("RGB")
    except (OSError, ValueError):
        return None


def build_models_tab(ctx: AppContext, demo: gr.Blocks) -> None:
    service = getattr(ctx, "model_files", None)
    if service is None:
        gr.Markdown("The model catalog is not set up on this server.")
        return
    with gr.Row():
        kind = gr.Dropdown(KIND_CHOICES, value="", label="Kind", elem_id="models_kind")
        family = gr.Dropdown([("All", "")], value="", label="Family", elem_id="models_family")
        search = gr.Textbox(label="Search", placeholder="name, trigger words, notes, hash",
                            elem_id="models_search", scale=2)  # fmt: skip
        refresh = gr.Button("Refresh", elem_id="models_refresh", scale=0)
    with gr.Row():
        previous = gr.Button("Previous page", size="sm", scale=0, elem_id="models_previous")
        page_line = gr.Markdown("", elem_id="models_page")
        following = gr.Button("Next page", size="sm", scale=0, elem_id="models_next")
    table = gr.Dataframe(headers=HEADERS, interactive=False, wrap=True, elem_id="models_table")
    page, keys, chosen = gr.State(0), gr.State([]), gr.State(None)
    with gr.Row():
        preview = gr.Image(label="Preview", interactive=False, height=260, scale=1,
                           elem_id="models_preview")  # fmt: skip
        with gr.Column(scale=2):
            summary = gr.Markdown("Select a model in the table.", elem_id="models_summary")
            notes = gr.Textbox(label="Notes", lines=2, elem_id="models_notes")
            with gr.Row():
                save_notes = gr.Button("Save notes", size="sm", elem_id="models_save_notes")
                hash_button = gr.Button("Calculate hash", size="sm", elem_id="models_hash")
                civitai = gr.Button("Civitai info", size="sm", elem_id="models_civitai")
                delete = gr.Button("Delete", size="sm", variant="stop", elem_id="models_delete")
            with gr.Row():
                new_name = gr.Textbox(label="New name", elem_id="models_new_name")
                rename = gr.Button("Rename", size="sm", scale=0, elem_id="models_rename")
                folder = gr.Textbox(label="Move to folder", placeholder="subfolder; empty: top",
                                    elem_id="models_folder")  # fmt: skip
                move = gr.Button("Move", size="sm", scale=0, elem_id="models_move")
            with gr.Row():
                variant = gr.Dropdown(VARIANT_CHOICES, value="", label="FLUX.1 variant",
                                      elem_id="models_flux_variant", scale=2)  # fmt: skip
                save_variant = gr.Button("Save variant", size="sm", scale=0,
                                         elem_id="models_save_variant")  # fmt: skip
            status = gr.Markdown("", elem_id="models_status")
    with gr.Accordion("Metadata", open=False):
        metadata = gr.JSON(label="Safetensors metadata", elem_id="models_metadata")
    downloaded = download_box(service)
    listing = [table, keys, page_line]

    def show(kind_, family_, search_, page_):
        return table_page(service, kind_, family_, search_, page_)

    def filters_changed(kind_, family_, search_):
        families = service.catalog.families(kind_ or None)
        value = family_ if family_ in families else ""
        return (gr.Dropdown(choices=[("All", "")] + [(f, f) for f in families], value=value),
                0, *table_page(service, kind_, value, search_, 0))  # fmt: skip

    def turn(step: int):
        def go(kind_, family_, search_, page_):
            total = service.catalog.query(kind_ or None, family_ or None, search_ or "", 0, 1)[0]
            page_ = max(0, min(page_ + step, max(0, -(-total // PAGE) - 1)))
            return page_, *table_page(service, kind_, family_, search_, page_)

        return go

    def rescan(kind_, family_, search_):
        service.catalog.refresh()
        return filters_changed(kind_, family_, search_)  # new families show up too

    def select(keys_, evt: gr.SelectData):
        row = evt.index[0] if isinstance(evt.index, list | tuple) else evt.index
        if row is None or row >= len(keys_):
            return None, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), ""
        return show_model(tuple(keys_[row]))

    def show_model(key):
        try:
            info = service.catalog.details(*key)
        except CatalogError as exc:
            raise InputError(str(exc)) from None
        return (
            key,
            details_markdown(info),
            info["notes"],
            Path(info["rel"]).stem,
            _thumbnail(info["preview"]),
            info["metadata"],
            info.get("flux_variant", ""),
            "",
        )

    details = [chosen, summary, notes, new_name, preview, metadata, variant, status]
    filters = [kind, family, search]
    for control in (kind, family):
        control.input(filters_changed, filters, [family, page, *listing], show_progress="hidden")
    search.submit(filters_changed, filters, [family, page, *listing], show_progress="hidden")
    refresh.click(rescan, filters, [family, page, *listing])
    previous.click(turn(-1), [*filters, page], [page, *listing], show_progress="hidden")
    following.click(turn(1), [*filters, page], [page, *listing], show_progress="hidden")
    table.select(select, keys, details, show_progress="hidden", api_name="models_select")

    def act(name: str):
        def run(key, notes_, new_name_, folder_, kind_, family_, search_, page_, variant_=""):
            if not key:
                raise InputError("Select a model in the table first")
            kind_key, rel = key
            texts = {"notes": notes_, "new_name": new_name_, "folder": folder_, "variant": variant_}
            try:
                message, key = _action(service, name, kind_key, rel, texts)
            except (CatalogError, DownloadError) as exc:
                raise InputError(str(exc)) from None
            shown = show_model(key) if key else (None, "", "", "", None, None, "", "")
            return (*table_page(service, kind_, family_, search_, page_), *shown[:-1], message)

        return run

    inputs = [chosen, notes, new_name, folder, *filters, page, variant]
    for button, name in ((save_notes, "notes"), (hash_button, "hash"), (civitai, "civitai"),
                         (rename, "rename"), (move, "move"), (delete, "delete"),
                         (save_variant, "variant")):  # fmt: skip
        button.click(act(name), inputs, [*listing, *details], api_name=f"models_{name}")
    demo.load(show, [*filters, page], listing, show_progress="hidden")  # a fresh page
    downloaded.then(show, [*filters, page], listing, show_progress="hidden")


def _action(service: ModelsService, name: str, kind: str, rel: str,
            texts: dict[str, str]) -> tuple[str, tuple[str, str] | None]:  # fmt: skip
    """Run one details-panel button (`texts`: the panel's notes, new_name, folder and
    variant); returns the message and the model's key afterwards."""
    if name == "notes":
        service.catalog.set_notes(kind, rel, texts["notes"] or "")
        return "Notes saved.", (kind, rel)
    if name == "variant":
        service.catalog.set_flux_variant(kind, rel, texts["variant"] or "")
        return "FLUX.1 variant saved.", (kind, rel)
    if name == "hash":
        return f"SHA256 {service.catalog.ensure_hash(kind, rel)}", (kind, rel)
    if name == "civitai":
        info = service.civitai_info(kind, rel, refresh=True)
        found = info.get("found")
        return ("Civitai info fetched." if found else "Civitai does not know this file."), (
            kind, rel)  # fmt: skip
    if name == "rename":
        new_rel = service.rename(kind, rel, texts["new_name"])
        return f"Renamed to {new_rel}.", (kind, new_rel)
    if name == "move":
        new_rel = service.move(kind, rel, texts["folder"] or "")
        return f"Moved to {new_rel}.", (kind, new_rel)
    where = service.delete(kind, rel)
    return f"Moved to the trash: {where}", None


def download_box(service: ModelsService) -> gr.events.Dependency:
    """The download box; returns the Download click's event (the table follows it)."""
    locked = service.access_denied()
    with gr.Accordion("Download a model", open=True):
        if locked:
            gr.Markdown(ACCESS_NOTE, elem_id="models_download_locked")
        with gr.Row():
            url = gr.Textbox(label="URL or Hugging Face repo", scale=3, interactive=not locked,
                             placeholder="a Hugging Face or Civitai page or file URL, any direct URL, or owner/repo", elem_id="models_url")  # fmt: skip
            file = gr.Textbox(label="File in the repo", interactive=not locked,
                              placeholder="only with owner/repo", elem_id="models_file")  # fmt: skip
        with gr.Row():
            kind = gr.Dropdown([("Read from the file", "")] + KIND_CHOICES[1:], value="",
                               label="Kind", interactive=not locked, elem_id="models_dl_kind")  # fmt: skip
            folder = gr.Textbox(label="Subfolder", interactive=not locked,
                                elem_id="models_dl_folder")  # fmt: skip
            name = gr.Textbox(label="Save as", placeholder="the site's file name",
                              interactive=not locked, elem_id="models_dl_name")  # fmt: skip
            sha256 = gr.Textbox(label="Expected SHA256", placeholder="optional",
                                interactive=not locked, elem_id="models_dl_sha256")  # fmt: skip
        with gr.Row():
            start = gr.Button("Download", variant="primary", interactive=not locked,
                              elem_id="models_download")  # fmt: skip
            cancel = gr.Button("Cancel", interactive=not locked, elem_id="models_cancel")
        progress = gr.HTML("", elem_id="models_download_progress")
    task_id = gr.State(None)

    async def run(url_, file_, kind_, folder_, name_, sha256_):
        request = DownloadRequest(url_ or "", file_ or "", kind_ or "", folder_ or "",
                                  name_ or "", sha256_ or "")  # fmt: skip
        try:
            task = service.start_download(request)
        except (DownloadAccessError, CatalogError) as exc:
            raise InputError(str(exc)) from None
        while not task.finished:
            yield task.id, progress_html(task.as_dict())
            await asyncio.sleep(0.5)
        yield task.id, progress_html(task.as_dict())

    def stop(task_id_):
        task = service.task(task_id_) if task_id_ else None
        if task is not None:
            task.cancel.set()

    cancel.click(stop, task_id, None)
    return start.click(run, [url, file, kind, folder, name, sha256], [task_id, progress],
                       show_progress="hidden", api_name="models_download")  # fmt: skip
