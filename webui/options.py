"""Persisted user options (A1111's config.json), validated through the typed registry
of `webui.option_defs` (`OPTION_DEFS`, `SECTIONS`, `OptionDef`, re-exported here). `Options` holds
the values, saves them atomically and keeps keys it does not know (an A1111 config.json
works as is). `Options.from_flags` applies --freeze-settings and locks path options while
the server is reachable from other machines.

Like settings.py, this module must stay importable with the standard library alone
(launch.py's flag check imports it): the choice callables import what they need on use.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .option_defs import (  # noqa: F401 (the registry, re-exported: its users import it here)
    OPTION_DEFS,
    PATH_OPTIONS,
    SECRET_SHOWN,
    SECTIONS,
    OptionDef,
    shown_value,
)

if TYPE_CHECKING:
    from .settings import Flags

logger = logging.getLogger(__name__)


class Options:
    """Persisted user options (config.json), validated against `OptionDef`s.

    `get`/`set` raise KeyError for an unknown key and ValueError (naming the key) for an
    invalid value. Keys in the file that are not defined here (an A1111 config.json,
    say) are kept and written back unchanged. Thread-safe. `read_only` refuses every
    change and `locked` keys refuse a new value (PermissionError).
    """

    def __init__(
        self,
        path: Path | None = None,
        definitions: Sequence[OptionDef] = OPTION_DEFS,
        read_only: bool = False,
        locked: Sequence[str] = (),
    ) -> None:
        self.path = path
        self.read_only = read_only
        self.locked = frozenset(locked)
        self.definitions: dict[str, OptionDef] = {d.key: d for d in definitions}
        self._values: dict[str, Any] = {d.key: d.default for d in definitions}
        self._extra: dict[str, Any] = {}
        self._lock = threading.RLock()

    @classmethod
    def load(
        cls,
        path: Path,
        definitions: Sequence[OptionDef] = OPTION_DEFS,
        read_only: bool = False,
        locked: Sequence[str] = (),
    ) -> Options:
        """Options from `path`; defaults when it is missing. A corrupted file is moved
        to `<name>.bad-<timestamp>` with a warning, and the defaults are used."""
        options = cls(Path(path), definitions, read_only, locked)
        data = options._read_file()
        for key, value in data.items():
            if key not in options.definitions:
                options._extra[key] = value
                continue
            try:
                options._values[key] = options._validated(key, value)
            except ValueError as exc:
                logger.warning("%s: %s; using the default %r", path, exc, options.get(key))
        return options

    @classmethod
    def from_flags(cls, flags: Flags, definitions: Sequence[OptionDef] = OPTION_DEFS) -> Options:
        """The server's options: all frozen with --freeze-settings; path options locked
        while the server is reachable from other machines (`Flags.network_exposed`)."""
        locked = [d.key for d in definitions if d.path] if flags.network_exposed else []
        return cls.load(flags.config_path, definitions, flags.freeze_settings, locked)

    def _read_file(self) -> dict[str, Any]:
        assert self.path is not None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            logger.warning("cannot read %s (%s); using default options", self.path, exc)
            return {}
        try:
            data = json.loads(raw.decode("utf-8"))  # UnicodeDecodeError is a ValueError
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            backup = self._backup_bad_file()
            logger.warning(
                "%s is corrupted (%s); moved it to %s and using default options",
                self.path,
                exc,
                backup,
            )
            return {}
        return data

    def _backup_bad_file(self) -> Path:
        assert self.path is not None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        backup = self.path.with_name(f"{self.path.name}.bad-{stamp}")
        n = 1
        while backup.exists():
            n += 1
            backup = self.path.with_name(f"{self.path.name}.bad-{stamp}-{n}")
        os.replace(self.path, backup)
        return backup

    def _validated(self, key: str, value: Any) -> Any:
        definition = self.definitions.get(key)
        if definition is None:
            raise KeyError(f"unknown option {key!r}")
        try:
            return definition.validate(value)
        except ValueError as exc:
            raise ValueError(f"option {key!r}: {exc}") from None

    def get(self, key: str) -> Any:
        with self._lock:
            if key not in self._values:
                raise KeyError(f"unknown option {key!r}")
            return self._values[key]

    def set(self, key: str, value: Any) -> None:
        """Validate and set one option (not saved until `save()`)."""
        self.update({key: value})

    def update(self, values: Mapping[str, Any]) -> None:
        """Validate all values first, then set them together (all or nothing). A secret
        option sent back as SECRET_SHOWN (what `public_dict` gave) keeps its value."""
        if self.read_only:
            raise PermissionError("settings are frozen (--freeze-settings)")
        checked = {key: self._validated(key, value) for key, value in values.items()
                   if not (value == SECRET_SHOWN and self._is_secret(key))}  # fmt: skip
        with self._lock:
            current = self._values
            refused = sorted(k for k in checked if k in self.locked and checked[k] != current[k])
            if refused:
                raise PermissionError(
                    f"{', '.join(refused)}: a file system path cannot be changed while the "
                    "server is reachable from other machines (--listen / --server-name)"
                )
            self._values.update(checked)

    def as_dict(self) -> dict[str, Any]:
        """A copy of the defined options and their current values."""
        with self._lock:
            return dict(self._values)

    def public_dict(self) -> dict[str, Any]:
        """`as_dict` as it may leave the server: secret options that are set read
        SECRET_SHOWN (GET /sdapi/v1/options, the Settings tab)."""
        return {key: shown_value(self.definitions[key], value)
                for key, value in self.as_dict().items()}  # fmt: skip

    def _is_secret(self, key: str) -> bool:
        definition = self.definitions.get(key)
        return definition is not None and definition.secret

    def save(self, path: Path | None = None) -> None:
        """Write all options (and unknown keys kept from the file) atomically."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError("Options.save: no path given and none loaded")
        with self._lock:
            data = {**self._extra, **self._values}
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=4, ensure_ascii=False)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        logger.debug("saved options to %s", target)
