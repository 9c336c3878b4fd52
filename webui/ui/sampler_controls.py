"""Tiling and the sampler parameters of a generation tab (A1111's Tiling checkbox and
Settings > Sampler parameters, per job here).

`add_tiling(named, prefix)` puts the "Tiling" checkbox next to the batch controls;
`add_sampler_parameters(named, prefix)` a closed "Sampler parameters" accordion with Eta,
Sigma churn / tmin / tmax / noise and "Negative Guidance minimum sigma" (NGMS). An empty
field means the server's option (Settings > Sampler parameters), as an API request that
leaves the field out. `sampling_fields(v)` turns the values into params fields (the core
checks them: a value the sampler cannot honour is refused with a message naming it).
`PASTE_FIELDS` tells `webui.ui.paste` which infotext field fills which control; a field the
infotext lacks empties its control (the image was made with the option's value).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from .common import InputError

if TYPE_CHECKING:  # image_common imports paste, which imports this module
    from .image_common import Named

# params field -> (label, minimum, maximum, step)
SAMPLER_PARAMETERS: dict[str, tuple[str, float, float, float]] = {
    "eta": ("Eta", 0.0, 1.0, 0.01),
    "s_churn": ("Sigma churn", 0.0, 100.0, 0.01),
    "s_tmin": ("Sigma tmin", 0.0, 10.0, 0.01),
    "s_tmax": ("Sigma tmax", 0.0, 999.0, 0.01),
    "s_noise": ("Sigma noise", 0.0, 1.1, 0.001),
    "s_min_uncond": ("Negative Guidance minimum sigma", 0.0, 15.0, 0.01),
}
TILING = "Tiling"
RESTORE_FACES = "Restore faces"  # A1111's checkbox; its infotext field is "Face restoration"
# infotext field -> control label (both eta fields fill "Eta")
PASTE_FIELDS: dict[str, str] = {
    "Eta DDIM": "Eta", "Eta": "Eta", "Sigma churn": "Sigma churn", "Sigma tmin": "Sigma tmin",
    "Sigma tmax": "Sigma tmax", "Sigma noise": "Sigma noise",
    "NGMS": "Negative Guidance minimum sigma", "TCD gamma": "Eta",
}  # fmt: skip
_NOTE = (
    "Empty: the value from Settings > Sampler parameters. Eta is used by DDIM and is TCD's "
    "gamma; sigma churn, tmin, tmax and noise by Euler; sigma noise by DPM++ SDE. Negative Guidance minimum "
    "sigma skips the negative prompt in the last steps (faster). At CFG scale 1 the negative "
    "prompt is not used (one pass per step, twice as fast)."
)


def add_tiling(named: Named, prefix: str) -> None:
    """A1111 1.5's row: "Restore faces" (the model: Settings > Face restoration), "Tiling"."""
    named.add("restore_faces", gr.Checkbox(
        label=RESTORE_FACES, value=False, elem_id=f"{prefix}_restore_faces",
        info="Model: Settings > Face restoration"))  # fmt: skip
    named.add("tiling", gr.Checkbox(label=TILING, value=False, elem_id=f"{prefix}_tiling",
                                    info="Seamless texture: the edges continue each other"))  # fmt: skip


def add_sampler_parameters(named: Named, prefix: str) -> None:
    with gr.Accordion("Sampler parameters", open=False, elem_id=f"{prefix}_sampler_params"):
        gr.Markdown(_NOTE)
        with gr.Row():
            for name, (label, low, high, step) in SAMPLER_PARAMETERS.items():
                named.add(name, gr.Number(label=label, value=None, minimum=low, maximum=high,
                                          step=step, elem_id=f"{prefix}_{name}"))  # fmt: skip


def sampling_fields(v: dict[str, Any]) -> dict[str, Any]:
    """Params fields from the controls' values (None: the option)."""
    fields: dict[str, Any] = {"tiling": bool(v["tiling"]),
                              "restore_faces": bool(v["restore_faces"])}  # fmt: skip
    for name, (label, *_) in SAMPLER_PARAMETERS.items():
        value = v[name]
        if value in (None, ""):
            fields[name] = None
            continue
        try:
            fields[name] = float(value)
        except (TypeError, ValueError):
            raise InputError(f"{label}: expected a number, got {value!r}") from None
    return fields
