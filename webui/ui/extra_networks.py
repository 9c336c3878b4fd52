"""Prompt tools under a tab's prompt: styles and VAE pickers, and the Extra Networks cards.

The cards panel shows LoRAs, textual-inversion embeddings and checkpoints with their name
and the preview image lying beside the file. It stays responsive with thousands of
files: the folders are indexed once (at start-up, and by the refresh button), a search filters the index
in memory, and only one page of cards is rendered at a time ("Show more" adds the next;
thumbnails are made for the cards shown and cached). Clicking a LoRA or embedding card
adds its tag to the prompt, or removes it when it is there already (A1111's toggle);
clicking a checkpoint card selects that checkpoint.

This module must never import torch or diffusers: it reads the indexes through the
AppContext.
"""

from __future__ import annotations

import base64
import html
import io
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
from PIL import Image

from .icons import icon_button
from .styles_ui import build_style_editor

if TYPE_CHECKING:
    from ..context import AppContext

PAGE = 48
KINDS = {"LoRA": "lora", "Textual Inversion": "embedding", "Checkpoints": "checkpoint"}
THUMB_SIZE = (192, 192)
PREVIEW_SUFFIXES = (
    ".png",
    ".preview.png",
    ".jpg",
    ".jpeg",
    ".webp",
    ".preview.jpg",
    ".preview.webp",
)
CARDS_JS = """
element.addEventListener('click', (event) => {
  const card = event.target.closest('.extra-network-card');
  if (card) trigger('click', {kind: card.dataset.kind, name: card.dataset.name});
});
"""
CSS = """
.extra-network-cards { display: flex; flex-wrap: wrap; gap: .5em; max-height: 28em; overflow-y: auto; }
.extra-network-card { width: 9em; height: 11em; display: flex; flex-direction: column; padding: 0;
  border: 1px solid var(--border-color-primary); border-radius: 6px; overflow: hidden;
  background: var(--background-fill-secondary); cursor: pointer; text-align: center; }
.extra-network-card:hover { border-color: var(--color-accent); }
.extra-network-card img, .extra-network-card .card-noimage { width: 100%; height: 8.5em;
  object-fit: cover; display: flex; align-items: center; justify-content: center; font-size: 2em; }
.extra-network-card .card-name { font-size: .8em; padding: .2em; overflow: hidden;
  text-overflow: ellipsis; white-space: nowrap; }
.extra-network-count { width: 100%; font-size: .85em; opacity: .8; }
"""


@dataclass
class Card:
    kind: str  # lora, embedding, checkpoint
    name: str
    rel: str
    preview: Path | None
    value: str  # what a click inserts or selects
    checkpoint_path: Path | None = None  # its preview is looked for when the card is shown


@dataclass
class PromptTools:
    """What a tab needs from the prompt tools: the extra job inputs, and their params."""

    styles: gr.Dropdown
    vae: gr.Dropdown

    @property
    def inputs(self) -> list:
        return [self.styles, self.vae]

    @staticmethod
    def params(styles, vae) -> dict:
        return {"styles": tuple(styles or ()), "vae": vae or None}


class Thumbnails:
    """Small JPEG data URIs of preview images, made on first show and cached."""

    def __init__(self, limit: int = 4000):
        self._cache: OrderedDict[tuple, str] = OrderedDict()
        self._lock = threading.Lock()
        self.limit = limit

    def get(self, path: Path) -> str | None:
        try:
            key = (str(path), path.stat().st_mtime)
        except OSError:
            return None
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            with Image.open(path) as image:
                image.thumbnail(THUMB_SIZE)
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="JPEG", quality=80)
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        with self._lock:
            self._cache[key] = uri
            while len(self._cache) > self.limit:
                self._cache.popitem(last=False)
        return uri


def cards_of(ctx: AppContext, kind: str) -> list[Card]:
    networks = ctx.networks
    if kind == "checkpoint":
        return [Card(kind, i.name, i.rel, None, i.title, i.path) for i in ctx.models.checkpoints()]
    if networks is None:
        return []
    registry = networks.loras if kind == "lora" else networks.embeddings
    return [Card(kind, f.name, f.rel, f.preview, f.name) for f in registry.list()]


def _checkpoint_preview(path: Path) -> Path | None:
    stem = path.name.rsplit(".", 1)[0] if path.is_file() else path.name
    for suffix in PREVIEW_SUFFIXES:
        candidate = path.with_name(stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def search(cards: list[Card], query: str) -> list[Card]:
    words = (query or "").casefold().split()
    return [c for c in cards if all(w in c.rel.casefold() for w in words)]


def render_cards(cards: list[Card], limit: int, thumbs: Thumbnails) -> str:
    shown = cards[:limit]
    parts = ['<div class="extra-network-cards">']
    for card in shown:
        preview = card.preview or (
            _checkpoint_preview(card.checkpoint_path) if card.checkpoint_path else None
        )
        uri = thumbs.get(preview) if preview else None
        image = (f'<img src="{uri}" alt="">' if uri else
                 f'<div class="card-noimage">{html.escape(card.name[:1].upper())}</div>')  # fmt: skip
        parts.append(
            f'<button type="button" class="extra-network-card" data-kind="{card.kind}" '
            f'data-name="{html.escape(card.name, quote=True)}" '
            f'title="{html.escape(card.rel, quote=True)}" aria-label="{html.escape(card.name, quote=True)}">'
            f'{image}<span class="card-name">{html.escape(card.name)}</span></button>'
        )
    if not cards:
        parts.append(
            '<div class="extra-network-count">Nothing here: put files into the folder and press the refresh button.</div>'
        )
    else:
        parts.append(f'<div class="extra-network-count">Showing {len(shown)} of {len(cards)}</div>')
    parts.append("</div>")
    return "".join(parts)


def toggle_tag(prompt: str, kind: str, name: str, multiplier: float = 1.0) -> str:
    """Add a LoRA tag or embedding name to the prompt, or take it out when it is there."""
    prompt = prompt or ""
    if kind == "lora":
        pattern = re.compile(r"\s*<lora:" + re.escape(name) + r"(:[^>]*)?>", re.I)
        tag = f"<lora:{name}:{multiplier:g}>"
    else:
        pattern = re.compile(r"(?:,\s*|\s*)(?<![\w-])" + re.escape(name) + r"(?![\w-])")
        tag = name
    if pattern.search(prompt):
        return pattern.sub("", prompt, count=1).strip()
    return f"{prompt.rstrip()} {tag}".strip()


def job_warnings(result) -> str:
    """A finished job's warnings as toasts, and as HTML for the status line."""
    warnings = list(getattr(result, "warnings", None) or [])
    for warning in warnings:
        gr.Warning(warning)
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return f'<ul class="job-warnings" aria-label="Warnings">{items}</ul>'


def build_prompt_tools(ctx: AppContext, prompt, negative, checkpoint, tab: str) -> PromptTools:
    """Styles and VAE pickers, the style editor and the Extra Networks panel."""
    networks = ctx.networks
    style_names = networks.styles.names() if networks else []
    vae_choices = networks.vaes.choices() if networks else ["Automatic", "None"]
    wanted_vae = ctx.options.get("sd_vae")
    with gr.Row(elem_id=f"{tab}_prompt_tools"):
        styles = gr.Dropdown(label="Styles", choices=style_names, value=[], multiselect=True,
                             scale=3, elem_id=f"{tab}_styles")  # fmt: skip
        vae = gr.Dropdown(label="SD VAE", choices=vae_choices, scale=2, elem_id=f"{tab}_vae",
                          value=wanted_vae if wanted_vae in vae_choices else "Automatic")  # fmt: skip
        refresh = icon_button("refresh", elem_id=f"{tab}_refresh_networks")
    build_style_editor(ctx, prompt, negative, styles, tab)
    thumbs = Thumbnails()
    with gr.Accordion("Extra networks", open=False, elem_id=f"{tab}_extra_networks") as panel:
        with gr.Row():
            kind = gr.Radio(
                list(KINDS), value="LoRA", label="Kind", scale=2, elem_id=f"{tab}_extra_kind"
            )
            query = gr.Textbox(
                label="Search", placeholder="Search…", scale=3, elem_id=f"{tab}_extra_search"
            )
        cards = gr.HTML("", js_on_load=CARDS_JS, elem_id=f"{tab}_extra_cards", css_template=CSS)
        more = gr.Button("Show more", size="sm", elem_id=f"{tab}_extra_more")
    limit = gr.State(PAGE)

    def render(kind_label, text, count):
        found = search(cards_of(ctx, KINDS.get(kind_label, "lora")), text)
        return render_cards(found, count, thumbs), gr.Button(visible=len(found) > count)

    def first_page(kind_label, text):
        html_, button = render(kind_label, text, PAGE)
        return html_, button, PAGE

    def next_page(kind_label, text, count):
        count = int(count or PAGE) + PAGE
        html_, button = render(kind_label, text, count)
        return html_, button, count

    def rescan(kind_label, text, chosen_vae):
        ctx.models.refresh()
        if networks is not None:
            networks.loras.refresh()
            networks.embeddings.refresh()
            networks.vaes.refresh()
        choices = networks.vaes.choices() if networks else ["Automatic", "None"]
        names = networks.styles.names() if networks else []
        html_, button, count = first_page(kind_label, text)
        return (html_, button, count, gr.Dropdown(choices=choices, value=chosen_vae if chosen_vae in choices else "Automatic"),
                gr.Dropdown(choices=names))  # fmt: skip

    def clicked(current_prompt, current_checkpoint, evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        kind_, name = data.get("kind"), data.get("name")
        if not name:
            return gr.skip(), gr.skip()
        if kind_ == "checkpoint":
            found = next((c for c in cards_of(ctx, "checkpoint") if c.name == name), None)
            return gr.skip(), (found.value if found else current_checkpoint)
        return toggle_tag(current_prompt, kind_, name), gr.skip()

    page_outputs = [cards, more, limit]
    panel.expand(first_page, inputs=[kind, query], outputs=page_outputs, show_progress="hidden")
    kind.change(first_page, inputs=[kind, query], outputs=page_outputs, show_progress="hidden")
    query.change(first_page, inputs=[kind, query], outputs=page_outputs, show_progress="hidden",
                 trigger_mode="always_last")  # fmt: skip
    more.click(next_page, inputs=[kind, query, limit], outputs=page_outputs, show_progress="hidden")
    refresh.click(rescan, inputs=[kind, query, vae], outputs=[*page_outputs, vae, styles],
                  show_progress="hidden")  # fmt: skip
    cards.click(clicked, inputs=[prompt, checkpoint], outputs=[prompt, checkpoint],
                show_progress="hidden")  # fmt: skip
    return PromptTools(styles, vae)
