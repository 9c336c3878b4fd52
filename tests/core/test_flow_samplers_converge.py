"""Heun, DPM++ 2M and UniPC solve the same flow as Euler: on each family's tiny model
(diffusers' own pipeline, the same noise and sigmas) their latents differ from Euler's,
and the difference shrinks as the steps grow (from 8 to 40 steps: Euler's own error,
first order, dominates it), toward the one result the flow has."""

from __future__ import annotations

import pytest
import torch

from webui.core.flow_euler import flow_euler_choice, flow_scheduler

SAMPLERS = ("Heun", "DPM++ 2M", "UniPC")


def _pipe(family: str):
    if family == "flux":
        from webui.model_manager.tiny_flux import build_tiny_flux

        return build_tiny_flux(seed=0), {"guidance_scale": 3.5}
    if family == "sd3":
        from webui.model_manager.tiny_sd3 import build_tiny_sd3

        return build_tiny_sd3(seed=0, medium=True), {"guidance_scale": 4.0}
    from webui.model_manager.tiny_zimage import build_tiny_zimage

    return build_tiny_zimage(seed=0), {"guidance_scale": 1.0}


@pytest.mark.parametrize("family", ["flux", "sd3", "zimage"])
def test_samplers_converge_to_eulers_latents(family):
    pipe, call = _pipe(family)
    base = dict(pipe.scheduler.config)

    def latents(sampler: str, steps: int) -> torch.Tensor:
        pipe.scheduler = flow_scheduler(flow_euler_choice(family, sampler, "Simple"), base)
        generator = torch.Generator().manual_seed(3)
        return pipe("a cat", num_inference_steps=steps, height=64, width=64, generator=generator,
                    output_type="latent", **call).images  # fmt: skip

    few, many = latents("Euler", 8), latents("Euler", 40)
    for sampler in SAMPLERS:
        at_few = float((latents(sampler, 8) - few).abs().mean())
        at_many = float((latents(sampler, 40) - many).abs().mean())
        assert not torch.isnan(torch.tensor(at_many)), sampler
        assert at_few > 0.002 and at_many < at_few / 2, (sampler, at_few, at_many)
