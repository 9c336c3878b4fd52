"""`core.flow_shift` and the families' scheduler options: no shift keeps each family's own
sigmas (FLUX.1 dev's resolution-dependent shift, schnell's none, Z-Image's 3); a set shift
is a fixed shift that equals ComfyUI's / Forge's FLUX shift mu = ln(shift); SD 1.x and
SDXL refuse one."""

from __future__ import annotations

import math

import numpy as np
import pytest
from diffusers import FlowMatchEulerDiscreteScheduler

from webui.core.errors import ParamError
from webui.core.families.flux import FLUX1, FLUX_SCHEDULER, SCHNELL_SCHEDULER
from webui.core.families.sd import SD1
from webui.core.families.sdxl import SDXL
from webui.core.families.zimage import ZIMAGE, ZIMAGE_SCHEDULER
from webui.core.params import Txt2ImgParams


def _sigmas(family, base, params, mu: float | None = None) -> list[float]:
    """The sigmas the job's scheduler gives (as `processing.txt2img` builds it)."""
    choice = family.sampler("Euler", None)
    config = {**base, **family.scheduler_options(params)}
    scheduler = family.scheduler(choice, config, 4)
    scheduler.set_timesteps(4, mu=mu)
    return scheduler.sigmas.tolist()


def _own(base, mu: float | None = None) -> list[float]:
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(dict(base))
    scheduler.set_timesteps(4, mu=mu)
    return scheduler.sigmas.tolist()


def test_no_shift_keeps_each_familys_own_sigmas():
    none = Txt2ImgParams()
    assert FLUX1.scheduler_options(none) == {} and ZIMAGE.scheduler_options(none) == {}
    assert _sigmas(FLUX1, FLUX_SCHEDULER, none, mu=0.46) == _own(FLUX_SCHEDULER, mu=0.46)
    assert _sigmas(FLUX1, SCHNELL_SCHEDULER, none, mu=0.46) == _own(SCHNELL_SCHEDULER)
    assert _sigmas(ZIMAGE, ZIMAGE_SCHEDULER, none, mu=0.46) == _own(ZIMAGE_SCHEDULER)
    assert _sigmas(ZIMAGE, ZIMAGE_SCHEDULER, Txt2ImgParams(shift=3)) == _own(ZIMAGE_SCHEDULER)


def test_a_flux_shift_is_forges_fixed_shift_whatever_the_image_size():
    params = Txt2ImgParams(shift=2.5)
    for base in (FLUX_SCHEDULER, SCHNELL_SCHEDULER):
        small = _sigmas(FLUX1, base, params, mu=0.46)  # what the pipeline passes for 64x64
        large = _sigmas(FLUX1, base, params, mu=1.15)  # and for 1024x1024
        assert small == large != _own(FLUX_SCHEDULER, mu=0.46)
        # ComfyUI's / Forge's ModelSamplingFlux with mu = ln(shift): the same curve (diffusers
        # ends a fixed-shift schedule at the shifted smallest sigma, as for SD 3.5)
        assert small == pytest.approx(_own(FLUX_SCHEDULER, mu=math.log(2.5)), abs=5e-3)
    assert _sigmas(ZIMAGE, ZIMAGE_SCHEDULER, Txt2ImgParams(shift=6)) != _own(ZIMAGE_SCHEDULER)


def test_families_without_flow_matching_refuse_a_shift():
    for family in (SD1, SDXL):
        assert family.scheduler_options(Txt2ImgParams()) == {}
        with pytest.raises(ParamError) as caught:
            family.scheduler_options(Txt2ImgParams(shift=3.0))
        assert caught.value.field == "shift" and family.label in caught.value.message


def test_infotext_fields():
    assert "Shift" not in FLUX1.infotext_fields(Txt2ImgParams())
    assert FLUX1.infotext_fields(Txt2ImgParams(shift=2.0))["Shift"] == 2.0
    assert ZIMAGE.infotext_fields(Txt2ImgParams())["Shift"] == 3.0
    assert ZIMAGE.infotext_fields(Txt2ImgParams(shift=5.0))["Shift"] == 5.0


@pytest.mark.parametrize("schedule", ["Simple", "Normal", "SGM Uniform", "Beta", "Karras",
                                      "Exponential"])  # fmt: skip
def test_z_image_schedules_are_fluxs_at_the_same_shift(schedule):
    """Z-Image takes FLUX.1's schedule types through the same code: at the same shift its
    scheduler gives FLUX's sigmas (both pipelines pass linspace(1, 1/n, n)), and a spaced
    schedule differs from Simple."""
    params, steps = Txt2ImgParams(shift=3.0), 6
    given = np.linspace(1.0, 1 / steps, steps)

    def sigmas(family, base, name):
        config = {**base, **family.scheduler_options(params)}
        scheduler = family.scheduler(family.sampler("Euler", name), config, steps)
        scheduler.set_timesteps(sigmas=given, mu=0.46)
        return scheduler.sigmas.tolist()

    zimage = sigmas(ZIMAGE, ZIMAGE_SCHEDULER, schedule)
    assert zimage == pytest.approx(sigmas(FLUX1, FLUX_SCHEDULER, schedule), abs=1e-6)
    simple = sigmas(ZIMAGE, ZIMAGE_SCHEDULER, "Simple")
    assert (zimage == simple) == (schedule in ("Simple", "Normal", "SGM Uniform"))
    assert zimage[0] == pytest.approx(1.0) and zimage[-1] == 0.0
