"""UI defaults for the generation tabs' controls: A1111's `ui-config.json` in the data folder.

Keys are "<tab>/<label>/value" ("txt2img/Sampling steps/value": 30; the tabs are txt2img,
img2img and inpaint). `apply_ui_defaults` reads the file once at start and makes each
valid value the initial value of its control; a bad value (wrong type, out of range, not
among the choices) or an unknown key is logged and skipped, an unreadable file is logged
and ignored: the UI always starts. Controls that stand for an option (checkpoint, SD VAE,
clip skip: the quick-settings bar sets them) are not part of it.

Settings > Defaults: "View changes" lists the controls whose value on this page differs
from its default, "Apply" writes them into ui-config.json (other keys in the file are
kept) for pages loaded after a restart, as A1111 applies them after "Reload UI".

This module must never import torch or diffusers.
"""

from __future__ import annotations

import html
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from .common import InputError
from .image_common import Named

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

FILE_NAME = "ui-config.json"
# options: the quick-settings bar sets them
SKIPPED = frozenset({"checkpoint", "vae", "clip_skip", "modules"})
KINDS = (gr.Slider, gr.Number, gr.Dropdown, gr.Radio, gr.Checkbox, gr.CheckboxGroup, gr.Textbox)


@dataclass
class UiDefaults:
    """The tabs' controls by ui-config key, and the default each starts with."""

    path: Path
    controls: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    saved: frozenset[str] = frozenset()  # the keys ui-config.json gave a value at start


def tab_controls(tabs: Mapping[str, Named]) -> dict[str, Any]:
    """Keys "<tab>/<label>/value" -> control, for the tabs' labelled input controls (the
    first control of a tab with that label)."""
    found: dict[str, Any] = {}
    for tab, named in tabs.items():
        for name, component in named.components.items():
            label = getattr(component, "label", None)
            if name in SKIPPED or not label or not isinstance(component, KINDS):
                continue
            found.setdefault(f"{tab}/{label}/value", component)
    return found


def read_ui_config(path: Path) -> dict[str, Any]:
    """The file's JSON object; {} (and a warning) when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); the UI uses its built-in defaults", path, exc)
        return {}
    if not isinstance(data, dict):
        log.warning("%s: expected a JSON object; the UI uses its built-in defaults", path)
        return {}
    return data


def valid_defaults(data: Mapping[str, Any], controls: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `data` for known controls with a value the control accepts; every
    other "/value" entry is logged and skipped (keys of other kinds are A1111's and kept)."""
    valid: dict[str, Any] = {}
    for key, value in data.items():
        if not key.endswith("/value"):
            continue
        control = controls.get(key)
        if control is None:
            log.info("%s: %r is no control of the generation tabs; skipped", FILE_NAME, key)
            continue
        try:
            valid[key] = checked_value(control, value)
        except ValueError as exc:
            log.warning("%s: %r: %s; skipped", FILE_NAME, key, exc)
    return valid


def checked_value(control: Any, value: Any) -> Any:
    """`value` as `control` takes it; ValueError says why it does not fit."""
    if isinstance(control, gr.Checkbox):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if isinstance(control, gr.Slider | gr.Number):
        return _number(control, value)
    if isinstance(control, gr.Dropdown | gr.Radio | gr.CheckboxGroup):
        return _choice(control, value)
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {value!r}")
    return value


def _number(control: Any, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    low, high = getattr(control, "minimum", None), getattr(control, "maximum", None)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"must be between {low} and {high}, got {value}")
    if getattr(control, "precision", None) == 0 and not float(value).is_integer():
        raise ValueError(f"expected a whole number, got {value}")
    return int(value) if float(value).is_integer() else value


def _choice(control: Any, value: Any) -> Any:
    choices = [c[1] if isinstance(c, list | tuple) else c for c in control.choices or []]
    many = isinstance(control, gr.CheckboxGroup) or getattr(control, "multiselect", False)
    wanted = value if many else [value]
    if many and not isinstance(value, list):
        raise ValueError(f"expected a list, got {value!r}")
    if getattr(control, "allow_custom_value", False):
        return value
    unknown = [v for v in wanted if v not in choices]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not one of the choices")
    return value


def apply_ui_defaults(ctx: AppContext, tabs: Mapping[str, Named]) -> UiDefaults:
    """Read ui-config.json and give the tabs' controls its valid values (at start)."""
    path = Path(ctx.flags.data_dir) / FILE_NAME
    controls = tab_controls(tabs)
    saved = valid_defaults(read_ui_config(path), controls)
    for key, value in saved.items():
        controls[key].value = value
    defaults = {key: shown_value(control, control.value) for key, control in controls.items()}
    return UiDefaults(path, controls, defaults, frozenset(saved))


def shown_value(control: Any, value: Any) -> Any:
    """A control's value as the page shows it: an empty text box is "" (Gradio keeps
    None), an empty list is [], and the choice an index stands for (type="index")."""
    if value is None and isinstance(control, gr.Textbox):
        return ""
    if value is None and isinstance(control, gr.CheckboxGroup | gr.Dropdown):
        many = isinstance(control, gr.CheckboxGroup) or getattr(control, "multiselect", False)
        return [] if many else None
    index = getattr(control, "type", None) == "index" and isinstance(value, int)
    if index and isinstance(control, gr.Radio | gr.Dropdown) and 0 <= value < len(control.choices):
        choice = control.choices[value]
        return choice[1] if isinstance(choice, list | tuple) else choice
    return value


def changes(defaults: UiDefaults, values: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """key -> (default, value on the page) for the controls that differ; values a control
    does not accept are left out."""
    out = {}
    for key, value in values.items():
        control = defaults.controls[key]
        try:
            value = checked_value(control, shown_value(control, value))
        except ValueError:
            continue
        if value != defaults.defaults.get(key):
            out[key] = (defaults.defaults.get(key), value)
    return out


def write_changes(defaults: UiDefaults, changed: Mapping[str, tuple[Any, Any]]) -> None:
    """Write the new values into the file atomically (its other keys kept; an unreadable
    file is kept as `ui-config.json.bad-<time>`)."""
    path = defaults.path
    data = read_ui_config(path)
    if not data and path.exists() and path.stat().st_size:
        path.replace(path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}"))
    data.update({key: new for key, (_, new) in changed.items()})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=4, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    defaults.defaults.update({key: new for key, (_, new) in changed.items()})


def changes_table(changed: Mapping[str, tuple[Any, Any]]) -> str:
    if not changed:
        return "<p>No changes.</p>"
    rows = "".join(
        f"<tr><td>{html.escape(key)}</td><td>{html.escape(json.dumps(old))}</td>"
        f"<td>{html.escape(json.dumps(new))}</td></tr>"
        for key, (old, new) in changed.items()
    )
    head = "<tr><th>Path</th><th>Old value</th><th>New value</th></tr>"
    return f'<table class="queue-table" id="ui_defaults_changes">{head}{rows}</table>'


def build_defaults_section(ctx: AppContext, defaults: UiDefaults) -> None:
    """Settings > Defaults: view the tabs' changed values and write them as defaults."""
    keys = list(defaults.controls)
    inputs = [defaults.controls[key] for key in keys]
    frozen = ctx.options.read_only
    with gr.Group(elem_classes=["settings-section"], elem_id="settings_defaults"):
        gr.Markdown("### Defaults", elem_classes=["settings-section-title"])
        gr.Markdown(
            "Set the generation tabs' controls as you want them, then Apply: new pages "
            f"show these values after a restart ({FILE_NAME} in the data folder)."
        )
        with gr.Row():
            view = gr.Button("View changes", scale=0, min_width=160, elem_id="ui_defaults_view")
            apply = gr.Button("Apply", variant="primary", scale=0, min_width=160,
                              interactive=not frozen, elem_id="ui_defaults_apply")  # fmt: skip
        shown = gr.HTML("", elem_id="ui_defaults_result")

    def view_changes(*values: Any) -> str:
        return changes_table(changes(defaults, dict(zip(keys, values, strict=True))))

    def apply_changes(*values: Any) -> str:
        if ctx.options.read_only:
            raise InputError("Not saved: settings are frozen (--freeze-settings)")
        changed = changes(defaults, dict(zip(keys, values, strict=True)))
        if not changed:
            return "<p>No changes.</p>"
        try:
            write_changes(defaults, changed)
        except OSError as exc:
            raise InputError(f"Could not write {FILE_NAME}: {exc}") from None
        message = f"{len(changed)} defaults written to {FILE_NAME}; they apply after a restart."
        return f"<p>{html.escape(message)}</p>{changes_table(changed)}"

    view.click(view_changes, inputs=inputs, outputs=shown, show_progress="hidden")
    apply.click(apply_changes, inputs=inputs, outputs=shown, show_progress="hidden")
