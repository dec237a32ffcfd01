"""The OTLP/HTTP ingest service (``wflo-otel serve``).

Feeds the wflo-otel schema from any OpenTelemetry pipeline: an SDK's OTLP/HTTP
exporter or a Collector's ``otlphttp`` exporter posts to ``/v1/traces``; spans
are decoded (``wflo_otel.exporters.otlp``), mapped by the same mapping as the
in-process exporter, and written idempotently, so several replicas can share one
database and duplicated deliveries are harmless.

Names are imported on first use, so ``wflo-otel`` subcommands other than
``serve`` do not load the HTTP server.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .options import DEFAULT_HOST, DEFAULT_PORT, IngestLimits, OptionError, add_arguments, run

_LAZY = {
    "IngestService": ".server",
    "main": ".server",
    "BatchWriter": ".writer",
    "Overloaded": ".writer",
    "Unavailable": ".writer",
}

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "IngestLimits", "OptionError", "add_arguments", "run", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value
    return value
