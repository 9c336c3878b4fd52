"""A job's progress: what the worker updates in place and every listing reads.

`Progress` is a snapshot readers may copy at any time; the runner advances it after every
sampling step and sets live previews; its `listeners` (event publishing, extensions'
`on_step`) are called in the worker. The ETA comes from measured steps only.

This module must never import torch, diffusers or a UI library.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    """A snapshot readers may copy at any time; the runner updates it in place.

    The ETA comes from measured steps only: until one step has finished there is none
    ("estimating…"); then it is the remaining steps times the mean step time, counting
    down while a step runs and never growing before the next step ends."""

    step: int = 0  # steps done in the current image batch
    steps: int = 0  # steps of the current batch
    batch: int = 0  # index of the current batch (batch count)
    batches: int = 1
    started_at: float | None = None  # when sampling began (monotonic), not the queue wait
    preview: Any = None  # a PIL image, refreshed every few steps
    preview_step: int = -1
    text: str = ""
    _measured: tuple[int, float] = (0, 0.0)  # steps timed, seconds they took
    _last_step_at: float | None = None
    # called (in the worker) after every advance() and set_preview(): event publishing,
    # extensions' on_step hooks
    listeners: list[Callable[[Progress], None]] = field(default_factory=list, repr=False)
    details: Any = None  # a job kind's own live state (training: its losses and samples)

    def advance(self, step: int, steps: int) -> None:
        """A sampling step ended: `step` of `steps` done in the current batch."""
        now = time.monotonic()
        since = self._last_step_at if self._last_step_at is not None else self.started_at
        if since is not None and step > 0:
            count, seconds = self._measured
            self._measured = (count + 1, seconds + max(0.0, now - since))
        self._last_step_at = now
        self.steps = steps
        self.step = step
        self._notify()

    def set_preview(self, image: Any, step: int) -> None:
        """A new live preview, made after `step` steps of the whole job."""
        self.preview, self.preview_step = image, step
        self._notify()

    def note(self, text: str) -> None:
        """Show `text` (listeners are told) without counting a step."""
        self.text = text
        self._notify()

    def exclude(self, seconds: float) -> None:
        """`seconds` in which the job did not run (training paused for other jobs): not
        counted in its step times, so its ETA stays its own."""
        if self._last_step_at is not None:
            self._last_step_at += seconds
        if self.started_at is not None:
            self.started_at += seconds

    def _notify(self) -> None:
        for listener in list(self.listeners):
            listener(self)

    @property
    def fraction(self) -> float:
        if not self.steps:
            return 0.0
        done = self.batch * self.steps + min(self.step, self.steps)
        return min(1.0, done / (self.batches * self.steps))

    @property
    def seconds_per_step(self) -> float | None:
        count, seconds = self._measured
        return seconds / count if count else None

    @property
    def eta_seconds(self) -> float | None:
        """Seconds left, or None while no step has been measured yet."""
        per_step = self.seconds_per_step
        if per_step is None or not self.steps:
            return None
        remaining = self.batches * self.steps - (
            self.batch * self.steps + min(self.step, self.steps)
        )
        if remaining <= 0:
            return 0.0
        running_for = time.monotonic() - (self._last_step_at or time.monotonic())
        return max((remaining - 1) * per_step, remaining * per_step - running_for)
