"""Finding and importing extensions: built-ins, `extensions/<name>/extension.py`, packages.

Three sources, in this order: the built-in scripts shipped in `webui.ext.scripts`, every
folder of the extensions directory holding an `extension.py`, and every installed
distribution that registers an entry point in the group `webui.extensions` (pointing at a
`setup` callable or at a module that has one). Each becomes an `ExtensionRecord`; a
disabled one is listed without being imported. Importing or calling `setup()` may fail in
any way: the error is kept on the record (and logged), it never propagates.

This module must never import torch, diffusers, gradio or fastapi.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import re
import sys
import traceback
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .api import API_VERSION, MIN_API_VERSION, Extension

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "webui.extensions"
BUILTIN_MODULES = (
    "webui.ext.scripts.wildcards",
    "webui.ext.scripts.xyz_plot",
    "webui.ext.scripts.prompt_matrix",
    "webui.ext.scripts.prompts_from_file",
)
BUILTIN, FOLDER, PACKAGE = "built-in", "folder", "package"
_PACKAGE_ROOT = "webui_extensions"


@dataclass
class ExtensionRecord:
    """One extension as the host knows it, loaded or not."""

    key: str  # identity: folder name, entry point name, or the built-in's name
    source: str  # built-in, folder, package
    path: Path | None = None  # folder of a folder extension
    target: str = ""  # module path (built-in) or entry point value (package)
    extension: Extension | None = None
    enabled: bool = True  # the user's choice (persisted)
    error: str | None = None  # why it is not running (import, setup or hook failure)
    version: str = ""

    @property
    def name(self) -> str:
        return self.extension.name if self.extension else self.key

    @property
    def title(self) -> str:
        return self.extension.display_title if self.extension else self.key

    @property
    def active(self) -> bool:
        """Loaded, enabled by the user, and not failed."""
        return self.extension is not None and self.enabled and self.error is None


def discover(extensions_dir: Path | None, *, builtins: Iterable[str] = BUILTIN_MODULES,
             entry_points: bool = True) -> list[ExtensionRecord]:  # fmt: skip
    """Every extension that is there, none imported yet."""
    records = [ExtensionRecord(key=_builtin_key(m), source=BUILTIN, target=m) for m in builtins]
    if extensions_dir is not None and extensions_dir.is_dir():
        for folder in sorted(extensions_dir.iterdir()):
            if folder.is_dir() and (folder / "extension.py").is_file():
                records.append(ExtensionRecord(key=folder.name, source=FOLDER, path=folder))
    if entry_points:
        for ep in _entry_points():
            version = ""
            dist = getattr(ep, "dist", None)
            if dist is not None:
                version = dist.version or ""
            records.append(
                ExtensionRecord(key=ep.name, source=PACKAGE, target=ep.value, version=version)
            )
    return records


def _builtin_key(module: str) -> str:
    return module.rsplit(".", 1)[-1]


def _entry_points() -> list[Any]:
    try:
        return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception:  # a broken distribution must not stop discovery
        log.exception("could not read the %s entry points", ENTRY_POINT_GROUP)
        return []


def load(record: ExtensionRecord) -> None:
    """Import the record's module and call its setup(); errors land on `record.error`."""
    try:
        setup = _setup_callable(record)
        extension = setup()
        record.extension = check_extension(extension)
        record.error = None
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a bad module too
        if isinstance(exc, KeyboardInterrupt):
            raise
        record.extension = None
        record.error = f"could not load: {type(exc).__name__}: {exc}"
        log.error("extension %s (%s) %s\n%s", record.key, record.source, record.error,
                  traceback.format_exc())  # fmt: skip


def check_extension(extension: Any) -> Extension:
    if not isinstance(extension, Extension):
        raise TypeError(f"setup() must return webui.ext.Extension, got {type(extension).__name__}")
    if extension.api_version > API_VERSION:
        raise ValueError(
            f"written for extension API {extension.api_version}; this web UI has {API_VERSION}"
        )
    if extension.api_version < MIN_API_VERSION:
        raise ValueError(
            f"written for extension API {extension.api_version}, which is no longer "
            f"supported (oldest: {MIN_API_VERSION})"
        )
    return extension


def _setup_callable(record: ExtensionRecord) -> Callable[[], Any]:
    if record.source == BUILTIN:
        module = importlib.import_module(record.target)
    elif record.source == FOLDER:
        assert record.path is not None
        module = import_folder(record.path)
    else:
        module = _load_entry_point(record)
    if callable(module) and not isinstance(module, types.ModuleType):
        return module  # an entry point may name setup() itself
    setup = getattr(module, "setup", None)
    if not callable(setup):
        raise AttributeError(f"{getattr(module, '__name__', module)} has no setup() function")
    return setup


def _load_entry_point(record: ExtensionRecord) -> Any:
    for ep in _entry_points():
        if ep.name == record.key and ep.value == record.target:
            return ep.load()
    raise LookupError(f"entry point {record.key} = {record.target} is gone")


def import_folder(folder: Path) -> types.ModuleType:
    """Import `<folder>/extension.py` as `webui_extensions.<folder>.extension`.

    The folder becomes a package, so the extension may import its own modules with
    relative imports (`from . import helpers`). Importing again replaces the modules.
    """
    safe = re.sub(r"\W", "_", folder.name)
    if safe[:1].isdigit():
        safe = f"_{safe}"
    root = sys.modules.get(_PACKAGE_ROOT)
    if root is None:
        root = types.ModuleType(_PACKAGE_ROOT)
        root.__path__ = []  # a namespace for every folder extension
        sys.modules[_PACKAGE_ROOT] = root
    package_name = f"{_PACKAGE_ROOT}.{safe}"
    for name in [m for m in sys.modules if m == package_name or m.startswith(package_name + ".")]:
        del sys.modules[name]
    package = types.ModuleType(package_name)
    package.__path__ = [str(folder)]
    package.__file__ = str(folder / "__init__.py")
    sys.modules[package_name] = package
    spec = importlib.util.spec_from_file_location(
        f"{package_name}.extension", folder / "extension.py"
    )
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {folder / 'extension.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module
