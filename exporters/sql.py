"""``SQLSpanExporter``: an OpenTelemetry span exporter that lands spans in SQL.

Plug it into any ``BatchSpanProcessor`` (``configure()`` does), or select it with
``OTEL_TRACES_EXPORTER=wflo``. Each batch is mapped (``mapping``) and written in
one transaction (``store``); a database that is unreachable is retried with
backoff before the batch is reported as failed — loudly, in the log.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .mapping import map_records
from .records import record_from_readable_span
from .store import DEFAULT_DATABASE_URL, SpanStore
from ._loop import LoopThread

_log = logging.getLogger(__name__)

DATABASE_URL_ENV = "WFLO_DATABASE_URL"


class SQLSpanExporter(SpanExporter):
    """Writes spans to the workflow/execution/step schema (SQLite or PostgreSQL).

    ``database_url`` defaults to ``$WFLO_DATABASE_URL`` or ``sqlite+aiosqlite:///./wflo.db``.
    With ``auto_migrate`` (default) the schema is brought to the latest revision on first
    use, so the embedded default works with no set-up step.
    """

    def __init__(
        self,
        database_url: str | None = None,
        *,
        auto_migrate: bool = True,
        pricebook=None,
        retries: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 30.0,
    ) -> None:
        self.database_url = database_url or os.environ.get(DATABASE_URL_ENV) or DEFAULT_DATABASE_URL
        self._store = SpanStore(self.database_url)
        self._auto_migrate = auto_migrate
        self._migrated = False
        self._pricebook = pricebook
        self._retries = retries
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._loop = LoopThread()
        self._lock = threading.Lock()  # one batch at a time: SQLite has one writer anyway
        self._shutdown = False
        self.exported_spans = 0

    @property
    def store(self) -> SpanStore:
        return self._store

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            _log.warning("wflo-otel: export called after shutdown; %d spans not written", len(spans))
            return SpanExportResult.FAILURE
        batch = map_records((record_from_readable_span(s) for s in spans), self._pricebook or _default_pricebook())
        with self._lock:
            for attempt in range(self._retries + 1):
                try:
                    self._loop.run(self._write(batch), self._timeout_s)
                    self.exported_spans += len(spans)
                    return SpanExportResult.SUCCESS
                except Exception as exc:
                    if attempt == self._retries:
                        _log.error(
                            "wflo-otel: could not write %d spans to %s after %d attempts: %s",
                            len(spans),
                            self._store.engine.url.render_as_string(hide_password=True),
                            attempt + 1,
                            exc,
                        )
                        return SpanExportResult.FAILURE
                    delay = self._backoff_s * (2**attempt)
                    _log.warning("wflo-otel: write failed (%s); retrying in %.1fs", exc, delay)
                    time.sleep(delay)
        return SpanExportResult.FAILURE  # pragma: no cover

    async def _write(self, batch) -> None:
        if self._auto_migrate and not self._migrated:
            await self._store.migrate()
            self._migrated = True
        await self._store.write(batch)

    def migrate(self) -> None:
        """Create or upgrade the schema now (otherwise done on the first export)."""
        with self._lock:
            self._loop.run(self._store.migrate(), self._timeout_s)
            self._migrated = True

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        with self._lock:
            try:
                self._loop.run(self._store.dispose(), 10)
            except Exception:
                _log.debug("wflo-otel: dispose failed", exc_info=True)
            self._loop.stop()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        # export() is synchronous: once it returns, the batch is committed.
        return True


def _default_pricebook():
    from wflo_otel.pricing import default_pricebook

    return default_pricebook()
