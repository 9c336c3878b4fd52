"""Built-in scripts, written as extensions on the public API (webui.ext.api).

X/Y/Z plot, prompt matrix, prompts from file or textbox, and wildcards. They are loaded
like any other extension (and can be disabled in the Extensions tab). This package must
never import torch, diffusers or a UI library.
"""
