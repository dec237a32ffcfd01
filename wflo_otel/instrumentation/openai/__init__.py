"""Auto-instrumentation of the ``openai`` client (2.x on httpx, 3.x on httpx2).

Patched with ``wrapt`` on the resource classes, so clients created before or
after ``instrument()`` are covered, and ``uninstrument()`` restores the very
same function objects. Covered, sync and async:

* ``chat.completions.create`` (streamed or not), ``.parse`` (also reached as
  ``beta.chat.completions.parse``) and the ``.stream(...)`` helper;
* ``responses.create`` (streamed or not), ``.parse`` and ``.stream(...)``;
* ``embeddings.create``; legacy ``completions.create`` (streamed or not);
* each of them through ``.with_raw_response`` and ``.with_streaming_response``.

One logical call is one span: a patched method reached from inside another
(an SDK helper delegating to ``create``) runs unwrapped, and the stream helpers
only learn which stream their ``create`` produced, to end it with the block.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any, Collection

import wrapt
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap

from ...errors import BudgetExceededError
from ...metrics import GenAIMetrics
from ...pricing import default_pricebook
from ...settings import default_service_tier, learn_service_tier
from .http_attempts import http_spans_setting
from .call import LLMCall, Telemetry, begin, in_llm_call
from .parsing import CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES, Shape, ask_for_stream_usage, is_raw_request, read_json_body
from .streams import (
    APIResponseProxy,
    AsyncAPIResponseProxy,
    AsyncStreamManagerProxy,
    LegacyResponseProxy,
    StreamManagerProxy,
    wrap_stream,
)
from .tiers import TierMemory

__all__ = ["OpenAIInstrumentor"]

_log = logging.getLogger(__name__)

# Attempt spans when neither http_spans= nor $WFLO_HTTP_SPANS says: off, as one attempt span
# (opentelemetry-instrumentation-httpx's) costs more than the rest of the call's instrumentation
# (bench/overhead.py --scenarios floor,wflo,wflo+http; figures in docs/providers.md).
HTTP_SPANS_DEFAULT = False
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_CAPTURE_ON = frozenset(("true", "1", "yes", "on", "span_only", "span_and_event"))

# (module, class, method, what it is): "call" methods send one request (a span each);
# "stream" methods return a stream-helper manager whose ``create`` makes the span.
_TARGETS: tuple[tuple[str, str, str, Shape, str], ...] = (
    ("openai.resources.chat.completions", "Completions", "create", CHAT, "call"),
    ("openai.resources.chat.completions", "Completions", "parse", CHAT, "call"),
    ("openai.resources.chat.completions", "Completions", "stream", CHAT, "stream"),
    ("openai.resources.chat.completions", "AsyncCompletions", "create", CHAT, "async"),
    ("openai.resources.chat.completions", "AsyncCompletions", "parse", CHAT, "async"),
    ("openai.resources.chat.completions", "AsyncCompletions", "stream", CHAT, "async_stream"),
    ("openai.resources.responses", "Responses", "create", RESPONSES, "call"),
    ("openai.resources.responses", "Responses", "parse", RESPONSES, "call"),
    ("openai.resources.responses", "Responses", "stream", RESPONSES, "stream"),
    ("openai.resources.responses", "AsyncResponses", "create", RESPONSES, "async"),
    ("openai.resources.responses", "AsyncResponses", "parse", RESPONSES, "async"),
    ("openai.resources.responses", "AsyncResponses", "stream", RESPONSES, "async_stream"),
    ("openai.resources.embeddings", "Embeddings", "create", EMBEDDINGS, "call"),
    ("openai.resources.embeddings", "AsyncEmbeddings", "create", EMBEDDINGS, "async"),
    ("openai.resources.completions", "Completions", "create", COMPLETIONS, "call"),
    ("openai.resources.completions", "AsyncCompletions", "create", COMPLETIONS, "async"),
    # openai builds that still ship a separate beta chat resource (absent from 2.x/3.x: skipped)
    ("openai.resources.beta.chat.completions", "Completions", "parse", CHAT, "call"),
    ("openai.resources.beta.chat.completions", "Completions", "stream", CHAT, "stream"),
    ("openai.resources.beta.chat.completions", "AsyncCompletions", "parse", CHAT, "async"),
    ("openai.resources.beta.chat.completions", "AsyncCompletions", "stream", CHAT, "async_stream"),
)


class _State:
    """What the wrappers read on every call, set by instrument() and cleared by uninstrument().

    The wrappers look it up at call time rather than closing over it, so a bound
    method the SDK cached (``with_raw_response`` keeps ``completions.create``) follows
    a later uninstrument()/instrument() instead of recording with stale settings.
    """

    tel: Telemetry | None = None
    streams: tuple[type, ...] = ()  # openai.Stream, openai.AsyncStream
    legacy: tuple[type, ...] = ()  # LegacyAPIResponse (.with_raw_response)
    api_response: type | None = None  # APIResponse (.with_streaming_response)
    async_api_response: type | None = None


_state = _State()


def capture_content_from_env() -> bool:
    return os.environ.get(CAPTURE_CONTENT_ENV, "").strip().lower() in _CAPTURE_ON


class OpenAIInstrumentor(BaseInstrumentor):
    """Every OpenAI call becomes a CLIENT span with tokens, cost and a budget check.

    ``instrument()`` keywords: ``tracer_provider``, ``meter_provider``, ``pricebook``,
    ``budget_processor`` (defaults to the one ``configure()`` installed),
    ``default_output_tokens`` (the output ceiling reserved when a request sets none),
    ``default_service_tier`` (the tier the API serves requests naming none; default
    ``$WFLO_DEFAULT_SERVICE_TIER``, else unknown: reserved at the model's dearest tier)
    ``learn_service_tier`` (learn the project's tier from responses, default
    ``$WFLO_LEARN_SERVICE_TIER``, else on; off reserves tier-less requests at the dearest tier),
    ``capture_message_content`` (default: ``$OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``)
    and ``http_spans`` (a span per HTTP attempt under each call; default ``$WFLO_HTTP_SPANS``).
    """

    _patched: list[tuple[type, str]] = []

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("openai >= 2.0",)

    def _instrument(self, **kwargs: Any) -> None:
        from ... import __version__

        capture = kwargs.get("capture_message_content")
        _load_sdk_types()
        _state.tel = Telemetry(
            tracer=trace.get_tracer(__name__, __version__, tracer_provider=kwargs.get("tracer_provider")),
            metrics=GenAIMetrics.for_provider(kwargs.get("meter_provider")),
            pricebook=kwargs.get("pricebook") or default_pricebook(),
            processor=kwargs.get("budget_processor"),
            default_output_tokens=kwargs.get("default_output_tokens") or 4096,
            capture_content=capture_content_from_env() if capture is None else bool(capture),
            default_service_tier=default_service_tier(kwargs.get("default_service_tier")),
            tiers=TierMemory(learning=learn_service_tier(kwargs.get("learn_service_tier"))),
            http_spans=http_spans_setting(kwargs.get("http_spans"), default=HTTP_SPANS_DEFAULT),
            tracer_provider=kwargs.get("tracer_provider"),
        )
        patched: list[tuple[type, str]] = []
        for module_name, class_name, method, shape, kind in _TARGETS:
            cls = _find_class(module_name, class_name)
            if cls is None or not callable(vars(cls).get(method)):
                continue
            wrapt.wrap_function_wrapper(cls, method, _WRAPPERS[kind](shape))
            patched.append((cls, method))
        self._patched = patched

    def _uninstrument(self, **kwargs: Any) -> None:
        _state.tel = None
        for cls, method in self._patched:
            unwrap(cls, method)
        self._patched = []


def _find_class(module_name: str, class_name: str) -> type | None:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    cls = getattr(module, class_name, None)
    return cls if isinstance(cls, type) else None


def _load_sdk_types() -> None:
    import openai

    _state.streams = (openai.Stream, openai.AsyncStream)
    try:
        from openai._legacy_response import LegacyAPIResponse

        _state.legacy = (LegacyAPIResponse,)
    except ImportError:  # pragma: no cover - every supported openai has it
        _state.legacy = ()
    _state.api_response = getattr(openai, "APIResponse", None)
    _state.async_api_response = getattr(openai, "AsyncAPIResponse", None)


# ---------------------------------------------------------------------- one call


def _start(tel: Telemetry, shape: Shape, instance: Any, kwargs: dict[str, Any]) -> tuple[LLMCall | None, bool]:
    """Start the call; for streams, ask the API for usage if the user did not (and remember to hide it).

    Returns ``(None, False)`` if the instrumentation itself failed: the call then goes
    out uninstrumented (and its request as written) rather than break the application.
    Raw responses (``.with_raw_response`` / ``.with_streaming_response``) are not asked
    for usage: their reader may read the bytes, where no extra event can be hidden.
    """
    try:
        call = begin(tel, shape.operation, instance, kwargs, shape)
    except BudgetExceededError:
        raise
    except Exception:
        _log.debug("wflo-otel: could not instrument OpenAI call", exc_info=True)
        return None, False
    try:
        hide_usage_chunk = (
            shape.include_usage
            and kwargs.get("stream") is True
            and not is_raw_request(kwargs)
            and ask_for_stream_usage(kwargs)
        )
    except Exception:
        _log.debug("wflo-otel: could not ask for stream usage", exc_info=True)
        hide_usage_chunk = False
    return call, hide_usage_chunk


def _outcome(tel: Telemetry, call: LLMCall, shape: Shape, result: Any, hide: bool, kwargs: dict[str, Any]) -> Any:
    """What the user gets back: the response (its call finished), or a proxy that finishes it later."""
    try:
        if isinstance(result, _state.streams):
            if shape.stream_state is None:
                call.finish(None, {})
                return result
            return wrap_stream(result, call, shape.stream_state(tel.capture_content), hide)
        if isinstance(result, _state.legacy):  # .with_raw_response
            if kwargs.get("stream") is True:
                return LegacyResponseProxy(result, call, shape, tel.capture_content, hide, True)
            body = read_json_body(result.http_response)  # a non-streamed body is already read
            outcome = shape.read(body, tel.capture_content) if body is not None else (None, {}, None)
        elif _state.api_response is not None and isinstance(result, _state.api_response):
            return APIResponseProxy(result, call, shape, tel.capture_content, hide, kwargs.get("stream") is True)
        elif _state.async_api_response is not None and isinstance(result, _state.async_api_response):
            return AsyncAPIResponseProxy(result, call, shape, tel.capture_content, hide, kwargs.get("stream") is True)
        else:
            outcome = shape.read(result, tel.capture_content)
    except Exception:
        _log.debug("wflo-otel: could not read OpenAI response", exc_info=True)
        outcome = (None, {}, None)
    call.finish(*outcome)  # may raise BudgetExceededError: the call pushed a budget over
    return result


def _call_wrapper(shape: Shape):
    def wrapper(wrapped, instance, args, kwargs):
        tel = _state.tel
        if tel is None or in_llm_call() or not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        call, hide = _start(tel, shape, instance, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        with call:
            result = wrapped(*args, **kwargs)
        return _outcome(tel, call, shape, result, hide, kwargs)

    return wrapper


def _async_call_wrapper(shape: Shape):
    async def wrapper(wrapped, instance, args, kwargs):
        tel = _state.tel
        if tel is None or in_llm_call() or not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        call, hide = _start(tel, shape, instance, kwargs)
        if call is None:
            return await wrapped(*args, **kwargs)
        with call:
            result = await wrapped(*args, **kwargs)
        return _outcome(tel, call, shape, result, hide, kwargs)

    return wrapper


def _stream_helper_wrapper(proxy: type):
    """``.stream(...)`` helpers: the request goes out (and its span starts) when the block is entered."""

    def factory(shape: Shape):
        def wrapper(wrapped, instance, args, kwargs):
            manager = wrapped(*args, **kwargs)
            if _state.tel is None or in_llm_call() or not is_instrumentation_enabled():
                return manager
            return proxy(manager)

        return wrapper

    return factory


_WRAPPERS = {
    "call": _call_wrapper,
    "async": _async_call_wrapper,
    "stream": _stream_helper_wrapper(StreamManagerProxy),
    "async_stream": _stream_helper_wrapper(AsyncStreamManagerProxy),
}
