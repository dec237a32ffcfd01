"""Exporter selection for zero-code runs that can never take the budgets down.

The SDK's configurator imports every exporter named by ``OTEL_{TRACES,METRICS,LOGS}_EXPORTER``
before it builds anything; one missing (``otlp`` defaults to gRPC, whose package
is not installed) raises, ``opentelemetry-instrument`` logs the traceback and
carries on with no TracerProvider, no budget processor and no instrumentation:
every call goes out unbudgeted. So:

* ``choose_otlp_protocol`` (run by the distro, before the configurator): ``otlp``
  with no protocol chosen, the gRPC exporter absent and the HTTP one installed
  (the ``otlp`` extra) means OTLP over HTTP (``http/protobuf``), as a user who
  installed only that one means.
* ``usable_exporters`` (run by the configurator): the exporters that cannot be
  loaded are left out, each with one line on stderr; the rest of the run —
  budgets first — is configured as usual.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Mapping, MutableMapping

from opentelemetry.util._importlib_metadata import entry_points

_log = logging.getLogger(__name__)

OTLP = "otlp"
OTLP_GRPC = "otlp_proto_grpc"
OTLP_HTTP = "otlp_proto_http"
HTTP_PROTOBUF = "http/protobuf"
GENERAL_PROTOCOL_VAR = "OTEL_EXPORTER_OTLP_PROTOCOL"

# signal -> (variable naming its exporters, its own OTLP protocol variable, entry point group)
SIGNALS: Mapping[str, tuple[str, str, str]] = {
    "traces": ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "opentelemetry_traces_exporter"),
    "metrics": ("OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "opentelemetry_metrics_exporter"),
    "logs": ("OTEL_LOGS_EXPORTER", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "opentelemetry_logs_exporter"),
}

# Package names, which any index has (wflo-otel itself may be installed from a clone or a wheel).
_HINTS = {
    OTLP_GRPC: "OTLP over gRPC needs opentelemetry-exporter-otlp-proto-grpc; or install "
    "opentelemetry-exporter-otlp-proto-http (wflo-otel's otlp extra) and set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf",
    OTLP_HTTP: "install opentelemetry-exporter-otlp-proto-http (wflo-otel's otlp extra)",
}


def _names(value: str | None) -> list[str]:
    return [name.strip() for name in (value or "").split(",") if name.strip()]


def _installed(group: str, name: str) -> bool:
    return any(True for _ in entry_points(group=group, name=name))


def choose_otlp_protocol(environ: MutableMapping[str, str] = os.environ) -> list[str]:
    """Pick ``http/protobuf`` for signals exported with ``otlp`` when only the HTTP exporter is installed.

    Touches only signals whose protocol nobody chose; returns the signals it set.
    """
    chosen = []
    if environ.get(GENERAL_PROTOCOL_VAR, "").strip():
        return chosen
    for signal, (exporter_var, protocol_var, group) in SIGNALS.items():
        if OTLP not in _names(environ.get(exporter_var)) or environ.get(protocol_var, "").strip():
            continue
        if not _installed(group, OTLP_GRPC) and _installed(group, OTLP_HTTP):
            environ[protocol_var] = HTTP_PROTOBUF
            chosen.append(signal)
    if chosen:
        _log.info("wflo-otel: OTLP exporter for %s: gRPC is not installed; using OTLP over HTTP", ", ".join(chosen))
    return chosen


def _resolved(signal: str) -> list[tuple[str, str]]:
    """(name as the user wrote it, entry point the SDK will load) for each exporter of ``signal``."""
    from opentelemetry.sdk._configuration import _get_exporter_entry_point

    return [(name, _get_exporter_entry_point(name, signal)) for name in _names(os.environ.get(SIGNALS[signal][0]))]


def _load_error(group: str, entry_point: str) -> str | None:
    """Why the exporter cannot be loaded, or None when it can."""
    found = list(entry_points(group=group, name=entry_point))
    if not found:
        return f"{entry_point!r} is not installed"
    try:
        found[0].load()
    except Exception as exc:  # an exporter package that fails to import is as absent as a missing one
        return f"{entry_point!r} failed to import ({type(exc).__name__}: {exc})"
    return None


def usable_exporters(signal: str) -> tuple[list[str], list[str]]:
    """The exporters of ``signal`` that load, and one message per exporter that does not."""
    exporter_var, _, group = SIGNALS[signal]
    if os.environ.get(exporter_var, "").strip().lower() in ("", "none"):
        return [], []
    try:
        resolved = _resolved(signal)
    except RuntimeError as exc:  # an OTLP protocol the SDK does not know
        return [], [f"{exporter_var}: {exc}"]
    usable, problems = [], []
    for name, entry_point in resolved:
        error = _load_error(group, entry_point)
        if error is None:
            usable.append(name)  # as written: the SDK resolves it again, to the same entry point
        else:
            hint = _HINTS.get(entry_point, f"install the package that provides the {entry_point!r} exporter")
            problems.append(f"{exporter_var}={name}: exporter {error}; {hint}")
    return usable, problems


@contextlib.contextmanager
def only_usable_exporters() -> Iterator[list[str]]:
    """While the SDK configures itself, its exporter variables name only exporters that load.

    Yields the problems (each logged as one error line); restores the variables after.
    """
    saved: dict[str, str] = {}
    problems: list[str] = []
    for signal, (exporter_var, _, _) in SIGNALS.items():
        usable, found = usable_exporters(signal)
        if not found:
            continue
        problems.extend(found)
        saved[exporter_var] = os.environ[exporter_var]
        os.environ[exporter_var] = ",".join(usable) or "none"
    for problem in problems:
        _log.error("wflo-otel: %s. Not exported; budgets are enforced all the same.", problem)
    try:
        yield problems
    finally:
        os.environ.update(saved)


__all__ = ["choose_otlp_protocol", "only_usable_exporters", "usable_exporters"]
