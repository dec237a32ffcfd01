"""wflo-otel: OpenTelemetry-native cost tracking and budget enforcement for LLM workflows.

>>> import wflo_otel
>>> wflo_otel.configure()                       # doctest: +SKIP
>>> with wflo_otel.workflow("triage", budget_usd=0.05):   # doctest: +SKIP
...     client.chat.completions.create(...)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .configuration import Handle, configure
from .controls.errors import (
    ApprovalConflict,
    ApprovalExpired,
    ApprovalNotFound,
    ApprovalRejected,
    CheckpointNotFound,
    ExecutionBusy,
    ExecutionNotFound,
)
from .controls.runtime import checkpoint
from .alerts import Alerts
from .errors import BudgetExceededError
from .limits import SpendLimit
from .workflow import Step, Workflow, execute, step, workflow

if TYPE_CHECKING:  # pragma: no cover
    from .track import track_llm_call

__all__ = [
    "ApprovalConflict",
    "ApprovalExpired",
    "ApprovalNotFound",
    "ApprovalRejected",
    "Alerts",
    "BudgetExceededError",
    "CheckpointNotFound",
    "ExecutionBusy",
    "ExecutionNotFound",
    "Handle",
    "SpendLimit",
    "Step",
    "Workflow",
    "__version__",
    "checkpoint",
    "configure",
    "execute",
    "step",
    "track_llm_call",
    "workflow",
]


def __getattr__(name: str) -> Any:
    """``track_llm_call`` loads on first use (PEP 562).

    It imports the OpenAI instrumentation, which imports OpenTelemetry's instrumentor
    module. OpenTelemetry loads our ``wflo_baggage`` propagator entry point while that
    very module is half-initialised, so importing it from here made
    ``OTEL_PROPAGATORS=tracecontext,wflo_baggage`` a circular import at start-up.
    """
    if name == "track_llm_call":
        from .track import track_llm_call

        globals()[name] = track_llm_call
        return track_llm_call
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
