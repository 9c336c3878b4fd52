"""Persisted user options (A1111's config.json), validated through a small typed registry.

`OPTION_DEFS` lists every option with its default, validator, section and label;
`Options` holds the values, saves them atomically and keeps keys it does not know (an
A1111 config.json works as is). `Options.from_flags` applies --freeze-settings and locks
path options while the server is reachable from other machines.

Like settings.py, this module must stay importable with the standard library alone.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import Flags

logger = logging.getLogger(__name__)


def _int_range(low: int, high: int | None = None) -> Callable[[Any], int]:
    def validate(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {bound}, got {value}")
        return value

    return validate


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _ratio(value: Any) -> float:
    """A number in [0, 0.9] (the settings form sends text)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if isinstance(value, bool) or not 0 <= number <= 0.9:
        raise ValueError(f"must be between 0 and 0.9, got {value!r}")
    return number


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def validate(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return value

    return validate


@dataclass(frozen=True)
class OptionDef:
    """One user option: its key in config.json, default, validator, label and section.

    `path`: the value names a file or folder; it cannot be changed while the server is
    reachable from other machines (see `Options.from_flags`).
    """

    key: str
    default: Any
    validate: Callable[[Any], Any]
    label: str
    section: str
    path: bool = False


_LIMIT_LABEL = "Maximum number of checkpoints loaded at the same time"
_OPTION_TABLE: dict[str, list[tuple[str, Any, Callable[[Any], Any], str]]] = {
    "sd": [
        ("sd_model_checkpoint", "", _string, "Stable Diffusion checkpoint"),
        ("sd_checkpoints_limit", 1, _int_range(1), _LIMIT_LABEL),
        ("sd_vae", "Automatic", _string, "SD VAE"),
        ("CLIP_stop_at_last_layers", 1, _int_range(1, 12), "Clip skip"),
    ],
    "optimizations": [
        (
            "vae_tiling_threshold",
            1536,
            _int_range(0, 16384),
            "Decode with VAE tiling from width x height of this size squared (0: never)",
        ),
        (
            "vae_slicing_threshold",
            1024,
            _int_range(0, 16384),
            "Decode a batch image by image from this size squared in total (0: never)",
        ),
        (
            "oom_retry_lower_memory",
            True,
            _bool,
            "Retry with lower memory after running out of memory (once)",
        ),
        (
            "token_merging_ratio",
            0.0,
            _ratio,
            "Token merging ratio (tomesd; 0: off): faster, slightly different images",
        ),
    ],
    "ui": [
        ("show_progress_every_n_steps", 3, _int_range(0), "Live preview every N steps (0: off)"),
        (
            "localization",
            "Auto",
            _string,
            "UI language: Auto (the browser's), en or zh_CN; applies after a restart",
        ),
    ],
    "queue": [
        (
            "queue_limit_per_user",
            10,
            _int_range(0),
            "Most jobs one user may have waiting or running (0: no limit)",
        ),
        (
            "queue_show_others_prompts",
            False,
            _bool,
            "Show other users' prompts in the queue (off: only their mode and progress)",
        ),
    ],
    "saving-images": [
        ("samples_format", "png", _choice("png", "jpg", "jpeg", "webp"), "File format for images"),
        ("samples_filename_pattern", "", _string, "Images filename pattern (empty: NNNNN-seed)"),
    ],
    "saving-paths": [
        ("outdir_samples", "", _string, "Output folder for images (empty: the default folders)"),
    ],
}
PATH_OPTIONS = frozenset({"outdir_samples"})  # options whose value is a file system path
OPTION_DEFS: tuple[OptionDef, ...] = tuple(
    OptionDef(key, default, validate, label, section, path=key in PATH_OPTIONS)
    for section, rows in _OPTION_TABLE.items()
    for key, default, validate, label in rows
)


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
        """Validate all values first, then set them together (all or nothing)."""
        if self.read_only:
            raise PermissionError("settings are frozen (--freeze-settings)")
        checked = {key: self._validated(key, value) for key, value in values.items()}
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
