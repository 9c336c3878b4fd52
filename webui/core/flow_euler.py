"""Euler on a flow-matching schedule: the one sampler of the transformer families
(FLUX.1, SD 3.5, Z-Image), with the same schedule types for all three.

`flow_euler_choice` turns a job's sampler and schedule type into the `SchedulerChoice`
(other samplers and schedule types are refused with a message naming the family);
`flow_scheduler` builds diffusers' `FlowMatchEulerDiscreteScheduler` for it on the
model's schedule config (with the job's shift, `core.flow_shift`, already in it).
Simple, Normal and SGM Uniform are the scheduler's own evenly spaced sigmas (shifted);
Beta, Karras and Exponential its beta / Karras / exponential spacing.

This module must never import a UI library.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ..errors import UserError
from .samplers import SchedulerChoice

FLOW_SAMPLER = "Euler"
FLOW_SCHEDULES: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "Automatic": {}, "Simple": {}, "Normal": {}, "SGM Uniform": {},
    "Beta": {"use_beta_sigmas": True}, "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
})  # fmt: skip


def flow_euler_choice(who: str, name: str | None, schedule: str | None) -> SchedulerChoice:
    """Euler with one of `FLOW_SCHEDULES` ("Automatic" shows as "Simple"); `who` names the
    family in the messages ("FLUX", "SD 3.5", "Z-Image")."""
    sampler = name or FLOW_SAMPLER
    if sampler.lower() not in ("euler", "flow euler"):
        raise UserError(f"Sampler {sampler!r} does not run {who} models here; "
                        f"choose {FLOW_SAMPLER!r}")  # fmt: skip
    label = schedule or "Automatic"
    wanted = label.lower().replace("_", " ")
    found = next((k for k in FLOW_SCHEDULES if k.lower() == wanted), None)
    if found is None:
        raise UserError(f"Schedule type {label!r} does not apply to {who}; choose one of: "
                        + ", ".join(k for k in FLOW_SCHEDULES if k != "Automatic"))  # fmt: skip
    shown = "Simple" if found == "Automatic" else found
    return SchedulerChoice(FLOW_SAMPLER, shown, "FlowMatchEulerDiscreteScheduler",
                           dict(FLOW_SCHEDULES[found]))  # fmt: skip


def flow_scheduler(choice: SchedulerChoice, base_config: Mapping[str, Any]) -> Any:
    """diffusers' flow-matching Euler scheduler for the choice on the model's config."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(dict(base_config), **choice.kwargs)
