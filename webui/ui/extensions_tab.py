"""The Extensions tab: what is installed, on/off, failures, install from git, updates.

Lists every extension (built-in scripts, folders under extensions/, installed packages)
with its version or commit and its state; a failed one shows why. Enabling or disabling
is saved at once (hooks follow immediately; tabs, sections and API routes at the next
start). Installing from a git URL and updating are refused when the server is reachable
from other machines without --enable-insecure-extension-access.

This module must never import torch or diffusers.
"""

from __future__ import annotations

import html
import logging
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..ext.git import GitError
from ..ext.host import ExtensionAccessError
from .common import InputError

if TYPE_CHECKING:
    from ..context import AppContext

log = logging.getLogger(__name__)

RESTART_NOTE = (
    "Saved. Restart the web UI to add or remove the tabs, sections and API routes of extensions."
)
ACCESS_NOTE = ("Installing and updating extensions is disabled: the server is reachable from other "
               "machines. Start it with --enable-insecure-extension-access to allow it.")  # fmt: skip


def extensions_table(host: Any, updates: dict[str, str] | None = None) -> str:
    """An HTML table of the extensions (names and errors escaped)."""
    rows = []
    for record in host.records:
        if record.error:
            state = f'<span class="ext-failed">Failed: {html.escape(record.error)}</span>'
        elif not record.enabled:
            state = "Disabled"
        else:
            state = "Enabled"
        update = html.escape((updates or {}).get(record.key, ""))
        description = record.extension.description if record.extension else ""
        rows.append(
            f"<tr><td>{html.escape(record.title)}</td><td><code>{html.escape(record.key)}</code></td>"
            f"<td>{html.escape(record.source)}</td><td>{html.escape(record.version or '')}</td>"
            f"<td>{state}</td><td>{update}</td><td>{html.escape(description)}</td></tr>"
        )
    head = ("<tr><th>Extension</th><th>Name</th><th>Source</th><th>Version</th><th>State</th>"
            "<th>Update</th><th>Description</th></tr>")  # fmt: skip
    return f'<table class="ext-table">{head}{"".join(rows)}</table>'


def build_extensions_tab(ctx: AppContext) -> None:
    host = getattr(ctx, "extensions", None)
    if host is None:
        gr.Markdown("Extensions are not loaded in this server.")
        return
    locked = bool(getattr(ctx.flags, "disable_extension_access", False))
    keys = [(r.title, r.key) for r in host.records]
    with gr.Tabs():
        with gr.Tab("Installed", id="extensions_installed"):
            table = gr.HTML(extensions_table(host), elem_id="extensions_table")
            enabled = gr.CheckboxGroup(label="Enabled extensions", choices=keys,
                                       value=[r.key for r in host.records if r.enabled],
                                       elem_id="extensions_enabled")  # fmt: skip
            with gr.Row():
                apply = gr.Button("Apply and save", variant="primary", elem_id="extensions_apply")
                check = gr.Button("Check for updates", elem_id="extensions_check")
                update = gr.Button(
                    "Update all", interactive=not locked, elem_id="extensions_update"
                )
            status = gr.Markdown("", elem_id="extensions_status")
        with gr.Tab("Install from URL", id="extensions_install"):
            if locked:
                gr.Markdown(ACCESS_NOTE, elem_id="extensions_locked")
            url = gr.Textbox(label="URL for extension's git repository", interactive=not locked,
                             placeholder="https://github.com/user/extension.git",
                             elem_id="extensions_url")  # fmt: skip
            branch = gr.Textbox(label="Specific branch name", placeholder="Leave empty for default",
                                interactive=not locked, elem_id="extensions_branch")  # fmt: skip
            install = gr.Button("Install", variant="primary", interactive=not locked,
                                elem_id="extensions_install_button")  # fmt: skip
            install_status = gr.Markdown("", elem_id="extensions_install_status")
    updates: dict[str, str] = {}

    def save(chosen: list[str]):
        for record in list(host.records):
            want = record.key in (chosen or [])
            if want != record.enabled or (want and record.error):
                host.set_enabled(record.key, want)
        return extensions_table(host, updates), RESTART_NOTE

    def check_updates():
        updates.clear()
        updates.update(host.check_updates())
        if not updates:
            return extensions_table(host), "No extension installed from git."
        behind = sum(1 for v in updates.values() if v.endswith("new commit(s)"))
        return extensions_table(host, updates), f"{behind} extension(s) can be updated."

    def update_all():
        try:
            host.check_access()
        except ExtensionAccessError as exc:
            raise InputError(str(exc)) from exc
        done = []
        for key, state in list(updates.items()):
            if state.endswith("new commit(s)"):
                try:
                    host.update(key)
                    updates[key] = "updated; restart to use it"
                    done.append(key)
                except (GitError, ValueError) as exc:
                    updates[key] = f"update failed: {exc}"
        message = (
            f"Updated: {', '.join(done)}. Restart the web UI."
            if done
            else "Nothing to update: check for updates first."
        )
        return extensions_table(host, updates), message

    def install_from(url_: str, branch_: str):
        if not (url_ or "").strip():
            raise InputError("Enter the URL of a git repository")
        try:
            record = host.install(url_, (branch_ or "").strip() or None)
        except ExtensionAccessError as exc:
            raise InputError(str(exc)) from exc
        except (GitError, ValueError, OSError) as exc:
            raise InputError(f"Install failed: {exc}") from exc
        choices = [(r.title, r.key) for r in host.records]
        value = [r.key for r in host.records if r.enabled]
        if record.error:
            message = f"Installed {record.key}, but it does not load: {record.error}"
        else:
            message = f"Installed {record.title} into {record.path}. Restart the web UI to see its tab and sections."
        return (extensions_table(host), gr.CheckboxGroup(choices=choices, value=value), message, "")

    apply.click(save, inputs=enabled, outputs=[table, status])
    check.click(check_updates, outputs=[table, status])
    update.click(update_all, outputs=[table, status])
    install.click(install_from, inputs=[url, branch], outputs=[table, enabled, install_status, url])
