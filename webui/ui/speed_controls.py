"""The "Speed" accordion of the generation tabs: token merging and the denoiser caches per job.

`add_speed_controls(named, prefix)` puts a closed "Speed" accordion under the sampler
parameters with the token merging ratio, the DeepCache interval and branch (UNets), and
the First Block Cache threshold and TaylorSeer interval (FLUX).
An empty field (a text field: Gradio's Number shows empty as "0") means the server's
option (Settings > Speed); a value goes with the job as
an override setting (`speed_overrides`), as an API request's `override_settings` would.
`speed_fill` sets them from an infotext (PNG Info, "send to"): a field the infotext lacks
empties its control (the switch was off, or the option's value made the image).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from .common import InputError

if TYPE_CHECKING:
    from .image_common import Named

# option -> (label, minimum, maximum, step, integer)
SPEED_OPTIONS: dict[str, tuple[str, float, float, float, bool]] = {
    "token_merging_ratio": ("Token merging ratio", 0.0, 0.9, 0.1, False),
    "deepcache_interval": ("DeepCache interval", 0, 10, 1, True),
    "deepcache_branch": ("DeepCache branch", 0, 11, 1, True),
    "first_block_cache_threshold": ("First Block Cache threshold", 0.0, 1.0, 0.01, False),
    "taylorseer_interval": ("TaylorSeer interval", 0, 10, 1, True),
}
# infotext field -> option (webui.core.speed writes them)
INFOTEXT_OPTIONS: dict[str, str] = {
    "Token merging ratio": "token_merging_ratio",
    "DeepCache": "deepcache_interval",
    "DeepCache branch": "deepcache_branch",
    "First Block Cache": "first_block_cache_threshold",
    "TaylorSeer": "taylorseer_interval",
}
_NOTE = (
    "Empty: the value from Settings > Speed. Token merging merges similar image tokens "
    "in attention; DeepCache computes the whole UNet only every N steps and its outer "
    "layers in between (branch 0: fastest). FLUX models: First Block Cache skips the "
    "other transformer blocks while the first block's output barely changes; TaylorSeer "
    "computes attention every N steps and predicts it in between. All change the image "
    "slightly; the infotext records them. CFG scale 1 also halves the work (no negative "
    "prompt pass)."
)


def add_speed_controls(named: Named, prefix: str) -> None:
    with gr.Accordion("Speed", open=False, elem_id=f"{prefix}_speed"):
        gr.Markdown(_NOTE)
        with gr.Row():
            for name, (label, *_) in SPEED_OPTIONS.items():
                # a text field: Gradio's Number shows an empty value as "0", which reads as off
                named.add(name, gr.Textbox(label=label, value="", placeholder="Settings",
                                           max_lines=1, elem_id=f"{prefix}_{name}"))  # fmt: skip


def speed_overrides(v: dict[str, Any]) -> dict[str, Any]:
    """Override settings from the controls' values (empty: the server's option)."""
    overrides: dict[str, Any] = {}
    for name, (label, low, high, _, integer) in SPEED_OPTIONS.items():
        value = v.get(name)
        value = value.strip() if isinstance(value, str) else value
        if value in (None, ""):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{label}: expected a number, got {value!r}") from None
        if not low <= number <= high or (integer and not number.is_integer()):
            kind = "a whole number" if integer else "a number"
            raise InputError(f"{label}: expected {kind} from {low:g} to {high:g}, got {value}")
        overrides[name] = int(number) if integer else number
    return overrides


def speed_fill(fields: dict[str, Any], controls: dict[str, Any]) -> dict[Any, Any]:
    """component -> text from an infotext's Speed fields ("" where it has none)."""
    out: dict[Any, Any] = {}
    for key, name in INFOTEXT_OPTIONS.items():
        component = controls.get(SPEED_OPTIONS[name][0])
        if component is None:
            continue
        try:
            out[component] = f"{float(fields[key]):g}" if key in fields else ""
        except (TypeError, ValueError):
            out[component] = ""
    return out
