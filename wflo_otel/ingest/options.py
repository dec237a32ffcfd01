"""``wflo-otel serve`` options and entry, without importing the server until it runs."""

from __future__ import annotations

import argparse
import os

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4318  # the OTLP/HTTP port
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024
ENV_TOKEN = "WFLO_INGEST_TOKEN"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` options (the database comes from ``--database-url`` / ``$WFLO_DATABASE_URL``)."""
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: loopback only)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 = any free port)"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(ENV_TOKEN) or None,
        help=f"bearer token every request must carry (default ${ENV_TOKEN}; unset = none)",
    )
    parser.add_argument(
        "--max-body-mb",
        type=float,
        default=DEFAULT_MAX_BODY_BYTES / 2**20,
        help="largest request body, counted after decompression (default 32)",
    )
    parser.add_argument("--max-batch-spans", type=int, default=5000, help="spans per database transaction at most")
    parser.add_argument(
        "--max-pending-spans", type=int, default=100_000, help="spans queued for the database before answering 429"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT)")


def run(args: argparse.Namespace, database_url: str | None = None) -> int:
    """Serve until SIGTERM/SIGINT (``wflo-otel serve``)."""
    from .server import run as run_server

    return run_server(args, database_url)
