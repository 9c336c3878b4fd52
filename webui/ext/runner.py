"""Extension hooks around the job runner: before_job, on_step, scripts, after_job, saves.

`wrap_runner(host, runner, store)` returns the runner the job queue calls. For a
txt2img/img2img job it asks every active extension's `before_job` for new params (a hook
may split the job into several), runs the job's script (X/Y/Z plot, ...) or the plain
generation, and calls `after_job`. Hooks inside the generation go through the worker's
run context: `on_step` is a listener of the job's `Progress`; `on_image_saved` is a
`RunHooks.on_saved` listener the worker calls for every image it writes, with the job
info of that run (grids that scripts save are reported here). A job a hook splits gets
one batch grid of all its images (`core.saving.batch_grid`), as if it ran unsplit. A hook that raises disables
its extension; the job goes on without it. A script that raises is disabled too, and the
job runs as a plain generation (or keeps the images made so far). A prompt over a limit
of `core.prompt_limits`, made by a hook (wildcards) or a script, fails the job with its
message and disables nothing.

This module must never import a UI library. It runs on the worker thread only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from ..core.jobs import Job, Progress
from ..core.processing import GeneratedImage
from ..core.prompt_limits import PromptLimitError
from ..core.run import RunHooks
from ..core.saving import SaveSettings, batch_grid, pattern_values
from ..core.worker import JobResult
from ..options import OPTION_DEFS
from .api import Extension, JobInfo, SavedImage, StepInfo
from .host import FAILED, ExtensionHost

log = logging.getLogger(__name__)

GENERATION_KINDS = ("txt2img", "img2img")
_DEFAULTS = {d.key: d.default for d in OPTION_DEFS}


class _GenerationError(Exception):
    """Raised by ScriptRun.process: the generation failed, not the script."""

    def __init__(self, cause: BaseException):
        super().__init__(str(cause))
        self.cause = cause


class Runner(Protocol):
    """The worker (`webui.core.worker.Worker`): runs one job with the hooks given."""

    def __call__(self, job: Job, hooks: RunHooks = ...) -> Any: ...


def wrap_runner(host: ExtensionHost, runner: Runner, store: Any = None) -> Callable[[Job], Any]:
    """The queue's runner with the extension hooks around it (`store` saves scripts' grids)."""

    def run(job: Job) -> Any:
        if job.kind not in GENERATION_KINDS or not host.active():
            return runner(job, saved_hooks(host, job.params))
        return _Generation(host, runner, job, store).run()

    return run


def saved_hooks(host: ExtensionHost, params: Any) -> RunHooks:
    """RunHooks that call every active extension's on_image_saved (with its args in
    `params`) for each image the worker writes; the worker gives the job of the run."""

    def on_saved(saved: SavedImage) -> None:
        notify_saved(host, saved, params)

    return RunHooks(on_saved=(on_saved,))


def notify_saved(host: ExtensionHost, saved: SavedImage, params: Any) -> None:
    for ext in host.active():
        if ext.on_image_saved is not None:
            args = host.args_for(ext, params)
            host.call(ext, "on_image_saved", ext.on_image_saved, saved, args)


@dataclass
class _Generation:
    host: ExtensionHost
    runner: Runner
    job: Job
    store: Any
    results: list[Any] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.info = JobInfo.of(self.job)
        self.params = self.job.params

    def run(self) -> Any:
        on_step = self._step_listener()
        if on_step is not None:
            self.job.progress.listeners.append(on_step)
        result = None
        try:
            script = self._script()
            result = self._run_script(script) if script else self.process(self.params)
        except _GenerationError as exc:
            raise exc.cause from None
        finally:
            if on_step is not None:
                self.job.progress.listeners.remove(on_step)
            self.job.params = self.params
            self._after_job(result)
        return result

    # --- hooks -------------------------------------------------------------------------
    def _script(self) -> Extension | None:
        name = getattr(self.params, "script", None)
        if not name:
            return None
        record = self.host.find(name)
        if record is None or not record.active or record.extension is None:
            self.warnings.append(f"Script {name} is not available; ran a plain generation")
            return None
        return record.extension

    def _step_listener(self) -> Callable[[Progress], None] | None:
        """A progress listener calling on_step hooks once per finished sampling step
        (the progress also reports new previews: those are not steps)."""
        hooked = [e for e in self.host.active() if e.on_step is not None]
        if not hooked:
            return None
        last: list[tuple[int, int]] = []

        def on_step(p: Progress) -> None:
            if not p.step or last == [(p.batch, p.step)]:
                return
            last[:] = [(p.batch, p.step)]
            step = StepInfo(self.info, p.step, p.steps, p.batch, p.batches, p.preview)
            for ext in hooked:
                if self.host.is_active(ext):
                    args = self.host.args_for(ext, self.job.params)
                    self.host.call(ext, "on_step", ext.on_step, step, args)

        return on_step

    def _before_job(self, params: Any) -> list[Any]:
        todo = [params]
        for ext in self.host.active():
            if ext.before_job is None:
                continue
            done = []
            for p in todo:
                if not self.host.is_active(ext):  # failed on an earlier entry
                    done.append(p)
                    continue
                args = self.host.args_for(ext, p)
                out = self.host.call(ext, "before_job", ext.before_job, self.info, p, args,
                                     passes=(PromptLimitError,))  # fmt: skip
                done += self._checked(ext, p, out)
            todo = done
        return todo

    def _checked(self, ext: Extension, params: Any, out: Any) -> list[Any]:
        if out is FAILED or out is None:
            return [params]
        items = list(out) if isinstance(out, list | tuple) else [out]
        try:
            if not items:
                raise TypeError("returned an empty list of params")
            for item in items:
                if type(item) is not type(params):
                    raise TypeError(
                        f"returned {type(item).__name__}, expected {type(params).__name__}"
                    )
                item.validated()
        except PromptLimitError:
            raise  # a prompt over a limit (wildcards made it too long): the job fails
        except (TypeError, ValueError) as exc:
            self.host.fail(ext, "before_job", exc)
            return [params]
        return items

    def _after_job(self, result: Any) -> None:
        for ext in self.host.active():
            if ext.after_job is not None:
                args = self.host.args_for(ext, self.params)
                self.host.call(ext, "after_job", ext.after_job, self.info, result, args)

    # --- generation ------------------------------------------------------------------
    def process(self, params: Any) -> Any:
        """One generation through the before_job hooks (one run per params they give)."""
        results = []
        try:
            todo = self._before_job(params)
        except PromptLimitError as exc:
            raise _GenerationError(exc) from exc
        split = len(todo) > 1  # then the grid is made of all the runs' images, below
        for p in todo:
            if results and self.job.interrupt_requested:
                break
            self.job.params = replace(p, grid=False) if split else p
            try:
                results.append(self.runner(self.job, saved_hooks(self.host, p)))
            except Exception as exc:
                raise _GenerationError(exc) from exc
        self.results += results
        if len(results) == 1:
            return self._with_warnings(results[0])
        images = [g for r in results for g in r.images]
        notes = [w for r in results for w in r.warnings]
        images = self._with_grid(params, images, results[0])
        return self._with_warnings(
            replace(results[0], images=images, params=params, warnings=notes)
        )

    def _with_grid(self, params: Any, images: list[Any], first: JobResult) -> list[Any]:
        """The batch grid of a job that before_job split into several runs (wildcards
        give every image its own prompt): one grid of all their images, as unsplit."""
        if self.store is None or not images:
            return images
        settings = SaveSettings.from_options(partial(_option_or_default, self.job.options))
        model = first.checkpoint_title.rsplit(" [", 1)[0].rsplit("/", 1)[-1].rsplit(".", 1)[0]
        values = pattern_values(self.job, params, model, images[0].infotext)
        grid = batch_grid(self.job, params, images, settings, store=self.store,
                          hooks=saved_hooks(self.host, params), values=values)  # fmt: skip
        return [grid, *images] if grid is not None and settings.return_grid else images

    def _with_warnings(self, result: Any) -> Any:
        if not self.warnings:
            return result
        return replace(result, warnings=[*self.warnings, *result.warnings])

    def _run_script(self, script: Extension) -> Any:
        run = ScriptRun(self, script)
        args = self.host.args_for(script, self.params)
        try:
            shown = script.run(run, args)
        except _GenerationError:
            raise
        except Exception as exc:
            self.host.fail(script, "run", exc)
            note = f"Script {script.display_title} failed ({exc}) and is disabled"
            if not self.results:
                self.warnings.append(f"{note}; ran a plain generation")
                return self.process(self.params)
            self.warnings.append(f"{note}; showing the images made so far")
            shown = [g for r in self.results for g in r.images]
        base = self.results[-1] if self.results else JobResult([], self.params, "", "")
        notes = [w for r in self.results for w in r.warnings]
        return replace(base, images=list(shown or []), params=self.params,
                       warnings=[*self.warnings, *notes])  # fmt: skip


def _option_or_default(options: Any, key: str) -> Any:
    """A job's option (its snapshot), else the option's default."""
    value = options.get(key) if key in options else None
    return _DEFAULTS[key] if value is None else value


class ScriptRun:
    """What a script's `run(script_run, args)` works with.

    `process(params)` generates (hooks included) and returns the images, each with
    `.image`, `.seed`, `.infotext`, `.path`. `save_grid` writes a grid to the grids folder
    (when the job saves images); `image()` wraps a picture for the result list."""

    def __init__(self, generation: _Generation, script: Extension):
        self._gen = generation
        self.script = script
        self.job = generation.info
        self.params = generation.params
        self.check = generation.host.arg_check(generation.params)  # resolve names like check_args

    def process(self, params: Any) -> list[GeneratedImage]:
        """The images of one generation; scripts make their own grids, so none of the
        batch grids a plain job shows (A1111's scripts set do_not_save_grid)."""
        return list(self._gen.process(replace(params, grid=False)).images)

    def should_stop(self) -> bool:
        return bool(self._gen.job.interrupt_requested)

    def status(self, text: str) -> None:
        self._gen.job.progress.text = text

    def option(self, key: str) -> Any:
        options = self._gen.job.options
        return options.get(key) if key in options else None

    def image(
        self, image: Any, seed: int, infotext: str, path: str | None = None
    ) -> GeneratedImage:
        return GeneratedImage(image=image, seed=seed, infotext=infotext, path=path)

    def save_grid(self, image: Any, infotext: str) -> str | None:
        if not getattr(self.params, "save_images", True) or self._gen.store is None:
            return None
        job = self._gen.job
        settings = SaveSettings.from_options(partial(_option_or_default, job.options))
        # a rerun after a restart keeps the grid its first attempt wrote (the same cells)
        path = job.saved_earlier(None) or self._gen.store.save_grid(
            image, kind=self.job.kind, infotext=infotext, **settings.grid_args()
        )
        job.image_saved(str(path), infotext=infotext)  # recorded like the job's images
        saved = SavedImage(self.job, Path(path), image, infotext, None, self.job.kind, grid=True)
        notify_saved(self._gen.host, saved, self.params)
        return str(path)
