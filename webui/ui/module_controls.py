"""The generation tabs' "VAE / Text Encoder" control: Forge's module files for this job.

Like each tab's SD VAE and Clip skip it stands for an option (`forge_additional_modules`):
it shows the option's value when the page loads and when Settings or the quick-settings
bar change it (`quicksettings.TAB_MIRRORS`), and a job runs with what it shows, sent as
an override setting (`module_overrides`), as an API request's `override_settings` would.
Pasted or sent parameters with Forge's `Module 1: ae`, `Module 2: clip_l`, ... fields
choose those files here (`module_fill`, matched by file stem as Forge does); a module this
server lacks is a warning naming it, and an infotext without modules leaves the choice.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from ..core.infotext_modules import pasted_modules

if TYPE_CHECKING:
    from ..context import AppContext
    from .image_common import Named

LABEL = "VAE / Text Encoder"
OPTION = "forge_additional_modules"
NAME = "modules"  # the controls' `Named` name
_INFO = "Files a transformer-only FLUX.1, SD 3.5 or Z-Image checkpoint is completed with"


def add_module_control(named: Named, prefix: str) -> None:
    """The multiselect; its choices and value come when the page loads (the option's)."""
    named.add(NAME, gr.Dropdown(label=LABEL, choices=[], value=[], multiselect=True,
                                info=_INFO, elem_id=f"{prefix}_modules"))  # fmt: skip


def module_overrides(v: dict[str, Any]) -> dict[str, Any]:
    """The job's override setting: the modules the tab shows."""
    if NAME not in v:
        return {}
    return {OPTION: [str(name) for name in v[NAME] or []]}


def module_fill(ctx: AppContext, fields: dict, controls: dict[str, Any]) -> dict[Any, Any]:
    """{control: update} choosing the infotext's modules; {} without Module fields. The
    modules this server lacks: a warning naming them and where they go."""
    control = controls.get(LABEL)
    if control is None:
        return {}
    files = ctx.models.module_files
    names = files.names()
    pasted = pasted_modules(fields, names)
    if pasted is None:
        return {}
    if pasted.missing:
        missing, where = ", ".join(pasted.missing), " or ".join(map(str, files.folders))
        gr.Warning(f"VAE / Text Encoder: no module file {missing} here (add it to {where})")
    return {control: gr.Dropdown(choices=names, value=list(pasted.names))}
