"""Folders on the server that a request names (training datasets, log folders).

A folder a request names is read (a dataset) or written (textual inversion's log folder)
by the server. On a server reachable from other machines that would let any user read or
write wherever the server's account can, so there, as for img2img's server-folder batches
(`Flags.server_folders_allowed`: off with `--listen`/`--share` unless
`--enable-insecure-extension-access`, off with `--hide-ui-dir-config`), a folder must lie
inside the data folder; a relative one is taken from the data folder.

This module must never import torch or a front end.
"""

from __future__ import annotations

from pathlib import Path

from .errors import RequestError


def request_folder(value: str, field: str, data_dir: Path, anywhere: bool) -> Path:
    """The folder a request field names: relative ones from the data folder; outside the
    data folder only when `anywhere` (else a RequestError naming the field)."""
    path = Path(value).expanduser()
    path = path if path.is_absolute() else Path(data_dir) / path
    if anywhere:
        return path
    root = Path(data_dir).resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise RequestError((field,), f"{value}: the folder must be inside the data folder "
                           f"({root}) on a server other machines can reach (start it with "
                           "--enable-insecure-extension-access to allow any folder)")  # fmt: skip
    return resolved
