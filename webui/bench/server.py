"""The web UI as a user runs it, for the benchmark: a real server process on 127.0.0.1.

`ServerProcess.start()` runs the web UI as a user starts it (`python launch.py
--skip-install --api ...`, with this interpreter) and measures the time from the process
start until the first page answers (the waiting page of `webui.boot`: page served);
`wait_ready()` the time until the real UI is served (`/internal/startup` says ready).
`call()` times one API request.

This module must never import torch or a UI library.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(
        self, data_dir: Path, flags: list[str] | None = None, log_path: Path | None = None
    ):
        self.data_dir = data_dir
        self.port = free_port()
        self.flags = flags or []
        self.log_path = log_path or data_dir / "server.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 600) -> float:
        """Start the server; returns seconds from process start to the first page."""
        cmd = [sys.executable, "launch.py", "--skip-install", "--data-dir", str(self.data_dir),
               "--port", str(self.port), "--api", "--no-download-sd-model", *self.flags]  # fmt: skip
        # VENV_DIR=-: launch.py runs the app with this interpreter
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
               "VENV_DIR": "-"}  # fmt: skip
        root = Path(__file__).resolve().parents[2]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.started = started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=self._log, stderr=self._log)
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=5) as response:
                    if response.status == 200 and b"<html" in response.read(4096).lower():
                        return time.perf_counter() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"server UI not ready after {timeout}s; see {self.log_path}")

    def wait_ready(self, timeout: float = 600) -> float:
        """Seconds from process start until the real UI is served (the build is done)."""
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/internal/startup", timeout=5) as answer:
                    status = json.loads(answer.read())
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
                status = {}
            if status.get("ready"):
                return time.perf_counter() - self.started
            if status.get("error"):
                raise RuntimeError(f"start-up failed: {status['error']}; see {self.log_path}")
            time.sleep(0.02)
        raise RuntimeError(f"server UI not ready after {timeout}s; see {self.log_path}")

    def call(self, method: str, path: str, body: dict | None = None, timeout: float = 3600):
        """(answer JSON, seconds) of one API request."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + "/sdapi/v1" + path, data=data, method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )  # fmt: skip
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:1000]
            raise RuntimeError(f"{method} {path}: HTTP {exc.code}: {detail}") from None
        seconds = time.perf_counter() - started
        return (json.loads(raw) if raw else None), seconds

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None) is not None:
            self._log.close()
