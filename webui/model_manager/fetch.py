"""Model downloads by URL: Hugging Face, Civitai or any direct link, resumable and checked.

`resolve` turns what the user typed into a `Source`: the file's URL, its name, the sha256
the site states (Hugging Face: the `X-Linked-Etag` of an LFS file; Civitai: the version's
`hashes.SHA256`) and the kind the site states (Civitai's model type). `Downloader.fetch`
streams it with httpx into a partial file in the data folder's `downloads/` (never under
`models/`), checks the free disk space against the size before writing, resumes with a
`Range` request after a dropped connection, reports done/total/speed/ETA, and checks the
sha256. `place` moves the finished file into its folder atomically. The site base URLs
are `Sites` fields, so tests point them at a local fake site.

This module must never load weights or import a UI library.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import httpx

from ..errors import UserError
from .catalog import safe_name

log = logging.getLogger(__name__)

SPACE_MARGIN = 64 << 20  # keep this much free besides the file
CIVITAI_KINDS = {"checkpoint": "checkpoint", "lora": "lora", "locon": "lora", "dora": "lora",
                 "lycoris": "lora", "textualinversion": "embedding", "vae": "vae",
                 "controlnet": "controlnet", "upscaler": "upscaler"}  # fmt: skip
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(RuntimeError, UserError):
    """The download cannot be done or went wrong; the message says why."""


class Cancelled(DownloadError):
    pass


@dataclass(frozen=True)
class Sites:
    huggingface: str = "https://huggingface.co"
    civitai: str = "https://civitai.com"
    civitai_key: str = ""
    hf_token: str = ""


@dataclass(frozen=True)
class Source:
    url: str
    filename: str | None = None  # None: from the response (Content-Disposition or URL)
    sha256: str | None = None  # lower-case hex, as the site states it
    kind: str | None = None  # as the site states it
    size: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    site: str = "direct"


@dataclass
class Progress:
    done: int = 0
    total: int | None = None
    speed: float = 0.0  # bytes per second, over the last few seconds
    retries: int = 0

    @property
    def eta(self) -> float | None:
        if not self.total or self.speed <= 0:
            return None
        return max(0.0, (self.total - self.done) / self.speed)


def _same_site(url: str, base: str) -> bool:
    return urlsplit(url).netloc.lower() == urlsplit(base).netloc.lower()


def resolve(text: str, sites: Sites, client: httpx.Client, file: str = "") -> Source:
    """What to download for a URL, or for a Hugging Face `owner/repo` plus `file`."""
    text = text.strip()
    if not text:
        raise DownloadError("give a URL, or a Hugging Face repo and file")
    if not re.match(r"^https?://", text):
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", text) or not file.strip():
            raise DownloadError(f"{text!r} is neither an http(s) URL nor a Hugging Face "
                                "repo (owner/name) with a file")  # fmt: skip
        path = "/".join(quote(p) for p in file.strip().strip("/").split("/"))
        text = f"{sites.huggingface.rstrip('/')}/{text}/resolve/main/{path}"
    parts = urlsplit(text)
    if _same_site(text, sites.huggingface):
        match = re.fullmatch(r"/([^/]+/[^/]+)/(?:resolve|blob)/([^/]+)/(.+)", parts.path)
        if match:
            return _huggingface(match, sites, client)
    if _same_site(text, sites.civitai):
        version = parse_qs(parts.query).get("modelVersionId", [None])[0]
        page = re.fullmatch(r"/models/(\d+)(?:/[^/]*)?", parts.path)
        download = re.fullmatch(r"/api/download/models/(\d+)", parts.path)
        if page or download:
            return _civitai(version or (download and download[1]), page and page[1], sites, client)
    return Source(text)


def _huggingface(match: re.Match, sites: Sites, client: httpx.Client) -> Source:
    repo, rev, path = match[1], match[2], match[3]
    url = f"{sites.huggingface.rstrip('/')}/{repo}/resolve/{rev}/{path}"
    headers = {"Authorization": f"Bearer {sites.hf_token}"} if sites.hf_token else {}
    sha256, size = None, None
    try:  # the redirect of an LFS file names its sha256 and size
        head = client.head(url, headers=headers, follow_redirects=False)
        etag = head.headers.get("x-linked-etag", "").strip('"').removeprefix("W/").strip('"')
        sha256 = etag.lower() if _SHA256.match(etag.lower()) else None
        size = int(head.headers.get("x-linked-size") or 0) or None
        if head.status_code in (401, 403):
            raise DownloadError(f"{repo}: Hugging Face refuses access ({head.status_code}); "
                                "the file is gated: put a token in Settings")  # fmt: skip
        if head.status_code == 404:
            raise DownloadError(f"{repo}/{path} (revision {rev}) is not on Hugging Face")
    except httpx.HTTPError as exc:
        raise DownloadError(f"cannot reach Hugging Face: {exc}") from exc
    name = unquote(path.rsplit("/", 1)[-1])
    return Source(url, name, sha256, None, size, headers, "huggingface")


def _civitai(version: str | None, model: str | None, sites: Sites, client) -> Source:
    base = sites.civitai.rstrip("/")
    headers = {"Authorization": f"Bearer {sites.civitai_key}"} if sites.civitai_key else {}
    if version:
        info = _get_json(client, f"{base}/api/v1/model-versions/{version}", headers)
    else:
        versions = _get_json(client, f"{base}/api/v1/models/{model}", headers).get(
            "modelVersions") or []  # fmt: skip
        if not versions:
            raise DownloadError(f"Civitai model {model} has no versions to download")
        info = versions[0]
    files = info.get("files") or []
    chosen = next((f for f in files if f.get("primary")), files[0] if files else None)
    if chosen is None:
        raise DownloadError(f"Civitai version {info.get('id')} lists no files")
    sha256 = str((chosen.get("hashes") or {}).get("SHA256") or "").lower() or None
    model_type = str((info.get("model") or {}).get("type") or "").lower()
    kind = "vae" if chosen.get("type") == "VAE" else CIVITAI_KINDS.get(model_type)
    size = int(float(chosen.get("sizeKB") or 0) * 1024) or None
    url = chosen.get("downloadUrl") or f"{base}/api/download/models/{info.get('id')}"
    return Source(url, chosen.get("name"), sha256, kind, size, headers, "civitai")


def _get_json(client: httpx.Client, url: str, headers: dict[str, str]) -> dict:
    try:
        response = client.get(url, headers=headers, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise DownloadError(f"cannot reach {urlsplit(url).netloc}: {exc}") from exc
    if response.status_code in (401, 403):
        raise DownloadError("Civitai refuses access: put your Civitai API key in Settings")
    if response.status_code == 404:
        raise DownloadError(f"not found on the site: {url}")
    if response.status_code >= 400:
        raise DownloadError(f"{url}: the site answered HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        raise DownloadError(f"{url}: the site's answer is not JSON") from None


def civitai_by_hash(sha256: str, sites: Sites, client: httpx.Client) -> dict | None:
    """Civitai's record of a file by its sha256 (name, trigger words, base model,
    preview URL), or None when Civitai does not know the file."""
    base = sites.civitai.rstrip("/")
    headers = {"Authorization": f"Bearer {sites.civitai_key}"} if sites.civitai_key else {}
    try:
        info = _get_json(client, f"{base}/api/v1/model-versions/by-hash/{sha256}", headers)
    except DownloadError as exc:
        if "not found" in str(exc):
            return None
        raise
    images = [i.get("url") for i in info.get("images") or [] if i.get("type", "image") == "image"]
    model = info.get("model") or {}
    return {
        "model": model.get("name", ""), "version": info.get("name", ""),
        "type": model.get("type", ""), "base_model": info.get("baseModel", ""),
        "trained_words": list(info.get("trainedWords") or []),
        "preview": images[0] if images else None, "model_id": info.get("modelId"),
        "version_id": info.get("id"), "description": info.get("description") or "",
    }  # fmt: skip


def filename_from(response: httpx.Response) -> str:
    """The file name a response gives (Content-Disposition), else its URL's last part."""
    disposition = response.headers.get("content-disposition", "")
    match = re.search(r"filename\*=(?:UTF-8|utf-8)''([^;]+)", disposition)
    match = match or re.search(r'filename="?([^";]+)"?', disposition)
    name = unquote(match[1]) if match else unquote(response.url.path.rsplit("/", 1)[-1])
    return name.strip()


class Downloader:
    """Streams sources into partial files in `partial_dir`; see the module docstring."""

    def __init__(self, partial_dir: Path, client: httpx.Client, *, retries: int = 5,
                 free_space: Callable[[Path], int] | None = None,
                 space_for: tuple[Path, ...] = (), backoff: float = 0.5):  # fmt: skip
        self.partial_dir = partial_dir
        self.client = client
        self.retries = retries
        self.free_space = free_space or _free_space
        self.space_for = space_for  # other folders the file will go to (models/)
        self.backoff = backoff

    def partial_path(self, source: Source) -> Path:
        return self.partial_dir / (hashlib.sha1(source.url.encode()).hexdigest()[:20] + ".part")

    def fetch(self, source: Source, report: Callable[[Progress], None],
              cancel: threading.Event) -> tuple[Path, str, str]:  # fmt: skip
        """Download to the partial file; returns (partial, sha256, file name)."""
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        partial = self.partial_path(source)
        progress = Progress(total=source.size)
        digest = _Digest(partial)
        progress.done = digest.size
        if source.size:
            self._check_space(source.size - progress.done, partial)
        name = source.filename
        failures = 0
        while True:
            try:
                name = self._attempt(source, partial, digest, progress, report, cancel) or name
                break
            except httpx.TransportError as exc:
                failures += 1
                progress.retries += 1
                log.info("download of %s interrupted (%s); resuming", source.url, exc)
                if failures > self.retries:
                    raise DownloadError(f"the connection failed {failures} times ({exc}); "
                                        "start the download again to resume") from exc  # fmt: skip
                time.sleep(self.backoff * failures)
            except BaseException:
                if cancel.is_set():
                    partial.unlink(missing_ok=True)
                raise
        sha256 = digest.sha.hexdigest()
        if source.sha256 and sha256 != source.sha256:
            partial.unlink(missing_ok=True)
            raise DownloadError(f"sha256 mismatch: the site states {source.sha256}, the file "
                                f"has {sha256}; the download was discarded")  # fmt: skip
        return partial, sha256, name or ""

    def _attempt(self, source, partial: Path, digest, progress: Progress, report,
                 cancel: threading.Event) -> str | None:  # fmt: skip
        headers = dict(source.headers)
        if progress.done:
            headers["Range"] = f"bytes={progress.done}-"
        with self.client.stream("GET", source.url, headers=headers,
                                follow_redirects=True) as response:  # fmt: skip
            _check_status(response)
            if response.status_code == 416 and progress.total == progress.done:
                return None  # nothing left to fetch
            if progress.done and response.status_code != 206:  # no resume: start again
                partial.unlink(missing_ok=True)
                digest.sha, progress.done = hashlib.sha256(), 0
            progress.total = _total(response, progress.done) or progress.total
            if progress.total:
                self._check_space(progress.total - progress.done, partial)
            name = filename_from(response) if source.filename is None else None
            self._stream(response, partial, digest, progress, report, cancel)
        if progress.total and progress.done < progress.total:
            raise httpx.RemoteProtocolError("the server closed the connection early")
        return name

    def _stream(self, response, partial: Path, digest, progress, report, cancel) -> None:
        window, window_done = time.monotonic(), progress.done
        last = 0.0
        with open(partial, "ab") as out:
            for block in response.iter_bytes():  # as received: a drop loses nothing
                if cancel.is_set():
                    raise Cancelled("the download was cancelled")
                out.write(block)
                digest.sha.update(block)
                progress.done += len(block)
                now = time.monotonic()
                if now - window >= 1.0:  # speed over the last second or so
                    progress.speed = (progress.done - window_done) / (now - window)
                    window, window_done = now, progress.done
                if now - last >= 0.25:
                    last = now
                    report(progress)
            out.flush()
            os.fsync(out.fileno())
        report(progress)

    def _check_space(self, needed: int, partial: Path) -> None:
        for folder in (self.partial_dir, *self.space_for):
            free = self.free_space(folder)
            if needed + SPACE_MARGIN > free:
                partial.unlink(missing_ok=True)
                raise DownloadError(f"not enough disk space in {folder}: the file needs "
                                    f"{_mb(needed)}, {_mb(free)} free")  # fmt: skip


def _check_status(response: httpx.Response) -> None:
    if response.status_code in (401, 403):
        raise DownloadError(f"the site refuses access (HTTP {response.status_code}); a gated "
                            "file needs an API key or token in Settings")  # fmt: skip
    if response.status_code >= 400 and response.status_code != 416:
        raise DownloadError(f"the site answered HTTP {response.status_code} for {response.url}")


def _total(response: httpx.Response, done: int) -> int | None:
    content_range = response.headers.get("content-range", "")
    if response.status_code == 206 and "/" in content_range:
        total = content_range.rsplit("/", 1)[1]
        return int(total) if total.isdigit() else None
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() else None


class _Digest:
    """The running sha256 of a partial file; starts over what an earlier attempt left
    (a resume after a restart)."""

    def __init__(self, partial: Path):
        self.sha = hashlib.sha256()
        self.size = 0
        if partial.is_file():
            with open(partial, "rb") as f:
                while chunk := f.read(1 << 20):
                    self.sha.update(chunk)
                    self.size += len(chunk)


def _free_space(folder: Path) -> int:
    """Free bytes on the file system that holds `folder` (or would, once made)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def _mb(n: int) -> str:
    return f"{n / (1 << 30):.1f} GB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MB"


def place(partial: Path, folder: Path, name: str) -> Path:
    """Move a finished download into `folder` as `name`, atomically; never overwrite."""
    target = folder / safe_name(name)
    folder.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raise DownloadError(f"{target.name} exists already in {folder}")
    try:
        os.link(partial, target)  # atomic, and fails if the target appeared meanwhile
    except FileExistsError:
        raise DownloadError(f"{target.name} exists already in {folder}") from None
    except OSError:  # another file system (or no hard links): copy under a hidden name
        hidden = folder / f".{target.name}.download"
        shutil.copyfile(partial, hidden)
        os.replace(hidden, target)
    partial.unlink(missing_ok=True)
    return target


def with_name(source: Source, name: str | None) -> Source:
    return replace(source, filename=name) if name else source
