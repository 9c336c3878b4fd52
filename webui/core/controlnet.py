"""ControlNet in the worker: prepare a job's units, feed their residuals to the UNet.

`prepare_control` (the worker, before the generation) runs each enabled unit's
preprocessor on its image (a unit without one uses the img2img init image, and the
inpaint mask for `inpaint_only`), at its processor resolution (pixel perfect: the
extension's estimate for the generation size), and loads its model (`ControlNetCache`).
Preprocessors with annotator weights run through the `annotate` function it is given
(the worker's `AnnotatorCache`, which downloads missing weights on first use).
The detected maps become extra images of the job's result (`JobControl.maps`), as the
extension appends them.

During sampling, `controlled` wraps one pipeline call (`Family.follow_steps(control=...)`):
the UNet's forward is wrapped so that every call (after the prompt hooks of
`core/composable.py` have laid out its rows: uncond first, then the conds) runs the
units' ControlNets on the call's latents, timestep and text embeddings, with the hint fit
to the call's size (the hires. fix pass gets its own), and passes the summed residuals as
`down_block_additional_residuals` / `mid_block_additional_residual`. As sd-webui-controlnet:

- a unit guides the steps whose fraction step/steps lies in [guidance_start, guidance_end];
- "Balanced": the weight on every residual and every row; "My prompt is more important":
  soft injection, residual i of 13 scaled by weight * 0.825 ** (12 - i) (SDXL: the first
  10 of these); "ControlNet is more important": soft injection on the conditional rows
  only (the unconditional rows get none, so CFG strengthens the control);
- in the hires. fix pass, canny and mlsd units always use soft injection (the extension's
  `high_res_fix_forced_soft_injection`);
- a 4-channel hint (inpaint) is given as `rgb * (1 - mask) - mask`; a 9-channel
  inpainting UNet gives the ControlNet its first 4 latent channels; an `inpaint_only`
  unit also keeps its image outside its mask in every prediction
  (`core/controlnet_inpaint.py`), unless the job has its own inpaint mask.

T2I-Adapter units run their adapter once per image size on the hint (a 1-channel adapter
gets the map's first channel) and pass its features, times the unit's weight while the
step is in [start, end], as `down_intrablock_additional_residuals`, as diffusers'
adapter pipelines do; with soft injection (a control mode other than "Balanced", and the
hires. fix rule above) feature i of 4 is scaled by weight x (0.25, 0.62, 0.825, 1.0)[i],
as the extension does; "ControlNet is more important" leaves the unconditional rows
without them.

The T2I style adapter (`t2ia_style_clipvision` and `t2iadapter_style_sd14v1`) appends its
tokens to the cross-attention context of the conditional rows (`core/t2i_style.py`); the
ControlNets of the same call see that context too, as in the extension.

IP-Adapter units (an `ip-adapter_clip_*` preprocessor and an IP-Adapter model) encode
their image with the CLIP vision encoder once per job and feed its tokens to the UNet's
cross-attention (`core/ip_adapter.py`); they make no map.

A ControlNet Union model (diffusers' `ControlNetUnionModel`) is called like the others with
the unit's mode (`core/controlnet_union.py`: its `union_control_type`, else its
preprocessor's control type) as xinsir's pipeline gives it: the hint in a list, the mode's
one-hot `control_type` and its index. Units sharing one union model share the loaded model
and run one after the other, each with its own mode (as the extension).

A unit's `effective_region_mask` restricts it to the mask's white area
(`core/control_region.py`): its residuals, features or image attention are multiplied by it.

Units with weight 0 or without a model do not touch the UNet (weight 0 equals no unit).

This module must never import a UI library.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..imaging.control_preprocessors import fit_map, preprocessor_named
from .control_region import ip_masks, masked_residuals, region_tensor
from .controlnet_inpaint import kept_prediction
from .controlnet_union import mode_index, unit_mode
from .controlnet_units import Annotate, ControlUnit, detect
from .ip_adapter import IpUnit, encode_reference, installed, tokens_for_call, uncond_rows
from .t2i_style import StyleUnit, encode_style, with_style

log = logging.getLogger(__name__)
_IMG2IMG_RESIZE = ("Just Resize", "Crop and Resize", "Resize and Fill", "Just Resize")
ADAPTER_SOFT = (0.25, 0.62, 0.825, 1.0)  # a T2I-Adapter's soft weights, by feature level


@dataclass
class PreparedUnit:
    unit: ControlUnit
    index: int
    detected: np.ndarray  # HWC uint8, 3 channels (4: inpaint, the mask last)
    resize_mode: str
    model: Any = None  # ControlNetModel; None: the unit only made its map
    hints: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    ip: IpUnit | None = None  # an IP-Adapter unit's image tokens (then `model` is None)
    features: dict[tuple[int, int], list] = field(default_factory=dict)  # T2I-Adapter's
    union: int | None = None  # a ControlNet Union's mode index (core/controlnet_union.py)
    keep: bool = False  # inpaint_only keeps the image outside its mask (controlnet_inpaint.py)
    origin: dict[tuple[int, int], tuple] = field(default_factory=dict)  # its latents, by size
    style: StyleUnit | None = None  # a T2I style adapter unit's tokens (then `model` is None)
    region: torch.Tensor | None = None  # its effective region mask (core/control_region.py)

    def hint(self, height: int, width: int) -> np.ndarray:
        if (height, width) not in self.hints:
            self.hints[(height, width)] = fit_map(self.detected, self.resize_mode, height, width)
        return self.hints[(height, width)]


@dataclass
class JobControl:
    units: list[PreparedUnit]
    size: tuple[int, int]  # the first pass's (height, width)
    maps: list[Image.Image] = field(default_factory=list)  # detected maps for the result

    @property
    def guiding(self) -> list[PreparedUnit]:
        return [u for u in self.units
                if u.model is not None or u.ip is not None or u.style is not None]  # fmt: skip

    @property
    def controlnets(self) -> list[PreparedUnit]:
        return [u for u in self.units if u.model is not None and not _is_adapter(u.model)]

    @property
    def adapters(self) -> list[PreparedUnit]:
        return [u for u in self.units if u.model is not None and _is_adapter(u.model)]

    @property
    def ip_units(self) -> list[IpUnit]:
        return [u.ip for u in self.units if u.ip is not None]

    @property
    def style_units(self) -> list[StyleUnit]:
        return [u.style for u in self.units if u.style is not None]


def prepare_control(params: Any, units: tuple[ControlUnit, ...], load: Callable[[Path], Any],
                    *, save_maps: bool = True,
                    clip: Callable[[Path], Any] | None = None,
                    annotate: Annotate | None = None) -> JobControl | None:  # fmt: skip
    """The job's units ready to run; `load(path)` gives a unit's model, `clip(path)` a
    CLIP vision encoder (IP-Adapter units), `annotate` the maps of the annotators with
    weights. None: no unit."""
    size = (params.height, params.width)
    init = list(getattr(params, "init_images", None) or [])
    prepared: list[PreparedUnit] = []
    maps: list[Image.Image] = []
    for index, unit in enumerate(units):
        if not unit.active:
            continue
        image, mode, mask = unit.image, unit.resize_mode, None
        if image is None and init:  # the extension: the img2img image, its resize mode
            image = init[0]
            mode = _IMG2IMG_RESIZE[int(getattr(params, "resize_mode", 0)) % 4]
            if preprocessor_named(unit.module).inpaint:  # the img2img mask is inpaint's only
                mask = getattr(params, "mask", None)
        if image is None:
            raise UserError(f"ControlNet unit {index}: no image (give one, or use img2img)")
        detected = detect(unit, image, mask, size, mode, seed=int(params.seed) + index,
                          annotate=annotate)  # fmt: skip
        model = load(Path(unit.model_path)) if unit.guides else None
        union, region = _union_index(unit, index, model), region_tensor(unit.effective_region_mask)
        part = PreparedUnit(unit, index, detected, mode, model, union=union, region=region)
        if _is_style(model) or preprocessor_named(unit.module).clip_model == "t2i-style":
            part = _style_part(part, image, clip)
        elif _is_ip(model) or preprocessor_named(unit.module).clip:
            part = _ip_part(part, image, clip)
        part.keep = _keeps(unit, model, params)
        prepared.append(part)
        if save_maps and unit.save_detected_map and part.ip is None and not _is_ip_module(unit):
            hint = part.hint(*size)
            maps.append(Image.fromarray(hint[:, :, :3] if hint.shape[2] == 4 else hint))
    if not prepared:
        return None
    return JobControl(prepared, size, maps)


def _keeps(unit: ControlUnit, model: Any, params: Any) -> bool:
    """Whether an inpaint_only unit keeps its image outside its mask: a ControlNet unit in
    a job without its own inpaint mask (that one keeps the area already)."""
    module = preprocessor_named(unit.module)
    return bool(module is not None and module.inpaint and model is not None
                and getattr(params, "mask", None) is None and not _is_adapter(model)
                and not _is_ip(model))  # fmt: skip


def _union_index(unit: ControlUnit, index: int, model: Any) -> int | None:
    """A ControlNet Union unit's mode index (None: not a union model)."""
    modes = getattr(getattr(model, "config", None), "num_control_type", None)
    if not modes or not hasattr(model, "task_embedding"):
        return None
    module = preprocessor_named(unit.module)
    mode = unit_mode(unit.union_control_type, module.tags if module else ())
    try:
        return mode_index(mode, int(modes), index, unit.model_label, unit.module)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _is_adapter(model: Any) -> bool:
    from diffusers import T2IAdapter

    return isinstance(model, T2IAdapter)


def _is_ip(model: Any) -> bool:
    return getattr(model, "kind", "") == "ip-adapter"


def _is_style(model: Any) -> bool:
    return getattr(model, "kind", "") == "t2i-style"


def _is_ip_module(unit: ControlUnit) -> bool:
    return bool(preprocessor_named(unit.module).clip)


def _ip_part(part: PreparedUnit, image: Image.Image, clip: Callable | None) -> PreparedUnit:
    """An IP-Adapter unit's image tokens (a unit without a model: none, as its map)."""
    unit, model = part.unit, part.model
    if model is None:
        return part
    n = part.index
    if not _is_ip_module(unit):
        raise UserError(f"ControlNet unit {n}: {unit.model_label} is an IP-Adapter; choose an "
                        "ip-adapter_clip_* preprocessor")  # fmt: skip
    if not _is_ip(model):
        raise UserError(f"ControlNet unit {n}: {unit.module} needs an IP-Adapter model, not "
                        f"{unit.model_label}")  # fmt: skip
    if clip is None or unit.clip_vision_path is None:
        raise UserError(f"ControlNet unit {n}: no CLIP vision model for {unit.module}")
    ip = encode_reference(unit, model, clip(Path(unit.clip_vision_path)), image)
    return PreparedUnit(unit, n, part.detected, part.resize_mode, None, ip=ip)


def _style_part(part: PreparedUnit, image: Image.Image, clip: Callable | None) -> PreparedUnit:
    """A T2I style adapter unit's tokens (a unit without a model: none, as its map)."""
    unit, model, n = part.unit, part.model, part.index
    if model is None:
        return part
    if preprocessor_named(unit.module).clip_model != "t2i-style":
        raise UserError(f"ControlNet unit {n}: {unit.model_label} is the T2I style adapter; "
                        "choose the t2ia_style_clipvision preprocessor")  # fmt: skip
    if not _is_style(model):
        raise UserError(f"ControlNet unit {n}: {unit.module} needs the T2I style adapter, not "
                        f"{unit.model_label}")  # fmt: skip
    if unit.effective_region_mask is not None:
        raise UserError(f"ControlNet unit {n}: effective_region_mask: the T2I style adapter "
                        "has no region mask (nor in the extension)")  # fmt: skip
    if clip is None or unit.clip_vision_path is None:
        raise UserError(f"ControlNet unit {n}: no CLIP vision model for {unit.module}")
    style = encode_style(unit, model, clip(Path(unit.clip_vision_path)), image)
    return PreparedUnit(unit, n, part.detected, part.resize_mode, None, style=style)


def soft_injection(unit: ControlUnit, hires: bool) -> bool:
    """Whether a unit's residuals get the soft weights: a control mode other than
    "Balanced", or a canny or mlsd unit in the hires. fix pass (as the extension)."""
    forced = hires and ("canny" in unit.module or "mlsd" in unit.module)
    return unit.control_mode != "Balanced" or forced


def _scales(unit: ControlUnit, count: int, soft: bool) -> list[float]:
    if not soft:
        return [unit.weight] * count
    return [unit.weight * 0.825 ** float(12 - i) for i in range(13)][:count]


def _adapter_scales(unit: ControlUnit, count: int, soft: bool) -> list[float]:
    return [unit.weight * (ADAPTER_SOFT[min(i, 3)] if soft else 1.0) for i in range(count)]


def _hint_tensor(hint: np.ndarray, rows: int, like: torch.Tensor) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(hint)).float().div(255.0)
    tensor = tensor.permute(2, 0, 1)[None]
    if tensor.shape[1] == 4:  # ControlNet's inpaint protocol
        color, mask = tensor[:, :3], (tensor[:, 3:4] > 0.5).float()
        tensor = color * (1 - mask) - mask
    return tensor.to(like.device, like.dtype).expand(rows, -1, -1, -1)


def _cond_inputs(part: PreparedUnit, hint: torch.Tensor) -> dict[str, Any]:
    """The hint as the model takes it; a union model also gets its mode (one-hot per row)."""
    if part.union is None:
        return {"controlnet_cond": hint}
    modes = torch.zeros(hint.shape[0], part.model.config.num_control_type, device=hint.device,
                        dtype=hint.dtype)  # fmt: skip
    modes[:, part.union] = 1
    return {"controlnet_cond": [hint], "control_type": modes, "control_type_idx": [part.union]}


@torch.no_grad()
def _adapter_features(part: PreparedUnit, height: int, width: int) -> list[torch.Tensor]:
    """A T2I-Adapter's features of the unit's hint at this size (computed once)."""
    if (height, width) not in part.features:
        model = part.model
        device = next(model.parameters()).device
        like = torch.empty(0, device=device, dtype=model.dtype)
        hint = _hint_tensor(part.hint(height, width)[:, :, :3], 1, like)
        channels = model.config.in_channels
        part.features[(height, width)] = list(model(hint[:, :channels]))
    return part.features[(height, width)]


class _ControlState:
    """One pipeline call's step counter and the wrapped UNet forward."""

    def __init__(self, control: JobControl, pipe: Any, batch_size: int, first_step: int,
                 conds: int = 1):  # fmt: skip
        self.control, self.pipe, self.batch = control, pipe, batch_size
        self.step, self.conds = first_step, conds
        self.latent_scale = int(getattr(pipe, "vae_scale_factor", 8) or 8)  # pixels per latent
        self.ip_processors: list[Any] = []  # set while the IP-Adapter processors are on

    def _cond_rows_only(self, outputs: list[torch.Tensor], rows: int) -> list[torch.Tensor]:
        """The outputs with the call's unconditional rows (the first ones) zeroed."""
        empty = uncond_rows(rows, self.batch, self.conds)
        if not empty:
            return outputs
        keep = torch.ones(rows, 1, 1, 1, device=outputs[0].device, dtype=outputs[0].dtype)
        keep[:empty] = 0
        return [o * keep for o in outputs]

    def in_hires(self, sample: torch.Tensor) -> bool:
        """Whether a call is the hires. fix pass's (latents of another size than the first
        pass's; the hints are fit to 8 pixels per latent, the ControlNets' own factor)."""
        scale = self.latent_scale
        return (sample.shape[2] * scale, sample.shape[3] * scale) != self.control.size

    def fraction(self) -> float:
        return self.step / max(int(getattr(self.pipe, "num_timesteps", 0) or 0), 1)

    def wrap(self, callback: Callable | None) -> Callable:
        def on_step_end(pipe, i, t, tensors):
            self.step = i + 1
            return callback(pipe, i, t, tensors) if callback else {}

        return on_step_end

    def residuals(self, sample, timestep, context, added) -> tuple[list, Any] | None:
        fraction = self.fraction()
        rows, height, width = sample.shape[0], sample.shape[2] * 8, sample.shape[3] * 8
        hires = self.in_hires(sample)
        total_down: list | None = None
        total_mid = None
        for part in self.control.controlnets:
            unit, model = part.unit, part.model
            if not unit.guidance_start <= fraction <= unit.guidance_end or unit.weight <= 0:
                continue
            x = sample[:, : model.config.in_channels]
            hint = _hint_tensor(part.hint(height, width), rows, x).to(model.dtype)
            down, mid = model(x.to(model.dtype), timestep, encoder_hidden_states=context.to(model.dtype),
                              conditioning_scale=1.0, added_cond_kwargs=added, return_dict=False,
                              **_cond_inputs(part, hint))  # fmt: skip
            outputs = [*down, mid]
            scales = _scales(unit, len(outputs), soft_injection(unit, hires))
            outputs = masked_residuals([o * s for o, s in zip(outputs, scales, strict=False)],
                                       part.region)  # fmt: skip
            if unit.control_mode == "ControlNet is more important":
                outputs = self._cond_rows_only(outputs, rows)
            if total_down is None:
                total_down, total_mid = outputs[:-1], outputs[-1]
            else:
                total_down = [a + b for a, b in zip(total_down, outputs[:-1], strict=True)]
                total_mid = total_mid + outputs[-1]
        return None if total_down is None else (total_down, total_mid)

    def adapter_residuals(self, sample: torch.Tensor) -> list[torch.Tensor] | None:
        """The T2I-Adapter units' summed features for this call (None: none guides)."""
        fraction = self.fraction()
        rows, height, width = sample.shape[0], sample.shape[2] * 8, sample.shape[3] * 8
        hires = self.in_hires(sample)
        total: list[torch.Tensor] | None = None
        for part in self.control.adapters:
            unit = part.unit
            if not unit.guidance_start <= fraction <= unit.guidance_end or unit.weight <= 0:
                continue
            features = _adapter_features(part, height, width)
            scales = _adapter_scales(unit, len(features), soft_injection(unit, hires))
            outputs = [f.to(sample.dtype).expand(rows, -1, -1, -1) * s
                       for f, s in zip(features, scales, strict=True)]  # fmt: skip
            outputs = masked_residuals(outputs, part.region)
            if unit.control_mode == "ControlNet is more important":
                outputs = self._cond_rows_only(outputs, rows)
            total = (
                outputs if total is None else [a + b for a, b in zip(total, outputs, strict=True)]
            )
        return total

    def forward(self, original: Callable) -> Callable:
        def forward(sample, timestep, *args, **kwargs):
            context = kwargs.get("encoder_hidden_states", args[0] if args else None)
            if self.control.style_units:  # the style tokens, before anything reads the context
                empty = uncond_rows(sample.shape[0], self.batch, self.conds)
                context = with_style(context, self.control.style_units, empty, self.fraction())
                args = _set_context(args, kwargs, context)
            adapted = self.adapter_residuals(sample)
            if adapted is not None:
                kwargs["down_intrablock_additional_residuals"] = adapted
            found = self.residuals(sample, timestep, context, kwargs.get("added_cond_kwargs"))
            if found is not None:
                dtype = sample.dtype
                kwargs["down_block_additional_residuals"] = [r.to(dtype) for r in found[0]]
                kwargs["mid_block_additional_residual"] = found[1].to(dtype)
            ip_units = self.control.ip_units
            if (
                ip_units and self.ip_processors
            ):  # diffusers' IP-Adapter form: (text, [image tokens per adapter])
                rows = sample.shape[0]
                empty = uncond_rows(rows, self.batch, self.conds)
                tokens = tokens_for_call(ip_units, self.ip_processors, rows, empty,
                                         self.fraction(), context)  # fmt: skip
                regions = [ip.region for ip in ip_units]
                tokens, masks = ip_masks(regions, tokens, tuple(sample.shape[2:]))
                if masks is not None:
                    extra = kwargs.get("cross_attention_kwargs") or {}
                    kwargs["cross_attention_kwargs"] = {**extra, "ip_adapter_masks": masks}
                args = _set_context(args, kwargs, (context, tokens))
            result = original(sample, timestep, *args, **kwargs)
            return self.keep_unmasked(result, sample, timestep)

        return forward

    def keep_unmasked(self, result: Any, sample: torch.Tensor, timestep: Any) -> Any:
        """The UNet's result with the inpaint_only units' unmasked areas kept."""
        keeping = [p for p in self.control.controlnets if p.keep and p.unit.weight > 0]
        if not keeping:
            return result
        pred = result[0] if isinstance(result, tuple) else result.sample
        pred = kept_prediction(keeping, self.pipe, sample, timestep, pred)
        if isinstance(result, tuple):
            return (pred, *result[1:])
        result.sample = pred
        return result


def _set_context(args: tuple, kwargs: dict, value: Any) -> tuple:
    """The UNet call's positional args with its context (`encoder_hidden_states`: the
    first one when given positionally, else in `kwargs`, set in place) set to `value`."""
    if args:
        return (value, *args[1:])
    kwargs["encoder_hidden_states"] = value
    return args


@contextmanager
def controlled(inner: AbstractContextManager, control: JobControl | None, pipe: Any,
               batch_size: int, first_step: int = 0, conds: int = 1) -> Iterator[Callable]:  # fmt: skip
    """`inner` (the prompt hooks of one pipeline call) plus the job's ControlNet units;
    `conds`: the prompt's AND sub-prompts (the rows per image of a UNet call)."""
    if control is None or not control.guiding:
        with inner as wrap:
            yield wrap
        return
    unet = pipe.unet
    state = _ControlState(control, pipe, batch_size, first_step, conds)
    previous = unet.__dict__.get("forward")
    unet.forward = state.forward(unet.forward)
    try:
        with installed(unet, control.ip_units) as state.ip_processors, inner as wrap:
            yield lambda callback: wrap(state.wrap(callback))
    finally:
        if previous is None:
            del unet.forward
        else:
            unet.forward = previous


def infotext(control: JobControl | None) -> dict[str, str]:
    """The extension's `ControlNet N` fields (N: the unit's place among the job's units)."""
    if control is None:
        return {}
    return {f"ControlNet {part.index}": part.unit.serialize() for part in control.units}
