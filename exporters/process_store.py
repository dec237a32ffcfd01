"""``ProcessStore``: the span store run in a child process, off the application's GIL.

In-process, the exporter's database work (mapping spans to rows, converting them
for the driver, the driver's encoding, the event loop) runs on the application's
interpreter and so competes with the application's own threads for the GIL; a
service that makes thousands of spans a second spends most of that lock making
them. Here the exporter thread only copies each span's data into a tuple of plain
values (``records.span_fields``) and hands the batch to a child process that maps
it (``mapping``, the same code as in-process, priced by a snapshot of the
exporter's ``PriceBook``) and writes it through its own ``SpanStore`` (its own
interpreter, its own core): ``begin_write_spans`` hands a batch over,
``finish_write`` waits for its commit, and the exporter prepares the next batch in
between. The plain ``write`` of a mapped batch (used for retries, migrations,
probes and spool replay) waits for its own answer.

The child is ``python -m wflo_otel.exporters.process_store`` (never a
``multiprocessing`` spawn, which would import the application's ``__main__``
again), talking over its stdin/stdout with length-prefixed pickles. It ignores
SIGINT and SIGTERM: the parent decides when it stops, after flushing, by
closing its stdin; a parent that dies closes it too. A child that dies or
hangs is killed and started again on the next call; the call fails as a
transient error, so the exporter's retry and spool rules apply unchanged.

Select it with ``SQLSpanExporter(writer="process")`` or ``WFLO_EXPORT_WRITER=process``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import selectors
import signal
import struct
import subprocess
import sys
import threading
from typing import Any, BinaryIO

from wflo_otel.pricing import PriceBook

from .forking import in_forked_children
from .mapping import RowBatch, map_records
from .records import SpanFields, record_from_fields
from .store import SpanStore, is_retryable, is_transient, normalize_url, sqlstate_of

_HEADER = struct.Struct(">I")
_MODULE = "wflo_otel.exporters.process_store"


class WriterGone(ConnectionError):
    """The child process died, hung, or could not start (transient: the exporter retries, then spools)."""


class RemoteStoreError(Exception):
    """An error the store raised in the child, with what the exporter's rules need to know."""

    def __init__(self, kind: str, message: str, sqlstate: str | None) -> None:
        super().__init__(f"{kind}: {message}")
        self.sqlstate = sqlstate


class RemoteTransientError(RemoteStoreError, ConnectionError):
    """A transient error in the child (connection refused, database restarting): retried, then spooled."""


class ProcessStore:
    """The ``SpanStore`` interface (``write``, ``migrate``, ``ping``, ``dispose``), served by a child process.

    Calls are serialised (one request on the pipe at a time). ``timeout_s`` bounds
    one call: past it the child is killed and the call fails as transient.
    """

    def __init__(self, url: str, *, timeout_s: float = 30.0, python: str | None = None) -> None:
        self.url = normalize_url(url)
        self.dialect = "sqlite" if self.url.startswith("sqlite") else "postgresql"
        self.timeout_s = timeout_s
        self._python = python or sys.executable
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._closed = False
        self._pending = False  # a begin_write_spans() whose reply is still in the pipe
        self._outcome: tuple | None = None  # its reply, once read
        self.restarts = 0
        in_forked_children(self, ProcessStore._forget_after_fork)
        self._start()  # now: a process cannot be started while the interpreter exits

    # ----------------------------------------------------------------- SpanStore interface

    async def write(self, batch: RowBatch) -> None:
        self._call("write", batch)

    async def migrate(self) -> None:
        self._call("migrate")

    async def ping(self) -> None:
        self._call("ping")

    async def dispose(self) -> None:
        self.close()

    # ----------------------------------------------------------------- one write in flight

    @staticmethod
    def pack_spans(spans: list[SpanFields], pricing: tuple) -> bytes:
        """The request that hands ``spans`` over, encoded (for ``begin_write_spans``).

        ``pricing`` is ``PriceBook.snapshot()`` of the exporter's prices (the child
        rebuilds its book only when that changes). Encoding is separate so that the
        exporter can do it while the child still writes the previous batch.
        """
        return _encode(("write_spans", (spans, pricing)))

    def begin_write_spans(self, request: bytes) -> None:
        """Hand a batch (``pack_spans``) to the child, to map and write; ``finish_write()`` waits for the commit.

        This process prepares the next batch while the child writes this one: the two
        share no GIL. One write is in flight at a time.
        """
        with self._lock:
            self._settle_pending_locked()
            if self._outcome is not None:
                raise RuntimeError("finish_write() the previous batch first")
            self._send_locked(request, "write_spans")
            self._pending = True

    def finish_write(self) -> bool:
        """Wait for the write handed over by ``begin_write_spans``; False if there was none.

        Raises what the write raised (``WriterGone`` if the child died or hung meanwhile).
        """
        with self._lock:
            self._settle_pending_locked()
            outcome, self._outcome = self._outcome, None
        if outcome is None:
            return False
        _unwrap(outcome)
        return True

    # ----------------------------------------------------------------- lifecycle

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def close(self, timeout_s: float = 10.0) -> None:
        """Let the child finish what it is doing and exit (killed after ``timeout_s``)."""
        with self._lock:
            self._settle_pending_locked()
            self._closed = True
            proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()  # EOF: the child disposes its engine and exits
            proc.wait(timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        finally:
            proc.stdout.close()

    def _start(self) -> subprocess.Popen:
        proc = subprocess.Popen(
            [self._python, "-m", _MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            close_fds=True,
        )
        try:
            _send(proc.stdin, self.url)
        except OSError as exc:
            proc.kill()
            raise WriterGone(f"the writer process did not start: {exc}") from exc
        self._proc = proc
        return proc

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass

    def _forget_after_fork(self) -> None:
        """In a forked child: the writer process, its reply and the lock belong to the parent."""
        self._lock = threading.Lock()
        self._proc = None
        self._pending = False
        self._outcome = None

    def _call(self, op: str, *args: Any) -> Any:
        with self._lock:
            self._settle_pending_locked()  # a write in flight is answered first, and kept for its owner
            proc = self._send_locked(_encode((op, args)), op)
            try:
                outcome = _receive(proc.stdout, self.timeout_s)
            except (OSError, EOFError, TimeoutError, pickle.UnpicklingError) as exc:
                self._kill()
                raise WriterGone(f"the writer process failed during {op}: {exc!r}") from exc
        return _unwrap(outcome)

    def _send_locked(self, request: bytes, op: str) -> subprocess.Popen:
        """Send one encoded request (``op``) to a live child (started again if it died); the child it went to."""
        proc = self._ready_locked()
        try:
            _send_encoded(proc.stdin, request)
        except OSError as exc:
            self._kill()
            raise WriterGone(f"the writer process failed taking {op}: {exc!r}") from exc
        return proc

    def _ready_locked(self) -> subprocess.Popen:
        if self._closed:
            raise WriterGone("the writer process was closed")
        proc = self._proc
        if proc is None or proc.poll() is not None:
            self._kill()
            proc = self._start()
            self.restarts += 1
        return proc

    def _settle_pending_locked(self) -> None:
        if not self._pending:
            return
        self._pending = False
        proc = self._proc
        try:
            if proc is None:
                raise EOFError("the writer process is gone")
            self._outcome = _receive(proc.stdout, self.timeout_s)
        except (OSError, EOFError, TimeoutError, pickle.UnpicklingError) as exc:
            self._kill()
            self._outcome = ("gone", f"the writer process failed during write: {exc!r}")


def _unwrap(outcome: tuple) -> Any:
    """The reply's value, or the error it reports raised here."""
    status, value = outcome
    if status == "ok":
        return value
    if status == "gone":
        raise WriterGone(value)
    kind, message, sqlstate, transient = value
    error = RemoteTransientError if transient and sqlstate is None else RemoteStoreError
    raise error(kind, message, sqlstate)


# --------------------------------------------------------------------------- framing


def _encode(message: Any) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def _send(stream: BinaryIO, message: Any) -> None:
    _send_encoded(stream, _encode(message))


def _send_encoded(stream: BinaryIO, data: bytes) -> None:
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _receive(stream: BinaryIO, timeout_s: float | None = None) -> Any:
    if timeout_s is not None:
        with selectors.DefaultSelector() as selector:
            selector.register(stream, selectors.EVENT_READ)
            if not selector.select(timeout_s):
                raise TimeoutError(f"no answer within {timeout_s:g}s")
    header = _read_exactly(stream, _HEADER.size)
    return pickle.loads(_read_exactly(stream, _HEADER.unpack(header)[0]))


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) < size:
        raise EOFError("the writer process closed its pipe")
    return data


# --------------------------------------------------------------------------- the child


def _describe(exc: BaseException) -> tuple[str, str, str | None, bool]:
    state = sqlstate_of(exc)
    transient = is_transient(exc) or is_retryable(exc)
    return type(exc).__name__, str(exc).strip()[:2000], state, transient


class _ChildWriter:
    """The child's side of the calls: the store's own, and span batches to map before writing."""

    def __init__(self, url: str) -> None:
        self.store = SpanStore(url)
        self._pricing: tuple | None = None
        self._pricebook: PriceBook | None = None

    async def write_spans(self, spans: list[SpanFields], pricing: tuple) -> None:
        if pricing != self._pricing:
            self._pricebook, self._pricing = PriceBook.from_snapshot(pricing), pricing
        await self.store.write(map_records(map(record_from_fields, spans), self._pricebook))

    async def write(self, batch: RowBatch) -> None:
        await self.store.write(batch)

    async def migrate(self) -> None:
        await self.store.migrate()

    async def ping(self) -> None:
        await self.store.ping()

    async def dispose(self) -> None:
        await self.store.dispose()


_OPS = frozenset({"write_spans", "write", "migrate", "ping"})


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    """The child's loop: one request, one reply, until the parent closes the pipe."""
    url = _receive(requests)
    writer = _ChildWriter(url)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                op, args = _receive(requests)
            except EOFError:
                break
            try:
                if op not in _OPS:
                    raise ValueError(f"unknown request {op!r}")
                result = loop.run_until_complete(getattr(writer, op)(*args))
                _send(replies, ("ok", result))
            except Exception as exc:
                _send(replies, ("error", _describe(exc)))
    finally:
        loop.run_until_complete(writer.dispose())
        loop.close()


def main() -> None:
    # The parent stops us, after flushing through us: signals meant for its process group are not ours.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not corrupt the replies
    _tune_garbage_collection()
    serve(sys.stdin.buffer, replies)


def _tune_garbage_collection() -> None:
    """This process is ours: collect cycles less often than the default every 700 allocations.

    What it allocates (span tuples, records, row dicts and tuples) holds no cycles and is
    freed by reference counting; the default thresholds spent ~8 % of the mapping's time
    walking it (0.7 of 8.4 µs per span, measured unpickling, mapping and converting
    batches of 2,048 with thresholds of 700 and 10,000). What the imports left is frozen
    out of every collection.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


if __name__ == "__main__":
    main()
