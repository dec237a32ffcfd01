"""Stream proxies: the span of a streamed call ends when the stream does, exactly once.

A stream ends by being exhausted, closed, left through ``with``/``async with``,
broken by an error, or garbage-collected unclosed; each path finishes the call
with what the chunks showed. The user sees exactly the chunks they would have
seen without us: when we asked the API for usage on their behalf, the extra
usage-only chunk is hidden.
"""

from __future__ import annotations

import logging
from typing import Any

import wrapt

from .call import LLMCall
from .parsing import ChatStreamState, usage_from

_log = logging.getLogger(__name__)


class _StreamProxy(wrapt.ObjectProxy):
    """State and endings shared by the sync and async proxies."""

    def __init__(self, stream: Any, call: LLMCall, hide_usage_chunk: bool) -> None:
        super().__init__(stream)
        self._self_call = call
        self._self_state = ChatStreamState()
        self._self_hide = hide_usage_chunk

    def _self_accept(self, chunk: Any) -> bool:
        """Observe a chunk; False if the user must not see it."""
        try:
            usage_only = self._self_state.observe(chunk)
        except Exception:
            _log.debug("wflo-otel: unreadable stream chunk", exc_info=True)
            return True
        return not (usage_only and self._self_hide)

    def _self_finish(self) -> None:
        """Finish with what was seen; may raise BudgetExceededError (stream exhausted over budget)."""
        state = self._self_state
        self._self_call.finish(usage_from(state.usage_obj), state.attributes())

    def _self_finish_quietly(self) -> None:
        """Finish without raising: close(), __exit__ and GC are no place for a budget error."""
        try:
            self._self_finish()
        except Exception:
            pass

    def __del__(self) -> None:
        call = getattr(self, "_self_call", None)
        if call is not None and not call.ended:
            self._self_finish_quietly()


class SyncStreamProxy(_StreamProxy):
    def __iter__(self):
        return self

    def __next__(self) -> Any:
        while True:
            try:
                chunk = self.__wrapped__.__next__()
            except StopIteration:
                self._self_finish()
                raise
            except BaseException as exc:  # cancellation too: the span must end
                self._self_call.fail(exc)
                raise
            if self._self_accept(chunk):
                return chunk

    def __enter__(self):
        self.__wrapped__.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            self._self_finish_quietly()

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_finish_quietly()


class AsyncStreamProxy(_StreamProxy):
    def __aiter__(self):
        return self

    async def __anext__(self) -> Any:
        while True:
            try:
                chunk = await self.__wrapped__.__anext__()
            except StopAsyncIteration:
                self._self_finish()
                raise
            except BaseException as exc:  # cancellation too: the span must end
                self._self_call.fail(exc)
                raise
            if self._self_accept(chunk):
                return chunk

    async def __aenter__(self):
        await self.__wrapped__.__aenter__()
        return self

    async def __aexit__(self, exc_type, exc, tb):
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            self._self_finish_quietly()

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_finish_quietly()
