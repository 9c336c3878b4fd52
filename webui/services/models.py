"""The Models tab's service: the catalog, downloads in background threads, Civitai info.

`ModelsService` is what the Models tab and the `/webui/v1/models` routes call. A download
is a tracked background task (`DownloadTask`: state, bytes done/total, speed, ETA, the
file it made or the error), not a queue job: it uses no accelerator and must not wait
behind generations. The file's kind and family are read from the file (else the site's
kind, else the user's choice) and decide its folder; after any change on disk the
registries the generation tabs read (checkpoints, LoRA, embeddings, VAE) are refreshed.
Downloads are refused while the server is reachable from other machines, unless
--enable-insecure-extension-access (the rule of extension installs).

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ..errors import UserError
from ..model_manager.catalog import CatalogError, ModelCatalog, preview_beside, safe_name
from ..model_manager.fetch import (
    Downloader,
    DownloadError,
    Progress,
    Sites,
    civitai_by_hash,
    place,
    resolve,
)
from ..model_manager.sniff import KIND_LABELS, HeaderError, read_header, sniff

log = logging.getLogger(__name__)


class DownloadAccessError(PermissionError, UserError):
    """Downloads are disabled on a server reachable from other machines."""


@dataclass
class DownloadRequest:
    url: str  # a URL, or a Hugging Face "owner/repo" with `file`
    file: str = ""
    kind: str = ""  # "" = read from the file (else the site's kind)
    folder: str = ""  # a subfolder of the kind's folder
    name: str = ""  # "" = the site's file name
    sha256: str = ""  # checked when given (besides the hash the site states)


@dataclass
class DownloadTask:
    id: str
    request: DownloadRequest
    state: str = "starting"  # starting | downloading | done | failed | cancelled
    progress: Progress = field(default_factory=Progress)
    message: str = ""
    kind: str = ""
    family: str = ""
    path: str = ""
    started: float = field(default_factory=time.time)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def as_dict(self) -> dict:
        p = self.progress
        return {"id": self.id, "url": self.request.url, "state": self.state,
                "done": p.done, "total": p.total, "speed": round(p.speed), "eta": p.eta,
                "retries": p.retries, "message": self.message, "kind": self.kind,
                "family": self.family, "path": self.path}  # fmt: skip


class ModelsService:
    def __init__(self, catalog: ModelCatalog, partial_dir: Path, *,
                 sites: Callable[[], Sites] = Sites, access_denied: Callable[[], bool] = bool,
                 on_change: Callable[[str], None] | None = None,
                 client: httpx.Client | None = None,
                 free_space: Callable[[Path], int] | None = None):  # fmt: skip
        self.catalog = catalog
        self.sites = sites
        self.access_denied = access_denied
        self.on_change = on_change or (lambda kind: None)
        self.client = client or httpx.Client(timeout=httpx.Timeout(30.0), trust_env=True)
        self.downloader = Downloader(partial_dir, self.client, free_space=free_space,
                                     space_for=tuple(catalog.roots.values()))  # fmt: skip
        self._tasks: dict[str, DownloadTask] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        for task in self.tasks():
            task.cancel.set()
        self.client.close()
        self.catalog.close()

    # --- file operations, refreshing what the generation tabs list ----------------------
    def rename(self, kind: str, rel: str, new_name: str) -> str:
        new_rel = self.catalog.rename(kind, rel, new_name)
        self.on_change(kind)
        return new_rel

    def move(self, kind: str, rel: str, folder: str) -> str:
        new_rel = self.catalog.move(kind, rel, folder)
        self.on_change(kind)
        return new_rel

    def delete(self, kind: str, rel: str) -> Path:
        where = self.catalog.delete(kind, rel)
        self.on_change(kind)
        return where

    # --- Civitai --------------------------------------------------------------------
    def civitai_info(self, kind: str, rel: str, *, refresh: bool = False) -> dict:
        """Civitai's name, trigger words, base model and preview of a model, by its sha256;
        fetched once and cached (`refresh` asks again). The preview is saved beside the
        model as `name.preview.<ext>` when there is none."""
        sha256 = self.catalog.ensure_hash(kind, rel)
        cached = self.catalog.civitai_cached(sha256)
        if cached is not None and not refresh:
            return cached
        info = civitai_by_hash(sha256, self.sites(), self.client) or {"found": False}
        info.setdefault("found", True)
        self.catalog.store_civitai(sha256, info)
        if info.get("preview"):
            self._save_preview(self.catalog.path_of(kind, rel), info["preview"])
        return info

    def _save_preview(self, model: Path, url: str) -> None:
        if preview_beside(model):
            return
        try:
            response = self.client.get(url, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("%s: the Civitai preview could not be fetched (%s)", model.name, exc)
            return
        kind = response.headers.get("content-type", "")
        ext = {"image/jpeg": ".jpeg", "image/webp": ".webp"}.get(kind.split(";")[0], ".png")
        model.with_name(f"{model.stem}.preview{ext}").write_bytes(response.content)
        self.catalog.refresh()

    # --- downloads ------------------------------------------------------------------
    def check_access(self) -> None:
        if self.access_denied():
            raise DownloadAccessError(
                "Downloading models is disabled because the server is reachable from other "
                "machines (--listen, --server-name or --share). Restart with "
                "--enable-insecure-extension-access to allow it."
            )

    def start_download(self, request: DownloadRequest) -> DownloadTask:
        """Check the request and start the download in a background thread."""
        self.check_access()
        if request.kind and request.kind not in KIND_LABELS:
            raise CatalogError(f"kind: unknown model kind {request.kind!r}")
        if request.name:
            safe_name(request.name, "file name")
        for part in filter(None, request.folder.strip("/").split("/")):
            safe_name(part, "folder")
        task = DownloadTask(uuid.uuid4().hex[:12], request)
        with self._lock:
            self._tasks[task.id] = task
        threading.Thread(target=self._run, args=(task,), daemon=True,
                         name=f"download-{task.id}").start()  # fmt: skip
        return task

    def tasks(self) -> list[DownloadTask]:
        with self._lock:
            return list(self._tasks.values())

    def task(self, task_id: str) -> DownloadTask | None:
        with self._lock:
            return self._tasks.get(task_id)

    def _run(self, task: DownloadTask) -> None:
        try:
            self._download(task)
            task.state = "done"
            task.message = f"saved {task.path}"
        except DownloadError as exc:
            task.state = "cancelled" if task.cancel.is_set() else "failed"
            task.message = str(exc)
        except UserError as exc:
            task.state, task.message = "failed", str(exc)
        except Exception as exc:  # a bug: its traceback in the log, a message on the page
            log.exception("download %s failed", task.request.url)
            task.state, task.message = "failed", f"{type(exc).__name__}: {exc}"
        log.info("download %s: %s %s", task.request.url, task.state, task.message)

    def _download(self, task: DownloadTask) -> None:
        request = task.request
        source = resolve(request.url, self.sites(), self.client, request.file)
        task.state = "downloading"

        def report(progress: Progress) -> None:
            task.progress = progress

        partial, sha256, name = self.downloader.fetch(source, report, task.cancel)
        try:
            target, kind, family = self._place(request, source.kind, partial, sha256, name)
        finally:
            partial.unlink(missing_ok=True)  # never left behind once the download ended
        task.kind, task.family, task.path = kind, family, str(target)
        self.catalog.refresh()
        self.on_change(kind)

    def _place(self, request: DownloadRequest, site_kind: str | None, partial: Path,
               sha256: str, name: str) -> tuple[Path, str, str]:  # fmt: skip
        """Check the user's hash, read the kind and family, and move the file into models/."""
        if request.sha256 and sha256 != request.sha256.strip().lower():
            raise DownloadError(f"sha256 mismatch: expected {request.sha256}, the file has "
                                f"{sha256}; the download was discarded")  # fmt: skip
        name = safe_name(request.name or name, "file name")
        try:
            kind, family = _sniff(partial, name)
        except HeaderError as exc:
            raise DownloadError(f"{name}: {exc}; the download was discarded") from None
        kind = request.kind or kind or site_kind or _kind_by_suffix(name)
        if kind is None:
            raise DownloadError(f"{name}: the file does not tell what kind of model it is; "
                                "choose the kind and download again")  # fmt: skip
        parts = [safe_name(p, "folder") for p in request.folder.strip("/").split("/") if p]
        target = place(partial, self.catalog.roots[kind].joinpath(*parts), name)
        return target, kind, family


def _sniff(partial: Path, name: str) -> tuple[str | None, str]:
    if not name.lower().endswith(".safetensors"):
        return None, ""
    found = sniff(read_header(partial))
    return found.kind, found.family


def _kind_by_suffix(name: str) -> str | None:
    return "upscaler" if name.lower().endswith(".pth") else None
