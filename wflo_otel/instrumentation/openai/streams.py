"""Proxies that end a call's span when what the user holds ends, exactly once.

* Stream proxies (``Stream`` / ``AsyncStream``): a stream ends by being
  exhausted, closed, left through ``with``/``async with``, broken by an error,
  or garbage-collected unclosed; each path finishes the call with what the
  chunks showed. The user sees exactly the chunks they would have seen without
  us: when we asked the API for usage on their behalf, the extra usage-only
  chunk is hidden.
* Stream-helper managers (``chat.completions.stream()``, ``responses.stream()``):
  the helper closes the HTTP response, not the stream object we handed it, so
  leaving the ``with`` block finishes the call explicitly.
* Raw responses (``.with_raw_response`` / ``.with_streaming_response``): usage
  is read from what the SDK parsed or already holds — never by reading a body
  the user has not read; a streamed raw response hands out a stream proxy from
  ``parse()``.
"""

from __future__ import annotations

import contextvars
import json
import logging
from typing import Any

import wrapt

from .call import LLMCall
from .parsing import Shape, read_json_body

_log = logging.getLogger(__name__)

_NO_OUTCOME = (None, {}, None)

# While a stream helper's manager is being entered, the stream proxies created for it.
STREAM_SLOT: contextvars.ContextVar[list | None] = contextvars.ContextVar("wflo_otel_stream_slot", default=None)


class _Tap:
    """What a stream proxy needs per chunk and at the end, on a plain object.

    Every attribute read on a ``wrapt`` proxy goes through its ``__getattr__`` hook,
    about a thousand instructions each; the proxy's ``__next__`` reads this one
    object, and the rest are slot reads (the SDK stream's bound ``__next__`` /
    ``__anext__`` included, so the chunk itself costs no further proxy read).
    """

    __slots__ = ("step", "call", "state", "observe", "hide", "received")

    def __init__(self, step: Any, call: LLMCall, state: Any, hide_usage_chunk: bool) -> None:
        self.step = step
        self.call = call
        self.state = state
        self.observe = state.observe
        self.hide = hide_usage_chunk
        self.received = False  # a chunk arrived: the provider is generating, and billing, output

    def fail(self, exc: BaseException) -> None:
        """The stream raised (a cut connection, a timeout, a cancellation, an ``error`` event).

        Before its first chunk this is a failed request; after it, the provider bills
        what it generated, so the call is settled at the usage the stream showed, or
        keeps its worst case charged when it showed none. One place for both proxies.
        """
        received = None
        if self.received:
            try:
                received = self.state.result()
            except Exception:
                _log.debug("wflo-otel: could not read stream state", exc_info=True)
                received = _NO_OUTCOME
        self.call.fail(exc, received)

    def finish(self) -> None:
        """Finish with what was seen; may raise BudgetExceededError (stream exhausted over budget)."""
        try:
            outcome = self.state.result()
        except Exception:
            _log.debug("wflo-otel: could not read stream state", exc_info=True)
            outcome = _NO_OUTCOME
        self.call.finish(*outcome)

    def finish_quietly(self) -> None:
        """Finish without raising: close(), __exit__ and GC are no place for a budget error."""
        if self.call.ended:
            return
        try:
            self.finish()
        except Exception:
            pass

    def __del__(self) -> None:
        # Only its proxy holds a tap, so this is the proxy being collected unclosed;
        # here rather than on the proxy, whose own attribute reads cost more.
        call = getattr(self, "call", None)
        if call is not None and not call.ended:
            self.finish_quietly()


class _StreamProxy(wrapt.ObjectProxy):
    """State and endings shared by the sync and async proxies (all held by one ``_Tap``)."""

    def __init__(self, stream: Any, tap: _Tap) -> None:
        super().__init__(stream)
        self._self_tap = tap

    def _self_finish_quietly(self) -> None:
        self._self_tap.finish_quietly()


class SyncStreamProxy(_StreamProxy):
    def __iter__(self):
        return self

    def __next__(self) -> Any:
        tap = self._self_tap
        while True:
            try:
                chunk = tap.step()
            except StopIteration:
                tap.finish()
                raise
            except BaseException as exc:  # cancellation too: the span must end
                tap.fail(exc)
                raise
            tap.received = True
            # The state never raises; hidden: the usage-only chunk we asked for on the user's behalf.
            if not (tap.observe(chunk) and tap.hide):
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
        tap = self._self_tap
        while True:
            try:
                chunk = await tap.step()
            except StopAsyncIteration:
                tap.finish()
                raise
            except BaseException as exc:  # cancellation too: the span must end
                tap.fail(exc)
                raise
            tap.received = True
            # The state never raises; hidden: the usage-only chunk we asked for on the user's behalf.
            if not (tap.observe(chunk) and tap.hide):
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


def wrap_stream(stream: Any, call: LLMCall, state: Any, hide_usage_chunk: bool) -> _StreamProxy:
    """The proxy the user gets instead of an SDK stream (registered with an entering stream helper)."""
    is_async = hasattr(stream, "__anext__")
    if hide_usage_chunk:
        _skip_usage_event(stream, state, is_async)
    if is_async:
        proxy: _StreamProxy = AsyncStreamProxy(stream, _Tap(stream.__anext__, call, state, hide_usage_chunk))
    else:
        proxy = SyncStreamProxy(stream, _Tap(stream.__next__, call, state, hide_usage_chunk))
    slot = STREAM_SLOT.get()
    if slot is not None:
        slot.append(proxy)
    return proxy


# Only a usage object names this key, and a quote inside a string is escaped, so no
# content can fake it: one substring test per event before anything is parsed.
_USAGE_MARK = '"prompt_tokens"'


def _skip_usage_event(stream: Any, state: Any, is_async: bool) -> None:
    """Take the usage-only chunk we asked for out of the stream's server-sent events.

    Left in, the SDK would build a pydantic chunk from it only for the proxy to hide it
    again (on a 13-chunk stream, that parse is most of what asking for usage costs).
    Here its JSON is read for the usage and the event is dropped. The SDK's streams
    look up their private ``_iter_events`` when iteration starts (openai 1.x to 3.x),
    and ours is set before that; a stream without it keeps the proxy's hiding, as does
    a usage chunk the substring test misses.
    """
    iter_events = getattr(stream, "_iter_events", None)
    if not callable(iter_events):
        return

    if is_async:

        async def events():
            async for sse in iter_events():
                if _USAGE_MARK not in sse.data or not _usage_event_seen(sse, state):
                    yield sse

    else:

        def events():
            for sse in iter_events():
                if _USAGE_MARK not in sse.data or not _usage_event_seen(sse, state):
                    yield sse

    try:
        stream._iter_events = events
    except Exception:  # a stream type that refuses attributes: the proxy hides the chunk
        _log.debug("wflo-otel: could not filter stream events", exc_info=True)


_JSON = json.JSONDecoder()


def _usage_event_seen(sse: Any, state: Any) -> bool:
    """True (and the usage recorded) for the usage-only chunk: no choices, a usage object.

    ``raw_decode`` spares the two whitespace scans ``json.loads`` adds (a fifth of
    this parse); an event it does not take whole stays in, for the SDK to parse and
    the proxy to hide.
    """
    try:
        data = sse.data
        chunk, end = _JSON.raw_decode(data)
        if end != len(data) or type(chunk) is not dict or chunk.get("choices") or not chunk.get("usage"):
            return False
        state.observe(chunk)
        return True
    except Exception:
        _log.debug("wflo-otel: unreadable stream event", exc_info=True)
        return False


# ---------------------------------------------------------------------- stream helpers


class StreamManagerProxy(wrapt.ObjectProxy):
    """``with client.chat.completions.stream(...)`` / ``responses.stream(...)``: leaving the block ends the call."""

    def __init__(self, manager: Any) -> None:
        super().__init__(manager)
        self._self_streams: list = []

    def __enter__(self):
        token = STREAM_SLOT.set(self._self_streams)
        try:
            return self.__wrapped__.__enter__()
        finally:
            STREAM_SLOT.reset(token)

    def __exit__(self, exc_type, exc, tb):
        try:
            return self.__wrapped__.__exit__(exc_type, exc, tb)
        finally:
            for stream in self._self_streams:
                stream._self_finish_quietly()


class AsyncStreamManagerProxy(wrapt.ObjectProxy):
    """``async with client.chat.completions.stream(...)``: leaving the block ends the call."""

    def __init__(self, manager: Any) -> None:
        super().__init__(manager)
        self._self_streams: list = []

    async def __aenter__(self):
        token = STREAM_SLOT.set(self._self_streams)
        try:
            return await self.__wrapped__.__aenter__()
        finally:
            STREAM_SLOT.reset(token)

    async def __aexit__(self, exc_type, exc, tb):
        try:
            return await self.__wrapped__.__aexit__(exc_type, exc, tb)
        finally:
            for stream in self._self_streams:
                stream._self_finish_quietly()


# ---------------------------------------------------------------------- raw responses


class _RawResponseProxy(wrapt.ObjectProxy):
    """An SDK raw response (``LegacyAPIResponse`` / ``APIResponse``) whose call is still open."""

    def __init__(self, response: Any, call: LLMCall, shape: Shape, capture: bool, hide: bool, streaming: bool) -> None:
        super().__init__(response)
        self._self_call = call
        self._self_shape = shape
        self._self_capture = capture
        self._self_hide = hide
        self._self_streaming = streaming
        self._self_inner: Any = None  # the SDK stream parse() returned
        self._self_stream: _StreamProxy | None = None  # our proxy of it

    def _self_parsed(self, parsed: Any) -> Any:
        """After the user's ``parse()``: hand out our stream proxy, or finish from the parsed response."""
        call = self._self_call
        if self._self_streaming:
            if parsed is self._self_inner and parsed is not None:
                return self._self_stream  # parse() again: the SDK's cached stream, our same proxy
            if self._self_inner is None and (hasattr(parsed, "__next__") or hasattr(parsed, "__anext__")):
                try:
                    state = self._self_shape.stream_state(self._self_capture)
                except Exception:
                    _log.debug("wflo-otel: could not follow raw stream", exc_info=True)
                    return parsed
                self._self_inner = parsed
                self._self_stream = wrap_stream(parsed, call, state, self._self_hide)
                return self._self_stream
            return parsed
        if not call.ended:
            try:
                outcome = self._self_shape.read(parsed, self._self_capture)
            except Exception:
                _log.debug("wflo-otel: unreadable raw response", exc_info=True)
                outcome = _NO_OUTCOME
            call.finish(*outcome)  # may raise BudgetExceededError, as the call itself would have
        return parsed

    def _self_end(self, closing: bool) -> None:
        """The response is closed (or dropped): finish with what the SDK holds, never raising."""
        call = getattr(self, "_self_call", None)
        if call is None or call.ended:
            return
        stream = self._self_stream
        if stream is not None:
            # The stream we handed out owns the call; closing the response ends it,
            # dropping the response object while the stream is being read does not.
            if closing:
                stream._self_finish_quietly()
            return
        outcome = _NO_OUTCOME
        try:
            if not self._self_streaming:
                body = read_json_body(self.__wrapped__.http_response)  # only if the user read it
                if body is not None:
                    outcome = self._self_shape.read(body, self._self_capture)
        except Exception:
            _log.debug("wflo-otel: unreadable raw response body", exc_info=True)
        try:
            call.finish(*outcome)
        except Exception:
            pass

    def __del__(self) -> None:
        self._self_end(False)


class LegacyResponseProxy(_RawResponseProxy):
    """``.with_raw_response`` of a streamed call: ``parse()`` gives the stream (sync or async)."""

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_parsed(self.__wrapped__.parse(*args, **kwargs))


class APIResponseProxy(_RawResponseProxy):
    """``.with_streaming_response`` (sync): usage from ``parse()``, or from the body read when it closes."""

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_parsed(self.__wrapped__.parse(*args, **kwargs))

    def close(self) -> None:
        try:
            self.__wrapped__.close()
        finally:
            self._self_end(True)


class AsyncAPIResponseProxy(_RawResponseProxy):
    """``.with_streaming_response`` (async)."""

    async def parse(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_parsed(await self.__wrapped__.parse(*args, **kwargs))

    async def close(self) -> None:
        try:
            await self.__wrapped__.close()
        finally:
            self._self_end(True)
