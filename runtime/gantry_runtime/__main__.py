"""``python -m gantry_runtime``: the same as the ``gantry-runtime`` console script."""

from __future__ import annotations

import sys

from gantry_runtime.main import main

sys.exit(main())
