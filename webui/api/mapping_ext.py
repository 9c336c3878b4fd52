"""A1111's script and extension listings: the bodies of GET /scripts, /script-info and
/extensions.

The scripts a request may name come from the generation service (extension scripts per
tab, and img2img's built-in "SD upscale"), so the listing and what POST /txt2img and
/img2img accept are the same list. Script args themselves travel to the service as they
were sent (`webui.api.mapping.generation_request`).

This module must never import torch or diffusers.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ..core import soft_inpainting as soft
from ..core.controlnet_units import ControlUnit
from ..core.params_detailer import ADETAILER, DetailerUnit, ordinal_suffix
from ..ext.api import Extension
from ..ext.host import ExtensionHost
from ..services.controlnet import CONTROLNET
from ..services.generation import SD_UPSCALE, GenerationService

GENERATION_TABS = ("txt2img", "img2img")


def scripts_listing(generation: GenerationService) -> dict[str, list[str]]:
    """A1111's GET /scripts: selectable script titles per tab (lowercase, as A1111)."""
    return {
        tab: [*(title.lower() for title in generation.scripts(tab)), CONTROLNET]
        for tab in GENERATION_TABS
    }  # ControlNet: built in, always on (A1111 lists it)


def _arg_info(control) -> dict[str, Any]:
    return {
        "name": control.name,
        "label": control.label,
        "value": control.default,
        "minimum": control.minimum,
        "maximum": control.maximum,
        "step": control.step,
        "choices": list(control.choices) or None,
    }


def script_info(generation: GenerationService) -> list[dict[str, Any]]:
    """A1111's GET /script-info, one entry per tab an extension appears in, and SD upscale."""
    sd_upscale = {"name": SD_UPSCALE.lower(), "extension": None, "is_alwayson": False,
                  "is_img2img": True,
                  "args": [_arg_info(c) for c in generation.sd_upscale_controls()]}  # fmt: skip
    extensions = generation.extensions
    if extensions is None:
        return [*_adetailer_info(), *_controlnet_info(), sd_upscale, _soft_inpainting()]
    out = []
    for ext in extensions.active():
        if not ext.controls and not ext.is_script:
            continue
        for tab in _tabs(ext):
            out.append({
                "name": ext.display_title.lower(),
                "extension": ext.name,
                "is_alwayson": not ext.is_script,
                "is_img2img": tab == "img2img",
                "args": [_arg_info(c) for c in ext.controls],
            })  # fmt: skip
    return [*out, *_adetailer_info(), *_controlnet_info(), sd_upscale, _soft_inpainting()]


def _controlnet_info() -> list[dict[str, Any]]:
    """The built-in ControlNet, always on in both tabs: one unit dict per arg (defaults)."""
    unit = {k: v for k, v in asdict(ControlUnit()).items()
            if k not in ("model_path", "model_label")}  # fmt: skip
    args = [{"name": f"unit{n}", "label": f"ControlNet Unit {n}", "value": unit,
             "minimum": None, "maximum": None, "step": None, "choices": None}
            for n in range(3)]  # fmt: skip
    return [
        {
            "name": CONTROLNET,
            "extension": None,
            "is_alwayson": True,
            "is_img2img": tab == "img2img",
            "args": args,
        }
        for tab in GENERATION_TABS
    ]


def _adetailer_info() -> list[dict[str, Any]]:
    """The built-in ADetailer, always on in both tabs: its args as the extension takes
    them (enable, skip img2img, then one dict of ad_* fields per unit, defaults shown)."""
    unit = {k: v for k, v in asdict(DetailerUnit()).items() if k != "model_path"}
    args = [
        {"name": "ad_enable", "label": "Enable ADetailer", "value": False, "minimum": None,
         "maximum": None, "step": None, "choices": None},
        {"name": "skip_img2img", "label": "Skip img2img", "value": False, "minimum": None,
         "maximum": None, "step": None, "choices": None},
        *({"name": f"unit{n + 1}", "label": f"ADetailer unit{ordinal_suffix(n)}".strip(),
           "value": unit, "minimum": None, "maximum": None, "step": None, "choices": None}
          for n in range(2)),
    ]  # fmt: skip
    return [{"name": ADETAILER.lower(), "extension": None, "is_alwayson": True,
             "is_img2img": tab == "img2img", "args": args} for tab in GENERATION_TABS]  # fmt: skip


def _soft_inpainting() -> dict[str, Any]:
    """A1111's built-in "Soft Inpainting" (always on in img2img), args in its order."""
    enabled = {"name": "soft_inpainting_enabled", "label": soft.ENABLED_LABEL, "value": False,
               "minimum": None, "maximum": None, "step": None, "choices": None}  # fmt: skip
    sliders = [
        {"name": s.name, "label": s.label, "value": getattr(soft.DEFAULTS, s.name),
         "minimum": s.minimum, "maximum": s.maximum, "step": s.step, "choices": None}
        for s in soft.SETTINGS
    ]  # fmt: skip
    return {"name": soft.API_KEY, "extension": None, "is_alwayson": True, "is_img2img": True,
            "args": [enabled, *sliders]}  # fmt: skip


def _tabs(ext: Extension) -> tuple[str, ...]:
    tabs = ext.section.tabs if ext.section else GENERATION_TABS
    return tuple(t for t in GENERATION_TABS if t in tabs)


def extensions_listing(extensions: ExtensionHost | None) -> list[dict[str, Any]]:
    """A1111's GET /extensions (built-ins included, marked by `source`)."""
    if extensions is None:
        return []
    from ..ext import git

    out = []
    for record in extensions.records:
        info = git.info(record.path) if record.path is not None else None
        out.append({
            "name": record.name,
            "title": record.title,
            "source": record.source,
            "remote": info.remote if info else None,
            "branch": info.branch if info else None,
            "commit_hash": info.commit if info else None,
            "commit_date": info.date if info else None,
            "version": record.version,
            "enabled": record.enabled,
            "error": record.error,
        })  # fmt: skip
    return out
