"""The samplers of the transformer families (FLUX.1, SD 3.5, Z-Image) on their
flow-matching schedule, with the same schedule types for all three.

`flow_euler_choice` turns a job's sampler and schedule type into the `SchedulerChoice`
(other samplers and schedule types are refused with a message naming the family);
`flow_scheduler` builds the scheduler for it on the model's schedule config (with the
job's shift, `core.flow_shift`, already in it): diffusers' `FlowMatchEulerDiscreteScheduler`
for Euler, `core.flow_samplers` for Heun, DPM++ 2M and UniPC, which step on Euler's sigmas.
Simple, Normal and SGM Uniform are the scheduler's own evenly spaced sigmas (shifted);
Beta, Karras and Exponential its beta / Karras / exponential spacing.
Refused: every other A1111 sampler. diffusers has no flow-matching scheduler for them; its
stochastic flow Euler and flow LCM re-noise each step's predicted image afresh, which is
neither Euler a nor close to Euler's result at many steps.

This module must never import a UI library.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from ..errors import UserError
from .samplers import SchedulerChoice

FLOW_SAMPLER = "Euler"
# A1111 label -> the scheduler class (diffusers', or `core.flow_samplers`')
FLOW_SAMPLERS: Mapping[str, str] = MappingProxyType({
    "Euler": "FlowMatchEulerDiscreteScheduler", "Heun": "FlowHeunScheduler",
    "DPM++ 2M": "FlowDPMSolverMultistepScheduler", "UniPC": "FlowUniPCMultistepScheduler",
})  # fmt: skip
FLOW_SCHEDULES: Mapping[str, Mapping[str, Any]] = MappingProxyType({
    "Automatic": {}, "Simple": {}, "Normal": {}, "SGM Uniform": {},
    "Beta": {"use_beta_sigmas": True}, "Karras": {"use_karras_sigmas": True},
    "Exponential": {"use_exponential_sigmas": True},
})  # fmt: skip


def flow_euler_choice(who: str, name: str | None, schedule: str | None) -> SchedulerChoice:
    """Euler with one of `FLOW_SCHEDULES` ("Automatic" shows as "Simple"); `who` names the
    family in the messages ("FLUX", "SD 3.5", "Z-Image")."""
    asked = name or FLOW_SAMPLER
    wanted = "euler" if asked.lower() == "flow euler" else asked.lower()
    sampler = next((k for k in FLOW_SAMPLERS if k.lower() == wanted), None)
    if sampler is None:
        raise UserError(f"Sampler {asked!r} does not run {who} models here; choose one of: "
                        + ", ".join(FLOW_SAMPLERS))  # fmt: skip
    label = schedule or "Automatic"
    wanted = label.lower().replace("_", " ")
    found = next((k for k in FLOW_SCHEDULES if k.lower() == wanted), None)
    if found is None:
        raise UserError(f"Schedule type {label!r} does not apply to {who}; choose one of: "
                        + ", ".join(k for k in FLOW_SCHEDULES if k != "Automatic"))  # fmt: skip
    shown = "Simple" if found == "Automatic" else found
    return SchedulerChoice(sampler, shown, FLOW_SAMPLERS[sampler],
                           dict(FLOW_SCHEDULES[found]))  # fmt: skip


def flow_scheduler(choice: SchedulerChoice, base_config: Mapping[str, Any]) -> Any:
    """The choice's flow-matching scheduler on the model's config."""
    if choice.class_name != FLOW_SAMPLERS[FLOW_SAMPLER]:
        from .flow_samplers import flow_solver

        return flow_solver(choice.class_name, {**base_config, **choice.kwargs})
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler.from_config(dict(base_config), **choice.kwargs)
