"""``wflo-otel serve``: an OTLP/HTTP trace receiver that lands spans in the wflo-otel schema.

Speaks the OTLP/HTTP protocol of the OpenTelemetry specification so that a
Collector's ``otlphttp`` exporter — or any SDK's OTLP/HTTP exporter — can feed it:

* ``POST /v1/traces`` with ``Content-Type: application/x-protobuf`` or
  ``application/json`` (ids in hex, as the OTLP/JSON encoding says; base64 ids are
  accepted too), optionally ``Content-Encoding: gzip``;
* ``200`` with an ``ExportTraceServiceResponse`` in the request's encoding, with
  ``partial_success`` counting the spans that were rejected (invalid ids, values
  the database refuses) — every other span of the request is committed before
  the answer;
* ``400`` for a body that does not decode, ``401`` without the bearer token when
  one is configured, ``413`` for a body over the limit (counted after
  decompression, which is streamed and capped), ``415`` for other content types
  or encodings, ``429`` when too much is queued and ``503`` while the database is
  down or the service shuts down — both with ``Retry-After`` — each with a
  ``google.rpc.Status`` body;
* ``408`` when a body does not arrive within the body timeout, ``429`` with
  ``Retry-After`` when the decompressed bytes in flight across requests would pass
  their bound, ``503`` to a connection past the connection cap (``limits.py``;
  docs/ingest-limits.md);
* ``GET /health``: ``200`` when the database takes writes, else ``503``; it reports
  the bounds' current use;
* ``/v1/approvals``: list and decide approval requests (``approvals_api``), behind
  the same token.

Built on aiohttp. One writer task per process coalesces concurrent requests into
larger transactions (``writer.BatchWriter``). The service never logs span
content: only counts, error kinds and SQLSTATEs.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import logging
import os
import signal
import sys
import threading
import traceback
import zlib
from dataclasses import replace
from typing import Any

from aiohttp import web

from ..background import InThread, stop_event_on_signals
from ..exporters import otlp
from ..exporters.store import DEFAULT_DATABASE_URL, SpanStore
from ..settings import ENV_DATABASE_URL
from ..settings import database_url as resolve_database_url
from .approvals_api import ApprovalRoutes
from .limits import (
    BudgetFull,
    ByteBudget,
    ConnectionGuard,
    Reservation,
    ThrottledLoopErrors,
    bounded_app,
    connection_of,
    fit_fd_limit,
    peer_gone,
)
from .options import DEFAULT_HOST, DEFAULT_PORT, ENV_TOKEN, IngestLimits, ServeOptions, add_arguments
from .writer import BatchWriter, Overloaded, Unavailable, describe

_log = logging.getLogger("wflo_otel.ingest")


_INFLATE_STEP = 1 << 20  # bytes inflated (and reserved) at a time
_PROTOBUF_TYPES = frozenset({"application/x-protobuf", "application/protobuf"})
_JSON_TYPES = frozenset({"application/json"})


class _Reject(Exception):
    """An HTTP error answer (4xx/5xx) with an OTLP ``Status`` body."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.close = close


class _RedactSpanData(logging.Filter):
    """Keep exception *messages* out of a log: they can quote attribute values or headers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({describe(exc)})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


_redactor = _RedactSpanData()
# Loggers that would quote span data: driver debug logs print statement parameters.
_PARAMETER_LOGGERS = ("aiosqlite", "asyncpg", "sqlalchemy.engine", "sqlalchemy.pool")


def _quiet_drivers() -> None:
    """Never log payload content, even with the root logger at DEBUG.

    Driver loggers not configured explicitly are held at WARNING (their debug
    output quotes statement parameters, i.e. span data), and exception messages
    in the mapping's log are replaced by the exception's kind.
    """
    for name in _PARAMETER_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
    for name in ("wflo_otel.exporters.mapping", "aiohttp.server"):  # malformed headers are quoted there
        logging.getLogger(name).addFilter(_redactor)


class IngestService(InThread):
    """The OTLP/HTTP receiver. ``await start()`` / ``await stop()``, or ``run_in_thread()``.

    ``port=0`` picks a free port; ``.port`` tells which once started. ``limits`` bounds
    memory, connections and time per client (``IngestLimits``; ``max_body_bytes``, when
    given, overrides its body bound). An empty ``token`` is a ``ValueError``, never "no auth".
    """

    THREAD_NAME = "wflo-otel-ingest"

    def __init__(
        self,
        database_url: str | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        token: str | None = None,
        max_body_bytes: int | None = None,
        limits: IngestLimits | None = None,
        max_batch_spans: int = 5000,
        max_pending_spans: int = 100_000,
        shutdown_timeout_s: float = 30.0,
        pricebook: Any = None,
        reuse_port: bool = False,
    ) -> None:
        self.database_url = resolve_database_url(database_url)
        self.host = host
        self.port = port
        if token is not None and not token.strip():
            raise ValueError("the ingest token is empty: give a token, or None to serve without one")
        self.token = token.encode("utf-8") if token is not None else None
        limits = limits or IngestLimits()
        if max_body_bytes is not None:
            inflight = max(limits.max_inflight_bytes, max_body_bytes)
            limits = replace(limits, max_body_bytes=max_body_bytes, max_inflight_bytes=inflight)
        self.limits = limits
        self.max_body_bytes = limits.max_body_bytes
        self.budget = ByteBudget(limits.max_inflight_bytes)
        self.guard = ConnectionGuard(limits)
        self._listener: asyncio.AbstractServer | None = None
        self._previous_handler: Any = None
        self.max_batch_spans = max_batch_spans
        self.max_pending_spans = max_pending_spans
        self.shutdown_timeout_s = shutdown_timeout_s
        self.reuse_port = reuse_port
        self._pricebook = pricebook
        self.store: SpanStore | None = None
        self.writer: BatchWriter | None = None
        self._runner: web.AppRunner | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self.requests = 0
        self._approvals: ApprovalRoutes | None = None

    # -- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def traces_url(self) -> str:
        return self.url + "/v1/traces"

    async def start(self) -> "IngestService":
        pricebook = self._pricebook if self._pricebook is not None else _pricebook()
        self.store = SpanStore(self.database_url)
        migrated = False
        try:
            await self.store.migrate()
            migrated = True
        except Exception as exc:  # the database may come up after us: answer 503 until it does
            _log.warning("wflo-otel ingest: could not migrate the schema yet (%s); will retry", describe(exc))
        self.writer = BatchWriter(
            self.store,
            pricebook,
            max_batch_spans=self.max_batch_spans,
            max_pending_spans=self.max_pending_spans,
            migrate=not migrated,
        )
        self.writer.start()
        _quiet_drivers()

        # Every body but ingest's (streamed and bounded by _read_body) is read within the body timeout.
        app = bounded_app(self.limits.body_timeout_s, own_bodies={"/v1/traces"}, middlewares=(_track_requests,))
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_get("/health", self._health)
        self._approvals = ApprovalRoutes(self.database_url, self._token_ok)
        self._approvals.add_to(app)

        from ..dashboard.web import Dashboard  # the browser dashboard at /, same token

        # serve decides approvals over /v1/approvals already: its dashboard may too (same store, same token)
        Dashboard(self.store.engine, self.token, decider=self._approvals.store).add_routes(app)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            auto_decompress=False,  # we decompress ourselves, streamed and capped
            handle_signals=False,
            shutdown_timeout=self.shutdown_timeout_s,
            keepalive_timeout=self.limits.idle_timeout_s,
        )
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self.guard.max_connections = fit_fd_limit(self.limits.max_connections)
        try:
            # Our own listener (not a TCPSite), so every connection goes through the guard.
            self._listener = await loop.create_server(
                self.guard.factory(self._runner.server),  # type: ignore[arg-type]
                self.host,
                self.port,
                reuse_port=self.reuse_port or None,
                backlog=1024,
            )
        except BaseException:  # e.g. the port is taken: release what start() took
            await self.stop()
            raise
        self.guard.start()
        if loop.get_exception_handler() is None:
            self._previous_handler = loop.get_exception_handler()
            loop.set_exception_handler(ThrottledLoopErrors(self.limits.log_interval_s))
        sockets = self._listener.sockets
        if sockets and self.port == 0:
            self.port = sockets[0].getsockname()[1]
        if not _is_loopback(self.host) and self.token is None:
            _log.warning("wflo-otel ingest: listening on %s without a token (set %s)", self.host, ENV_TOKEN)
        return self

    async def stop(self) -> None:
        """Stop taking requests, finish the ones in flight, write everything queued, close."""
        self._closing = True
        if self._listener is not None:
            self._listener.close()  # stop listening
        if self._runner is not None:
            await self._runner.cleanup()  # waits for in-flight handlers, closes connections
            self._runner = None
        await self.guard.stop()
        if self._listener is not None:
            self._listener = None
            loop = asyncio.get_running_loop()
            if isinstance(loop.get_exception_handler(), ThrottledLoopErrors):
                loop.set_exception_handler(self._previous_handler)
        if self.writer is not None:
            await self.writer.close()
        if self.store is not None:
            await self.store.dispose()
        if self._approvals is not None:
            self._approvals.close()
            self._approvals = None

    async def serve_until(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # -- handlers ------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        writer = self.writer
        down = writer is None or writer.database_down
        state = "draining" if self._closing else ("database-down" if down else "ok")
        body = {
            "status": state,
            "pending_spans": writer.pending_spans if writer else 0,
            "written_spans": writer.written_spans if writer else 0,
            "rejected_spans": writer.rejected_spans if writer else 0,
            "transactions": writer.transactions if writer else 0,
            "limits": {
                "inflight_bytes": self.budget.used,
                "max_inflight_bytes": self.budget.limit,
                "peak_inflight_bytes": self.budget.peak,
                "inflight_refusals": self.budget.refusals,
                **self.guard.snapshot(),
            },
        }
        return web.json_response(body, status=200 if state == "ok" else 503)

    async def _traces(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        as_json = request.content_type in _JSON_TYPES
        try:
            return await self._ingest(request, as_json)
        except _Reject as reject:
            return _error(reject, as_json)
        except Exception as exc:  # a bug of ours: say so without quoting the payload
            _log.error(
                "wflo-otel ingest: unexpected %s\n%s", describe(exc), "".join(traceback.format_tb(exc.__traceback__))
            )
            return _error(_Reject(500, "internal error"), as_json)

    async def _ingest(self, request: web.Request, as_json: bool) -> web.StreamResponse:
        if self._closing:
            raise _Reject(503, "shutting down", retry_after=1)
        if self.token is not None and not self._authorized(request):
            raise _Reject(401, "missing or wrong bearer token")
        content_type = request.content_type
        if content_type not in _PROTOBUF_TYPES and not as_json:
            raise _Reject(415, "Content-Type must be application/x-protobuf or application/json")
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("gzip", "identity", "", "x-gzip"):
            raise _Reject(415, "Content-Encoding must be gzip or identity")
        writer = self.writer
        assert writer is not None
        try:
            writer.check_capacity()
        except Unavailable as exc:
            raise _Reject(503, exc.reason, retry_after=exc.retry_after) from None
        except Overloaded as exc:
            raise _Reject(429, "too much queued; retry later", retry_after=exc.retry_after) from None

        with self.budget.reservation() as reservation:  # held until the request is answered
            return await self._accept(request, writer, reservation, encoding, as_json)

    async def _accept(
        self, request: web.Request, writer: BatchWriter, reservation: Reservation, encoding: str, as_json: bool
    ) -> web.StreamResponse:
        """Read, decode and commit one request, its decompressed bytes held in ``reservation``."""
        try:
            body = await asyncio.wait_for(
                self._read_body(request, reservation, gzip=encoding in ("gzip", "x-gzip")), self.limits.body_timeout_s
            )
        except asyncio.TimeoutError:
            raise _Reject(408, f"body not received within {self.limits.body_timeout_s:g}s", close=True) from None
        except BudgetFull:
            raise _Reject(429, "too many bytes in flight; retry later", retry_after=1, close=True) from None
        try:
            message = otlp.decode_json(body) if as_json else otlp.decode_protobuf(body)
        except otlp.OTLPDecodeError as exc:
            raise _Reject(400, str(exc)) from None
        del body
        conversion = otlp.records_from_request(message)
        del message
        rejected = conversion.rejected
        if conversion.records:
            try:
                rejected += await writer.submit(conversion.records)
            except Unavailable as exc:
                raise _Reject(503, exc.reason, retry_after=exc.retry_after) from None
            except Overloaded as exc:
                raise _Reject(429, "too much queued; retry later", retry_after=exc.retry_after) from None
        message_text = conversion.error_message
        if rejected > conversion.rejected:
            extra = rejected - conversion.rejected
            message_text = "; ".join(filter(None, [message_text, f"{extra} span(s) refused by the database"]))
        return web.Response(
            body=otlp.encode_response(rejected, message_text, as_json=as_json),
            content_type="application/json" if as_json else "application/x-protobuf",
        )

    def _token_ok(self, request: web.Request) -> bool:
        """The bearer token check of every route but /health (true when the service has no token)."""
        return self.token is None or self._authorized(request)

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode("utf-8", "replace"), self.token or b"")

    async def _read_body(self, request: web.Request, reservation: Reservation, *, gzip: bool) -> bytearray:
        """The body, decompressed as it streams in, never more than ``max_body_bytes``.

        Every piece is reserved in ``reservation`` before it is inflated (``BudgetFull`` past
        the in-flight bound), so a gzip bomb costs the budget, not the process's memory.
        """
        limit = self.max_body_bytes
        too_large = _Reject(413, f"request body over {limit} bytes", close=True)
        length = request.content_length
        if length is not None and length > limit:
            raise too_large
        out = bytearray()
        received = 0
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
        try:
            while True:
                chunk = await request.content.readany()
                if not chunk:
                    break
                received += len(chunk)
                if received > limit:
                    raise too_large
                if inflater is None:
                    reservation.grow_to(len(out) + len(chunk))
                    out += chunk
                    continue
                while chunk:
                    if inflater.eof:  # another gzip member follows (RFC 1952 allows several)
                        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    step = min(_INFLATE_STEP, limit + 1 - len(out))
                    reservation.grow_to(len(out) + step)
                    out += inflater.decompress(chunk, step)
                    if len(out) > limit:
                        raise too_large
                    chunk = inflater.unconsumed_tail or (inflater.unused_data if inflater.eof else b"")
        except zlib.error:
            raise _Reject(400, "body is not valid gzip", close=True) from None
        except Exception as exc:
            if not peer_gone(request, exc):
                raise
            raise _Reject(400, f"body ended early ({type(exc).__name__})", close=True) from None
        if inflater is not None and not inflater.eof:
            raise _Reject(400, "gzip body is truncated", close=True)
        reservation.shrink_to(len(out))
        return out


@web.middleware
async def _track_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    """Tell the connection guard a request's headers are in: from here the handler times it."""
    connection = connection_of(request.transport)
    if connection is None:
        return await handler(request)
    connection.request_started()
    try:
        return await handler(request)
    finally:
        connection.request_ended()


def _error(reject: _Reject, as_json: bool) -> web.Response:
    headers = {}
    if reject.retry_after is not None:
        headers["Retry-After"] = str(reject.retry_after)
    if reject.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="wflo-otel"'
    grpc_code = {400: 3, 401: 16, 408: 4, 413: 8, 415: 3, 429: 8, 503: 14}.get(reject.status, 13)
    response = web.Response(
        status=reject.status,
        body=otlp.encode_status(grpc_code, reject.message, as_json=as_json),
        content_type="application/json" if as_json else "application/x-protobuf",
        headers=headers,
    )
    if reject.close:
        response.force_close()
    return response


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _pricebook():
    from ..settings import pricebook_for

    return pricebook_for()


# --------------------------------------------------------------------------- command line


def _configure_logging(fmt: str) -> None:
    logging.basicConfig(level=logging.INFO, format=fmt)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def serve(options: ServeOptions, database_url: str | None = None) -> int:
    """Run the service with checked ``options`` until SIGTERM/SIGINT; print the address first."""
    _configure_logging("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if options.workers > 1:
        return _run_workers(options, database_url)
    return asyncio.run(_serve(options, database_url, reuse_port=False))


def run(args: argparse.Namespace, database_url: str | None = None) -> int:
    """``serve`` from parsed arguments: checked first (``options.run``), a bad one exits 2."""
    from .options import run as run_checked

    return run_checked(args, database_url)


async def _serve(options: ServeOptions, database_url: str | None, *, reuse_port: bool) -> int:
    service = IngestService(
        database_url,
        host=options.host,
        port=options.port,
        token=options.token,
        limits=options.limits,
        max_batch_spans=options.max_batch_spans,
        max_pending_spans=options.max_pending_spans,
        reuse_port=reuse_port,
    )
    stop = stop_event_on_signals()
    try:
        await service.start()
    except OSError as exc:
        where = f"{options.host}:{options.port}"
        print(f"wflo-otel serve: cannot listen on {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    from sqlalchemy.engine import make_url

    safe = make_url(service.store.url).render_as_string(hide_password=True)  # type: ignore[union-attr]
    print(f"wflo-otel ingest listening on {service.traces_url} (database {safe})", flush=True)
    try:
        await stop.wait()
    finally:
        _log.info("wflo-otel ingest: shutting down; draining in-flight batches")
        await service.stop()
        writer = service.writer
        if writer is not None:
            _log.info(
                "wflo-otel ingest: stopped after %d spans written, %d rejected",
                writer.written_spans,
                writer.rejected_spans,
            )
    return 0


def _run_workers(options: ServeOptions, database_url: str | None) -> int:
    """Several processes on one port (SO_REUSEPORT): decoding and mapping use every core."""
    import multiprocessing

    # Migrate once here, so the workers do not race each other over the schema.
    store = SpanStore(resolve_database_url(database_url))

    async def migrate() -> None:
        try:
            await store.migrate()
        finally:
            await store.dispose()

    try:
        asyncio.run(migrate())
    except Exception as exc:
        _log.warning("wflo-otel ingest: could not migrate the schema yet (%s); the workers will retry", describe(exc))
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker_main, args=(options, database_url), daemon=False) for _ in range(options.workers)
    ]
    for process in processes:
        process.start()

    def forward(signum, _frame) -> None:
        for process in processes:
            if process.is_alive() and process.pid:
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    for process in processes:
        process.join()
        code = code or (process.exitcode or 0)
    return code


def _worker_main(options: ServeOptions, database_url: str | None) -> None:
    _configure_logging("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    sys.exit(asyncio.run(_serve(options, database_url, reuse_port=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wflo_otel.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None, help=f"default: ${ENV_DATABASE_URL} or {DEFAULT_DATABASE_URL}")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run(args, args.database_url)


__all__ = ["IngestService", "add_arguments", "run", "serve", "main"]
