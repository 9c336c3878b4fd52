"""`python -m webui.bench`: run the benchmark (see webui/bench/cli.py)."""

import sys

from .cli import main

sys.exit(main())
