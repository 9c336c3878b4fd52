"""Stable Diffusion web UI: a Gradio front end and an A1111-compatible API over diffusers."""

__version__ = "0.1.0"
