"""The Image Browser tab: every picture of the output folders, searchable, with a map.

Filters (prompt words, model, sampler, seed, size, date range, favourites), a sorted
gallery paged by keyset cursor (`ImageBrowser.search`: as fast at image 100,000 as at the
first), the selected image with its infotext, favourite, delete (to the trash folder in
the data folder), and the send-to buttons of PNG Info (`paste.send_to_buttons`: txt2img,
img2img, inpaint, by elem_id `browser_*`) plus "Send to Upscale" (`connect_browser_upscale`,
called by `blocks.build_ui`). Opening the tab scans the folders for new files.

The similarity map: "Compute embeddings" queues the embed_images job for a CLIP vision
model of models/clip_vision; "Show map" draws every embedded image on the diffusion map
(`ui/browser_map.py`), coloured by cluster; a click on the picture (or the Cluster list)
shows that cluster's images in the gallery.

The gallery shows thumbnails made here (Pillow), so files outside the working folder are
served without widening Gradio's allowed paths. This module must never import torch or
diffusers.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import gradio as gr
from PIL import Image

from ..core.image_index import Filters
from ..errors import UserError
from .browser_map import draw_map, nearest, place
from .common import InputError, owner_of
from .paste import TARGETS, send_to_buttons

if TYPE_CHECKING:
    from ..context import AppContext
    from ..services.image_browser import ImageBrowser

SORTS = {"Date": "date", "Name": "name", "Seed": "seed", "Size": "size"}
ORDERS = ("Descending", "Ascending")
THUMB = 256
ANY = ""


@dataclass
class Pager:
    """One search: its filters and where each page starts (keyset cursors)."""

    filters: Filters = field(default_factory=Filters)
    sort: str = "date"
    descending: bool = True
    limit: int = 48
    starts: list[Any] = field(default_factory=lambda: [None])
    next: Any = None
    ids: list[int] = field(default_factory=list)


@dataclass
class BrowserTab:
    image: Any  # the selected image (sent to img2img / inpaint / Upscale)
    upscale: Any  # the "Send to Upscale" button


def parse_filters(words, model, sampler, seed, size, since, until, favourites, ids=None) -> Filters:
    """The filter controls as `Filters`; InputError names the control that is wrong."""
    seed_value = None
    if str(seed or "").strip():
        try:
            seed_value = int(str(seed).strip())
        except ValueError:
            raise InputError(f"Seed: a whole number, not {seed!r}") from None
    width = height = None
    if str(size or "").strip():
        try:
            width, height = (int(v) for v in str(size).lower().replace(" ", "").split("x"))
        except ValueError:
            raise InputError(f"Size: width x height like 512x768, not {size!r}") from None
    return Filters(str(words or ""), model or ANY, sampler or ANY, seed_value, width, height,
                   _date(since, "From date"), _date(until, "To date", end=True),
                   bool(favourites), ids)  # fmt: skip


def _date(text, label: str, end: bool = False) -> float | None:
    if not str(text or "").strip():
        return None
    try:
        day = datetime.strptime(str(text).strip(), "%Y-%m-%d")
    except ValueError:
        raise InputError(f"{label}: a date like 2024-05-31, not {text!r}") from None
    return (day + timedelta(days=1 if end else 0)).timestamp()


def thumbnail(path: str) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.thumbnail((THUMB, THUMB))
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError):
        return Image.new("RGB", (THUMB, THUMB), "#888")  # gone or damaged since the scan


def show_page(browser: ImageBrowser, pager: Pager) -> tuple[list, str]:
    """The gallery items of the pager's current page and the line under it."""
    page = browser.search(pager.filters, pager.sort, pager.descending, pager.limit,
                          pager.starts[-1])  # fmt: skip
    pager.next, pager.ids = page.next_cursor, [i.id for i in page.images]
    items = [(thumbnail(i.path), (i.prompt or "")[:80]) for i in page.images]
    first = (len(pager.starts) - 1) * pager.limit
    shown = f"{first + 1}-{first + len(items)}" if items else "0"
    return items, f"Images {shown} of {page.total}"


def details(browser: ImageBrowser, image_id: int | None) -> tuple[Any, str, str, str]:
    """(picture, infotext HTML, raw infotext, favourite button label) of one image."""
    if image_id is None:
        return None, "", "", "Add to favourites"
    try:
        image = browser.get(image_id)
    except UserError as exc:
        raise InputError(str(exc)) from None
    try:
        with Image.open(image.path) as opened:
            opened.load()
            picture = opened.copy()
    except OSError:
        raise InputError(f"The file is gone: {image.path}") from None
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(image.mtime))
    text = (f'<p class="browser-file">{html.escape(image.path)} · {image.width}x{image.height}'
            f" · {when}</p>"
            f'<pre class="infotext" aria-label="Generation parameters">'
            f"{html.escape(image.infotext or 'No generation parameters in this image.')}</pre>")  # fmt: skip
    label = "Remove from favourites" if image.favourite else "Add to favourites"
    return picture, text, image.infotext, label


def build_browser_tab(ctx: AppContext, tab) -> BrowserTab:
    browser = ctx.browser
    assert browser is not None, "build_context makes the image browser"
    with gr.Row():
        words = gr.Textbox(label="Prompt words", scale=3, elem_id="browser_words",
                           placeholder="cat sofa* (every word; * ends a prefix)")  # fmt: skip
        model = gr.Dropdown(label="Model", choices=[ANY], value=ANY, allow_custom_value=True)
        sampler = gr.Dropdown(label="Sampler", choices=[ANY], value=ANY, allow_custom_value=True)
        seed = gr.Textbox(label="Seed", placeholder="any", elem_id="browser_seed")
        size = gr.Textbox(label="Size", placeholder="512x768", elem_id="browser_size")
    with gr.Row():
        since = gr.Textbox(label="From date", placeholder="YYYY-MM-DD", elem_id="browser_since")
        until = gr.Textbox(label="To date", placeholder="YYYY-MM-DD", elem_id="browser_until")
        favourites = gr.Checkbox(label="Favourites only", elem_id="browser_favourites")
        sort = gr.Dropdown(label="Sort by", choices=list(SORTS), value="Date")
        order = gr.Radio(label="Order", choices=list(ORDERS), value=ORDERS[0])
        limit = gr.Number(label="Per page", value=48, minimum=1, maximum=500, precision=0)
    with gr.Row():
        search = gr.Button("Search", variant="primary", elem_id="browser_search")
        rescan = gr.Button("Rescan folders", elem_id="browser_rescan")
        status = gr.Markdown("", elem_id="browser_status")
    with gr.Row():
        with gr.Column(scale=3):
            gallery = gr.Gallery(label="Images", columns=6, allow_preview=False, height="auto",
                                 elem_id="browser_gallery")  # fmt: skip
            with gr.Row():
                previous = gr.Button("Previous page", size="sm", elem_id="browser_previous")
                following = gr.Button("Next page", size="sm", elem_id="browser_next")
                page_line = gr.Markdown("", elem_id="browser_page")
        with gr.Column(scale=2):
            picture = gr.Image(label="Selected image", type="pil", interactive=False, height=360,
                               elem_id="browser_image_source")  # fmt: skip
            shown = gr.HTML("", elem_id="browser_details")
            raw = gr.Textbox(visible=False, elem_id="browser_infotext_source")
            with gr.Row():
                like = gr.Button("Add to favourites", size="sm", elem_id="browser_favourite")
                delete = gr.Button("Delete (to trash)", size="sm", variant="stop",
                                   elem_id="browser_delete")  # fmt: skip
            send_to_buttons("browser", raw, TARGETS)
            upscale = gr.Button("Send to Upscale", size="sm", elem_id="browser_send_to_extras")
    with gr.Accordion("Similarity map", open=False, elem_id="browser_map_section"):
        with gr.Row():
            clip = gr.Dropdown(label="CLIP vision model", choices=browser.clip_models(),
                               elem_id="browser_clip_model")  # fmt: skip
            count = gr.Number(label="Clusters (0: automatic)", value=0, minimum=0, maximum=50,
                              precision=0)  # fmt: skip
            embed = gr.Button("Compute embeddings", elem_id="browser_embed")
            draw = gr.Button("Show map", elem_id="browser_show_map")
        map_status = gr.Markdown("", elem_id="browser_map_status")
        with gr.Row():
            chart = gr.Image(label="Map: click a cluster", type="pil", interactive=False,
                             elem_id="browser_map", scale=3)  # fmt: skip
            with gr.Column(scale=1):
                cluster = gr.Dropdown(label="Cluster", choices=[], elem_id="browser_cluster")
                everything = gr.Button("All images", size="sm", elem_id="browser_all")
    pager, selected, placed, members = gr.State(Pager()), gr.State(None), gr.State([]), gr.State({})
    controls = [words, model, sampler, seed, size, since, until, favourites, sort, order, limit]
    page_out = [gallery, page_line, pager, selected, picture, shown, raw, like]

    def new_search(*values, ids=None):
        *filters, sort_by, order_by, per_page = values
        p = Pager(parse_filters(*filters, ids=ids), SORTS.get(sort_by, "date"),
                  order_by != ORDERS[1], int(per_page or 48))  # fmt: skip
        items, line = show_page(browser, p)
        return [items, line, p, None, *details(browser, None)]

    def run_search(*values):
        return new_search(*values)

    def turn(p: Pager, forward: bool):
        if forward and p.next is None:
            raise InputError("This is the last page")
        if not forward and len(p.starts) == 1:
            raise InputError("This is the first page")
        p.starts = [*p.starts, p.next] if forward else p.starts[:-1]
        items, line = show_page(browser, p)
        return [items, line, p, None, *details(browser, None)]

    def scan_and_list(*values):
        found = browser.scan()
        note = (f"{found.added} new, {found.updated} changed, {found.removed} gone"
                + (f", {len(found.failed)} unreadable" if found.failed else ""))  # fmt: skip
        lists = [gr.Dropdown(choices=[ANY, *browser.index.values(c)]) for c in ("model", "sampler")]
        return [*new_search(*values), note, *lists, gr.Dropdown(choices=browser.clip_models())]

    def choose(p: Pager, evt: gr.SelectData):
        index = evt.index if isinstance(evt.index, int) else 0
        image_id = p.ids[index] if 0 <= index < len(p.ids) else None
        return [image_id, *details(browser, image_id)]

    def toggle(image_id):
        if image_id is None:
            raise InputError("Select an image first")
        image = browser.get(image_id)
        browser.set_favourite(image_id, not image.favourite)
        return "Remove from favourites" if not image.favourite else "Add to favourites"

    def trash(image_id, p: Pager):
        if image_id is None:
            raise InputError("Select an image first")
        moved = browser.trash(image_id)
        items, line = show_page(browser, p)
        return [items, line, p, None, *details(browser, None), f"Moved to {moved}"]

    def queue_embeddings(name, request: gr.Request):
        if not name:
            raise InputError("Choose a CLIP vision model (put one in models/clip_vision)")
        try:
            job = browser.submit_embeddings(name, owner_of(request))
        except UserError as exc:
            raise InputError(str(exc)) from None
        return f"Queued as job {job.id}: its progress shows in the queue; then Show map."

    def show_map(name, clusters_wanted):
        if not name:
            raise InputError("Choose a CLIP vision model (put one in models/clip_vision)")
        try:
            made = browser.similarity_map(name, int(clusters_wanted) or None)
        except UserError as exc:
            raise InputError(str(exc)) from None
        dots = place(made.points)
        groups = {f"{c + 1} ({len(made.members(c))})": list(made.members(c))
                  for c in range(made.cluster_count)}  # fmt: skip
        line = f"{len(made.points)} images in {made.cluster_count} clusters"
        return draw_map(dots), dots, groups, gr.Dropdown(choices=list(groups), value=None), line

    def click(dots, groups, words, model, sampler, seed, size, since, until, favourites,
              sort_by, order_by, per_page, evt: gr.SelectData):  # fmt: skip
        """A click on the map: the images of the cluster under it (Gradio hands the
        event only to a function without *args)."""
        values = (words, model, sampler, seed, size, since, until, favourites, sort_by,
                  order_by, per_page)  # fmt: skip
        hit = nearest(dots, *evt.index[:2]) if isinstance(evt.index, list | tuple) else None
        if hit is None:
            raise InputError("Show the map first")
        name = next(n for n in groups if n.startswith(f"{hit.cluster + 1} ("))
        return [*new_search(*values, ids=tuple(groups[name])), gr.Dropdown(value=name)]

    def pick(name, groups, *values):
        ids = tuple(groups[name]) if name in (groups or {}) else None
        return new_search(*values, ids=ids)

    quiet = {"show_progress": "hidden"}
    search.click(run_search, inputs=controls, outputs=page_out)
    words.submit(run_search, inputs=controls, outputs=page_out)
    scan_out = [*page_out, status, model, sampler, clip]
    rescan.click(scan_and_list, inputs=controls, outputs=scan_out)
    tab.select(scan_and_list, inputs=controls, outputs=scan_out, **quiet)
    previous.click(lambda p: turn(p, False), inputs=pager, outputs=page_out, **quiet)
    following.click(lambda p: turn(p, True), inputs=pager, outputs=page_out, **quiet)
    gallery.select(choose, inputs=pager, outputs=[selected, picture, shown, raw, like], **quiet)
    like.click(toggle, inputs=selected, outputs=like, **quiet)
    delete.click(trash, inputs=[selected, pager], outputs=[*page_out, status])
    embed.click(queue_embeddings, inputs=clip, outputs=map_status)
    draw.click(
        show_map, inputs=[clip, count], outputs=[chart, placed, members, cluster, map_status]
    )
    chart.select(click, inputs=[placed, members, *controls], outputs=[*page_out, cluster])
    cluster.input(pick, inputs=[cluster, members, *controls], outputs=page_out)
    everything.click(run_search, inputs=controls, outputs=page_out)
    return BrowserTab(picture, upscale)


def connect_browser_upscale(browser: BrowserTab, tabs, extras_image) -> None:
    """ "Send to Upscale": the selected picture into the Upscale tab's input, that tab open."""

    def send(picture):
        if picture is None:
            raise InputError("Select an image first")
        return picture, gr.Tabs(selected="extras")

    browser.upscale.click(send, inputs=browser.image, outputs=[extras_image, tabs],
                          show_progress="hidden")  # fmt: skip
