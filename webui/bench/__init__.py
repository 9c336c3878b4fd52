"""The benchmark: our web UI against bare diffusers on this machine (`python -m webui.bench`).

See `cli.py` for what it measures; `model.py` makes the random-weight SD 1.5 checkpoint it
uses (once, cached outside the repository).
"""
