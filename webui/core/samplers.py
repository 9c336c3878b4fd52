"""A1111 sampler and schedule-type names, and the diffusers scheduler each one maps to.

This module is data plus name resolution: which A1111 (1.10) sampler names and schedule
types have a true diffusers equivalent, the diffusers class name (a string) and the
constructor kwargs of each, and which schedule types each sampler can do. `resolve()` turns
a request's `sampler_name` / `scheduler` (labels, lowercase API names, old combined names
such as "DPM++ 2M Karras") into a `SchedulerChoice`; `webui.core.schedulers` builds the
scheduler from it.

Samplers A1111 lacks come after A1111's list (`EXTRA_SAMPLERS`: TCD).

It must never import torch or diffusers, not even inside a function: the UI imports it.
It never substitutes a different sampler or schedule for one it cannot do; it refuses.

Schedule kwargs were checked against A1111's own schedule functions (sigmas for 2-50 steps
on the SD 1.x noise schedule) for each diffusers class: spacing keywords mean different
things in different classes, so each sampler family has its own table.

One step (turbo / LCM models): A1111 goes from the top of the noise schedule (sigma_max,
timestep 999) straight to 0 for every schedule type, since linspace(999, 0, 1) = [999] and
the Karras / Exponential / Beta ramps start at sigma_max. diffusers' "linspace" spacing in
the k-diffusion-style classes is linspace(0, 999, n), which for n = 1 is timestep 0 (noise
in, noise out), and "leading" starts at timestep 1; so at exactly one step those schedules
use "trailing" spacing instead, whose single timestep is 999 in every class
(`SchedulerChoice.kwargs_for`). Two steps and more keep the kwargs above unchanged.
The DDIM schedule type is the one deliberate difference from A1111: A1111's
1 + range(0, 1000, 1000 // n) is [1] for n = 1, a step from the bottom of the schedule that
returns the initial noise; here one step starts at timestep 999 like every other schedule
and gives a usable image. Every supported sampler and schedule type can take one step.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError

__all__ = [
    "DEFAULT_SAMPLER",
    "EXTRA_SAMPLERS",
    "SAMPLERS",
    "SCHEDULE_NAMES",
    "SCHEDULE_TYPES",
    "UNSUPPORTED_SAMPLERS",
    "UNSUPPORTED_SCHEDULE_TYPES",
    "SchedulerChoice",
    "UnknownSamplerError",
    "missing_requirements",
    "resolve",
    "sampler_aliases",
    "supported_schedules",
]

AUTOMATIC = "Automatic"


class UnknownSamplerError(ValueError, UserError):
    """A sampler or schedule type that is unknown, not available with diffusers, or that
    makes no sense together with the chosen sampler. The message names the bad value."""


@dataclass(frozen=True)
class SchedulerChoice:
    """What `resolve()` decided: an A1111 sampler and schedule, and how to build it.

    `schedule` is the concrete schedule type that runs ("Karras" for DPM++ 2M on
    Automatic, as A1111 1.10 writes it in infotexts); it is "Automatic" only for a sampler
    whose own schedule has no A1111 label (LCM).
    """

    sampler: str
    schedule: str
    class_name: str
    kwargs: dict[str, Any] = field(default_factory=dict, hash=False)
    requires: tuple[str, ...] = ()  # importable modules the scheduler needs (optional deps)
    max_steps: int | None = None  # the scheduler refuses more steps than this
    # The kwargs for exactly one step where `kwargs` would start that step at the bottom of
    # the noise schedule; None: `kwargs` already start at the top.
    one_step_kwargs: dict[str, Any] | None = field(default=None, hash=False)
    # A schedule type whose sigmas `webui.core.sigmas` computes (KL Optimal, Align Your
    # Steps; every schedule of a sampler that discards the next-to-last sigma); None: the
    # diffusers class spaces its own steps from `kwargs`.
    sigma_schedule: str | None = None
    discard_penultimate_sigma: bool = False  # A1111's discard_next_to_last_sigma

    def kwargs_for(self, steps: int) -> dict[str, Any]:
        """Constructor kwargs for a run of `steps` steps: `kwargs`, except that one step
        always starts at the top of the noise schedule (timestep 999, sigma_max)."""
        if steps == 1 and self.one_step_kwargs is not None:
            return self.one_step_kwargs
        return self.kwargs


# --- schedule types --------------------------------------------------------------------

# A1111 1.10 order: label -> lowercase API name.
_ALL_SCHEDULE_TYPES: dict[str, str] = {
    "Automatic": "automatic",
    "Uniform": "uniform",
    "Karras": "karras",
    "Exponential": "exponential",
    "Polyexponential": "polyexponential",
    "SGM Uniform": "sgm_uniform",
    "KL Optimal": "kl_optimal",
    "Align Your Steps": "align_your_steps",
    "Simple": "simple",
    "Normal": "normal",
    "DDIM": "ddim",
    "Beta": "beta",
}
_SCHEDULE_ALIASES: dict[str, str] = {"sgmuniform": "SGM Uniform"}

UNSUPPORTED_SCHEDULE_TYPES: dict[str, str] = {}

# Schedule types whose sigmas `webui.core.sigmas` computes; the samplers that can run on a
# given sigma list (`webui.core.sigma_schedulers`) offer them.
_COMPUTED_SCHEDULES = frozenset({"KL Optimal", "Align Your Steps"})

# Polyexponential is k-diffusion's get_sigmas_polyexponential with A1111's default rho=1.0,
# which is exactly the exponential schedule.
_SCALE = {"timestep_spacing": "linspace"}
_K_SCHEDULES: dict[str, dict[str, Any]] = {
    # k-diffusion style discrete schedulers (Euler, LMS, Heun, KDPM2*, DPMSolverSDE):
    # "linspace" is linspace(999, 0, n) = A1111 Uniform/Normal; "trailing" is Simple and
    # (to integer rounding) SGM Uniform; "leading" + offset 1 is A1111's DDIM schedule.
    "Uniform": {"timestep_spacing": "linspace"},
    "Karras": {**_SCALE, "use_karras_sigmas": True},
    "Exponential": {**_SCALE, "use_exponential_sigmas": True},
    "Polyexponential": {**_SCALE, "use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "trailing"},
    "Simple": {"timestep_spacing": "trailing"},
    "Normal": {"timestep_spacing": "linspace"},
    "DDIM": {"timestep_spacing": "leading", "steps_offset": 1},
    "Beta": {**_SCALE, "use_beta_sigmas": True},
}
# Euler runs on any sigma list: A1111's KL Optimal and Align Your Steps sigmas.
_EULER_SCHEDULES: dict[str, dict[str, Any]] = {
    **_K_SCHEDULES,
    "KL Optimal": {},
    "Align Your Steps": {},
}
# EulerAncestralDiscreteScheduler has no sigma-conversion options: spacing only.
_SPACING_ONLY = ("Uniform", "SGM Uniform", "Simple", "Normal", "DDIM")
_EULER_A_SCHEDULES = {label: _K_SCHEDULES[label] for label in _SPACING_ONLY}
# DDIM / PNDM step on integer timesteps; same spacing meanings as above.
_TIMESTEP_SCHEDULES = {label: _K_SCHEDULES[label] for label in _SPACING_ONLY}
# Multistep DPM-Solver and UniPC: their "linspace" is linspace(999, 0, n + 1)[:-1] rounded
# (= SGM Uniform), "trailing" is Simple; they have no A1111 Uniform/Normal/DDIM spacing.
_DPM_SCHEDULES: dict[str, dict[str, Any]] = {
    "Karras": {**_SCALE, "use_karras_sigmas": True},
    "Exponential": {**_SCALE, "use_exponential_sigmas": True},
    "Polyexponential": {**_SCALE, "use_exponential_sigmas": True},
    "SGM Uniform": {"timestep_spacing": "linspace"},
    "Simple": {"timestep_spacing": "trailing"},
    "Beta": {**_SCALE, "use_beta_sigmas": True},
    # KL Optimal ends at sigma_min: like k-diffusion, the last step keeps the full order
    # (diffusers drops to first order into a final sigma of 0 only).
    "KL Optimal": {"final_sigmas_type": "sigma_min"},
    "Align Your Steps": {},
}
# DPM++ 3M SDE discards the next-to-last sigma (A1111), so all its sigmas are computed.
_DPM_3M_SCHEDULES: dict[str, dict[str, Any]] = {
    "Karras": {},
    "Exponential": {},
    "Polyexponential": {},
    "KL Optimal": {"final_sigmas_type": "sigma_min"},
    "Align Your Steps": {},
}
_UNIPC_SCHEDULES = {label: _DPM_SCHEDULES[label] for label in ("SGM Uniform", "Simple")}
_SCHEDULE_REQUIRES: dict[str, tuple[str, ...]] = {"Beta": ("scipy",)}


# --- samplers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sampler:
    label: str
    class_name: str
    kwargs: dict[str, Any]
    schedules: dict[str, dict[str, Any]]  # schedule label -> kwargs it adds
    default: str  # schedule label that "Automatic" means, or AUTOMATIC for its own
    aliases: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    max_steps: int | None = None
    # Its "linspace" spacing is linspace(0, 999, n): for n = 1 that is timestep 0 alone
    # (False: the class's "linspace" has n + 1 points and starts at 999 for n = 1).
    linspace_from_zero: bool = True
    discard_penultimate_sigma: bool = False  # A1111's discard_next_to_last_sigma


# A1111's k-diffusion DPM++ 2M does second order up to the last step and first order into
# sigma 0: lower_order_final=False with final_sigmas_type="zero" is exactly that.
_DPMPP_2M = {
    "solver_order": 2,
    "solver_type": "midpoint",
    "lower_order_final": False,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    "use_lu_lambdas": False,
}

# fmt: off
_SAMPLER_TABLE: tuple[_Sampler, ...] = (
    _Sampler("DPM++ 2M", "DPMSolverMultistepScheduler",
             {**_DPMPP_2M, "algorithm_type": "dpmsolver++"}, _DPM_SCHEDULES, "Karras",
             ("k_dpmpp_2m",), linspace_from_zero=False),
    # DPMSolverSDEScheduler is diffusers' port of k-diffusion's sample_dpmpp_sde (Brownian
    # tree noise); it needs the torchsde package.
    _Sampler("DPM++ SDE", "DPMSolverSDEScheduler", {}, _K_SCHEDULES, "Karras",
             ("k_dpmpp_sde",), requires=("torchsde",)),
    _Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler",
             {**_DPMPP_2M, "algorithm_type": "sde-dpmsolver++"}, _DPM_SCHEDULES, "Exponential",
             ("k_dpmpp_2m_sde",), linspace_from_zero=False),
    _Sampler("DPM++ 2M SDE Heun", "DPMSolverMultistepScheduler",
             {**_DPMPP_2M, "algorithm_type": "sde-dpmsolver++", "solver_type": "heun"},
             _DPM_SCHEDULES, "Exponential", ("k_dpmpp_2m_sde_heun",), linspace_from_zero=False),
    # k-diffusion's sample_dpmpp_2s_ancestral on DPM2 a's model calls (same sigmas,
    # midpoints and first stage; webui.core.sigma_schedulers); A1111's default: Karras.
    _Sampler("DPM++ 2S a", "DPMSolverPP2SAncestralScheduler", {}, _K_SCHEDULES, "Karras",
             ("k_dpmpp_2s_a",)),
    # k-diffusion's sample_dpmpp_3m_sde: diffusers' SDE DPM-Solver++ with k-diffusion's
    # third-order update (webui.core.sigma_schedulers), on A1111's sigmas of one step more
    # with the next-to-last dropped. Its noise is Gaussian from the job's generator, like
    # DPM++ 2M SDE's, not A1111's Brownian tree.
    _Sampler("DPM++ 3M SDE", "DPMSolver3MSDEScheduler",
             {**_DPMPP_2M, "algorithm_type": "sde-dpmsolver++", "solver_type": "heun",
              "solver_order": 3},
             _DPM_3M_SCHEDULES, "Exponential", ("k_dpmpp_3m_sde",), linspace_from_zero=False,
             discard_penultimate_sigma=True),
    _Sampler("Euler a", "EulerAncestralDiscreteScheduler", {}, _EULER_A_SCHEDULES, "Uniform",
             ("k_euler_a", "k_euler_ancestral")),
    _Sampler("Euler", "EulerDiscreteScheduler", {}, _EULER_SCHEDULES, "Uniform", ("k_euler",)),
    # diffusers computes the LMS coefficients with scipy.integrate.
    _Sampler("LMS", "LMSDiscreteScheduler", {}, _K_SCHEDULES, "Uniform", ("k_lms",),
             requires=("scipy",)),
    _Sampler("Heun", "HeunDiscreteScheduler", {}, _K_SCHEDULES, "Uniform", ("k_heun",)),
    _Sampler("DPM2", "KDPM2DiscreteScheduler", {}, _K_SCHEDULES, "Karras", ("k_dpm_2",)),
    _Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, _K_SCHEDULES, "Karras",
             ("k_dpm_2_a",)),
    # A1111's DDIM/PLMS always use timesteps 1, 1+1000//n, ...: the "DDIM" schedule type
    # (one step starts at 999 instead: see the module docstring).
    _Sampler("DDIM", "DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False},
             _TIMESTEP_SCHEDULES, "DDIM", ("ddim",)),
    # PNDM without its Runge-Kutta warm-up is the CompVis PLMS sampler A1111 ships.
    _Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True, "set_alpha_to_one": False},
             _TIMESTEP_SCHEDULES, "DDIM", ("plms",)),
    # A1111's UniPC: order 3, variant bh1, time-uniform steps (= SGM Uniform) ending at
    # sigma_min. bh1 needs that final sigma (it gives NaN stepping to sigma 0), and with
    # sigma_min appended a Karras/Exponential/Beta schedule repeats its last sigma.
    _Sampler("UniPC", "UniPCMultistepScheduler",
             {"solver_order": 3, "solver_type": "bh1", "final_sigmas_type": "sigma_min"},
             _UNIPC_SCHEDULES, "SGM Uniform", ("unipc",), linspace_from_zero=False),
    # LCM keeps its own timesteps, picked from its 50-step distillation schedule.
    _Sampler("LCM", "LCMScheduler", {"original_inference_steps": 50}, {}, AUTOMATIC,
             ("k_lcm", "lcm"), max_steps=50, linspace_from_zero=False),
    # Not in A1111: Trajectory Consistency Distillation (TCD LoRAs, Hyper-SD, Lightning),
    # as ComfyUI and SD.Next name it; its gamma is the request's eta (diffusers' `eta`).
    _Sampler("TCD", "TCDScheduler", {"original_inference_steps": 50}, {}, AUTOMATIC,
             ("tcd",), max_steps=50, linspace_from_zero=False),
)
# fmt: on

UNSUPPORTED_SAMPLERS: dict[str, str] = {
    "DPM fast": "diffusers has no DPM-Solver-fast scheduler (k-diffusion's fixed budget "
    "of model calls split into first- to third-order steps), and this program has none",
    "DPM adaptive": "diffusers has no adaptive-step DPM-Solver (its number of steps "
    "follows an error estimate, not Sampling steps), and this program has none",
    "Restart": "diffusers has no Restart sampler (Heun steps that add noise back and "
    "repeat part of the schedule), and this program has none",
    "DDIM CFG++": "CFG++ needs the unconditional prediction inside the sampler step, which "
    "diffusers' pipelines do not pass to a scheduler",
}
_UNSUPPORTED_ALIASES: dict[str, str] = {
    "k_dpm_fast": "DPM fast",
    "k_dpm_ad": "DPM adaptive",
    "restart": "Restart",
    "ddim_cfgpp": "DDIM CFG++",
}

DEFAULT_SAMPLER = "DPM++ 2M"
EXTRA_SAMPLERS = ("TCD",)  # not A1111's: after its samplers in every list
SAMPLERS: list[str] = [s.label for s in _SAMPLER_TABLE]
SCHEDULE_TYPES: list[str] = [
    label for label in _ALL_SCHEDULE_TYPES if label not in UNSUPPORTED_SCHEDULE_TYPES
]
SCHEDULE_NAMES: dict[str, str] = {label: _ALL_SCHEDULE_TYPES[label] for label in SCHEDULE_TYPES}

_BY_LABEL: dict[str, _Sampler] = {s.label: s for s in _SAMPLER_TABLE}
_SAMPLER_KEYS: dict[str, str] = {}
for _s in _SAMPLER_TABLE:
    for _key in (_s.label, *_s.aliases):
        _SAMPLER_KEYS[_key.lower()] = _s.label
_UNSUPPORTED_KEYS: dict[str, str] = {name.lower(): name for name in UNSUPPORTED_SAMPLERS}
_UNSUPPORTED_KEYS.update(_UNSUPPORTED_ALIASES)
_SCHEDULE_KEYS: dict[str, str] = dict(_SCHEDULE_ALIASES)
for _label, _name in _ALL_SCHEDULE_TYPES.items():
    _SCHEDULE_KEYS[_label.lower()] = _label
    _SCHEDULE_KEYS[_name] = _label
# Longest first, so "X SGM Uniform" is not read as "X SGM" + "Uniform".
_SUFFIXES: list[str] = sorted(
    {k for k in _SCHEDULE_KEYS if k != "automatic"}, key=len, reverse=True
)
del _s, _key, _label, _name


# --- public functions ------------------------------------------------------------------


def supported_schedules(sampler: str) -> list[str]:
    """Schedule-type labels the sampler can do, "Automatic" first, in A1111's order."""
    s = _sampler(sampler)
    return [label for label in SCHEDULE_TYPES if label == AUTOMATIC or label in s.schedules]


def sampler_aliases(sampler: str) -> list[str]:
    """A1111's aliases of a sampler ("k_dpmpp_2m" for "DPM++ 2M")."""
    return list(_sampler(sampler).aliases)


def missing_requirements(choice: SchedulerChoice) -> list[str]:
    """Modules `choice` needs that are not installed (found without importing them)."""
    return [name for name in choice.requires if importlib.util.find_spec(name) is None]


def resolve(sampler_name: str | None, schedule: str | None) -> SchedulerChoice:
    """The scheduler for an A1111 sampler name and schedule type; raises UnknownSamplerError.

    `sampler_name` is a label, an A1111 alias or an old combined name ("DPM++ 2M Karras",
    "Euler a"), case-insensitive; None or "" means DPM++ 2M. `schedule` is a label or a
    lowercase API name ("sgm_uniform"), case-insensitive; None, "" or Automatic means the
    sampler's own default (A1111 1.10: Karras for DPM++ 2M). A schedule type the
    sampler cannot do, or one that conflicts with a combined name, is refused too.
    """
    sampler, suffix = _split_sampler(sampler_name)
    wanted = _schedule_label(schedule)
    if suffix is not None:
        if wanted not in (AUTOMATIC, suffix):
            raise UnknownSamplerError(
                f"Sampler {sampler_name!r} already names the schedule type {suffix!r}, "
                f"which conflicts with scheduler {schedule!r}"
            )
        wanted = suffix
    s = _BY_LABEL[sampler]
    label = s.default if wanted == AUTOMATIC else wanted
    if label == AUTOMATIC:  # the sampler's own schedule: its kwargs alone
        extra: dict[str, Any] = {}
    elif label in s.schedules:
        extra = s.schedules[label]
    else:
        raise UnknownSamplerError(
            f"Schedule type {label!r} is not supported for sampler {sampler!r}; "
            f"choose one of: {', '.join(supported_schedules(sampler))}"
        )
    kwargs = {**s.kwargs, **extra}
    computed = label in _COMPUTED_SCHEDULES or s.discard_penultimate_sigma
    return SchedulerChoice(
        sampler=sampler,
        schedule=label,
        class_name=s.class_name,
        kwargs=kwargs,
        requires=tuple(dict.fromkeys(s.requires + _SCHEDULE_REQUIRES.get(label, ()))),
        max_steps=s.max_steps,
        one_step_kwargs=None if computed else _one_step_kwargs(s, kwargs),
        sigma_schedule=label if computed else None,
        discard_penultimate_sigma=s.discard_penultimate_sigma,
    )


# --- helpers -----------------------------------------------------------------------------


def _one_step_kwargs(s: _Sampler, kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """`kwargs` with "trailing" spacing where their one step would not start at timestep
    999: "leading" starts at 1 (the DDIM schedule type), and "linspace" at 0 in the classes
    whose linspace runs from 0. With "trailing" the Karras / Exponential / Beta ramps of
    one step are [sigma_max] too, as A1111's are. None where `kwargs` already start at 999.
    """
    spacing = kwargs.get("timestep_spacing")
    if spacing == "leading" or (spacing == "linspace" and s.linspace_from_zero):
        return {**kwargs, "timestep_spacing": "trailing"}
    return None


def _sampler(name: str) -> _Sampler:
    label = _SAMPLER_KEYS.get(" ".join(name.split()).lower())
    if label is None:
        raise UnknownSamplerError(_unknown_sampler_message(name))
    return _BY_LABEL[label]


def _split_sampler(name: str | None) -> tuple[str, str | None]:
    """(sampler label, schedule label from an old combined name or None)."""
    if name is None or not name.strip():
        return DEFAULT_SAMPLER, None
    key = " ".join(name.split()).lower()
    if key in _SAMPLER_KEYS:
        return _SAMPLER_KEYS[key], None
    if key in _UNSUPPORTED_KEYS:
        raise UnknownSamplerError(_unknown_sampler_message(name))
    for suffix in _SUFFIXES:
        if key.endswith(" " + suffix):
            base = key[: -len(suffix) - 1].strip()
            schedule = _SCHEDULE_KEYS[suffix]
            if base in _UNSUPPORTED_KEYS:
                raise UnknownSamplerError(_unknown_sampler_message(name, base))
            if base in _SAMPLER_KEYS:
                _check_schedule_supported(schedule, name)
                return _SAMPLER_KEYS[base], schedule
    raise UnknownSamplerError(_unknown_sampler_message(name))


def _schedule_label(value: str | None) -> str:
    if value is None or not value.strip():
        return AUTOMATIC
    label = _SCHEDULE_KEYS.get(" ".join(value.split()).lower())
    if label is None:
        raise UnknownSamplerError(
            f"Unknown schedule type {value!r}; choose one of: {', '.join(SCHEDULE_TYPES)} "
            f"(or their lowercase names: {', '.join(SCHEDULE_NAMES.values())})"
        )
    _check_schedule_supported(label, value)
    return label


def _check_schedule_supported(label: str, given: str) -> None:
    if label in UNSUPPORTED_SCHEDULE_TYPES:
        raise UnknownSamplerError(
            f"Schedule type {given!r} ({label}) exists in A1111 but is not supported with "
            f"diffusers: {UNSUPPORTED_SCHEDULE_TYPES[label]}"
        )


def _unknown_sampler_message(given: str, key: str | None = None) -> str:
    name = _UNSUPPORTED_KEYS.get((key or " ".join(given.split())).lower())
    if name is not None:
        return (
            f"Sampler {given!r} exists in A1111 but is not supported with diffusers: "
            f"{UNSUPPORTED_SAMPLERS[name]}"
        )
    return f"Unknown sampler {given!r}; choose one of: {', '.join(SAMPLERS)}"


def steps_done(pipe: Any, i: int) -> int:
    """The step whose text the next model call takes, after the pipeline's step callback
    `i` (one per model call): a second-order scheduler (Heun, DPM2; `order` 2) calls the
    model twice per step, its corrector at the next step's sigma, which takes that step's
    text; so each text of a prompt schedule keeps its share of the sampling steps, as in
    A1111, instead of switching after its share of model calls."""
    order = int(getattr(pipe.scheduler, "order", 1) or 1)
    return (i + order) // order
