"""``SQLSpanExporter``: an OpenTelemetry span exporter that lands spans in SQL.

Plug it into any ``BatchSpanProcessor`` (``configure()`` does), or select it with
``OTEL_TRACES_EXPORTER=wflo``. Each batch is mapped (``mapping``) and written in
one transaction (``store``), idempotently.

Delivery. A failed write is retried at once (a connection the server cut is
replaced) and then with a short backoff. If the database still does not answer,
the batch goes to a durable local spool (``spool``) and the exporter stops
calling the database for every batch: it spools them while a background thread
probes with exponential backoff; when the database answers again, the spooled
batches are replayed oldest first (also when a new exporter for the same database
starts). ``export`` therefore never blocks the SDK's worker for long, which would
make the ``BatchSpanProcessor`` drop spans. A batch the database refuses for good
(a data error) is kept in the spool's ``failed/`` folder and logged.

A database that refuses us (SQLSTATE 3D000: no database of that name; class 28: the
role or password) is not retried at once: its batches are spooled straight away.

Shutdown. ``shutdown()`` writes or spools what it is given and, if the spool holds
batches, probes the database once more (as ``force_flush()`` does) and replays them
within its timeout if it answers; if not, it returns at once and logs one line naming
the spool folder and ``wflo-otel spool replay``. A process that receives SIGTERM normally dies without
running ``atexit`` hooks — where the SDK's ``TracerProvider`` flushes its batch
processors — so, unless the application already handles SIGTERM (or
``WFLO_HANDLE_SIGTERM=0`` / ``handle_sigterm=False``), the exporter installs a
handler that raises ``SystemExit`` in the main thread: ``finally`` blocks and
``atexit`` hooks run, queued spans are flushed or spooled, and the exit status is
still 143 (128 + SIGTERM). A second SIGTERM kills at once.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from sqlalchemy.engine import make_url

from ._loop import LoopThread
from .forking import in_forked_children
from .mapping import RowBatch, map_records
from .records import SpanFields, record_from_fields, record_from_readable_span, span_fields
from .spool import Spool, SpoolFull
from .store import SpanStore, is_refusal, is_transient, sqlstate_of

_log = logging.getLogger(__name__)

HANDLE_SIGTERM_ENV = "WFLO_HANDLE_SIGTERM"
_MAX_PROBE_DELAY_S = 10.0


class SQLSpanExporter(SpanExporter):
    """Writes spans to the workflow/execution/step schema (SQLite or PostgreSQL).

    ``database_url`` defaults to ``$WFLO_DATABASE_URL`` or ``sqlite+aiosqlite:///./wflo.db``.
    With ``auto_migrate`` (default) the schema is brought to the latest revision on first
    use, so the embedded default works with no set-up step.

    ``retries``/``backoff_s``: attempts after the first failed write of a batch (the
    first one immediately, then ``backoff_s`` doubling) before it is spooled.
    ``spool_dir``: ``None`` for ``$WFLO_SPOOL_DIR`` or ``~/.cache/wflo-otel/spool``,
    ``False`` for no spool (a batch that cannot be written is then lost, loudly).
    ``spool_max_mb``: default ``$WFLO_SPOOL_MAX_MB`` or 256.
    ``writer``: ``"thread"`` (default, or ``$WFLO_EXPORT_WRITER``) writes from this process;
    ``"process"`` hands each mapped batch to a child process that writes it
    (``process_store``), so the database work does not compete with the application
    for the GIL, and returns while the child commits it: the next ``export()``,
    ``force_flush()`` or ``shutdown()`` settles that batch (a failed write then takes the
    usual retry and spool path). With the thread writer ``export()`` returns once the
    batch is committed.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        auto_migrate: bool = True,
        pricebook=None,
        retries: int = 3,
        backoff_s: float = 0.1,
        timeout_s: float = 30.0,
        spool_dir: str | Path | None | bool = None,
        spool_max_mb: float | None = None,
        handle_sigterm: bool | None = None,
        store: SpanStore | None = None,
        writer: str | None = None,
    ) -> None:
        from wflo_otel.settings import database_url as resolve_database_url

        self.database_url = resolve_database_url(database_url)
        self._store = store or _new_store(self.database_url, writer, timeout_s)
        self._safe_url = make_url(self._store.url).render_as_string(hide_password=True)
        self._auto_migrate = auto_migrate
        self._migrated = False
        self._migrate_lock = threading.Lock()
        self._pricebook = pricebook
        self._retries = retries
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._loop = LoopThread()
        self._loop.start()  # now, not lazily: no new threads can start during interpreter exit (3.12+)

        self._spool: Spool | None = None
        if spool_dir is not False:
            root = None if spool_dir in (None, True) else spool_dir
            max_bytes = int(spool_max_mb * 1024 * 1024) if spool_max_mb is not None else None
            self._spool = Spool.for_database(self._store.url, root, max_bytes, label=self._safe_url)

        # writer="process": one batch can be in the child's hands while the next is mapped.
        self._handoff: _Handoff | None = _Handoff() if hasattr(self._store, "begin_write_spans") else None
        self._state = threading.Condition()
        self._down = False
        self._refusal: BaseException | None = None  # why the database refuses us (3D000, class 28)
        self._down_since = 0.0
        self._next_probe = 0.0
        self._probe_delay = 0.0
        self._inflight = 0
        self._shutdown = False
        self._spool_dirty = bool(self._spool and self._spool.pending())
        self._stop_replay = threading.Event()
        self._wake = threading.Event()
        self._replayer: threading.Thread | None = None

        self.exported_spans = 0  # written to the database by export()
        self.spooled_spans = 0
        self.replayed_spans = 0
        self.lost_spans = 0  # refused by a full spool, or no spool
        self.failed_spans = 0  # refused by the database for good (kept in failed/)

        in_forked_children(self, SQLSpanExporter._reset_after_fork)
        if handle_sigterm is None:
            handle_sigterm = os.environ.get(HANDLE_SIGTERM_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
        if handle_sigterm:
            install_sigterm_handler()
        if self._spool_dirty:
            _log.warning(
                "wflo-otel: %d spooled batches for %s found in %s; replaying them in the background",
                len(self._spool.pending()),
                self._safe_url,
                self._spool.directory,
            )
            self._ensure_replayer()

    # ----------------------------------------------------------------- public

    @property
    def store(self) -> SpanStore:
        return self._store

    @property
    def spool(self) -> Spool | None:
        return self._spool

    @property
    def database_down(self) -> bool:
        return self._down

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            _log.warning("wflo-otel: export called after shutdown; %d spans not written", len(spans))
            return SpanExportResult.FAILURE
        if not spans:
            return SpanExportResult.SUCCESS
        with self._state:
            self._inflight += 1
        try:
            if self._handoff is not None:  # the child maps them: here only what frees them from the SDK
                return self._hand_over([span_fields(s) for s in spans])
            return self._deliver(self._map(map(record_from_readable_span, spans)), len(spans))
        finally:
            with self._state:
                self._inflight -= 1
                self._state.notify_all()

    def migrate(self) -> None:
        """Create or upgrade the schema now (otherwise done on the first export)."""
        with self._migrate_lock:
            self._loop.run(self._store.migrate(), self._timeout_s)
            self._migrated = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Wait for the batch in the writer process's hands; replay the spool if the database is up.

        True when everything exported so far is committed (or spooled) and nothing is
        left in the spool. (The processor ``configure()`` builds calls this from its own
        ``force_flush``; the SDK's plain ``BatchSpanProcessor`` does not.)
        """
        self._settle_handed()
        if not self._spool_dirty or self._spool is None:
            return True
        deadline = time.monotonic() + timeout_millis / 1000
        if not self._answers_now(deadline):  # nothing to wait for: the spool stays, and says so at shutdown
            return False
        return self._wait_for_replay(deadline)

    def shutdown(self, timeout_millis: int = 30000) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        deadline = time.monotonic() + timeout_millis / 1000
        with self._state:  # exports already running finish first
            while self._inflight and time.monotonic() < deadline:
                self._state.wait(deadline - time.monotonic())
        self._settle_handed()
        if self._spool_dirty and self._spool is not None and self._answers_now(deadline):
            self._wait_for_replay(min(deadline, time.monotonic() + 10))
        self._stop_replay.set()
        self._wake.set()
        if self._replayer is not None and self._replayer is not threading.current_thread():
            self._replayer.join(max(0.1, min(5.0, deadline - time.monotonic())))
        if self._spool is not None and self._spool.pending():
            _log.warning("%s", self._spooled_at_exit())
        try:
            self._loop.run(self._store.dispose(), 10)
        except Exception:
            _log.debug("wflo-otel: dispose failed", exc_info=True)
        self._loop.stop()

    def _spooled_at_exit(self) -> str:
        """The one line a process leaving spans in the spool prints: where they are, why, how to land them."""
        why = f" ({self._safe_url} refused: {_brief(self._refusal)})" if self._refusal is not None else ""
        return (
            f"wflo-otel: {len(self._spool.pending())} batches of spans stay spooled in {self._spool.directory}{why}; "
            f"they are written when an exporter for this database starts, or now with: "
            f"wflo-otel spool replay --database-url '{self._safe_url}'"
        )

    def stats(self) -> dict[str, int]:
        return {
            "exported_spans": self.exported_spans,
            "spooled_spans": self.spooled_spans,
            "replayed_spans": self.replayed_spans,
            "lost_spans": self.lost_spans,
            "failed_spans": self.failed_spans,
            "spooled_batches": len(self._spool.pending()) if self._spool else 0,
        }

    # ----------------------------------------------------------------- delivery

    def _prices(self):
        return self._pricebook or _default_pricebook()

    def _map(self, records) -> RowBatch:
        return map_records(records, self._prices())

    def _map_fields(self, spans: list[SpanFields]) -> RowBatch:
        """A batch handed to the writer process, mapped here after all (its write failed)."""
        return self._map(map(record_from_fields, spans))

    def _deliver(self, batch: RowBatch, spans: int) -> SpanExportResult:
        if not batch.steps and not batch.executions:  # nothing mapped (each odd span was logged)
            return SpanExportResult.SUCCESS
        if self._circuit_open():
            return self._spill(batch, spans)
        error = self._write_with_retries(batch)
        if error is None:
            self._committed(spans)
            return SpanExportResult.SUCCESS
        if not is_transient(error):
            return self._isolate(batch, error)
        self._mark_down(error)
        return self._spill(batch, spans)

    def _isolate(self, batch: RowBatch, error: BaseException) -> SpanExportResult:
        """The database refused the batch: land every span it takes, keep only the others.

        The rows are first made storable (what no driver can encode replaced); if the
        batch is still refused, it is halved until each refused span is alone, and
        only those go to ``failed/``: one odd span of 2,048 costs ~22 more writes,
        not 2,047 lost spans. A database going away meanwhile spools what is left.
        An error about the schema or privileges (SQLSTATE class 42) would refuse every
        span alike, and after ``_ISOLATION_WRITES`` writes what is left is kept whole.
        """
        if (sqlstate_of(error) or "")[:2] == "42":
            return self._keep_failed(batch, len(batch), error)
        _log.warning(
            "wflo-otel: %s refused a batch of %d spans (%s); isolating the refused ones",
            self._safe_url, len(batch), _brief(error),
        )
        result = SpanExportResult.SUCCESS
        parts = [batch.storable()]
        writes = 0
        while parts:
            part = parts.pop()
            if writes >= _ISOLATION_WRITES:
                self._keep_failed(part, len(part), error)
                result = SpanExportResult.FAILURE
                continue
            writes += 1
            error = self._write_with_retries(part)
            if error is None:
                self._committed(len(part))
            elif is_transient(error):
                self._mark_down(error)
                for rest in (part, *parts):
                    if self._spill(rest, len(rest)) is not SpanExportResult.SUCCESS:
                        result = SpanExportResult.FAILURE
                return result
            elif len(part) <= 1:
                self._keep_failed(part, len(part), error)
                result = SpanExportResult.FAILURE
            else:
                parts.extend(reversed(part.halves()))
        return result

    def _committed(self, spans: int) -> None:
        """A batch is in the database: the database is up, and the spool can drain."""
        self._mark_up()
        with self._state:
            self.exported_spans += spans
        if self._spool_dirty:
            self._ensure_replayer()
            self._wake.set()

    def _hand_over(self, spans: list[SpanFields]) -> SpanExportResult:
        """writer="process": settle the batch handed over before, hand this one over, return.

        The child maps and commits this batch while the next one is prepared here. Its
        outcome is settled by the next export, ``force_flush`` or ``shutdown``: a failed
        write then takes the usual path (mapped here, retries, spool). When the database
        is away, or the hand-over fails, the batch is delivered the usual way at once.
        """
        request = None
        try:  # encoded before waiting for the previous batch, which the child may still be writing
            if not (self._circuit_open() or self._spool_dirty):  # (or it goes the usual way below)
                request = self._store.pack_spans(spans, self._prices().snapshot())
        except Exception:
            _log.debug("wflo-otel: could not encode the batch for the writer process", exc_info=True)
            request = None
        with self._handoff.lock:
            self._settle_handed_locked()
            if request is None or self._circuit_open() or self._spool_dirty:
                return self._deliver(self._map_fields(spans), len(spans))
            try:
                self._ensure_schema()
                self._store.begin_write_spans(request)
            except Exception:
                _log.debug("wflo-otel: hand-over to the writer process failed", exc_info=True)
                return self._deliver(self._map_fields(spans), len(spans))
            self._handoff.spans = spans
            return SpanExportResult.SUCCESS

    def _settle_handed(self) -> None:
        if self._handoff is not None:
            with self._handoff.lock:
                self._settle_handed_locked()

    def _settle_handed_locked(self) -> None:
        spans = self._handoff.spans
        if spans is None:
            return
        self._handoff.spans = None
        try:
            self._store.finish_write()
        except Exception as exc:
            _log.info("wflo-otel: handed-over batch failed (%s); delivering it again", _brief(exc))
            self._deliver(self._map_fields(spans), len(spans))  # idempotent: retries, then spool or failed/
            return
        self._committed(len(spans))

    def _write_with_retries(self, batch: RowBatch) -> BaseException | None:
        for attempt in range(self._retries + 1):
            try:
                self._write(batch)
                return None
            except Exception as exc:
                if (
                    attempt == self._retries
                    or not is_transient(exc)
                    or _timed_out(exc)  # a timeout already waited its full time: retrying it would block export() again
                    or is_refusal(exc)  # no database of that name, or not for us: retrying at once changes nothing
                    or self._circuit_open()
                ):
                    return exc
                # The first retry is immediate: a connection the server cut is replaced by the pool.
                delay = 0.0 if attempt == 0 else self._backoff_s * (2 ** (attempt - 1))
                _log.info("wflo-otel: write to %s failed (%s); retry %d in %.2fs", self._safe_url, _brief(exc), attempt + 1, delay)
                if delay:
                    time.sleep(delay)
        return None  # pragma: no cover

    def _write(self, batch: RowBatch) -> None:
        self._ensure_schema()
        self._loop.run(self._store.write(batch), self._timeout_s)

    def _ensure_schema(self) -> None:
        if self._migrated or not self._auto_migrate:
            return
        with self._migrate_lock:
            if not self._migrated:
                self._loop.run(self._store.migrate(), self._timeout_s)
                self._migrated = True

    def _spill(self, batch: RowBatch, spans: int) -> SpanExportResult:
        if self._spool is None:
            with self._state:
                self.lost_spans += spans
            _log.error("wflo-otel: %s is unreachable and no spool is configured: %d spans lost", self._safe_url, spans)
            return SpanExportResult.FAILURE
        try:
            self._spool.append(batch, spans)
        except SpoolFull:
            with self._state:
                self.lost_spans += spans
            return SpanExportResult.FAILURE
        except OSError as exc:
            with self._state:
                self.lost_spans += spans
            _log.error("wflo-otel: could not spool %d spans to %s (%s): they are lost", spans, self._spool.directory, exc)
            return SpanExportResult.FAILURE
        with self._state:
            self.spooled_spans += spans
            self._spool_dirty = True
        self._ensure_replayer()
        return SpanExportResult.SUCCESS

    def _keep_failed(self, batch: RowBatch, spans: int, error: BaseException) -> SpanExportResult:
        with self._state:
            self.failed_spans += spans
        reason = _brief(error)
        if self._spool is None:
            _log.error("wflo-otel: %s refused %d spans: %s", self._safe_url, spans, reason)
            return SpanExportResult.FAILURE
        try:
            self._spool.quarantine_batch(batch, reason, spans)
        except OSError as exc:
            _log.error("wflo-otel: %s refused %d spans (%s) and they could not be kept: %s", self._safe_url, spans, reason, exc)
        return SpanExportResult.FAILURE

    def _reset_after_fork(self) -> None:
        """In a forked child (gunicorn ``--preload``, Celery prefork): start over on our own.

        (Nothing to do for an exporter already shut down.)

        Threads do not survive ``fork``: the parent's event loop thread, replayer and
        any lock one of them held are gone, and the pooled connections are the
        parent's sockets. The SDK's batch processor restarts its worker in the child;
        without this its first ``export()`` would wait on a loop nobody runs.
        """
        if self._shutdown:
            return
        self._loop = LoopThread()
        self._loop.start()
        engine = getattr(self._store, "engine", None)
        if engine is not None:  # the writer process store forgets its own child
            engine.sync_engine.dispose(close=False)  # a new pool; the parent's connections stay the parent's
        self._migrate_lock = threading.Lock()
        self._state = threading.Condition()
        self._stop_replay = threading.Event()
        self._wake = threading.Event()
        self._replayer = None
        self._inflight = 0
        if self._handoff is not None:
            self._handoff = _Handoff()  # what the parent handed over is the parent's to settle

    # ----------------------------------------------------------------- the circuit

    def _circuit_open(self) -> bool:
        """Down, and this export is not the one to probe: do not call the database.

        With a spool the replayer probes, in the background, and ``export()`` spools at
        once: a database that accepts connections but never answers blocks no export
        after the one that found it so. Without a spool, an export probes when the
        backoff has passed.
        """
        if not self._down:
            return False
        return self._spool is not None or time.monotonic() < self._next_probe

    def _mark_down(self, error: BaseException) -> None:
        refused = is_refusal(error)
        with self._state:
            first = not self._down
            self._down = True
            self._refusal = error if refused else None
            if first:
                self._down_since = time.monotonic()
                self._probe_delay = 0.25
            else:
                self._probe_delay = min(_MAX_PROBE_DELAY_S, max(0.25, self._probe_delay * 2))
            if refused:  # a database created or a role granted is minutes away, not milliseconds
                self._probe_delay = _MAX_PROBE_DELAY_S
            self._next_probe = time.monotonic() + self._probe_delay
        if first:
            where = self._spool.directory if self._spool is not None else "(no spool: spans are lost)"
            if refused:
                _log.error(
                    "wflo-otel: database %s refuses this connection (%s); spooling batches to %s until it is fixed",
                    self._safe_url, _brief(error), where,
                )
            else:
                _log.error(
                    "wflo-otel: database %s is unreachable (%s); spooling batches to %s and retrying with backoff",
                    self._safe_url, _brief(error), where,
                )
        self._ensure_replayer()

    def _mark_up(self) -> None:
        if not self._down:
            return
        with self._state:
            if not self._down:
                return
            self._down = False
            self._refusal = None
            down_for = time.monotonic() - self._down_since
            self._probe_delay = 0.0
        _log.warning("wflo-otel: database %s is back after %.1fs", self._safe_url, down_for)
        self._wake.set()

    # ----------------------------------------------------------------- replay

    def _ensure_replayer(self) -> None:
        if self._spool is None or self._stop_replay.is_set():
            return
        if self._replayer is not None and self._replayer.is_alive():
            return
        with self._state:
            if self._replayer is not None and self._replayer.is_alive():
                return
            thread = threading.Thread(target=self._replay_loop, name="wflo-otel-spool-replay", daemon=True)
            try:
                thread.start()
            except RuntimeError:  # interpreter shutting down: the spool is replayed on the next start
                return
            self._replayer = thread

    def _replay_loop(self) -> None:
        while not self._stop_replay.is_set():
            try:
                delay = self._replay_pass()
            except Exception:  # never let the thread die silently
                _log.exception("wflo-otel: spool replay failed")
                delay = 1.0
            self._wake.wait(delay)
            self._wake.clear()

    def _replay_pass(self) -> float | None:
        """Replay what is spooled; the seconds until the next try, or None to wait for a wake-up."""
        spool = self._spool
        assert spool is not None
        if not spool.pending():
            if not self._down:
                with self._state:
                    self._spool_dirty = False
                    self._state.notify_all()
                return None
        if self._down:
            wait = self._next_probe - time.monotonic()
            if wait > 0:
                return wait
            try:
                self._ensure_schema()
                self._loop.run(self._store.ping(), min(self._timeout_s, 10))
            except Exception as exc:
                self._mark_down(exc)
                return max(0.01, self._next_probe - time.monotonic())
            self._mark_up()
        with spool.replay_lock() as ours:
            if not ours:  # another process replays this folder
                return 2.0
            for path in spool.pending():
                if self._stop_replay.is_set():
                    return None
                try:
                    batch = spool.read(path)
                except FileNotFoundError:
                    continue
                except Exception as exc:
                    spool.quarantine(path, f"unreadable: {exc}")
                    continue
                try:
                    self._write(batch)
                except Exception as exc:
                    if is_transient(exc):
                        self._mark_down(exc)
                        return max(0.01, self._next_probe - time.monotonic())
                    spool.quarantine(path, _brief(exc))
                    continue
                spool.remove(path)
                with self._state:
                    self.replayed_spans += len(batch)
        if spool.pending():
            return 0.0
        with self._state:
            self._spool_dirty = False
            self._state.notify_all()
        _log.info("wflo-otel: spool for %s replayed", self._safe_url)
        return None

    def _answers_now(self, deadline: float) -> bool:
        """Up, or down but answering a probe made now: worth waiting for the replay.

        ``force_flush()`` and ``shutdown()`` probe once more rather than wait for the
        replayer's back-off (up to 10 s away): a database that came back is replayed
        before the process exits, and one that still does not answer (a mistyped
        database name: SQLSTATE 3D000) is not waited for at all.
        """
        if not self._down:
            return True
        try:
            self._loop.run(self._store.ping(), max(0.1, min(5.0, deadline - time.monotonic())))
        except Exception as exc:
            self._mark_down(exc)
            return False
        self._mark_up()
        return True

    def _wait_for_replay(self, deadline: float) -> bool:
        self._ensure_replayer()
        self._wake.set()
        with self._state:
            while self._spool_dirty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._replayer is None or not self._replayer.is_alive():
                    break
                if self._down and self._next_probe > deadline:
                    break
                self._state.wait(min(remaining, 0.05))
                self._wake.set()
            return not self._spool_dirty


def _timed_out(exc: BaseException) -> bool:
    """A connect or statement timeout (the driver's, or ours waiting on the loop)."""
    for error in (exc, getattr(exc, "orig", None)):  # SQLAlchemy wraps the driver's
        if isinstance(error, TimeoutError) or type(error).__name__.endswith("TimeoutError"):
            return True
    return False


# Writes one refused batch may take to find its refused spans: a lone one in 2,048 takes 23.
_ISOLATION_WRITES = 64


class _Handoff:
    """The spans the writer process holds (writer="process"), until their commit is confirmed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[SpanFields] | None = None


WRITER_ENV = "WFLO_EXPORT_WRITER"
WRITERS = ("thread", "process")


def _new_store(url: str, writer: str | None, timeout_s: float):
    writer = (writer or os.environ.get(WRITER_ENV) or "thread").strip().lower()
    if writer not in WRITERS:
        raise ValueError(f"writer must be one of {', '.join(WRITERS)} (got {writer!r}; ${WRITER_ENV})")
    if writer == "process":
        from .process_store import ProcessStore

        return ProcessStore(url, timeout_s=timeout_s)
    return SpanStore(url)


def install_sigterm_handler() -> bool:
    """Turn SIGTERM into ``SystemExit`` so ``atexit`` hooks (span flushing) run.

    Only from the main thread and only when SIGTERM still has its default action
    (an application or framework that handles SIGTERM itself is left alone).
    Returns whether the handler was installed.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return False
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False
        signal.signal(signal.SIGTERM, _sigterm_to_system_exit)
    except (ValueError, OSError):  # pragma: no cover - not the main interpreter
        return False
    return True


def _sigterm_to_system_exit(signum, _frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM kills at once
    raise SystemExit(128 + signum)


def _brief(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def _default_pricebook():
    from wflo_otel.pricing import default_pricebook

    return default_pricebook()

