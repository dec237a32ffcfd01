"""wflo-otel: OpenTelemetry-native cost tracking and budget enforcement for LLM workflows.

>>> import wflo_otel
>>> wflo_otel.configure()                       # doctest: +SKIP
>>> with wflo_otel.workflow("triage", budget_usd=0.05):   # doctest: +SKIP
...     client.chat.completions.create(...)
"""

from __future__ import annotations

__version__ = "0.1.0"

from .configuration import Handle, configure
from .errors import BudgetExceededError
from .track import track_llm_call
from .workflow import Step, Workflow, execute, step, workflow

__all__ = [
    "BudgetExceededError",
    "Handle",
    "Step",
    "Workflow",
    "__version__",
    "configure",
    "execute",
    "step",
    "track_llm_call",
    "workflow",
]
