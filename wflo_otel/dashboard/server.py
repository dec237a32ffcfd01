"""``wflo-otel ui``: the dashboard alone on a database, read-only unless ``--allow-approvals``.

Read-only means it never writes a row. With ``--allow-approvals`` the Approvals page gets
approve / reject buttons, which write through the controls' store (``ControlStore.decide``)
and nothing else; with a token they need a signed-in browser, like every page.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from aiohttp import web

from ..background import InThread, stop_event_on_signals
from ..exporters.store import create_engine
from ..ingest.options import DEFAULT_HOST, ENV_TOKEN, OptionError, checked_token
from .web import dashboard_app

DEFAULT_UI_PORT = 8318
ENV_APPROVER = "WFLO_APPROVER"
_log = logging.getLogger("wflo_otel.dashboard")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: loopback only)")
    parser.add_argument("--port", type=int, default=DEFAULT_UI_PORT, help=f"port (default {DEFAULT_UI_PORT}; 0 = any free port)")
    parser.add_argument(
        "--token",
        default=None,
        help=f"token a browser signs in with / API calls carry as a bearer token (default ${ENV_TOKEN}; unset = none; empty = an error)",
    )
    parser.add_argument(
        "--allow-approvals",
        action="store_true",
        help="let the Approvals page approve / reject (the only write; with a token, signed-in browsers only)",
    )
    parser.add_argument(
        "--approver",
        default=os.environ.get(ENV_APPROVER) or None,
        help=f"the name decisions made here are recorded as (default ${ENV_APPROVER}; unset = each person types theirs)",
    )


class UIServer(InThread):
    """The dashboard on ``database_url`` at ``host:port``; ``run_in_thread()`` for tests and embedding."""

    THREAD_NAME = "wflo-otel-ui"

    def __init__(
        self,
        database_url: str,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_UI_PORT,
        token: str | None = None,
        allow_approvals: bool = False,
        approver: str | None = None,
    ) -> None:
        self.database_url = database_url
        self.host = host
        self.port = port
        if token is not None and not token.strip():
            raise ValueError("the dashboard token is empty: give a token, or None to serve without one")
        self.token = token.encode("utf-8") if token is not None else None
        self.allow_approvals = allow_approvals
        self.approver = approver.strip() if approver and approver.strip() else None
        self._runner: web.AppRunner | None = None
        self._engine = None
        self._decider = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> "UIServer":
        self._engine = create_engine(self.database_url)
        if self.allow_approvals:
            from ..controls.store import ControlStore

            self._decider = ControlStore(self.database_url, migrate=False)  # ui never migrates
        app = dashboard_app(self._engine, self.token, decider=self._decider, approver=self.approver)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = site._server.sockets if site._server is not None else ()  # type: ignore[union-attr]
        if sockets and self.port == 0:
            self.port = sockets[0].getsockname()[1]
        if self.token is None and self.host not in ("127.0.0.1", "::1", "localhost"):
            _log.warning("wflo-otel ui: listening on %s without a token (set %s)", self.host, ENV_TOKEN)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        if self._decider is not None:
            await asyncio.to_thread(self._decider.close)
            self._decider = None


def run(args: argparse.Namespace, database_url: str) -> int:
    """Serve until SIGTERM/SIGINT; print the address first. A token set but empty is one line, exit 2."""
    try:
        token = checked_token(args.token, dict(os.environ))
    except OptionError as exc:
        print(f"wflo-otel ui: {exc}", file=sys.stderr)
        return 2

    async def serve() -> int:
        server = UIServer(
            database_url, host=args.host, port=args.port, token=token,
            allow_approvals=args.allow_approvals, approver=args.approver,
        )
        stop = stop_event_on_signals()
        try:
            await server.start()
        except OSError as exc:
            print(f"wflo-otel ui: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        print(f"wflo-otel dashboard on {server.url}/", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()
        return 0

    return asyncio.run(serve())
