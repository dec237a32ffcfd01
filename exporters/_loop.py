"""A private asyncio event loop on a daemon thread.

The SDK calls ``SpanExporter.export`` synchronously from its worker thread; the
drivers (aiosqlite, asyncpg) are async. The exporter hands coroutines to this
loop and waits for them, so the application's own event loop is never touched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine

from .forking import FORK_GUARD


class LoopThread:
    def __init__(self, name: str = "wflo-otel-exporter") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    def start(self) -> None:
        """Start the thread now (a thread cannot be started while the interpreter exits)."""
        self._ensure()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> Any:
        """Run ``coro`` on the loop and wait for it; a fork meanwhile waits for it (``forking``)."""
        with FORK_GUARD.busy():
            future = asyncio.run_coroutine_threadsafe(coro, self._ensure())
            try:
                return future.result(timeout)
            except concurrent.futures.TimeoutError:  # not the builtin one before Python 3.11
                future.cancel()
                raise

    def stop(self) -> None:
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        if not loop.is_running():
            loop.close()
