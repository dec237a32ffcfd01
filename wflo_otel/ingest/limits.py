"""The bounds that keep one ingest process alive whatever a client sends (docs/ingest-limits.md).

Three resources could be exhausted by a single hostile or broken local client:

* **memory**: a ~31 KB gzip body inflates to 31 MiB, so bounding each body is not
  enough; ``ByteBudget`` bounds the decompressed bytes held across *all* requests,
  reserved before each piece is inflated and released when the request is answered
  (its spans committed or refused). Past it the request gets 429 with ``Retry-After``.
* **sockets**: ``ConnectionGuard`` wraps each connection's protocol. It caps the
  open connections, closes connections that stay idle, whose headers do not arrive
  within ``header_timeout_s`` of their first byte (slowloris), and — when the cap is
  reached — the oldest connection that is not inside a request, so a newcomer with a
  real request gets in. Bodies are timed by the request handler (``body_timeout_s``):
  ingest's own streamed reader, and ``bounded_bodies`` for every other route (the
  dashboard's forms, approval decisions), before any of them looks at the request.
* **the log**: asyncio logs ``socket.accept() out of system resource`` with a
  traceback for *each* failed accept (up to the backlog per loop turn) once file
  descriptors run out; ``ThrottledLoopErrors`` logs a repeated loop error once per
  interval, as one line with a count.

All of it is per process: ``--workers N`` has N times each bound.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, Awaitable, Callable, Collection

from aiohttp import web

from .options import IngestLimits

_log = logging.getLogger("wflo_otel.ingest")

_CLOSE_GRACE_S = 1.0  # a closed connection whose peer does not read is aborted after this
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 25\r\n\r\ntoo many open connections"
)
_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

SMALL_BODY_BYTES = 64 * 1024  # the largest body of any route but ingest: a form, an approval decision


class BudgetFull(Exception):
    """The in-flight byte budget cannot take more now (HTTP 429, retry after a second)."""


class ByteBudget:
    """Decompressed bytes held across requests, at most ``limit``. Not thread-safe: one event loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.refusals = 0

    def reservation(self) -> "Reservation":
        return Reservation(self)

    def _take(self, n: int) -> None:
        if self.used + n > self.limit:
            self.refusals += 1
            raise BudgetFull(f"over {self.limit} decompressed bytes in flight")
        self.used += n
        self.peak = max(self.peak, self.used)

    def _give(self, n: int) -> None:
        self.used -= n


class Reservation:
    """One request's share of a ``ByteBudget``; grows as its body inflates, freed once.

    Use as a context manager so the share is released however the request ends.
    """

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0

    def grow_to(self, total: int) -> None:
        """Hold at least ``total`` bytes, or raise ``BudgetFull`` (holding what was held)."""
        if total > self.held:
            self._budget._take(total - self.held)
            self.held = total

    def shrink_to(self, total: int) -> None:
        if total < self.held:
            self._budget._give(self.held - total)
            self.held = total

    def release(self) -> None:
        self.shrink_to(0)

    def __enter__(self) -> "Reservation":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class _Connection(asyncio.Protocol):
    """Forwards to aiohttp's protocol and tells the guard what the connection is doing."""

    __slots__ = ("_guard", "_inner", "transport", "opened", "phase_start", "first_byte", "in_request", "closing_since")

    def __init__(self, guard: "ConnectionGuard", inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self.transport: asyncio.Transport | None = None
        now = time.monotonic()
        self.opened = now
        self.phase_start = now  # since when the connection waits for a request
        self.first_byte: float | None = None  # first byte of the request being received
        self.in_request = 0
        self.closing_since: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._inner.connection_made(transport)
        if self.closing_since is not None:  # evicted between accept() and now
            transport.close()

    def data_received(self, data: bytes) -> None:
        if not self.in_request and self.first_byte is None and data:
            self.first_byte = time.monotonic()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard._lost(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- told by the request middleware ---------------------------------------------

    def request_started(self) -> None:
        self.in_request += 1
        self._guard._busy(self)

    def request_ended(self) -> None:
        self.in_request -= 1
        if not self.in_request:
            self.phase_start = time.monotonic()
            self.first_byte = None
            self._guard._waiting(self)

    def close(self, answer: bytes | None) -> None:
        """Close (after ``answer``, if the peer has read what it was sent); abort if it lingers."""
        transport = self.transport
        if self.closing_since is not None:
            return
        self.closing_since = time.monotonic()
        if transport is None:  # not made yet: connection_made closes it
            return
        if answer and not transport.get_write_buffer_size():
            transport.write(answer)
        transport.close()


class _Refused(asyncio.Protocol):
    """A connection past the cap: 503 with ``Retry-After``, closed at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(_REFUSAL)  # type: ignore[attr-defined]
        if transport.get_write_buffer_size():  # type: ignore[attr-defined]
            transport.abort()  # type: ignore[attr-defined]
        else:
            transport.close()


class ConnectionGuard:
    """Connection cap and the header / idle timeouts, around aiohttp's protocol factory.

    ``factory(server)`` is what ``loop.create_server`` gets; ``middleware`` tells the guard
    when a connection is inside a request (its headers complete), so the body timeout is
    the handler's and the header and idle timeouts are the guard's.
    """

    def __init__(self, limits: IngestLimits) -> None:
        self.limits = limits
        self.max_connections = limits.max_connections
        self._all: set[_Connection] = set()
        self._waiting_for_request: collections.OrderedDict[_Connection, None] = collections.OrderedDict()
        self._closing: set[_Connection] = set()
        self._watchdog: asyncio.Task | None = None
        # counters (for /health and the benchmark)
        self.refused = 0
        self.evicted = 0
        self.timed_out = 0

    @property
    def open(self) -> int:
        return len(self._all)

    def factory(self, make_protocol: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        def create() -> asyncio.Protocol:
            # Counted here, at accept(): one loop turn may accept many before any is "made".
            if len(self._all) >= self.max_connections and not self._evict_one():
                self.refused += 1
                return _Refused()
            connection = _Connection(self, make_protocol())
            self._all.add(connection)
            self._waiting_for_request[connection] = None
            return connection

        return create

    def start(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch(), name="wflo-ingest-watchdog")

    async def stop(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            try:
                await self._watchdog
            except asyncio.CancelledError:
                pass
            self._watchdog = None

    # -- bookkeeping --------------------------------------------------------------------

    def _lost(self, connection: _Connection) -> None:
        self._all.discard(connection)
        self._waiting_for_request.pop(connection, None)
        self._closing.discard(connection)

    def _busy(self, connection: _Connection) -> None:
        self._waiting_for_request.pop(connection, None)

    def _waiting(self, connection: _Connection) -> None:
        if connection in self._all and connection.closing_since is None:
            self._waiting_for_request[connection] = None
            self._waiting_for_request.move_to_end(connection)

    def _evict_one(self) -> bool:
        """Close the connection that has waited longest for a request, to make room; False if none."""
        while self._waiting_for_request:
            connection, _ = self._waiting_for_request.popitem(last=False)
            if connection.closing_since is None and connection in self._all:
                self._close(connection, _TIMEOUT if connection.first_byte is not None else None)
                self._all.discard(connection)  # its slot is free now; connection_lost follows
                self.evicted += 1
                return True
        return False

    def _close(self, connection: _Connection, answer: bytes | None) -> None:
        self._waiting_for_request.pop(connection, None)
        connection.close(answer)
        self._closing.add(connection)

    # -- the watchdog -------------------------------------------------------------------

    async def _watch(self) -> None:
        limits = self.limits
        tick = max(0.05, min(limits.header_timeout_s, limits.idle_timeout_s) / 4)
        while True:
            await asyncio.sleep(tick)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> None:
        """Close connections past their header or idle timeout; abort closed ones that linger."""
        limits = self.limits
        for connection in list(self._waiting_for_request):
            if connection.first_byte is not None:
                expired = now - connection.first_byte > limits.header_timeout_s
                answer: bytes | None = _TIMEOUT
            else:
                expired = now - connection.phase_start > limits.idle_timeout_s
                answer = None
            if expired:
                self.timed_out += 1
                self._close(connection, answer)
        for connection in list(self._closing):
            if connection.closing_since is not None and now - connection.closing_since > _CLOSE_GRACE_S:
                self._closing.discard(connection)
                if connection.transport is not None:
                    connection.transport.abort()

    def snapshot(self) -> dict[str, Any]:
        return {
            "open_connections": self.open,
            "max_connections": self.max_connections,
            "refused_connections": self.refused,
            "evicted_connections": self.evicted,
            "timed_out_connections": self.timed_out,
        }


def bounded_app(
    body_timeout_s: float, *, own_bodies: Collection[str] = (), middlewares: tuple[Any, ...] = ()
) -> web.Application:
    """An application whose request bodies arrive within ``body_timeout_s`` and ``SMALL_BODY_BYTES``.

    Every route but those in ``own_bodies`` (paths that stream and bound their body
    themselves, as ``/v1/traces`` does) has its body read here, before its handler runs
    — before any authentication — so an unauthenticated client trickling a body
    (``POST /signin``) is answered 408 and closed at the timeout instead of holding its
    connection, which counts against the connection cap, for ever. Handlers then get the
    body from ``request.read()`` / ``request.post()`` (aiohttp keeps what was read); a
    body over the bound is 413. Both answers close the connection.
    """
    skip = frozenset(own_bodies)

    @web.middleware
    async def bounded_bodies(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path in skip or not request.body_exists:
            return await handler(request)
        length = request.content_length
        try:
            if length is not None and length > SMALL_BODY_BYTES:
                raise web.HTTPRequestEntityTooLarge(SMALL_BODY_BYTES, length)
            await asyncio.wait_for(request.read(), body_timeout_s)
        except asyncio.TimeoutError:
            return await _answer_and_close(request, 408, f"body not received within {body_timeout_s:g}s")
        except web.HTTPRequestEntityTooLarge:
            return await _answer_and_close(request, 413, f"request body over {SMALL_BODY_BYTES} bytes")
        except Exception as exc:
            if not peer_gone(request, exc):
                raise
            return _closed_answer()
        return await handler(request)

    return web.Application(middlewares=[*middlewares, bounded_bodies], client_max_size=SMALL_BODY_BYTES)


def peer_gone(request: web.Request, exc: BaseException) -> bool:
    """Whether ``exc``, raised reading ``request``'s body, only means the connection is gone.

    aiohttp raises ``ConnectionResetError`` when the connection is lost during the read, and
    ``RuntimeError("Connection closed.")`` when it was lost before the handler started (the
    connection guard evicting or timing it out in the moment its headers completed, say).
    Neither is a fault of ours to log with a traceback; under a flood there are hundreds.
    """
    if isinstance(exc, (ConnectionError, asyncio.IncompleteReadError)):
        return True
    return isinstance(exc, RuntimeError) and request.transport is None


def _closed_answer() -> web.Response:
    """The answer to a request whose connection is gone: never delivered, never logged as an error."""
    response = web.Response(status=400, text="connection closed before the body arrived")
    response.force_close()
    return response


async def _answer_and_close(request: web.Request, status: int, message: str) -> web.Response:
    """A JSON error answer (as the approval routes give), then the connection closed at once.

    The rest of the body is never read, so the connection cannot carry another request;
    left to aiohttp, it would linger reading what the client still trickles.
    """
    response = web.json_response({"error": message}, status=status)
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the transport sends what it holds, then closes
    return response


def connection_of(transport: Any) -> _Connection | None:
    """The guard's record of the connection a request came on (None outside the guard)."""
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, _Connection) else None


class ThrottledLoopErrors:
    """An event-loop exception handler logging each kind of error once per interval.

    Out of file descriptors, asyncio reports every failed ``accept()`` (up to the listen
    backlog per loop turn) with a traceback: megabytes per second of the same lines. Here
    the first of a kind is one line (an ``OSError`` needs no traceback); the next one logged
    after ``interval_s`` says how many were suppressed meanwhile. Other errors keep
    asyncio's default report, throttled the same way.
    """

    def __init__(self, interval_s: float, logger: logging.Logger = _log) -> None:
        self.interval_s = interval_s
        self.logger = logger
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: collections.Counter[tuple[str, str]] = collections.Counter()

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        key = (str(context.get("message", "")), f"{type(exc).__name__}/{getattr(exc, 'errno', '')}")
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] += 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        more = f" ({suppressed} more in the last {now - last:.0f}s)" if suppressed and last is not None else ""
        if isinstance(exc, OSError):
            self.logger.error("wflo-otel ingest: %s: %s%s", key[0], exc, more)
        else:
            loop.default_exception_handler(context)
            if more:
                self.logger.error("wflo-otel ingest: %s%s", key[0], more)


def fit_fd_limit(max_connections: int, reserve: int = 64) -> int:
    """Raise the soft file-descriptor limit for ``max_connections`` if the hard one allows;
    return the connection cap that fits (lower than asked, with a warning, if it does not)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + reserve
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < needed:
        fitted = max(1, soft - reserve)
        _log.warning(
            "wflo-otel ingest: %d connections do not fit the file-descriptor limit (%d); capping at %d",
            max_connections,
            soft,
            fitted,
        )
        return fitted
    return max_connections


__all__ = [
    "BudgetFull",
    "ByteBudget",
    "ConnectionGuard",
    "Reservation",
    "SMALL_BODY_BYTES",
    "ThrottledLoopErrors",
    "bounded_app",
    "connection_of",
    "fit_fd_limit",
]
