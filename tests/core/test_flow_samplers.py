"""The flow-matching Heun / DPM++ 2M / UniPC schedulers step on exactly the sigmas
flow-matching Euler would: the job's shift, FLUX.1 dev's dynamic shift (mu), the
pipeline's own sigmas (Z-Image) and the Karras / Beta / Exponential spacings."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from webui.core.flow_euler import flow_euler_choice, flow_scheduler
from webui.core.samplers import steps_done
from webui.errors import UserError
from webui.model_manager.flux_keys import FLUX_SCHEDULER

# a loaded model's config, as the jobs read it (with diffusers' `_use_default_values`)
LOADED = dict(FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER).config)
SHIFTED = dict(LOADED, shift=3.0, use_dynamic_shifting=False)


def _pair(sampler: str, schedule: str, config: dict, steps: int, **given):
    euler = flow_scheduler(flow_euler_choice("FLUX", "Euler", schedule), config)
    other = flow_scheduler(flow_euler_choice("FLUX", sampler, schedule), config)
    assert isinstance(euler, FlowMatchEulerDiscreteScheduler)
    euler.set_timesteps(steps, **given)
    other.set_timesteps(steps, **given)
    return euler, other


@pytest.mark.parametrize("sampler", ["DPM++ 2M", "UniPC"])
@pytest.mark.parametrize("schedule", ["Simple", "Karras", "Beta", "Exponential"])
def test_multistep_solvers_use_eulers_sigmas(sampler, schedule):
    for config, given in ((SHIFTED, {}), (LOADED, {"mu": 1.1}),
                          (SHIFTED, {"sigmas": np.linspace(1.0, 0.2, 6)})):  # fmt: skip
        euler, other = _pair(sampler, schedule, config, 6, **given)
        assert torch.allclose(other.sigmas, euler.sigmas.cpu())
        assert torch.allclose(other.timesteps, euler.timesteps)
        assert float(other.sigmas[-1]) == 0.0
    _, spaced = _pair(sampler, schedule, SHIFTED, 6)
    _, simple = _pair(sampler, "Simple", SHIFTED, 6)
    assert torch.allclose(spaced.sigmas, simple.sigmas) == (schedule == "Simple")


def test_heun_repeats_eulers_sigmas_for_its_second_call():
    euler, heun = _pair("Heun", "Simple", LOADED, 4, mu=0.8)
    s = euler.sigmas
    assert torch.allclose(
        heun.sigmas, torch.stack([s[0], s[1], s[1], s[2], s[2], s[3], s[3], s[4]])
    )
    assert len(heun.timesteps) == 7 and heun.order == 2


def test_the_flows_noising_for_img2img():
    scheduler = flow_scheduler(flow_euler_choice("SD 3.5", "DPM++ 2M", None), SHIFTED)
    scheduler.set_timesteps(8)
    scheduler.set_begin_index(3)
    sample, noise = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    sigma = float(scheduler.sigmas[3])
    noised = scheduler.scale_noise(sample, scheduler.timesteps[3:4], noise)
    assert torch.allclose(noised, torch.full_like(sample, 1 - sigma))


def test_other_samplers_are_refused_by_name():
    with pytest.raises(UserError, match="'Euler a' does not run Z-Image models"):
        flow_euler_choice("Z-Image", "Euler a", None)
    assert flow_euler_choice("FLUX", "dpm++ 2m", "karras").sampler == "DPM++ 2M"


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM++ 2M"])
def test_the_prompt_schedule_counts_sampling_steps_not_model_calls(sampler):
    """After the step callback `i`, the next model call samples step `steps_done`: the
    sigma of that call is Euler's sigma of that step (Heun calls the model twice a step)."""
    euler, other = _pair(sampler, "Simple", SHIFTED, 5)
    pipe = SimpleNamespace(scheduler=other)
    for i in range(len(other.timesteps) - 1):
        assert float(other.timesteps[i + 1]) == float(euler.timesteps[steps_done(pipe, i)])
