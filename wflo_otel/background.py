"""Run an asyncio service (``await start()`` / ``await stop()``) on its own loop in a thread.

For tests and embedding: ``with Service(...) as service:`` starts it in a daemon thread and
stops it on exit. Shared by the ingest service and the dashboard's ``wflo-otel ui`` server.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Any


class InThread:
    """Mixin: ``run_in_thread()`` / ``stop_thread()`` and the context manager, over ``start`` / ``stop``."""

    THREAD_NAME = "wflo-otel-service"
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop_event: asyncio.Event | None = None

    async def start(self) -> Any:  # pragma: no cover - provided by the service
        raise NotImplementedError

    async def stop(self) -> None:  # pragma: no cover - provided by the service
        raise NotImplementedError

    def run_in_thread(self, timeout_s: float = 30.0):
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._stop_event = asyncio.Event()
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_until_complete(self._stop_event.wait())
                loop.run_until_complete(self.stop())
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name=self.THREAD_NAME, daemon=True)
        self._thread.start()
        if not ready.wait(timeout_s):
            raise TimeoutError(f"{self.THREAD_NAME} did not start")
        if failure:
            raise failure[0]
        return self

    def stop_thread(self, timeout_s: float = 60.0) -> None:
        if self._thread is None or self._loop is None or self._stop_event is None:
            return
        self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout_s)
        self._thread = None

    def __enter__(self):
        return self.run_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()


def stop_event_on_signals() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT (a command's "run until told to stop")."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on the main thread / Windows
            pass
    return stop
