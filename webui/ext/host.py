"""The extension host: the loaded extensions, their on/off state, args and hook calls.

Built once by the composition root (`AppContext.extensions`). It loads every extension
(`webui.ext.loader`), keeps the user's enable/disable choice in `extensions.json` in the
data folder, turns request/UI arguments into a job's `script` and `extension_args` (by
name, validated), and calls hooks so that an exception in one is logged, shown in the
Extensions tab and disables that extension for the rest of the session; the job and the
app go on. Installing from a git URL and updating are refused when the server is
reachable from other machines without --enable-insecure-extension-access.

This module must never import torch, diffusers, gradio or fastapi.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import git
from .api import ArgError, Extension, ExtensionContext
from .loader import BUILTIN_MODULES, FOLDER, ExtensionRecord, discover, load

log = logging.getLogger(__name__)

FAILED = object()  # what a failed hook call returns


class ExtensionAccessError(PermissionError):
    """Installing or updating extensions is not allowed on this server."""


@dataclass(frozen=True)
class ArgCheck:
    """What `Extension.check_args` may consult when a job is submitted."""

    params: Any
    resolve_checkpoint: Callable[[str], str]  # name or hash -> title; LookupError
    vae_names: Callable[[], list[str]]
    data_dir: Path
    controlnet_dir: Path | None = None  # models/ControlNet (the X/Y/Z ControlNet axes)


class ExtensionHost:
    def __init__(self, flags: Any, options: Any = None, *, models: Any = None,
                 networks: Any = None, builtins=BUILTIN_MODULES, entry_points: bool = True,
                 extensions_dir: Path | None = None):  # fmt: skip
        self.flags = flags
        self.options = options
        self.models = models
        self.networks = networks
        self.dir = Path(extensions_dir or flags.extensions_dir)
        self.data_dir = Path(flags.data_dir)
        self.state_path = self.data_dir / "extensions.json"
        self._lock = threading.RLock()
        disabled = self._read_disabled()
        self.records = discover(self.dir, builtins=builtins, entry_points=entry_points)
        self._names: dict[str, ExtensionRecord] = {}
        for record in self.records:
            record.enabled = record.key not in disabled
            if record.enabled:
                self._load(record)

    # --- loading and state -----------------------------------------------------------
    def _load(self, record: ExtensionRecord) -> None:
        load(record)
        ext = record.extension
        if ext is None:
            return
        other = self._names.get(ext.name)
        if other is not None and other is not record:
            record.error = f"could not load: the name {ext.name!r} is taken by {other.key}"
            record.extension = None
            log.error("extension %s: %s", record.key, record.error)
            return
        self._names[ext.name] = record
        if record.source == FOLDER and record.path is not None:
            record.version = (
                ext.version or (git.info(record.path) or git.GitInfo(None, None, None, None)).short
            )
        else:
            record.version = ext.version or record.version

    def _read_disabled(self) -> set[str]:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            return {str(k) for k in data.get("disabled", [])}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("%s is unreadable (%s); every extension is enabled", self.state_path, exc)
            return set()

    def _write_disabled(self) -> None:
        disabled = sorted(r.key for r in self.records if not r.enabled)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.data_dir, prefix=".extensions.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"disabled": disabled}, fh, indent=2)
        os.replace(tmp, self.state_path)

    def set_enabled(self, key: str, enabled: bool) -> ExtensionRecord:
        """Turn an extension on or off (persisted). Hooks follow at once; its tab,
        section and API router appear or go at the next start."""
        with self._lock:
            record = self.record(key)
            record.enabled = enabled
            if enabled:
                record.error = None  # a failed extension gets another chance
                if record.extension is None:
                    self._load(record)
            self._write_disabled()
            return record

    def record(self, key: str) -> ExtensionRecord:
        for record in self.records:
            if key in (record.key, record.name):
                return record
        raise KeyError(f"no extension {key!r}")

    def find(self, name: str) -> ExtensionRecord | None:
        """By name, key or title, case-insensitive (API clients send A1111 titles)."""
        wanted = (name or "").strip().lower()
        for record in self.records:
            if wanted in (record.key.lower(), record.name.lower(), record.title.lower()):
                return record
        return None

    def active(self) -> list[Extension]:
        return [r.extension for r in self.records if r.active and r.extension]

    def is_active(self, ext: Extension) -> bool:
        record = self._names.get(ext.name)
        return record is not None and record.active

    def fail(
        self, record_or_ext: ExtensionRecord | Extension, where: str, exc: BaseException
    ) -> None:
        """Log a failing hook and disable the extension until it is enabled again."""
        record = (
            record_or_ext
            if isinstance(record_or_ext, ExtensionRecord)
            else self._names[record_or_ext.name]
        )
        with self._lock:
            record.error = f"{where} failed: {type(exc).__name__}: {exc}"
        log.error("extension %s: %s; it is disabled\n%s", record.key, record.error,
                  "".join(traceback.format_exception(exc)))  # fmt: skip

    def call(
        self,
        ext: Extension,
        where: str,
        fn: Callable,
        *args: Any,
        passes: tuple[type[Exception], ...] = (),
    ) -> Any:
        """Call one hook; on an exception, disable the extension and return FAILED.
        Exceptions of the `passes` types are the job's fault: they fail it instead."""
        try:
            return fn(*args)
        except passes:
            raise
        except Exception as exc:  # an extension must never break the app or the job
            self.fail(ext, where, exc)
            return FAILED

    # --- parts used by the UI and the API --------------------------------------------
    def context_for(self, ext: Extension) -> ExtensionContext:
        record = self._names[ext.name]
        return ExtensionContext(
            name=ext.name,
            directory=record.path,
            data_dir=self.data_dir / "extensions-data" / ext.name,
            option=self.options.get if self.options is not None else (lambda key: None),
            flags=self.flags,
            log=logging.getLogger(f"webui.extensions.{ext.name}"),
        )

    def startup(self) -> None:
        for ext in self.active():
            if ext.on_startup is not None:
                self.call(ext, "on_startup", ext.on_startup, self.context_for(ext))

    def mount_routers(self, app: Any, **include: Any) -> list[str]:
        """Include each active extension's router under /ext/<name> (`include`: more
        `include_router` arguments, e.g. the API auth dependency); returns the prefixes."""
        mounted = []
        for ext in self.active():
            if ext.router is None:
                continue
            router = self.call(ext, "router", ext.router, self.context_for(ext))
            if router is FAILED or router is None:
                continue
            prefix = f"/ext/{ext.name}"
            try:
                app.include_router(router, prefix=prefix, **include)
            except Exception as exc:
                self.fail(ext, "router", exc)
                continue
            mounted.append(prefix)
        return mounted

    def scripts(self, tab: str | None = None) -> list[Extension]:
        return [e for e in self.active() if e.is_script and (tab is None or _in_tab(e, tab))]

    def sections(self, tab: str) -> list[Extension]:
        """Always-on extensions with controls shown in `tab`."""
        return [e for e in self.active() if not e.is_script and e.controls and _in_tab(e, tab)]

    def tabs(self) -> list[Extension]:
        return [e for e in self.active() if e.tab is not None]

    # --- job arguments ---------------------------------------------------------------
    def arg_check(self, params: Any) -> ArgCheck:
        def resolve_checkpoint(name: str) -> str:
            if self.models is None:
                raise LookupError("no model manager")
            return self.models.resolve(name).title

        def vae_names() -> list[str]:
            vaes = getattr(self.networks, "vaes", None)
            names = getattr(vaes, "choices", None)
            return list(names()) if callable(names) else []

        controlnet = getattr(self.flags, "controlnet_dir", None)
        controlnet_dir = Path(controlnet) if controlnet else None
        return ArgCheck(params, resolve_checkpoint, vae_names, self.data_dir, controlnet_dir)

    def prepare(self, params: Any, *, script: str | None = None, script_args: Any = None,
                alwayson: Mapping[str, Any] | None = None, tab: str | None = None) -> Any:  # fmt: skip
        """`params` with the job's `script` and validated `extension_args` (every active
        extension's args, defaults filled). With `tab` (txt2img, img2img), the script and
        the always-on extensions named must be offered in that tab. Raises ArgError with
        an A1111 field path."""
        chosen: Extension | None = None
        args: dict[str, dict[str, Any]] = {}
        if script and script.strip().lower() not in ("", "none"):
            record = self.find(script)
            if record is None or not record.active or not record.extension.is_script:
                why = "is disabled" if record is not None and not record.active else "not found"
                raise ArgError(("script_name",), f"script {why}: {script}")
            chosen = record.extension
            if tab is not None and not _in_tab(chosen, tab):
                raise ArgError(("script_name",), f"{chosen.display_title} is not a {tab} script")
            args[chosen.name] = chosen.args_from(script_args, ("script_args",))
        for name, value in (alwayson or {}).items():
            record = self.find(str(name))
            loc = ("alwayson_scripts", str(name))
            if record is None or not record.active:
                why = "is disabled" if record is not None else "not found"
                raise ArgError(loc, f"always-on script {why}: {name}")
            ext = record.extension
            if ext.is_script:
                raise ArgError(loc, f"{ext.display_title} is a script: name it in script_name")
            if tab is not None and not _in_tab(ext, tab):
                raise ArgError(loc, f"{ext.display_title} is not offered in {tab}")
            given = value.get("args") if isinstance(value, Mapping) else value
            args[ext.name] = ext.args_from(given, (*loc, "args"))
        for ext in self.active():
            if not ext.is_script and ext.name not in args and ext.controls:
                args[ext.name] = ext.default_args()
        check = self.arg_check(params)
        for ext in [e for e in self.active() if e.name in args and e.check_args is not None]:
            if ext.is_script and ext is not chosen:
                continue
            loc = ("script_args",) if ext is chosen else ("alwayson_scripts", ext.name, "args")
            try:
                args[ext.name] = ext.check_args(dict(args[ext.name]), check)
            except ArgError as exc:
                raise ArgError((*loc, *exc.loc), exc.message) from None
            except ValueError as exc:
                raise ArgError(loc, str(exc)) from None
            except Exception as exc:  # a bug in the extension: disable it, keep the job
                self.fail(ext, "check_args", exc)
                if ext is chosen:
                    raise ArgError(("script_name",), f"{ext.display_title} failed and is "
                                   f"disabled: {exc}") from None  # fmt: skip
        return replace(params, script=chosen.name if chosen else None, extension_args=args)

    def args_for(self, ext: Extension, params: Any) -> dict[str, Any]:
        """The args one extension gets in a job: the job's own, else the defaults."""
        given = (getattr(params, "extension_args", None) or {}).get(ext.name)
        return dict(given) if given is not None else ext.default_args()

    # --- installing and updating -----------------------------------------------------
    def check_access(self) -> None:
        if getattr(self.flags, "disable_extension_access", False):
            raise ExtensionAccessError(
                "Installing and updating extensions is disabled because the server is "
                "reachable from other machines (--listen, --server-name or --share). "
                "Restart with --enable-insecure-extension-access to allow it."
            )

    def install(self, url: str, branch: str | None = None) -> ExtensionRecord:
        """Clone `url` into the extensions folder and load it (hooks at once; its UI and
        API router after a restart). Raises ExtensionAccessError, ValueError, git.GitError."""
        self.check_access()
        folder = git.folder_name_for(url)
        target = self.dir / folder
        if target.exists():
            raise ValueError(f"{target} already exists")
        self.dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.dir, prefix=".install-"))
        try:
            git.clone(url, staging / folder, branch or None)
            if not (staging / folder / "extension.py").is_file():
                raise ValueError(f"{url} has no extension.py at its top level")
            os.replace(staging / folder, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        with self._lock:
            record = ExtensionRecord(key=folder, source=FOLDER, path=target)
            self.records.append(record)
            self._load(record)
        log.info("installed extension %s from %s", folder, url)
        return record

    def check_updates(self) -> dict[str, str]:
        """key -> "N commits behind" / "up to date" / why not, for every git extension."""
        found: dict[str, str] = {}
        for record in self.records:
            if record.source != FOLDER or record.path is None or git.info(record.path) is None:
                continue
            try:
                count = git.behind(record.path)
                found[record.key] = f"{count} new commit(s)" if count else "up to date"
            except git.GitError as exc:
                found[record.key] = f"cannot check: {exc}"
        return found

    def update(self, key: str) -> str:
        """Fast-forward one git extension; active after a restart. Returns the commit."""
        self.check_access()
        record = self.record(key)
        if record.source != FOLDER or record.path is None or git.info(record.path) is None:
            raise ValueError(f"{key} is not a git checkout")
        commit = git.update(record.path)
        record.version = commit[:8]
        return commit


def _in_tab(ext: Extension, tab: str) -> bool:
    return ext.section is None or tab in ext.section.tabs
