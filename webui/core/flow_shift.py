"""The per-job flow-matching shift ("Shift", `params.shift`) of the families that sample
on a flow-matching schedule (SD 3.5, FLUX.1, Z-Image), and its refusal by the others.

A shift s moves the schedule's sigmas toward noise: sigma' = s*t / (1 + (s - 1)*t), the
same curve as ComfyUI's and Forge's `ModelSamplingFlux` with mu = ln(s) (their FLUX
"shift"), so one number means the same for every family. A set shift replaces FLUX.1
dev's resolution-dependent (dynamic) shifting and schnell's none with that fixed shift,
and Z-Image Turbo's 3; None keeps each family's own schedule untouched.

This module must never import a UI library, torch or diffusers.
"""

from __future__ import annotations

from typing import Any

from .errors import ParamError

FLOW_FAMILIES = "SD 3.5, FLUX.1 and Z-Image"


def job_shift(params: Any) -> float | None:
    """The job's shift, None when it leaves the family's own."""
    return getattr(params, "shift", None)


def refuse_shift(label: str, params: Any) -> dict[str, Any]:
    """{} for a job without a shift; a ParamError naming `shift` for a family (`label`)
    whose schedule is not flow matching (SD 1.x, SDXL)."""
    if job_shift(params) is not None:
        raise ParamError("shift", no_shift_message(label))
    return {}


def no_shift_message(what: str) -> str:
    """Why a set shift is refused for `what` (a family's label, a checkpoint's name)."""
    return (f"{what} samples without a flow-matching schedule, which Shift moves; Shift is "
            f"for {FLOW_FAMILIES} models (leave it unset)")  # fmt: skip


def fixed_shift_options(params: Any) -> dict[str, Any]:
    """Scheduler config entries of a job's fixed shift ({}: the family's own schedule)."""
    shift = job_shift(params)
    if shift is None:
        return {}
    return {"shift": float(shift), "use_dynamic_shifting": False}
