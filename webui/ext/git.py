"""Git for extension folders: clone from a URL, read the commit, check for and apply updates.

Runs the `git` program (no prompts for credentials: GIT_TERMINAL_PROMPT=0, a timeout on
every call). Errors come back as `GitError` with git's own message.

This module must never import torch, diffusers, gradio or fastapi.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TIMEOUT = 300
_URL_RE = re.compile(r"^(?:(?:https?|git|ssh|file)://\S+|[\w.\-]+@[\w.\-]+:\S+)$")
_FOLDER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,99}")


class GitError(RuntimeError):
    """A git command failed; the message is git's own."""


@dataclass(frozen=True)
class GitInfo:
    remote: str | None
    branch: str | None
    commit: str | None  # full hash
    date: str | None  # ISO 8601 commit date

    @property
    def short(self) -> str:
        return self.commit[:8] if self.commit else ""


def _run(args: list[str], cwd: Path | None = None) -> str:
    exe = shutil.which("git")
    if exe is None:
        raise GitError("git is not installed: install git to add or update extensions")
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "", "LC_ALL": "C"}
    try:
        done = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True,
                              timeout=TIMEOUT, env=env, check=False)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise GitError(f"git {args[0]} took longer than {TIMEOUT} s") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise GitError(message[-1] if message else f"git {args[0]} failed")
    return done.stdout.strip()


def folder_name_for(url: str) -> str:
    """The folder an extension from `url` goes into: the last path part without .git."""
    url = url.strip()
    if not _URL_RE.match(url):
        raise ValueError(
            f"not a git URL: {url!r} (expected https://..., file://... or git@host:path)"
        )
    tail = re.split(r"[/:]", url.rstrip("/"))[-1]
    if tail.endswith(".git"):
        tail = tail[:-4]
    if not _FOLDER_RE.fullmatch(tail) or tail in (".", ".."):
        raise ValueError(f"cannot make a folder name from {url!r}")
    return tail


def clone(url: str, target: Path, branch: str | None = None) -> None:
    args = ["clone", "--quiet"]
    if branch:
        if not re.fullmatch(r"[\w.\-/]+", branch) or branch.startswith("-"):
            raise ValueError(f"not a branch name: {branch!r}")
        args += ["--branch", branch]
    _run([*args, "--", url.strip(), str(target)])


def info(folder: Path) -> GitInfo | None:
    """Remote, branch and commit of a git checkout; None for a plain folder."""
    if not (folder / ".git").exists():
        return None

    def ask(*args: str) -> str | None:
        try:
            return _run(list(args), cwd=folder) or None
        except GitError:
            return None

    return GitInfo(
        remote=ask("config", "--get", "remote.origin.url"),
        branch=ask("rev-parse", "--abbrev-ref", "HEAD"),
        commit=ask("rev-parse", "HEAD"),
        date=ask("log", "-1", "--format=%cI"),
    )


def behind(folder: Path) -> int:
    """Fetch, then count the upstream commits the checkout does not have yet."""
    _run(["fetch", "--quiet"], cwd=folder)
    try:
        return int(_run(["rev-list", "--count", "HEAD..@{upstream}"], cwd=folder))
    except GitError as exc:
        raise GitError(f"no upstream branch to compare with ({exc})") from None


def update(folder: Path) -> str:
    """Fast-forward to the upstream branch; returns the new commit."""
    _run(["merge", "--ff-only", "--quiet", "@{upstream}"], cwd=folder)
    return _run(["rev-parse", "HEAD"], cwd=folder)
