"""Extensions: the typed, versioned hook API and the host that loads and runs them.

Extension authors import from here: `from webui.ext import Extension, Section, Control`.
See docs/EXTENSIONS.md. Importing this package never imports torch or a UI library; the
runner that calls hooks on the worker thread is `webui.ext.runner`.
"""

from .api import (
    API_VERSION,
    ArgError,
    Control,
    Extension,
    ExtensionContext,
    JobInfo,
    SavedImage,
    Section,
    StepInfo,
    Tab,
)

__all__ = [
    "API_VERSION",
    "ArgError",
    "Control",
    "Extension",
    "ExtensionContext",
    "JobInfo",
    "SavedImage",
    "Section",
    "StepInfo",
    "Tab",
]
