"""The layers of DESIGN.md hold: checked by import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def test_ui_modules_do_not_load_torch():
    """Beyond static imports: importing the UI package pulls in no torch at run time."""
    code = (
        "import sys, webui.ui.blocks, webui.ui.txt2img, webui.ui.settings_tab;"
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_context_services_and_api_load_without_torch():
    """AppContext is typed with Protocols: the API can name it at run time (FastAPI reads
    route annotations) and the services can run in request threads without torch."""
    code = (
        "import sys, webui.context, webui.services.generation, webui.api.routes,"
        " webui.api.routes_images, webui.api.routes_queue, webui.api.routes_networks;"
        "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_context_dependency_and_one_upscaler_catalog():
    sources = {
        p.relative_to(ROOT).as_posix(): p.read_text() for p in (ROOT / "webui").rglob("*.py")
    }
    assert [p for p, s in sources.items() if "def get_ctx(" in s] == ["webui/api/deps.py"]
    assert [p for p, s in sources.items() if "AppContext = Any" in s] == []
    assert [p for p, s in sources.items() if "UpscalerCatalog(" in s] == [
        "webui/services/upscalers.py"
    ]
