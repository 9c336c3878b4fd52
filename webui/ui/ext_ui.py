"""Extensions in the UI: their sections and the Script list in a generation tab, their tabs.

`extension_inputs(ctx, tab)` renders, inside a generation tab, an accordion per always-on
extension with controls, and A1111's "Script" dropdown with one panel per script (shown
when chosen). `ExtensionInputs.request_fields(values)` turns the values (in `inputs`
order) into the script and extension args of a `GenerationRequest`, by name, which the
generation service checks exactly as it checks the API's. `build_extension_tabs(ctx)`
adds each extension's own tab; an extension whose tab fails to build is disabled and the
UI goes on.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..ext.api import Control, Extension, ExtensionContext

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

NO_SCRIPT = "None"


def control_component(control: Control, elem_id: str):
    """The Gradio component for a declared control."""
    common = {"label": control.label, "elem_id": elem_id, "info": control.info or None}
    if control.kind == "checkbox":
        return gr.Checkbox(value=bool(control.default), **common)
    if control.kind == "slider":
        return gr.Slider(minimum=control.minimum if control.minimum is not None else 0,
                         maximum=control.maximum if control.maximum is not None else 100,
                         step=control.step or 1, value=control.default, **common)  # fmt: skip
    if control.kind == "number":
        precision = 0 if isinstance(control.default, int) else None
        return gr.Number(value=control.default, minimum=control.minimum,
                         maximum=control.maximum, precision=precision, **common)  # fmt: skip
    if control.kind == "dropdown":
        return gr.Dropdown(choices=list(control.choices), value=control.default, **common)
    if control.kind == "radio":
        return gr.Radio(choices=list(control.choices), value=control.default, **common)
    return gr.Textbox(value=control.default or "", lines=control.lines, **common)


@dataclass
class ExtensionInputs:
    """The extension controls of one generation tab, and how to read them."""

    ctx: Any
    tab: str
    prefix: str = ""  # of the elem_ids
    script_choice: Any = None  # the Script dropdown, or None when there are no scripts
    sections: list[tuple[Extension, list[Any]]] = field(default_factory=list)
    scripts: list[tuple[Extension, list[Any]]] = field(default_factory=list)

    @property
    def inputs(self) -> list[Any]:
        out = [self.script_choice] if self.script_choice is not None else []
        for _, components in [*self.sections, *self.scripts]:
            out += components
        return out

    def request_fields(self, values) -> dict[str, Any]:
        """`script`, `script_args` and `alwayson` of a GenerationRequest, from the values
        of `inputs` (in order): the chosen script's args and every section's, by name."""
        host = getattr(self.ctx, "extensions", None)
        values = list(values)
        script = values.pop(0) if self.script_choice is not None else None
        alwayson: dict[str, Any] = {}
        script_args = None
        for ext, components in self.sections:
            args = dict(zip([c.name for c in ext.controls], values[: len(components)], strict=True))
            values = values[len(components) :]
            if host is not None and host.is_active(ext):  # one that failed since is left out
                alwayson[ext.name] = {"args": args}
        for ext, components in self.scripts:
            args = dict(zip([c.name for c in ext.controls], values[: len(components)], strict=True))
            values = values[len(components) :]
            if script == ext.display_title:
                script_args = args
        chosen = script if script and script != NO_SCRIPT else None
        return {"script": chosen, "script_args": script_args, "alwayson": alwayson}

    def request_args(self, values: dict[str, Any]) -> dict[str, Any]:
        """`request_fields` from the values of a `named` dict (see `extension_inputs`)."""
        return self.request_fields([values[f"extension_{i}"] for i in range(len(self.inputs))])


def extension_inputs(ctx: AppContext, tab: str, prefix: str | None = None,
                     named: Any = None) -> ExtensionInputs:  # fmt: skip
    """Render the tab's extension sections and Script list (nothing without extensions).

    `tab` chooses the extensions (txt2img or img2img; the Inpaint tab shows img2img's),
    `prefix` the elem_ids. With `named` (an image_common.Named), the components are added
    to it too, and `request_args(values_by_name)` reads them back."""
    found = ExtensionInputs(ctx, tab, prefix or tab)
    host = getattr(ctx, "extensions", None)
    if host is None:
        return found
    inputs = _rendered(found, host, tab)
    if named is not None:
        for i, component in enumerate(inputs):
            named.add(f"extension_{i}", component)
    return found


def _rendered(found: ExtensionInputs, host, tab: str) -> list[Any]:
    """Make the components; returns them in `inputs` order."""
    prefix = found.prefix
    for ext in host.sections(tab):
        with gr.Accordion(ext.section.title, open=ext.section.open, elem_id=f"{prefix}_{ext.name}"):
            components = _controls(host, ext, prefix)
        if components is not None:
            found.sections.append((ext, components))
    scripts = host.scripts(tab)
    if not scripts:
        return found.inputs
    titles = [e.display_title for e in scripts]
    found.script_choice = gr.Dropdown(label="Script", choices=[NO_SCRIPT, *titles],
                                      value=NO_SCRIPT, elem_id=f"{prefix}_script")  # fmt: skip
    panels = []
    for ext in scripts:
        with gr.Group(visible=False, elem_id=f"{prefix}_script_{ext.name}") as panel:
            components = _controls(host, ext, prefix)
        if components is None:  # left out of the list
            titles.remove(ext.display_title)
            found.script_choice.choices = [(t, t) for t in [NO_SCRIPT, *titles]]
            continue
        found.scripts.append((ext, components))
        panels.append(panel)

    def show(choice: str):
        return [gr.Group(visible=choice == title) for title in titles]

    found.script_choice.change(show, inputs=found.script_choice, outputs=panels,
                               show_progress="hidden")  # fmt: skip
    return found.inputs


def _controls(host, ext: Extension, tab: str) -> list[Any] | None:
    """The components of an extension's controls; None (and the extension disabled) when
    one cannot be made."""
    try:
        return [control_component(c, f"{tab}_{ext.name}_{c.name}") for c in ext.controls]
    except Exception as exc:  # a bad control must not take the UI down
        host.fail(ext, "section", exc)
        return None


@dataclass
class TabContext:
    """What an extension's tab builder gets: its context, and send-to buttons that fill a
    generation tab from an infotext (the same wiring as the PNG Info tab's buttons)."""

    extension: ExtensionContext
    prefix: str

    def send_to_buttons(self, infotext_source, targets=("txt2img", "img2img", "inpaint")) -> None:
        """Buttons "Send to <tab>" that fill that tab's controls from `infotext_source`
        (a Textbox or State holding an infotext). Wired once every tab exists."""
        from .paste import send_to_buttons

        send_to_buttons(self.prefix, infotext_source, targets)


def build_extension_tabs(ctx: AppContext) -> None:
    """One top-level tab per active extension that declares one."""
    host = getattr(ctx, "extensions", None)
    if host is None:
        return
    for ext in host.tabs():
        with gr.Tab(ext.tab.title, id=f"ext_{ext.name}"):
            ui = TabContext(host.context_for(ext), f"ext_{ext.name}")
            try:
                ext.tab.build(ui)
            except Exception as exc:  # a broken tab must not take the UI down
                host.fail(ext, "tab", exc)
                gr.Markdown(f"This extension failed and is disabled: {exc}")
