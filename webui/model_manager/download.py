"""Checkpoint download: the first-run default model A1111 fetches, resumable and atomic.

Used only where the machine has internet; offline, it says so and the program goes on.
The file is written as `<name>.partial.safetensors` and renamed when complete, so a broken
download never shows up as a checkpoint.

This module must never import a UI library.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MODEL_URL = (
    "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/"
    "v1-5-pruned-emaonly.safetensors"
)
DEFAULT_MODEL_SHA256 = "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"
DEFAULT_MODEL_NAME = "v1-5-pruned-emaonly.safetensors"


class DownloadError(RuntimeError):
    pass


def download(
    url: str,
    target: Path,
    *,
    sha256: str | None = None,
    timeout: float = 30,
    chunk: int = 1 << 20,
) -> Path:
    """Download `url` to `target` atomically; check sha256 when given."""
    partial = target.with_name(f"{target.stem}.partial{target.suffix}")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, last_report = 0, 0.0
            while block := response.read(chunk):
                out.write(block)
                digest.update(block)
                done += len(block)
                if time.monotonic() - last_report > 5:
                    last_report = time.monotonic()
                    share = f" ({done * 100 // total}%)" if total else ""
                    log.info("Downloading %s: %d MB%s", target.name, done >> 20, share)
            out.flush()
            os.fsync(out.fileno())
        if sha256 and digest.hexdigest() != sha256:
            raise DownloadError(f"{target.name}: checksum mismatch, download discarded")
        os.replace(partial, target)
    except (OSError, urllib.error.URLError) as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{target.name}: download failed ({exc})") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    log.info("Downloaded %s", target)
    return target


def offer_default_checkpoint(folder: Path, url: str = DEFAULT_MODEL_URL) -> Path | None:
    """Fetch A1111's default SD 1.5 checkpoint when the folder is empty and we are online."""
    target = folder / DEFAULT_MODEL_NAME
    log.info(
        "No checkpoint found in %s; downloading the default SD 1.5 checkpoint "
        "(about 4 GB; skip with --no-download-sd-model).",
        folder,
    )
    try:
        return download(
            url, target, sha256=DEFAULT_MODEL_SHA256 if url == DEFAULT_MODEL_URL else None
        )
    except DownloadError as exc:
        log.warning(
            "%s. This machine looks offline: the UI starts without a model. Put a .safetensors "
            "checkpoint into %s and press refresh, or restart with --demo.",
            exc,
            folder,
        )
        return None
