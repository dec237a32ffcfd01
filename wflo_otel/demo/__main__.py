"""``python -m wflo_otel.demo``: the same as ``wflo-otel demo``."""

import sys

from .agent import main

sys.exit(main())
