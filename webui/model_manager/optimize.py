"""Applying a `MemoryPlan` to a loaded pipeline: attention, precision, offload, speed.

`prepare_pipeline` is what the model manager calls after loading; `lower_memory` is the
temporary low-memory mode of an out-of-memory retry; `upcast_vae` moves a VAE that
produced NaN in half precision to float32 for good. The plan itself (which flags mean
what on this machine) is decided in `memory.py`.

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from .cpu_precision import run_denoiser_in
from .memory import ATTENTION_LABELS, MemoryPlan, dtype_name

log = logging.getLogger(__name__)


def prepare_pipeline(pipe, plan: MemoryPlan, medvram_sdxl: bool) -> list[str]:
    """Apply the plan to a pipeline just loaded on `plan.load_device`; returns what it did.

    `medvram_sdxl`: the model's family is one that --medvram-sdxl offloads."""
    done = [f"attention: {apply_attention(pipe, plan)}"]
    if plan.half_storage:
        store_weights_half(pipe)
        done.append("weights fp16 in RAM")
    elif plan.vae != plan.dtype:
        pipe.vae.to(plan.vae)
        install_vae_dtype_adapter(pipe.vae)
        done.append(f"VAE {dtype_name(plan.vae)}")
    if plan.upcast_sampling:
        upcast_sampling(pipe)
        done.append("upcast sampling")
    if plan.unet != plan.dtype and run_denoiser_in(pipe, plan.unet):  # CPU bf16
        done.append(f"UNet {dtype_name(plan.unet)}")
    if plan.channels_last:
        denoiser(pipe).to(memory_format=torch.channels_last)
        done.append("channels-last")
    offload = plan.offload_for(medvram_sdxl)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=plan.device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=plan.device)
    elif plan.load_device != plan.device:
        pipe.to(plan.device)  # --medvram-sdxl with a model that is not SDXL
    if offload != "none":
        done.append(f"{offload} offload")
    if plan.compile:
        denoiser(pipe).compile()
        done.append("torch.compile")
    return done


def apply_attention(pipe, plan: MemoryPlan) -> str:
    """Set the attention implementation of a pipeline; returns the backend's label."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    if getattr(pipe, "unet", None) is None:  # a transformer (FLUX): its own SDPA processors
        pipe.vae.set_attn_processor(AttnProcessor2_0())
        return ATTENTION_LABELS["sdpa"]
    if plan.attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    elif plan.attention == "sliced":
        pipe.unet.set_attn_processor(AttnProcessor2_0())
        pipe.enable_attention_slicing()
    elif plan.attention == "sdpa-no-mem":
        pipe.unet.set_attn_processor(SdpaNoMemProcessor())
    else:
        # diffusers' default processor on torch 2 is SDPA; make it explicit
        pipe.unet.set_attn_processor(AttnProcessor2_0())
    if plan.attention != "xformers":
        # the VAE's attention has one head: slicing over heads saves nothing there, and
        # SDPA's CPU (flash) and CUDA kernels never hold the full attention matrix
        pipe.vae.set_attn_processor(AttnProcessor2_0())
    return ATTENTION_LABELS[plan.attention]


def _sdpa_no_mem_processor_class():
    from diffusers.models.attention_processor import AttnProcessor2_0

    class _SdpaNoMem(AttnProcessor2_0):
        """SDPA restricted to the flash and math kernels (A1111's sdp-no-mem)."""

        def __call__(self, *args, **kwargs):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]):
                return super().__call__(*args, **kwargs)

    return _SdpaNoMem


def SdpaNoMemProcessor():  # noqa: N802 - reads as a class at the call sites
    return _sdpa_no_mem_processor_class()()


def denoiser(pipe) -> torch.nn.Module:
    """The pipeline's denoising model: its UNet, or its transformer (FLUX)."""
    unet = getattr(pipe, "unet", None)
    return unet if unet is not None else pipe.transformer


def text_encoders(pipe) -> list[torch.nn.Module]:
    """Every text encoder of a pipeline (`text_encoder`, `text_encoder_2`, ...)."""
    return [
        module
        for name, module in pipe.components.items()
        if name.startswith("text_encoder") and isinstance(module, torch.nn.Module)
    ]


def store_weights_half(pipe) -> None:
    """UNet and VAE weights stay float16 in RAM; each layer casts them to float32 to run.

    The text encoders (small) stay float32, so the pipeline's tensors stay float32.
    """
    for encoder in text_encoders(pipe):
        encoder.to(torch.float32)
    for model in (denoiser(pipe), pipe.vae):
        store_model_half(model)


def store_model_half(model) -> None:
    """fp16 storage, fp32 compute for every conv/linear/embedding layer of a model.

    Each layer computes with a temporary fp32 copy of its weights and then gets its own
    fp16 tensors back untouched (diffusers' layerwise casting would cast back, copying
    every weight once more and keeping the file's pages besides). Norm layers are small
    and stay fp32. `model.dtype` reports float32, the dtype it computes in.
    """
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.layerwise_casting import _LAYERWISE_CASTING_HOOK, LayerwiseCastingHook

    class KeepStorage(LayerwiseCastingHook):
        def pre_forward(self, module, *args, **kwargs):
            self.kept = [(p, p.data) for p in module.parameters(recurse=False)]
            for param, data in self.kept:
                param.data = data.to(self.compute_dtype)
            return args, kwargs

        def post_forward(self, module, output):
            for param, data in self.kept:
                param.data = data
            self.kept = []
            return output

    model.to(torch.float16)  # a no-op for weights loaded in fp16 (they stay as loaded)
    layers = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding)
    for module in model.modules():
        if isinstance(module, layers):
            hook = KeepStorage(torch.float16, torch.float32, non_blocking=False)
            HookRegistry.check_if_exists_or_initialize(module).register_hook(
                hook, _LAYERWISE_CASTING_HOOK
            )
        else:  # norms and the like: small, keep them float32
            for param in module.parameters(recurse=False):
                if param.dtype == torch.float16:
                    param.data = param.data.float()


def install_vae_dtype_adapter(vae) -> None:
    """Let a VAE in another dtype than the UNet take and give the pipeline's tensors.

    Inputs are cast to the VAE's current dtype; what `encode` returns goes back to the
    dtype it was given (so the sampler's latents keep the UNet's dtype). Idempotent.
    """
    if getattr(vae, "_webui_dtype_adapter", False):
        return
    given: list[torch.dtype] = []  # the dtype encode was called with

    def encode_in(module, args, kwargs):
        if args and _is_float(args[0]):
            given[:] = [args[0].dtype]
        return _cast_first(module, args, kwargs)

    def encode_out(module, args, output):
        return output.to(given.pop()) if given and torch.is_tensor(output) else output

    encode_last = vae.quant_conv if vae.quant_conv is not None else vae.encoder
    decode_first = vae.post_quant_conv if vae.post_quant_conv is not None else vae.decoder
    vae.encoder.register_forward_pre_hook(encode_in, with_kwargs=True)
    encode_last.register_forward_hook(encode_out)
    decode_first.register_forward_pre_hook(_cast_first, with_kwargs=True)
    vae._webui_dtype_adapter = True


def _cast_first(module, args, kwargs):
    if args and _is_float(args[0]):
        args = (args[0].to(_param_dtype(module)), *args[1:])
    return args, kwargs


def _param_dtype(module) -> torch.dtype:
    for param in module.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


def upcast_sampling(pipe) -> None:
    """A1111's --upcast-sampling: fp16 UNet, fp32 text encoders, latents and sampler math."""
    for encoder in text_encoders(pipe):
        encoder.to(torch.float32)
    unet = pipe.unet

    def cast(value, dtype):
        if isinstance(value, dict):  # SDXL's added_cond_kwargs
            return {k: cast(v, dtype) for k, v in value.items()}
        return value.to(dtype) if _is_float(value) else value

    def cast_in(module, args, kwargs):
        dtype = _param_dtype(module)
        return tuple(cast(a, dtype) for a in args), cast(kwargs, dtype)

    def cast_out(module, args, kwargs, output):
        if hasattr(output, "sample"):
            output.sample = output.sample.float()
            return output
        if isinstance(output, tuple):
            return (output[0].float(), *output[1:])
        return output

    unet.register_forward_pre_hook(cast_in, with_kwargs=True)
    unet.register_forward_hook(cast_out, with_kwargs=True)


def _is_float(value) -> bool:
    return torch.is_tensor(value) and value.is_floating_point()


def upcast_vae(pipe) -> None:
    """Move a half-precision VAE to float32 for good (after it produced NaN)."""
    pipe.vae.to(torch.float32)
    install_vae_dtype_adapter(pipe.vae)


@contextmanager
def lower_memory(pipe, plan: MemoryPlan, medvram_sdxl: bool) -> Iterator[list[str]]:
    """Temporarily save memory beyond the plan (an out-of-memory retry); yields what it did.

    On CUDA without offloading, the whole model moves to model CPU offload for the run.
    (VAE tiling and slicing are the decoder's part: `core.run.MemoryRun.low_memory`.)
    """
    measures: list[str] = []
    offloaded = plan.device == "cuda" and plan.offload_for(medvram_sdxl) == "none"
    if offloaded:
        pipe.enable_model_cpu_offload(device=plan.device)
        measures.append("model offload")
    try:
        yield measures
    finally:
        if offloaded:
            pipe.remove_all_hooks()
            pipe.to(plan.device)


@contextmanager
def token_merging(pipe, ratio: float) -> Iterator[bool]:
    """Token merging (tomesd) on the pipeline's UNet for one run; yields whether it is on."""
    if ratio <= 0:
        yield False
        return
    import tomesd

    tomesd.apply_patch(pipe, ratio=ratio)
    try:
        yield True
    finally:
        tomesd.remove_patch(pipe)
