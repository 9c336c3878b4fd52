"""Services: what the front ends (the Gradio UI and the HTTP API) ask of the program.

One place turns a request into work, whoever sends it: `generation` (a request becomes a
queued job), `upscalers` (the one upscaler catalog), `options` (validated option changes
and a job's own options). The layers: ui | api above services above ext above core above
model_manager | imaging (import-linter checks it, see pyproject.toml).

This package must never import torch, diffusers, gradio or fastapi.
"""
