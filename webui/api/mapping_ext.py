"""A1111's script fields <-> extensions: script_name, script_args, alwayson_scripts, lists.

`extension_params` gives a request's params their `script` and `extension_args` through
the extension host (args by name; a positional list is mapped onto the names the
extension declares). `scripts_listing`, `script_info` and `extensions_listing` are the
bodies of GET /scripts, /script-info and /extensions.

This module must never import torch or diffusers.
"""

from __future__ import annotations

from typing import Any

from ..ext.api import ArgError, Extension
from ..ext.host import ExtensionHost

GENERATION_TABS = ("txt2img", "img2img")


class ScriptFieldError(ValueError):
    """A bad script field; `loc` is its path in the request body."""

    def __init__(self, loc: tuple[str, ...], message: str):
        super().__init__(f"{'.'.join(loc)}: {message}")
        self.loc = loc
        self.message = message


def extension_params(req: Any, params: Any, extensions: ExtensionHost | None) -> Any:
    """`params` with the script and extension args the request names (by name)."""
    if extensions is None:
        if req.script_name:
            raise ScriptFieldError(("script_name",), f"script not found: {req.script_name}")
        if req.alwayson_scripts:
            name = str(next(iter(req.alwayson_scripts)))
            raise ScriptFieldError(
                ("alwayson_scripts", name), f"always-on script not found: {name}"
            )
        return params
    try:
        return extensions.prepare(params, script=req.script_name, script_args=req.script_args,
                                  alwayson=req.alwayson_scripts or {})  # fmt: skip
    except ArgError as exc:
        raise ScriptFieldError(exc.loc, exc.message) from None


def scripts_listing(extensions: ExtensionHost | None) -> dict[str, list[str]]:
    """A1111's GET /scripts: selectable script titles per tab (lowercase, as A1111)."""
    if extensions is None:
        return {tab: [] for tab in GENERATION_TABS}
    return {
        tab: [e.display_title.lower() for e in extensions.scripts(tab)] for tab in GENERATION_TABS
    }


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


def script_info(extensions: ExtensionHost | None) -> list[dict[str, Any]]:
    """A1111's GET /script-info, one entry per tab an extension appears in."""
    if extensions is None:
        return []
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
    return out


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
