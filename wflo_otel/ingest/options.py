"""``wflo-otel serve`` options: parsed, read from the environment and checked before anything runs.

Every option is validated here, before the server is imported or a database is
touched: ``wflo-otel serve --port 99999`` must say what is wrong with the port, not
migrate ``./wflo.db`` first and then blame the database. A bad value is one line on
stderr and exit status 2, as argparse does for its own errors.

A token given but empty (``--token ""`` or ``WFLO_INGEST_TOKEN=`` set to nothing) is
such an error: an empty token must never mean "no authentication".
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass, field, replace
from typing import Any, Callable

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4318  # the OTLP/HTTP port
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
ENV_TOKEN = "WFLO_INGEST_TOKEN"
_MB = 2**20


class OptionError(ValueError):
    """A serve option (or its environment variable) has a value the service cannot use."""


def _at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise OptionError(f"{name} must be an integer of at least {low}, got {value!r}")


def _positive_seconds(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise OptionError(f"{name} must be a positive number of seconds, got {value!r}")


def _mib(n: int) -> str:
    return f"{n / _MB:g}"


@dataclass(frozen=True)
class IngestLimits:
    """The bounds one ingest process keeps whatever its clients send (docs/ingest-limits.md).

    ``max_inflight_bytes``: decompressed request bytes held at once across all requests,
    from the first inflated byte until the request is answered (past it: 429 with
    ``Retry-After``). ``max_connections``: open connections (past it, an idle or
    slow-header connection is closed to make room, else the new one gets 503).
    ``header_timeout_s``: a request's headers must be complete this long after its first
    byte. ``body_timeout_s``: the whole body must arrive within this (else 408).
    ``idle_timeout_s``: a connection with no request is closed after this.
    ``log_interval_s``: a repeated event-loop error (``socket.accept()`` out of file
    descriptors) is logged once per interval, with a count.
    """

    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_inflight_bytes: int = 128 * _MB
    max_connections: int = 512
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    idle_timeout_s: float = 60.0
    log_interval_s: float = 10.0

    def __post_init__(self) -> None:
        _at_least("max body", self.max_body_bytes, 1)
        _at_least("max in-flight bytes", self.max_inflight_bytes, 1)
        _at_least("max connections", self.max_connections, 1)
        for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s", "log_interval_s"):
            _positive_seconds(name.replace("_", " "), getattr(self, name))
        if self.max_inflight_bytes < self.max_body_bytes:
            raise OptionError(
                f"the in-flight bound ({_mib(self.max_inflight_bytes)} MiB) must be at least the largest body"
                f" ({_mib(self.max_body_bytes)} MiB), or a request of that size could never be taken"
            )


@dataclass(frozen=True)
class ServeOptions:
    """Everything ``wflo-otel serve`` needs, checked (``resolve``); picklable for ``--workers``."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    token: str | None = None
    max_batch_spans: int = 5000
    max_pending_spans: int = 100_000
    workers: int = 1
    limits: IngestLimits = field(default_factory=IngestLimits)


# option name → (environment variable, parse, IngestLimits field, scale)
_LIMIT_OPTIONS: dict[str, tuple[str, Callable[[str], Any], str, float]] = {
    "max_body_mb": ("WFLO_INGEST_MAX_BODY_MB", float, "max_body_bytes", _MB),
    "max_inflight_mb": ("WFLO_INGEST_MAX_INFLIGHT_MB", float, "max_inflight_bytes", _MB),
    "max_connections": ("WFLO_INGEST_MAX_CONNECTIONS", int, "max_connections", 1),
    "header_timeout": ("WFLO_INGEST_HEADER_TIMEOUT_S", float, "header_timeout_s", 1),
    "body_timeout": ("WFLO_INGEST_BODY_TIMEOUT_S", float, "body_timeout_s", 1),
    "idle_timeout": ("WFLO_INGEST_IDLE_TIMEOUT_S", float, "idle_timeout_s", 1),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` options (the database comes from ``--database-url`` / ``$WFLO_DATABASE_URL``).

    Defaults are ``None`` here and filled by ``resolve``: an option wins over its
    environment variable, which wins over the default.
    """
    d = IngestLimits()
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: loopback only)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free port)"
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"bearer token every request must carry (default ${ENV_TOKEN}; unset = none; empty = an error)",
    )
    limit_help = {
        "max_body_mb": f"largest request body, counted after decompression (default {_mib(d.max_body_bytes)})",
        "max_inflight_mb": "decompressed bytes held across all requests until answered; past it 429"
        f" (default {_mib(d.max_inflight_bytes)})",
        "max_connections": f"open connections at most (default {d.max_connections})",
        "header_timeout": f"seconds for a request's headers to arrive (default {d.header_timeout_s:g})",
        "body_timeout": f"seconds for a request's whole body to arrive; past it 408 (default {d.body_timeout_s:g})",
        "idle_timeout": f"seconds an idle connection is kept (default {d.idle_timeout_s:g})",
    }
    for dest, (env, parse, _field, _scale) in _LIMIT_OPTIONS.items():
        flag = "--" + dest.replace("_", "-")
        parser.add_argument(flag, dest=dest, type=str, default=None, metavar="N", help=f"{limit_help[dest]}; ${env}")
    parser.add_argument("--max-batch-spans", type=int, default=5000, help="spans per database transaction at most")
    parser.add_argument(
        "--max-pending-spans", type=int, default=100_000, help="spans queued for the database before answering 429"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")


def resolve(args: argparse.Namespace, environ: dict[str, str] | None = None) -> ServeOptions:
    """The checked options, or ``OptionError`` naming the first bad one (nothing is touched)."""
    env = os.environ if environ is None else environ
    host = (getattr(args, "host", DEFAULT_HOST) or "").strip()
    if not host:
        raise OptionError("--host must not be empty")
    port = getattr(args, "port", DEFAULT_PORT)
    if not 0 <= port <= 65535:
        raise OptionError(f"--port must be 0-65535 (0 = any free port), got {port}")
    workers = getattr(args, "workers", 1)
    _at_least("--workers", workers, 1)
    if workers > 1 and port == 0:
        raise OptionError("--workers needs an explicit --port")
    _at_least("--max-batch-spans", getattr(args, "max_batch_spans", 5000), 1)
    _at_least("--max-pending-spans", getattr(args, "max_pending_spans", 100_000), 1)
    limits = _limits(args, env)
    return ServeOptions(
        host=host,
        port=port,
        token=checked_token(getattr(args, "token", None), env),
        max_batch_spans=args.max_batch_spans,
        max_pending_spans=args.max_pending_spans,
        workers=workers,
        limits=limits,
    )


def checked_token(given: str | None, env: dict[str, str]) -> str | None:
    """The token ``--token`` (else ``$WFLO_INGEST_TOKEN``) gives, None when neither is set;
    ``OptionError`` when it is set but empty or not one visible word (serve and ui alike)."""
    source, token = ("--token", given) if given is not None else (f"${ENV_TOKEN}", env.get(ENV_TOKEN))
    if token is None:
        return None
    if not token.strip():
        raise OptionError(f"{source} is set but empty: give a token, or unset it to serve without one")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in token.strip()) or token != token.strip():
        raise OptionError(f"{source} must be one word of visible characters (it is sent in an HTTP header)")
    return token


def _limits(args: argparse.Namespace, env: dict[str, str]) -> IngestLimits:
    values: dict[str, Any] = {}
    for dest, (variable, parse, name, scale) in _LIMIT_OPTIONS.items():
        given = getattr(args, dest, None)
        if given is not None:
            source, text = "--" + dest.replace("_", "-"), given
        else:
            source, text = f"${variable}", env.get(variable)
        if text is None:
            continue
        try:
            value = parse(str(text).strip())
        except ValueError:
            raise OptionError(f"{source} must be a number, got {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value) or value <= 0:
            raise OptionError(f"{source} must be a positive number, got {text!r}")
        values[name] = int(value * scale) if name.endswith(("_bytes", "connections")) else float(value)
    try:
        return replace(IngestLimits(), **values)
    except OptionError as exc:  # say it with the option names the user typed
        text = str(exc).replace("the in-flight bound", "--max-inflight-mb").replace("the largest body", "--max-body-mb")
        raise OptionError(text) from None


def run(args: argparse.Namespace, database_url: str | None = None) -> int:
    """Serve until SIGTERM/SIGINT (``wflo-otel serve``); a bad option is one line and exit 2."""
    try:
        options = resolve(args)
    except OptionError as exc:
        print(f"wflo-otel serve: {exc}", file=sys.stderr)
        return 2
    from .server import serve

    return serve(options, database_url)


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_MAX_BODY_BYTES",
    "ENV_TOKEN",
    "IngestLimits",
    "OptionError",
    "ServeOptions",
    "add_arguments",
    "checked_token",
    "resolve",
    "run",
]
