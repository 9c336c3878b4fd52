"""Forge's `Module 1: ae`, `Module 2: clip_l`, ... infotext fields read back: the "VAE /
Text Encoder" files (the `forge_additional_modules` option) an image was made with.

The job writes each module file by its stem (`processing.module_fields`); reading matches
a stem to the module files the server has (their names, as `GET /sdapi/v1/sd-modules`
lists them) as Forge's paste does: the first file whose name without its extension is the
stem. A stem no file has is reported, never dropped in silence.

This module must never import torch (the UI and the API use it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_KEY = re.compile(r"^Module (\d+)$")
INFOTEXT_KEY = "VAE/TE"  # Forge's parsed-parameters key for the module list (png-info)


@dataclass(frozen=True)
class PastedModules:
    names: tuple[str, ...]  # module files the server has, in the infotext's order
    missing: tuple[str, ...]  # stems the server has no file for

    def shown(self) -> list[str]:
        """Forge's "VAE/TE" value: the files found, and the stems of those missing."""
        return [*self.names, *self.missing]


def infotext_modules(fields: Mapping[str, object]) -> list[str]:
    """The stems of the infotext's `Module N` fields, ordered by N; [] when it has none."""
    numbered = []
    for key, value in fields.items():
        match = _KEY.match(str(key))
        if match and str(value).strip():
            numbered.append((int(match.group(1)), str(value).strip()))
    return [stem for _, stem in sorted(numbered)]


def match_modules(stems: Iterable[str], names: Iterable[str]) -> PastedModules:
    """The module files (by name) the stems name: a name itself, or a name without its
    extension; stems no name matches are `missing`."""
    names = list(names)
    found: list[str] = []
    missing: list[str] = []
    for stem in stems:
        name = next((n for n in names if n == stem), None)
        name = name or next((n for n in names if n.rsplit(".", 1)[0] == stem), None)
        if name is None:
            missing.append(stem)
        elif name not in found:
            found.append(name)
    return PastedModules(tuple(found), tuple(missing))


def pasted_modules(fields: Mapping[str, object], names: Iterable[str]) -> PastedModules | None:
    """The infotext's modules matched to the server's files; None when it names none."""
    stems = infotext_modules(fields)
    return match_modules(stems, names) if stems else None
