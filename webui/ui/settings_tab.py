"""The Settings tab: every persisted option in A1111's sections, with a search box.

The controls are filled from the stored options on every page load, never at build
time, and the page remembers what it showed (`shown_values`). Apply writes only the
options whose control the user changed from what the page showed (`changed_options`,
compared in the option's type), so a page left open never writes its stale values back
over a change made in another browser; afterwards every control shows what is stored.
Choices are picked from dropdowns (checkpoints, VAEs and languages are listed anew on
every load); the checkpoint shows the one the server uses when the option is empty.

With --freeze-settings nothing can be changed; while the server is reachable from other
machines, options that are file system paths cannot be changed (`Options.locked`). The
controls show it, and `apply_settings` refuses it whatever the browser sends.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..options import SECTIONS, shown_value
from ..services.errors import RequestError
from ..services.options import checked_options
from .common import InputError, checkpoint_choices

if TYPE_CHECKING:
    from ..context import AppContext
    from ..options import OptionDef

LOCKED_NOTE = "locked: the server is reachable from other machines"
CHECKPOINT = "sd_model_checkpoint"

# hides the settings whose label (as shown, so translated) and key do not hold the query,
# and the sections left without any; A1111 has the same box on top of its Settings tab
SEARCH_JS = """
(query) => {
  const words = String(query || "").toLowerCase().split(/\\s+/).filter(Boolean);
  for (const section of document.querySelectorAll(".settings-section")) {
    let shown = 0;
    for (const option of section.querySelectorAll(".settings-option")) {
      const text = (option.innerText + " " + option.id).toLowerCase();
      const match = words.every((word) => text.includes(word));
      option.style.display = match ? "" : "none";
      shown += match ? 1 : 0;
    }
    section.style.display = shown ? "" : "none";
  }
  return [];
}
"""


def shown_values(ctx: AppContext) -> dict[str, Any]:
    """What the tab shows for every option: the stored value in its type; for the
    checkpoint the title of the one jobs use (the first one when the option is empty)."""
    values = {}
    for key, definition in ctx.options.definitions.items():
        values[key] = shown_value(definition, definition.normalized(ctx.options.get(key)))
    if CHECKPOINT in values:
        values[CHECKPOINT] = checkpoint_choices(ctx)[1] or ""
    return values


def changed_options(
    definitions: Sequence[OptionDef], shown: Mapping[str, Any], values: Sequence[Any]
) -> dict[str, Any]:
    """The options whose control value differs from what the page showed, in their type."""
    changed = {}
    for definition, value in zip(definitions, values, strict=True):
        value = definition.normalized(value)
        if value != definition.normalized(shown.get(definition.key)):
            changed[definition.key] = value
    return changed


def apply_settings(ctx: AppContext, shown: Mapping[str, Any], values: Sequence[Any]) -> str:
    """The Apply button: validate, set and save what the user changed; gr.Error otherwise.

    All or nothing: frozen settings, a changed path option while locked, or any invalid
    value refuse the whole form, and nothing is changed then."""
    if not shown:  # the page has not loaded its values: it cannot tell what changed
        raise InputError("Not saved: reload the page and try again")
    pending = changed_options(list(ctx.options.definitions.values()), shown, values)
    return apply_changes(ctx, pending)


def apply_option(ctx: AppContext, key: str, value: Any) -> str:
    """One option changed outside the Settings tab (the quick-settings bar): the same
    checks, saving and messages as Apply."""
    definition = ctx.options.definitions[key]
    return apply_changes(ctx, {key: definition.normalized(value)})


def apply_changes(ctx: AppContext, pending: Mapping[str, Any]) -> str:
    """Check, set and save `pending` (key -> value in the option's type); InputError if
    anything is refused, and then nothing is changed."""
    options = ctx.options
    if pending and options.read_only:
        raise InputError("Not saved: settings are frozen (--freeze-settings)")
    locked = sorted(set(pending) & options.locked)
    if locked:
        raise InputError(f"Not saved: {', '.join(locked)} is a file system path ({LOCKED_NOTE})")
    if CHECKPOINT in pending and not pending[CHECKPOINT]:
        raise InputError("Not saved: choose a checkpoint")
    try:
        checked = checked_options(pending, options, ctx.models)
    except RequestError as exc:
        raise InputError(f"Invalid value, nothing saved: {exc}") from None
    changes = {k: v for k, v in checked.items() if v != options.get(k)}
    if not changes:
        return "No change."
    try:
        options.update(changes)
    except (PermissionError, ValueError) as exc:
        raise InputError(f"Invalid value, nothing saved: {exc}") from None
    options.save()
    if CHECKPOINT in changes:  # as A1111 does: the new default checkpoint is loaded now
        ctx.jobs.submit("load", changes[CHECKPOINT], owner="settings")
    return f"{len(changes)} settings changed: {', '.join(changes)}."


def control_updates(ctx: AppContext, shown: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A gr.update per control: its value, and for dropdowns the current choices (a stored
    value that is not among them is added, so the tab shows what is stored)."""
    return [control_update(ctx, key, shown[key]) for key in ctx.options.definitions]


def control_update(ctx: AppContext, key: str, value: Any) -> dict[str, Any]:
    """The gr.update that shows `value` in the control of option `key`."""
    definition = ctx.options.definitions[key]
    if definition.widget == "multiselect":
        choices = definition.choices_for(ctx)
        return gr.update(choices=[*choices, *(v for v in value if v not in choices)], value=value)
    if definition.widget != "dropdown":
        return gr.update(value=value)
    choices = definition.choices_for(ctx)
    if value and value not in choices:
        choices.append(value)
    return gr.update(choices=choices, value=value or None)


def option_control(
    ctx: AppContext, definition: OptionDef, *, elem_id: str | None = None
) -> gr.components.Component:
    """The widget `definition.widget` names; its value and choices come on page load."""
    options = ctx.options
    label = f"{definition.label} ({definition.key})"
    if definition.key in options.locked:
        label += f" ({LOCKED_NOTE})"
    common: dict[str, Any] = {
        "label": label,
        "interactive": not options.read_only and definition.key not in options.locked,
        "elem_id": elem_id or f"setting_{definition.key}",
        "elem_classes": ["settings-option"],
    }
    bounds = {"minimum": definition.minimum, "maximum": definition.maximum}
    widget = definition.widget
    if widget == "checkbox":
        return gr.Checkbox(**common)
    if widget == "dropdown":
        return gr.Dropdown(choices=[], value=None, allow_custom_value=False, **common)
    if widget == "multiselect":
        return gr.Dropdown(choices=[], value=[], multiselect=True, **common)
    if widget == "slider":
        return gr.Slider(step=definition.step, **bounds, **common)
    if widget == "number":
        precision = 0 if isinstance(definition.default, int) else None
        return gr.Number(precision=precision, **bounds, **common)
    return gr.Textbox(type="password" if definition.secret else "text", **common)


@dataclass
class SettingsTab:
    """What other parts of the page connect to: the option controls by key, the options
    the page showed (`shown`, a gr.State) and the Apply event (`saved`)."""

    controls: dict[str, gr.components.Component]
    shown: gr.State
    saved: Any  # the Apply button's event: `.success(...)` runs after a save


def build_settings_tab(ctx: AppContext, demo: gr.Blocks, picker: gr.Dropdown) -> SettingsTab:
    """The tab; `picker` is the checkpoint dropdown on top of the page, which follows a
    new default checkpoint applied here (jobs of this page run with what it shows); the
    rest of the quick-settings bar (`ui/quicksettings.py`) follows the other options."""
    options = ctx.options
    definitions = list(options.definitions.values())
    frozen = options.read_only
    with gr.Row():
        apply = gr.Button("Apply settings", variant="primary", interactive=not frozen, scale=0,
                          min_width=160, elem_id="settings_submit")  # fmt: skip
        search = gr.Textbox(placeholder="Search…", show_label=False, container=False,
                            elem_id="settings_search", scale=4)  # fmt: skip
    result = gr.Markdown(
        "Settings are frozen (--freeze-settings)." if frozen else "", elem_id="settings_result"
    )
    controls: dict[str, gr.components.Component] = {}
    for section, title in SECTIONS.items():
        members = [d for d in definitions if d.section == section]
        if not members:
            continue
        with gr.Group(elem_classes=["settings-section"], elem_id=f"settings_{section}"):
            gr.Markdown(f"### {title}", elem_classes=["settings-section-title"])
            for definition in members:
                controls[definition.key] = option_control(ctx, definition)
    for definition in definitions:  # an option of a section not in SECTIONS: shown last
        if definition.key not in controls:
            controls[definition.key] = option_control(ctx, definition)
    ordered = [controls[d.key] for d in definitions]
    shown = gr.State({})  # what this page showed: Apply writes only what differs from it

    def load():
        values = shown_values(ctx)
        return [values, *control_updates(ctx, values)]

    def save(shown_before: dict[str, Any], *values: Any):
        message = apply_settings(ctx, shown_before, values)
        now = load()
        changed = now[0].get(CHECKPOINT) != shown_before.get(CHECKPOINT)
        titles, title = checkpoint_choices(ctx)
        top = gr.update(choices=titles, value=title) if changed else gr.update()
        return [message, top, *now]

    demo.load(load, outputs=[shown, *ordered], show_progress="hidden")
    saved = apply.click(save, inputs=[shown, *ordered],
                        outputs=[result, picker, shown, *ordered],
                        api_name="apply_settings")  # fmt: skip
    search.change(None, inputs=search, js=SEARCH_JS)
    return SettingsTab(controls, shown, saved)
