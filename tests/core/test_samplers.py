"""A1111 sampler / schedule-type names -> diffusers schedulers (webui.core.samplers and
webui.core.schedulers): every supported combination builds and samples, names resolve as
A1111 1.10 resolves them, and what cannot be done is refused with a clear message."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from webui.core import samplers
from webui.core.decode import decode_latents
from webui.core.params import Txt2ImgParams
from webui.core.samplers import SchedulerChoice, UnknownSamplerError, resolve
from webui.core.schedulers import (
    SchedulerUnavailableError,
    make_scheduler,
    set_noise_seed,
    step_accepts_generator,
)
from webui.model_manager.tiny import build_tiny_pipeline

# torchsde warns about float32 rounding at the ends of DPM++ SDE's Brownian interval.
pytestmark = pytest.mark.filterwarnings("ignore:Should have ta>=t0")

ROOT = Path(__file__).resolve().parents[2]

# An SD 1.5 scheduler config as the checkpoints ship it.
SD15 = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "timestep_spacing": "leading",
}

A1111_SAMPLERS = [
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE",
    "Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart",
    "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM",
]  # fmt: skip
A1111_SCHEDULES = {
    "Automatic": "automatic", "Uniform": "uniform", "Karras": "karras",
    "Exponential": "exponential", "Polyexponential": "polyexponential",
    "SGM Uniform": "sgm_uniform", "KL Optimal": "kl_optimal",
    "Align Your Steps": "align_your_steps", "Simple": "simple", "Normal": "normal",
    "DDIM": "ddim", "Beta": "beta",
}  # fmt: skip

COMBOS = [(name, sch) for name in samplers.SAMPLERS for sch in samplers.supported_schedules(name)]


def _build(choice: SchedulerChoice, config: dict | None = None, *, steps: int = 20, **kwargs):
    missing = samplers.missing_requirements(choice)
    if missing:
        pytest.skip(f"{choice.sampler} / {choice.schedule} needs {', '.join(missing)}")
    return make_scheduler(choice, config or SD15, steps=steps, **kwargs)


def _sample(scheduler, steps: int, seed: int = 0) -> torch.Tensor:
    """A short denoising loop with a dummy model (output = 0.1 * input)."""
    scheduler.set_timesteps(steps)
    generator = torch.Generator("cpu").manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=generator) * scheduler.init_noise_sigma
    extra = {"generator": generator} if step_accepts_generator(scheduler) else {}
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t)
        x = scheduler.step(0.1 * model_input, t, x, **extra).prev_sample
    return x


# --- building and sampling ----------------------------------------------------------------


@pytest.mark.parametrize(("sampler", "schedule"), COMBOS)
def test_every_supported_combination_builds_and_samples(sampler, schedule):
    choice = resolve(sampler, schedule)
    scheduler = _build(choice, steps=2, noise_seed=[1, 2])
    # the class itself, or its subclass that runs on computed sigmas (KL Optimal, AYS)
    assert choice.class_name in [c.__name__ for c in type(scheduler).__mro__]
    for key, value in choice.kwargs.items():
        assert scheduler.config[key] == value
    for steps in (2, 20):
        scheduler.set_timesteps(steps)
        assert len(scheduler.timesteps) >= steps
        assert torch.isfinite(torch.as_tensor(scheduler.timesteps, dtype=torch.float64)).all()
        if hasattr(scheduler, "sigmas"):
            assert torch.isfinite(scheduler.sigmas).all()
    # The same scheduler object runs again (as a pipeline does for each batch).
    for _ in range(2):
        x = _sample(scheduler, 2)
        assert x.shape == (2, 4, 8, 8)
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_sampling_is_reproducible_with_the_same_seed(sampler):
    choice = resolve(sampler, None)
    a = _sample(_build(choice, noise_seed=[7, 8]), 4, seed=3)
    b = _sample(_build(choice, noise_seed=[7, 8]), 4, seed=3)
    assert torch.equal(a, b)


def test_dpmpp_sde_noise_follows_the_seed_set_per_batch():
    scheduler = _build(resolve("DPM++ SDE", None), noise_seed=[7, 8])
    first = _sample(scheduler, 3)
    set_noise_seed(scheduler, [9, 10])
    second = _sample(scheduler, 3)
    set_noise_seed(scheduler, [7, 8])
    assert torch.equal(_sample(scheduler, 3), first)
    assert not torch.equal(first, second)
    set_noise_seed(make_scheduler(resolve("Euler a", None), SD15, steps=3), 1)  # no such noise


def test_lcm_has_a_step_limit():
    choice = resolve("LCM", None)
    scheduler = _build(choice)
    assert choice.max_steps == 50
    scheduler.set_timesteps(choice.max_steps)
    with pytest.raises(ValueError):
        scheduler.set_timesteps(choice.max_steps + 1)


@pytest.mark.parametrize("sampler", samplers.SAMPLERS)
def test_v_prediction_and_model_betas_are_kept(sampler):
    config = {**SD15, "prediction_type": "v_prediction", "beta_end": 0.0125}
    scheduler = _build(resolve(sampler, None), config)
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.beta_end == 0.0125
    assert scheduler.config.beta_schedule == "scaled_linear"


def test_sampler_settings_of_the_shipped_scheduler_do_not_leak():
    shipped = {
        **SD15,
        "_class_name": "DPMSolverMultistepScheduler",
        "algorithm_type": "sde-dpmsolver++",
        "solver_order": 3,
        "use_karras_sigmas": True,
        "timestep_spacing": "trailing",
    }
    euler = make_scheduler(resolve("Euler", None), shipped, steps=20)
    assert not euler.config.use_karras_sigmas
    assert euler.config.timestep_spacing == "linspace"
    dpm = make_scheduler(resolve("DPM++ 2M", "Simple"), shipped, steps=20)
    assert dpm.config.algorithm_type == "dpmsolver++"
    assert dpm.config.solver_order == 2
    assert not dpm.config.use_karras_sigmas


def test_a_kwarg_the_class_ignores_is_an_error():
    choice = SchedulerChoice(
        sampler="Euler a",
        schedule="Karras",
        class_name="EulerAncestralDiscreteScheduler",
        kwargs={"use_karras_sigmas": True},
    )
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        make_scheduler(choice, SD15, steps=20)


def test_a_missing_optional_package_is_named():
    choice = SchedulerChoice(
        "Euler", "Uniform", "EulerDiscreteScheduler", {}, requires=("no_such_pkg_x",)
    )
    assert samplers.missing_requirements(choice) == ["no_such_pkg_x"]
    with pytest.raises(SchedulerUnavailableError, match="pip install no_such_pkg_x"):
        make_scheduler(choice, SD15, steps=20)


def test_optional_requirements_are_declared():
    assert resolve("DPM++ SDE", None).requires == ("torchsde",)
    assert resolve("Euler", "Beta").requires == ("scipy",)
    assert resolve("LMS", "Beta").requires == ("scipy",)
    assert resolve("Euler", "Karras").requires == ()


# --- the schedules are A1111's ------------------------------------------------------------

_BETAS = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
_SIGMAS = np.sqrt((1 - np.cumprod(1 - _BETAS)) / np.cumprod(1 - _BETAS))


def _karras(n: int, rho: float = 7.0) -> np.ndarray:
    lo, hi = _SIGMAS[0] ** (1 / rho), _SIGMAS[-1] ** (1 / rho)
    return (hi + np.linspace(0, 1, n) * (lo - hi)) ** rho


def _exponential(n: int) -> np.ndarray:
    return np.exp(np.linspace(math.log(_SIGMAS[-1]), math.log(_SIGMAS[0]), n))


def _ddim(n: int) -> np.ndarray:
    """A1111's DDIM schedule type, 1 + range(0, 1000, 1000 // n); for n = 1 that is [1], a
    step from the bottom of the schedule, so one step deliberately starts at 999 here."""
    return _SIGMAS[np.arange(1, 1000, 1000 // n)[::-1]] if n > 1 else _SIGMAS[[999]]


@pytest.mark.parametrize("steps", [1, 2, 20])
@pytest.mark.parametrize(
    ("sampler", "schedule", "reference"),
    [
        ("DPM++ 2M", "Karras", _karras),
        ("Euler", "Karras", _karras),
        ("DPM2", "Automatic", _karras),
        ("DPM++ 2M SDE", "Automatic", _exponential),
        ("LMS", "Polyexponential", _exponential),
        ("Euler", "Uniform", lambda n: np.interp(np.linspace(999, 0, n), np.arange(1000), _SIGMAS)),
        ("Euler a", "Simple", lambda n: _SIGMAS[[999 - int(x * 1000 / n) for x in range(n)]]),
        ("DPM++ 2M", "Simple", lambda n: _SIGMAS[[999 - int(x * 1000 / n) for x in range(n)]]),
        ("Heun", "DDIM", _ddim),
    ],
)
def test_sigmas_match_a1111(sampler, schedule, reference, steps):
    scheduler = _build(resolve(sampler, schedule), steps=steps)
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.double().numpy()
    sigmas = np.array([s for i, s in enumerate(sigmas) if i == 0 or s != sigmas[i - 1]])
    np.testing.assert_allclose(sigmas[:-1], reference(steps), rtol=1e-4)
    assert sigmas[-1] == 0


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS"])
def test_ddim_and_plms_use_a1111_timesteps(sampler):
    scheduler = _build(resolve(sampler, None))
    scheduler.set_timesteps(20)
    assert sorted(set(scheduler.timesteps.tolist()), reverse=True) == list(range(951, 0, -50))


# --- one step (turbo and LCM models) -----------------------------------------------------


@pytest.mark.parametrize(("sampler", "schedule"), COMBOS)
def test_one_step_is_accepted_and_starts_at_the_top_of_the_schedule(sampler, schedule):
    """A1111 at 1 step goes from sigma_max (timestep 999) straight to 0, for every schedule."""
    choice = resolve(sampler, schedule)
    scheduler = _build(choice, steps=1, noise_seed=[1, 2])
    params = Txt2ImgParams(prompt="a fox", sampler_name=sampler, scheduler=schedule, steps=1)
    assert params.validated().steps == 1
    scheduler.set_timesteps(1)
    assert len(scheduler.timesteps) == 1
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None:  # DDIM, PLMS, LCM step on integer timesteps
        assert int(scheduler.timesteps[0]) == 999
    else:  # Exponential and Beta map sigma_max back to a timestep of 998.x
        assert float(sigmas[0]) == pytest.approx(_SIGMAS[-1], rel=1e-4)
        assert float(scheduler.timesteps[0]) >= 998
        assert float(sigmas[1]) < 0.03  # into 0 (UniPC: sigma_min)
    x = _sample(scheduler, 1)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize(("sampler", "schedule"), COMBOS)
def test_two_steps_and_more_keep_their_schedule(sampler, schedule):
    choice = resolve(sampler, schedule)
    for steps in (2, 3, 20, 150):
        assert choice.kwargs_for(steps) is choice.kwargs


def test_one_step_changes_only_the_spacing_that_starts_at_the_bottom():
    euler = resolve("Euler", "Karras")
    assert euler.kwargs_for(1) == {**euler.kwargs, "timestep_spacing": "trailing"}
    assert resolve("DDIM", None).kwargs_for(1)["timestep_spacing"] == "trailing"
    for already_at_the_top in (("Euler", "Simple"), ("DPM++ 2M", None), ("LCM", None)):
        choice = resolve(*already_at_the_top)
        assert choice.kwargs_for(1) is choice.kwargs


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE", "LCM"])
def test_one_step_generation_gives_a_finite_non_constant_image(sampler):
    choice = resolve(sampler, None)
    pipe = build_tiny_pipeline("sd1")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = _build(choice, pipe.scheduler.config, steps=1, noise_seed=[5])
    latents = pipe(
        "a red fox",
        num_inference_steps=1,
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(5),
        output_type="latent",
    ).images
    assert float(pipe.scheduler.timesteps[0]) == pytest.approx(999)
    assert torch.isfinite(latents).all()
    assert float(latents.std()) > 0.1
    pixels = np.asarray(decode_latents(pipe, latents)[0], dtype=np.float64)
    assert pixels.std() > 1.0


# --- names ------------------------------------------------------------------------------


def test_lists_are_a1111_names_in_a1111_order():
    extra = list(samplers.EXTRA_SAMPLERS)  # not A1111's (TCD): after its list
    assert samplers.SAMPLERS[-len(extra) :] == extra and not set(extra) & set(A1111_SAMPLERS)
    a1111 = samplers.SAMPLERS[: -len(extra)]
    assert a1111 == [n for n in A1111_SAMPLERS if n in a1111]
    assert set(a1111) | set(samplers.UNSUPPORTED_SAMPLERS) == set(A1111_SAMPLERS)
    assert not set(samplers.SAMPLERS) & set(samplers.UNSUPPORTED_SAMPLERS)
    assert samplers.SCHEDULE_TYPES == [s for s in A1111_SCHEDULES if s in samplers.SCHEDULE_TYPES]
    assert set(samplers.SCHEDULE_TYPES) | set(samplers.UNSUPPORTED_SCHEDULE_TYPES) == set(
        A1111_SCHEDULES
    )
    assert samplers.SCHEDULE_NAMES == {s: A1111_SCHEDULES[s] for s in samplers.SCHEDULE_TYPES}
    for label in samplers.SCHEDULE_TYPES:
        assert any(label in samplers.supported_schedules(s) for s in samplers.SAMPLERS), label


@pytest.mark.parametrize("empty", [None, "", "  "])
def test_default_is_dpmpp_2m_karras(empty):
    choice = resolve(empty, empty)
    assert (choice.sampler, choice.schedule) == ("DPM++ 2M", "Karras")
    assert choice.class_name == "DPMSolverMultistepScheduler"
    assert choice.kwargs["use_karras_sigmas"] is True
    assert choice.kwargs["algorithm_type"] == "dpmsolver++"
    assert samplers.DEFAULT_SAMPLER == "DPM++ 2M"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
        ("Euler a", ("Euler a", "Uniform")),
        ("DPM++ SDE Karras", ("DPM++ SDE", "Karras")),
        ("DPM++ 2M SDE Karras", ("DPM++ 2M SDE", "Karras")),
        ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
        ("DPM++ 2M SDE Heun", ("DPM++ 2M SDE Heun", "Exponential")),
        ("DPM++ 2M SDE Heun Karras", ("DPM++ 2M SDE Heun", "Karras")),
        ("Euler Karras", ("Euler", "Karras")),
        ("LMS Karras", ("LMS", "Karras")),
        ("DPM2 Karras", ("DPM2", "Karras")),
        ("DPM2 a Karras", ("DPM2 a", "Karras")),
        ("Euler SGM Uniform", ("Euler", "SGM Uniform")),
        ("Euler SGMUniform", ("Euler", "SGM Uniform")),
        ("dpm++ 2m  karras", ("DPM++ 2M", "Karras")),
        ("EULER A", ("Euler a", "Uniform")),
        ("k_euler_a", ("Euler a", "Uniform")),
        ("k_dpmpp_2m", ("DPM++ 2M", "Karras")),
        ("DDIM", ("DDIM", "DDIM")),
        ("PLMS", ("PLMS", "DDIM")),
        ("UniPC", ("UniPC", "SGM Uniform")),
        ("LCM", ("LCM", "Automatic")),
        ("DPM++ 3M SDE", ("DPM++ 3M SDE", "Exponential")),
        ("DPM++ 2S a", ("DPM++ 2S a", "Karras")),
        ("DPM++ 2S a Karras", ("DPM++ 2S a", "Karras")),
        ("k_dpmpp_2s_a", ("DPM++ 2S a", "Karras")),
        ("DPM++ 3M SDE Karras", ("DPM++ 3M SDE", "Karras")),
        ("k_dpmpp_3m_sde", ("DPM++ 3M SDE", "Exponential")),
        ("Euler KL Optimal", ("Euler", "KL Optimal")),
        ("DPM++ 2M Align Your Steps", ("DPM++ 2M", "Align Your Steps")),
    ],
)
def test_names_resolve(name, expected):
    choice = resolve(name, "automatic")
    assert (choice.sampler, choice.schedule) == expected
    assert resolve(name, None) == choice


def test_combined_name_with_the_same_or_a_conflicting_schedule():
    assert resolve("DPM++ 2M Karras", "Karras").schedule == "Karras"
    with pytest.raises(UnknownSamplerError, match="conflicts"):
        resolve("DPM++ 2M Karras", "exponential")


@pytest.mark.parametrize(("label", "name"), list(samplers.SCHEDULE_NAMES.items()))
def test_schedule_labels_and_api_names_resolve(label, name):
    sampler = "Euler" if label in samplers.supported_schedules("Euler") else "DPM++ 2M"
    expected = resolve(sampler, label)
    for given in (label, name, label.upper(), f" {label.lower()} "):
        assert resolve(sampler, given) == expected
    if label != "Automatic":
        assert expected.schedule == label


@pytest.mark.parametrize("bad", ["Foo", "DPM++ 4M", "Euler b", "Euler Foo"])
def test_unknown_sampler_is_refused_by_name(bad):
    with pytest.raises(UnknownSamplerError, match="Unknown sampler") as info:
        resolve(bad, None)
    assert repr(bad) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "name",
    [
        "DPM fast", "DPM adaptive", "Restart", "DDIM CFG++", "DPM fast Karras", "dpm fast",
        "k_dpm_ad",
    ],
)  # fmt: skip
def test_a1111_samplers_without_diffusers_equivalent_are_refused(name):
    with pytest.raises(UnknownSamplerError, match="not supported with diffusers") as info:
        resolve(name, None)
    assert repr(name) in str(info.value)


def test_every_a1111_schedule_type_is_supported():
    assert samplers.UNSUPPORTED_SCHEDULE_TYPES == {}
    assert samplers.SCHEDULE_TYPES == list(A1111_SCHEDULES)


def test_every_refused_sampler_is_in_the_readme_with_its_reason():
    readme = (ROOT / "README.md").read_text()
    for name, reason in samplers.UNSUPPORTED_SAMPLERS.items():
        assert f"`{name}`: {reason}" in " ".join(readme.split()), name


def test_unknown_schedule_is_refused_by_name():
    with pytest.raises(UnknownSamplerError, match="Unknown schedule type 'foo'"):
        resolve("Euler", "foo")


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [
        ("DDIM", "Karras"),
        ("PLMS", "Exponential"),
        ("Euler a", "Karras"),
        ("DPM++ 2M", "Uniform"),
        ("DPM++ 2M", "DDIM"),
        ("UniPC", "Karras"),
        ("LCM", "Karras"),
        ("Euler a Karras", None),
        ("Euler a", "KL Optimal"),
        ("Heun", "Align Your Steps"),
        ("UniPC", "align_your_steps"),
        ("DPM++ 3M SDE", "Uniform"),
        ("DPM++ 3M SDE", "Simple"),
    ],
)
def test_schedule_the_sampler_cannot_do_is_refused(sampler, schedule):
    with pytest.raises(UnknownSamplerError, match="not supported for sampler") as info:
        resolve(sampler, schedule)
    assert "choose one of: Automatic" in str(info.value)


def test_supported_schedules_and_aliases():
    assert samplers.supported_schedules("Euler a") == [
        "Automatic", "Uniform", "SGM Uniform", "Simple", "Normal", "DDIM",
    ]  # fmt: skip
    assert samplers.supported_schedules("LCM") == ["Automatic"]
    assert samplers.sampler_aliases("Euler a") == ["k_euler_a", "k_euler_ancestral"]
    with pytest.raises(UnknownSamplerError):
        samplers.supported_schedules("Nope")


# --- layering -----------------------------------------------------------------------------


def test_samplers_module_imports_neither_torch_nor_diffusers():
    code = (
        "import sys, webui.core.samplers as s\n"
        "s.resolve('DPM++ SDE Karras', None); s.missing_requirements(s.resolve('Euler', 'Beta'))\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers'))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_samplers_source_has_no_torch_or_diffusers_import():
    tree = ast.parse((ROOT / "webui" / "core" / "samplers.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            imported.add("__import__")
    assert not imported & {"torch", "diffusers", "__import__"}
