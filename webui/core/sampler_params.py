"""A1111's sampler parameters: eta, sigma churn / tmin / tmax / noise, and NGMS.

A request may set `eta`, `s_churn`, `s_tmin`, `s_tmax`, `s_noise` and `s_min_uncond`
(A1111's API fields); None takes the job's option (Settings > Sampler parameters:
`eta_ddim` for DDIM, `eta_ancestral` for the ancestral and SDE samplers, `s_churn`,
`s_tmin`, `s_tmax` (0 means infinity), `s_noise`, `s_min_uncond`, `s_min_uncond_all`;
`eta_tcd`: TCD's gamma, which is the request's `eta` for that sampler).

Which sampler uses which parameter is A1111's table (`sampler_extra_params` and the
k-diffusion functions that take `eta`). Each one is

- honoured where the diffusers scheduler has it: DDIM's eta and TCD's gamma (the
  pipeline's `eta=`),
  Euler's churn/tmin/tmax/noise (`EulerDiscreteScheduler.step`), DPM++ SDE's noise
  (`DPMSolverSDEScheduler.step`), and Euler a's eta (k-diffusion's ancestral step,
  `webui.core.schedulers.ancestral_step`): `schedulers.bind_sampler_params` puts them on
  the job's scheduler;
- refused with a `ParamError` naming the field when A1111 would use a value but the
  diffusers scheduler cannot (eta other than 1 for DPM2 a and the SDE samplers;
  churn above 0 for Heun and DPM2; noise other than 1 for DPM2 a and DPM++ 2M SDE (Heun));
  a value with no effect (eta 1 on Euler a, tmin/tmax/noise on Heun without churn) passes;
- reported as a warning in the job's result when it does not apply to the sampler at all
  (A1111 ignores it there too), or when a Settings value cannot be honoured.

Infotext fields (written only when not the sampler's default, as A1111): "Eta DDIM" /
"TCD gamma" / "Eta", "Sigma churn", "Sigma tmin", "Sigma tmax", "Sigma noise"; "NGMS"
(and "NGMS all steps") for the negative guidance minimum sigma (`webui.core.composable` skips the
unconditional pass below it).

This module must never import torch, diffusers or a UI library (params.py validates with
it), and never change global options.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ParamError

ETA, CHURN, TMIN, TMAX, NOISE, MIN_UNCOND = (
    "eta", "s_churn", "s_tmin", "s_tmax", "s_noise", "s_min_uncond"
)  # fmt: skip
STEP_PARAMS = (ETA, CHURN, TMIN, TMAX, NOISE)
# request field -> (lowest, highest) accepted value
BOUNDS: Mapping[str, tuple[float, float]] = {
    ETA: (0.0, 1.0), CHURN: (0.0, 100.0), TMIN: (0.0, 1000.0), TMAX: (0.0, 1000.0),
    NOISE: (0.0, 10.0), MIN_UNCOND: (0.0, 100.0),
}  # fmt: skip
# infotext field -> request field (eta: "Eta DDIM" for DDIM, "Eta" for the others)
INFOTEXT_FIELDS: Mapping[str, str] = {
    "Eta DDIM": ETA, "Eta": ETA, "Sigma churn": CHURN, "Sigma tmin": TMIN,
    "Sigma tmax": TMAX, "Sigma noise": NOISE, "NGMS": MIN_UNCOND, "TCD gamma": ETA,
}  # fmt: skip
_LABELS = {ETA: "eta", CHURN: "sigma churn", TMIN: "sigma tmin", TMAX: "sigma tmax",
           NOISE: "sigma noise"}  # fmt: skip
_SIGMA_FIELDS = {CHURN: "Sigma churn", TMIN: "Sigma tmin", TMAX: "Sigma tmax",
                 NOISE: "Sigma noise"}  # fmt: skip
_CHURN_SET = frozenset({CHURN, TMIN, TMAX, NOISE})


@dataclass(frozen=True)
class _Use:
    a1111: frozenset[str]  # what A1111's sampler function takes
    here: frozenset[str]  # what the diffusers scheduler here takes


# A1111 1.10 (sd_samplers_kdiffusion.sampler_extra_params, and `eta` in the signatures)
_USES: Mapping[str, _Use] = {
    "Euler": _Use(_CHURN_SET, _CHURN_SET),
    "Heun": _Use(_CHURN_SET, frozenset()),
    "DPM2": _Use(_CHURN_SET, frozenset()),
    "Euler a": _Use(frozenset({ETA}), frozenset({ETA})),  # schedulers.ancestral_step
    "DPM2 a": _Use(frozenset({ETA, NOISE}), frozenset()),
    "DPM++ SDE": _Use(frozenset({ETA, NOISE}), frozenset({NOISE})),
    "DPM++ 2M SDE": _Use(frozenset({ETA, NOISE}), frozenset()),
    "DPM++ 2M SDE Heun": _Use(frozenset({ETA, NOISE}), frozenset()),
    "DDIM": _Use(frozenset({ETA}), frozenset({ETA})),
    "TCD": _Use(frozenset({ETA}), frozenset({ETA})),  # eta is TCD's gamma (ComfyUI's too)
}
_NO_USE = _Use(frozenset(), frozenset())
_DDIM_ETA = frozenset({"DDIM"})  # eta from eta_ddim (default 0), infotext "Eta DDIM"
_TCD = "TCD"  # eta is its gamma: from eta_tcd (default 0.3), infotext "TCD gamma"
_PIPELINE_ETA = _DDIM_ETA | {_TCD}  # the pipeline's `eta=` reaches their scheduler.step


@dataclass(frozen=True)
class SamplerDefaults:
    """The job's options for sampler parameters a request leaves at None (A1111's)."""

    eta_ddim: float = 0.0
    eta_ancestral: float = 1.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0  # 0: infinity
    s_noise: float = 1.0
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    eta_tcd: float = 0.3  # TCD's gamma

    @classmethod
    def from_options(cls, get: Callable[[str], Any]) -> SamplerDefaults:
        """From an option getter (a job's snapshot)."""
        floats = {name: float(get(name)) for name in
                  ("eta_ddim", "eta_ancestral", CHURN, TMIN, TMAX, NOISE, MIN_UNCOND,
                   "eta_tcd")}  # fmt: skip
        return cls(**floats, s_min_uncond_all=bool(get("s_min_uncond_all")))


def neutral(sampler: str, name: str) -> float:
    """The value at which a parameter changes nothing (A1111's default for the sampler)."""
    if name == ETA:
        return 0.0 if sampler in _DDIM_ETA else 0.3 if sampler == _TCD else 1.0
    return {CHURN: 0.0, TMIN: 0.0, TMAX: math.inf, NOISE: 1.0}[name]


def check_value(name: str, value: Any) -> None:
    """A request value (None: the option) must be a number within `BOUNDS`."""
    if value is None:
        return
    low, high = BOUNDS[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ParamError(name, f"must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise ParamError(name, f"must be between {low:g} and {high:g}, got {value}")


def check_for_sampler(sampler: str, params: Any) -> None:
    """Refuse a request value that A1111's `sampler` would use but diffusers' cannot."""
    for name in STEP_PARAMS:
        value = getattr(params, name)
        check_value(name, value)
        if value is not None and _refused(sampler, name, _tmax(name, value)):
            raise ParamError(name, _cannot(sampler, name))
    check_value(MIN_UNCOND, params.s_min_uncond)


def _refused(sampler: str, name: str, value: float) -> bool:
    use = _USES.get(sampler, _NO_USE)
    if name not in use.a1111 or name in use.here or value == neutral(sampler, name):
        return False
    # without churn, k-diffusion's Heun and DPM2 add no noise: tmin/tmax/noise change nothing
    return not (CHURN in use.a1111 and name != CHURN)


def _cannot(sampler: str, name: str) -> str:
    honour = [s for s, use in _USES.items() if name in use.here]
    return (
        f"{sampler} here (a diffusers scheduler) has no {_LABELS[name]}: it always runs "
        f"with {neutral(sampler, name):g}; samplers that take it: {', '.join(honour) or 'none'}"
    )


def _tmax(name: str, value: float) -> float:
    return math.inf if name == TMAX and value == 0 else value  # A1111: s_tmax 0 = infinity


@dataclass(frozen=True)
class SamplerRun:
    """One pass's sampler parameters: what its scheduler and pipeline get, its infotext."""

    step_kwargs: Mapping[str, float] = field(default_factory=dict)  # scheduler.step
    pipeline_kwargs: Mapping[str, float] = field(default_factory=dict)  # the pipeline call
    fields: Mapping[str, Any] = field(default_factory=dict)  # infotext
    warnings: tuple[str, ...] = ()  # values that do not apply to this sampler


def sampler_run(sampler: str, params: Any, defaults: SamplerDefaults) -> SamplerRun:
    """The parameters of a pass with `sampler`: the request's values, else the options."""
    use = _USES.get(sampler, _NO_USE)
    step: dict[str, float] = {}
    pipeline: dict[str, float] = {}
    fields: dict[str, Any] = {}
    warnings: list[str] = []
    for name in STEP_PARAMS:
        asked = getattr(params, name)
        value = _tmax(name, asked if asked is not None else _option(sampler, name, defaults))
        if name in use.here:
            (pipeline if name == ETA and sampler in _PIPELINE_ETA else step)[name] = value
            if value != neutral(sampler, name):
                fields[_field(sampler, name)] = value
        elif value != neutral(sampler, name) and (asked is not None or name in use.a1111):
            where = "" if asked is not None else " (from Settings)"
            warnings.append(
                f"{_LABELS[name]} {value:g}{where} does not apply to sampler {sampler}"
                + ("" if name in use.a1111 else " (A1111 ignores it there too)")
            )
    return SamplerRun(step, pipeline, fields, tuple(warnings))


def _option(sampler: str, name: str, defaults: SamplerDefaults) -> float:
    if name == ETA:
        if sampler == _TCD:
            return defaults.eta_tcd
        return defaults.eta_ddim if sampler in _DDIM_ETA else defaults.eta_ancestral
    return float(getattr(defaults, name))


def _field(sampler: str, name: str) -> str:
    if name == ETA:
        return "Eta DDIM" if sampler in _DDIM_ETA else "TCD gamma" if sampler == _TCD else "Eta"
    return _SIGMA_FIELDS[name]


@dataclass(frozen=True)
class Ngms:
    """Negative guidance minimum sigma: below `min_sigma` the unconditional pass is skipped
    (every other denoiser call, as A1111; every call with `all_steps`). 0: off."""

    min_sigma: float = 0.0
    all_steps: bool = False

    def fields(self) -> dict[str, Any]:
        if self.min_sigma <= 0:
            return {}
        return {"NGMS": self.min_sigma, **({"NGMS all steps": True} if self.all_steps else {})}


NGMS_OFF = Ngms()


def ngms(params: Any, defaults: SamplerDefaults) -> Ngms:
    """The job's NGMS: its `s_min_uncond`, else the option."""
    value = params.s_min_uncond if params.s_min_uncond is not None else defaults.s_min_uncond
    return Ngms(float(value), defaults.s_min_uncond_all)
