"""Composition root: flags -> AppContext -> FastAPI app with the Gradio UI and the API.

`python -m webui.app [flags]` (what launch.py runs) parses the A1111-style flags and serves
at once, with uvicorn, the page that comes first (`webui.boot.BootApp`: it says what the
server is waiting for; the API answers 503 meanwhile), while `build_server` prepares the
models folder (the --demo model, the first-run checkpoint offer), loads torch, diffusers
and Gradio and builds the app in the background; the page then turns into the real UI.
Ctrl+C or SIGTERM stops the job queue first (the running job is aborted at its next step,
waiting ones are cancelled), so open requests and event streams end and the process exits
within seconds; a second Ctrl+C (as in uvicorn) stops waiting.

Importing this module stays light (no torch, Gradio, FastAPI or the context): that is what
makes the first page quick; the heavy imports are inside the functions that need them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
import webbrowser
from contextlib import asynccontextmanager
from functools import partial

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from typing import TYPE_CHECKING  # noqa: E402

import uvicorn  # noqa: E402

from .boot import BootApp, Startup  # noqa: E402
from .settings import Flags, parse_flags  # noqa: E402

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .context import AppContext
    from .core.jobs import Job

log = logging.getLogger("webui")
WORKER_STOP_SECONDS = 15  # a job stops at its next step; loading a checkpoint cannot stop
GRACEFUL_SHUTDOWN_SECONDS = 5  # then uvicorn cuts the connections still open


class StoppingServer(uvicorn.Server):
    """uvicorn's server, except that on the first Ctrl+C / SIGTERM the app stops its work
    before uvicorn waits for open connections: API requests waiting for a job and the UI's
    event streams would otherwise keep the process alive until the running job ends."""

    async def shutdown(self, sockets=None) -> None:
        log.info("Shutting down: stopping the running job (press Ctrl+C again to quit at once)")
        for server in getattr(self, "servers", []):
            server.close()  # no new connections
        app = self.config.app
        if isinstance(app, BootApp):  # the start-up stops; the app, when it is serving
            app = app.stop()
        if app is not None:
            begin_shutdown(app)
            # the jobs end first, so that the requests waiting for them get their answer (503)
            jobs = app.state.ctx.jobs
            deadline = time.monotonic() + WORKER_STOP_SECONDS
            while not jobs.stopped() and not self.force_exit and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        await super().shutdown(sockets)

    async def startup(self, sockets=None) -> None:
        """Bind the port (a port in use exits here, before anything is loaded), then build."""
        await super().startup(sockets)
        if self.started and isinstance(self.config.app, BootApp):
            self.config.app.start()


def begin_shutdown(app: FastAPI) -> None:
    """Abort the running job, cancel the waiting ones, end open event streams; at once.
    The lifespan's ctx.close() then waits for the worker."""
    app.state.ctx.jobs.shutdown()
    app.state.stopping.set()


def create_app(flags: Flags, ctx: AppContext | None = None) -> FastAPI:
    """The whole server: API routes (with --api/--nowebui) and the UI (unless --nowebui)."""
    from fastapi import FastAPI
    from starlette.routing import Mount

    from .context import build_context

    ctx = ctx or build_context(flags)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        ctx.close()  # stop the worker after the server stops taking requests

    api = flags.api or flags.nowebui
    app = FastAPI(
        title="webui",
        docs_url=None,  # /docs and /redoc with their scripts from this server (api.docs)
        openapi_url="/openapi.json" if api else None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.stopping = asyncio.Event()  # set when the server shuts down (StoppingServer)
    _install_security(app, flags)

    if api:
        from .api.docs import install_docs
        from .api.routes import api_router
        from .api.routes_browser import browser_router
        from .api.routes_controlnet import controlnet_router
        from .api.routes_detailer import adetailer_router
        from .api.routes_merge import merge_router
        from .api.routes_models import models_router
        from .api.routes_queue import queue_router

        app.include_router(api_router())
        app.include_router(queue_router())
        app.include_router(browser_router())  # /webui/v1/images: the Image Browser
        app.include_router(merge_router())  # /webui/v1/merge: Checkpoint Merger, LoRA merge
        app.include_router(models_router())  # /webui/v1/models: the Models tab
        app.include_router(adetailer_router())  # /adetailer/v1 (ADetailer's)
        from .api.routes_train import train_router

        app.include_router(train_router())  # /webui/v1/train: LoRA training on the queue
        app.include_router(controlnet_router())  # /controlnet (sd-webui-controlnet's)
        install_docs(app)
    if ctx.extensions is not None:  # each extension's API under /ext/<name>, behind --api-auth
        from fastapi import Depends

        from .api.auth import api_user

        ctx.extensions.mount_routers(app, dependencies=[Depends(api_user)])
    if not flags.nowebui:
        import gradio as gr
        from gradio.routes import App as GradioApp

        from .ui.blocks import CSS, build_ui, page_head
        from .ui.live_progress import install_progress_routes

        install_progress_routes(app)  # the pages' steps, ETAs and live previews
        gr.mount_gradio_app(
            app,
            build_ui(ctx),
            path="/",  # --subpath is the root path (SubpathMiddleware)
            auth=flags.gradio_credentials() or None,
            ssr_mode=False,
            footer_links=[],
            css=CSS,
            head=page_head(ctx),  # English / 简体中文 (webui/ui/localizations), icon labels
            theme=gr.themes.Default(primary_hue="orange"),
        )
        # the UI login guard (api.auth) checks Gradio's own login tokens
        app.state.gradio_app = next(
            r.app for r in app.routes if isinstance(r, Mount) and isinstance(r.app, GradioApp)
        )
    return app


def _install_security(app: FastAPI, flags: Flags) -> None:
    """API auth, cross-origin guard, browser identity, CORS, --subpath; error answers;
    body-size limit, no URL fetching, nosniff, Pillow's decompression-bomb limit."""
    from .api.auth import SecurityMiddleware
    from .api.cors import install_cors
    from .api.errors import add_error_handlers
    from .api.hardening import HardeningMiddleware
    from .api.shutdown import DisconnectOnShutdown
    from .api.subpath import SubpathMiddleware
    from .imaging.codec import limit_decoding

    limit_decoding()
    add_error_handlers(app)  # 422, 501, 503, 429, 403 from any route
    app.add_middleware(DisconnectOnShutdown, stopping=app.state.stopping)  # ends open streams
    # size limit, no URL fetching, nosniff: after authentication (401 comes first)
    app.add_middleware(HardeningMiddleware, max_body_bytes=flags.max_request_mb * 2**20)
    app.add_middleware(SecurityMiddleware, flags=flags)  # the last added runs first
    install_cors(app, flags)
    if flags.subpath and flags.subpath.strip("/"):
        app.add_middleware(SubpathMiddleware, subpath=flags.subpath)
    api = flags.api or flags.nowebui
    if api and not flags.api_auth and (flags.gradio_auth or flags.gradio_auth_path):
        log.warning("--gradio-auth protects the UI only: the API is open; add --api-auth.")


def prepare_models(flags: Flags, startup: Startup | None = None) -> None:
    """First-run help: the --demo model, and the default checkpoint offer when none exists."""
    from .model_manager.download import offer_default_checkpoint
    from .model_manager.registry import SUFFIXES

    flags.ckpt_dir.mkdir(parents=True, exist_ok=True)
    if flags.demo:
        from .model_manager.demo import ensure_demo_checkpoint

        path = ensure_demo_checkpoint(flags.ckpt_dir)
        log.info("Demo model (random weights, images are noise): %s", path.name)
    has_any = any(
        p.suffix in SUFFIXES or p.name == "model_index.json" for p in flags.ckpt_dir.rglob("*")
    )
    if not has_any and not flags.ckpt:
        if flags.no_download_sd_model:
            log.warning(
                "No checkpoint found in %s. Put a .safetensors checkpoint there and press the "
                "refresh button next to the checkpoint list, or restart with --demo.",
                flags.ckpt_dir,
            )
        else:
            if startup is not None:
                startup.phase("Downloading the default checkpoint (about 4 GB)")
            offer_default_checkpoint(flags.ckpt_dir)  # writes a partial file, then renames


def load_startup_checkpoint(ctx: AppContext) -> Job | None:
    """Load the default checkpoint in the background (the page is served at once, the
    first job waits for it): --ckpt, else the sd_model_checkpoint option, else the first
    one. As in A1111, the option then names it in config.json (unless settings are frozen),
    so the Settings tab and every job use that checkpoint, not whichever was loaded last."""
    flags, options, models = ctx.flags, ctx.options, ctx.models
    if flags.ckpt and not flags.ckpt.exists():
        log.warning("--ckpt %s: no such file; it is not listed", flags.ckpt)
        return None
    if not models.checkpoints():
        return None
    stored = options.get("sd_model_checkpoint")
    wanted = flags.ckpt.name if flags.ckpt else stored
    try:
        info = models.resolve(wanted or None)
    except LookupError as exc:  # not found, or a .ckpt whose pickle is refused
        info = models.resolve(None)
        log.warning("%s; using %s", exc.args[0] if exc.args else exc, info.title)
    record = not _names(models, stored, info) and not options.read_only
    if record:
        options.set("sd_model_checkpoint", info.title)
        options.save()
        log.info("Default checkpoint: %s (saved in %s)", info.title, options.path)
    job = ctx.jobs.submit("load", info.title, owner="startup")
    if record and info.shorthash is None:  # the hash is known once it is loaded
        args = (ctx, job, info.title)
        threading.Thread(target=_record_hashed_title, args=args, daemon=True).start()
    return job


def _names(models, value: str, info) -> bool:
    """Whether an option value names this checkpoint."""
    try:
        return bool(value) and models.resolve(value).path == info.path
    except LookupError:
        return False


def _record_hashed_title(ctx: AppContext, job: Job, recorded: str) -> None:
    """After the start-up load, the title with its hash ("name.safetensors [0123456789]"),
    as A1111 stores it, unless someone chose another checkpoint meanwhile."""
    from .core import jobs as job_states

    job.done.wait()
    if job.state != job_states.DONE or ctx.options.get("sd_model_checkpoint") != recorded:
        return
    try:
        title = ctx.models.resolve(recorded).title
    except LookupError:
        return
    if title != recorded:
        ctx.options.set("sd_model_checkpoint", title)
        ctx.options.save()


def main(argv: list[str] | None = None) -> int:
    flags = parse_flags(argv)
    logging.basicConfig(
        level=getattr(logging, (flags.log_level or "INFO").upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if flags.share:
        log.warning(
            "--share is not possible: it needs a tunnel service on the internet. Use --listen to share on your LAN."
        )
    app = BootApp(partial(build_server, flags), subpath=flags.subpath,
                  show_errors=not flags.gradio_credentials() and not flags.api_auth,
                  language=_language(flags))  # fmt: skip
    host = flags.server_host
    scheme = "https" if flags.tls_certfile else "http"
    shown = "127.0.0.1" if host == "0.0.0.0" else host
    url = f"{scheme}://{shown}:{flags.port}{flags.subpath or ''}/"
    config = uvicorn.Config(
        app,
        host=host,
        port=flags.port,
        log_level="warning",
        ssl_keyfile=flags.tls_keyfile,
        ssl_certfile=flags.tls_certfile,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    server = StoppingServer(config)
    _announce(flags, url)
    if flags.autolaunch:
        webbrowser.open(url)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn raises the Ctrl+C again once it has shut down
        return 130
    return 0


def build_server(flags: Flags, startup: Startup) -> FastAPI:
    """The real server, built in the background while the page says what it waits for
    (each `startup.phase` is a line of that page, and where a shutdown stops the build)."""
    startup.phase("Preparing the models folder")
    prepare_models(flags, startup)
    startup.phase("Loading torch")
    import torch  # noqa: F401 - the longest imports, named on the page

    startup.phase("Loading diffusers")
    import diffusers  # noqa: F401

    from .context import build_context

    startup.phase("Starting the worker")
    startup.holds_resources = True  # from here a shutdown waits for the next phase
    ctx = build_context(flags)
    try:
        for note in ctx.memory.notes:
            log.warning(note)
        log.info("Running on %s", ctx.memory.description)
        job = load_startup_checkpoint(ctx)
        if job is not None:  # loads meanwhile, in the worker
            startup.detail(partial(_loading_line, job))
        if not flags.nowebui:
            startup.phase("Loading Gradio")
            import gradio  # noqa: F401

        startup.phase("Building the page")
        app = create_app(flags, ctx)
        startup.phase("Starting")
    except BaseException:
        ctx.close()
        raise
    return app


def _loading_line(job: Job) -> str:
    """The waiting page's second line while the start-up checkpoint loads."""
    from .core import jobs as job_states

    if job.state in (job_states.QUEUED, job_states.RUNNING):
        return f"Loading model {job.params}"
    if job.state == job_states.FAILED:
        return f"Loading model {job.params} failed: {job.error}"
    return ""


def _language(flags: Flags) -> str:
    """The page's language: --localization, else the option, else the browser's ("auto")."""
    name = flags.localization
    if not name:
        try:
            from .options import Options

            name = str(Options.from_flags(flags).get("localization") or "")
        except Exception:  # an unreadable config.json is reported by the real start-up
            name = ""
    return "auto" if name.strip().lower() in ("", "auto", "none") else name.strip()


def _announce(flags: Flags, url: str) -> None:
    print(f"Running on local URL:  {url}", flush=True)
    if flags.server_host in ("0.0.0.0", "::"):
        addresses = _lan_addresses()
        for address in addresses:
            print(f"On your network:       {url.replace('127.0.0.1', address)}", flush=True)
        if not addresses:
            log.warning(
                "No LAN address found; use this machine's IP address with port %s.", flags.port
            )
    if flags.listen or flags.server_name:
        if not (flags.gradio_auth or flags.gradio_auth_path) and not flags.nowebui:
            log.warning("--listen without --gradio-auth: anyone on your network can use this UI.")
        if flags.api and not flags.api_auth:
            log.warning(
                "--listen with --api but no --api-auth: anyone on your network can use the API."
            )


def _lan_addresses() -> list[str]:
    """IPv4 addresses of this machine's network interfaces (no traffic is sent)."""
    addresses: set[str] = set()
    try:
        import psutil

        for entries in psutil.net_if_addrs().values():
            addresses.update(e.address for e in entries if e.family == socket.AF_INET)
    except Exception:  # psutil missing or failing: fall back to name resolution
        pass
    try:
        addresses.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return sorted(a for a in addresses if not a.startswith(("127.", "169.254.")))


if __name__ == "__main__":
    sys.exit(main())
