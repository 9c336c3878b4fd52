"""Keyboard and mouse habits of A1111 users: the page side is `habits.js`.

Ctrl+Enter generates, Escape interrupts, Ctrl+Up/Down change the weight of the prompt's
selected words, a right-click on Generate offers "Generate forever", and a sound plays
when a job of this page ends (the `notification_*` options, off by default).

`habits_head` puts the script and its configuration into the page's <head> (the
generation tabs, the menu labels, and A1111's `notification.mp3` from the data folder
when there is one; else the page makes a short beep itself). `connect_habits` tells the
page when each Generate starts and ends (a browser-side step after each run event, so
that "Generate forever" submits through the normal queue, one job at a time, and stops
when a job is refused), and gives it the options on page load and after Settings' Apply.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

if TYPE_CHECKING:
    from ..context import AppContext
    from .generation_tab import GenerationTab
    from .settings_tab import SettingsTab

log = logging.getLogger(__name__)

SCRIPT = Path(__file__).with_name("habits.js")
TABS = ("txt2img", "img2img", "inpaint")
LABELS = {"forever": "Generate forever", "cancel": "Cancel generate forever"}
SOUND_FILE = "notification.mp3"  # A1111 plays it when it is in its folder
MAX_SOUND_BYTES = 1 << 20
PAGE_OPTIONS = ("keyedit_precision_attention", "keyedit_precision_extra", "notification_audio",
                "notification_min_seconds", "notification_volume")  # fmt: skip

HABITS_CSS = """
#habits_menu { position: absolute; z-index: 1000; display: flex; flex-direction: column;
  background: var(--background-fill-primary); border: 1px solid var(--border-color-primary);
  border-radius: 6px; box-shadow: 0 2px 8px rgba(0, 0, 0, .25); padding: .2em; }
#habits_menu button { text-align: left; padding: .35em .8em; border-radius: 4px; }
#habits_menu button:hover:not(:disabled) { background: var(--background-fill-secondary); }
#habits_menu button:disabled { opacity: .5; }
.generate-forever { outline: 3px dashed var(--color-accent); outline-offset: 2px; }
"""


def habit_labels() -> list[str]:
    """The strings the script shows (for the translation coverage check)."""
    return list(LABELS.values())


def sound_uri(data_dir: Path) -> str | None:
    """`notification.mp3` in the data folder as a data: URI; None without one (or when it
    is larger than 1 MB: the page beeps then)."""
    path = Path(data_dir) / SOUND_FILE
    try:
        if not path.is_file():
            return None
        if path.stat().st_size > MAX_SOUND_BYTES:
            log.warning("%s is larger than 1 MB; the page beeps instead", path)
            return None
        data = path.read_bytes()
    except OSError as exc:
        log.warning("cannot read %s (%s); the page beeps instead", path, exc)
        return None
    return "data:audio/mpeg;base64," + base64.b64encode(data).decode("ascii")


def habits_head(ctx: AppContext) -> str:
    """The <script> tags for the page's head."""
    config = {"tabs": list(TABS), "labels": LABELS, "sound": sound_uri(ctx.flags.data_dir)}
    data = json.dumps(config).replace("</", "<\\/")
    return f"<script>window.webuiHabits = {data};</script>\n<script>{SCRIPT.read_text()}</script>"


def page_options(ctx: AppContext) -> dict[str, Any]:
    """The options the script reads."""
    return {key: ctx.options.get(key) for key in PAGE_OPTIONS if key in ctx.options.definitions}


def started_js(tab: str) -> str:
    """The js of a tab's run event: tells the page's script that a Generate starts (the
    event's inputs pass through unchanged). A separate listener on the same click would
    run only after the run event has ended."""
    return f"(...args) => {{ window.webuiHabits?.started?.({json.dumps(tab)}); return args; }}"


def connect_habits(
    ctx: AppContext,
    demo: gr.Blocks,
    settings: SettingsTab,
    tabs: Mapping[str, GenerationTab],
) -> None:
    """The end of each tab's runs, and the options, to the page's script."""
    holder = gr.JSON(visible=False, elem_id="habits_options")
    give = "(values) => { window.webuiHabits.setOptions(values); }"
    demo.load(lambda: page_options(ctx), outputs=holder, show_progress="hidden").then(
        None, inputs=holder, js=give
    )
    settings.saved.success(lambda: page_options(ctx), outputs=holder, show_progress="hidden").then(
        None, inputs=holder, js=give
    )
    for name, tab in tabs.items():
        tab_js = json.dumps(name)
        for event in tab.runs:  # their start: `started_js`
            event.success(None, js=f"() => {{ window.webuiHabits.ended({tab_js}, true); }}")
            event.failure(None, js=f"() => {{ window.webuiHabits.ended({tab_js}, false); }}")
