"""The HTTP attempts under each LLM call, and no trace context sent to the provider.

One ``chat.completions.create`` may be several HTTP requests: the SDK retries
429s, 5xx and broken connections. With attempt spans on, each request an LLM call
sends is a CLIENT span of ``opentelemetry-instrumentation-httpx`` (it speaks both
``httpx`` and ``httpx2``) under the LLM span, with its status and timing, and the
LLM span says how many there were (``wflo.http.attempts``).

How: the first call through an OpenAI client puts a small transport in front of
its httpx client's transport. For a request sent inside an LLM call it counts the
attempt and hands the request to the package's tracing transport; any other
request (the user's own, through the same client) passes straight through. No
duplicates: when the user instruments httpx too (``HTTPXClientInstrumentor()``,
``instrument_client``, or zero-code), their span is the attempt span and ours is
not made (the attempt is still counted). The package's HTTP duration metrics are
not recorded for these requests (a no-op meter): the LLM metrics already time the
call, and the histograms cost more than the span.

Trace context is never sent to the LLM provider: our baggage carries the
execution id, the workflow name and the remaining budget, which are no third
party's business. The global propagator is wrapped (once, and again whenever the
application replaces it) by one that injects nothing inside an OpenAI client's
call; it is transparent everywhere else (a ``track_llm_call`` function's own
requests included), so the user's own services still get the context.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Optional

from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import CarrierT, Getter, Setter, TextMapPropagator, default_getter, default_setter

__all__ = ["ENV_HTTP_SPANS", "attach_attempts", "guard_propagation", "http_spans_setting"]

_log = logging.getLogger(__name__)

ENV_HTTP_SPANS = "WFLO_HTTP_SPANS"
_OFF = frozenset(("false", "0", "no", "off"))
_ON = frozenset(("true", "1", "yes", "on"))


def http_spans_setting(explicit: bool | None = None, default: bool = False) -> bool:
    """Attempt spans on or off: ``explicit``, else ``$WFLO_HTTP_SPANS``, else ``default``."""
    if explicit is not None:
        return bool(explicit)
    raw = os.environ.get(ENV_HTTP_SPANS, "").strip().lower()
    if raw in _ON:
        return True
    if raw in _OFF:
        return False
    if raw:
        _log.warning("wflo-otel: ignoring %s=%r (expected true or false)", ENV_HTTP_SPANS, raw)
    return default


# ---------------------------------------------------------------- propagation


class _NoLeakPropagator(CompositePropagator):
    """The application's propagator, minus injection into requests to an LLM provider.

    A CompositePropagator holding the same propagators, so code that inspects the
    global propagator sees what the application installed.
    """

    def __init__(self, inner: TextMapPropagator, call_key: str) -> None:
        super().__init__(list(getattr(inner, "_propagators", None) or [inner]))
        self._inner = inner
        self._call_key = call_key

    def inject(self, carrier: CarrierT, context: Optional[Context] = None, setter: Setter = default_setter) -> None:
        call = otel_context.get_value(self._call_key, context)
        if call is not None and call.endpoint.url:
            return  # a request an OpenAI client's call is sending: to the LLM provider
        # (a track_llm_call function has no endpoint: what it calls is the application's business)
        self._inner.inject(carrier, context, setter)

    def extract(self, carrier: CarrierT, context: Optional[Context] = None, getter: Getter = default_getter) -> Context:
        return self._inner.extract(carrier, context, getter)

    @property
    def fields(self) -> set[str]:
        return self._inner.fields


def guard_propagation(call_key: str) -> None:
    """Make the global propagator inject nothing while ``call_key`` is set in the context."""
    current = propagate.get_global_textmap()
    if type(current) is not _NoLeakPropagator:
        propagate.set_global_textmap(_NoLeakPropagator(current, call_key))


# ---------------------------------------------------------------- transports

_MARK = "_wflo_attempts"
_classes: dict[str, tuple[type, type]] = {}


def attach_attempts(openai_client: Any, tracer_provider: Any, call_key: str) -> None:
    """Put the attempt-counting, span-making transport in front of this client's transport (once)."""
    http = getattr(openai_client, "_client", None)
    if http is None or getattr(http, _MARK, False):
        return
    try:
        setattr(http, _MARK, True)
        if not _package_installed():
            return
        module = _httpx_of(http)
        if module is None:
            return
        sync_cls, async_cls = _transport_classes(module)
        cls = sync_cls if isinstance(http, module.Client) else async_cls
        http._transport = cls(http._transport, tracer_provider, call_key)
    except Exception:
        _log.debug("wflo-otel: could not trace the HTTP attempts of %r", http, exc_info=True)


_missing_warned = False


def _package_installed() -> bool:
    """Whether opentelemetry-instrumentation-httpx is there; says once how to get it if not."""
    global _missing_warned
    try:
        import opentelemetry.instrumentation.httpx  # noqa: F401
    except ImportError:
        if not _missing_warned:
            _missing_warned = True
            _log.warning(
                "wflo-otel: HTTP attempt spans need opentelemetry-instrumentation-httpx "
                "(the 'http' extra of wflo-otel); calls are traced without them"
            )
        return False
    return True


def _httpx_of(http: Any) -> Any:
    """The module (httpx2 or httpx) whose client ``http`` is."""
    for name in ("httpx2", "httpx"):
        module = sys.modules.get(name)
        if module is not None and isinstance(http, (module.Client, module.AsyncClient)):
            return module
    return None


def _transport_classes(module: Any) -> tuple[type, type]:
    name = module.__name__
    found = _classes.get(name)
    if found is None:
        found = _classes[name] = _build_classes(module)
    return found


def _build_classes(module: Any) -> tuple[type, type]:
    """The sync and async attempt transports for ``httpx`` or ``httpx2``."""
    from opentelemetry.instrumentation import httpx as otel_httpx

    if module.__name__ == "httpx2":
        traced_sync = otel_httpx.SyncOpenTelemetryTransportHttpx2
        traced_async = otel_httpx.AsyncOpenTelemetryTransportHttpx2
        instrumentor = otel_httpx.HTTPX2ClientInstrumentor()
    else:
        traced_sync = otel_httpx.SyncOpenTelemetryTransport
        traced_async = otel_httpx.AsyncOpenTelemetryTransport
        instrumentor = otel_httpx.HTTPXClientInstrumentor()
    no_meter = NoOpMeterProvider()

    class _Attempts:
        """Shared by both transports: which request is an attempt, and who traces it."""

        def __init__(self, inner: Any, tracer_provider: Any, call_key: str, method: str) -> None:
            self._inner = inner
            self._traced = (traced_sync if method == "handle_request" else traced_async)(
                inner, tracer_provider=tracer_provider, meter_provider=no_meter
            )
            self._call_key = call_key
            self._method = method

        def _route(self) -> Any:
            """The transport to send through: counts the attempt of the LLM call in flight, if any."""
            call = otel_context.get_value(self._call_key)
            if call is None:
                return self._inner
            call.attempts += 1
            method = self._method
            if (
                not call.tel.http_spans  # switched off since this client was first used
                or instrumentor._is_instrumented_by_opentelemetry  # the user instruments httpx globally
                or method in self.__dict__  # ... or this client (instrument_client wrapped us)
                or method in vars(self._inner)  # ... or wrapped its transport before we came
            ):
                return self._inner
            return self._traced

        def __getattr__(self, name: str) -> Any:  # anything else the SDK or the user reads
            if name.startswith("__") or name == "_inner":
                raise AttributeError(name)
            return getattr(self._inner, name)

    class SyncAttempts(_Attempts, module.BaseTransport):
        def __init__(self, inner: Any, tracer_provider: Any, call_key: str) -> None:
            _Attempts.__init__(self, inner, tracer_provider, call_key, "handle_request")

        def handle_request(self, request: Any) -> Any:
            return self._route().handle_request(request)

        def close(self) -> None:
            self._inner.close()

        def __enter__(self) -> "SyncAttempts":
            self._inner.__enter__()
            return self

        def __exit__(self, *exc: Any) -> None:
            self._inner.__exit__(*exc)

    class AsyncAttempts(_Attempts, module.AsyncBaseTransport):
        def __init__(self, inner: Any, tracer_provider: Any, call_key: str) -> None:
            _Attempts.__init__(self, inner, tracer_provider, call_key, "handle_async_request")

        async def handle_async_request(self, request: Any) -> Any:
            return await self._route().handle_async_request(request)

        async def aclose(self) -> None:
            await self._inner.aclose()

        async def __aenter__(self) -> "AsyncAttempts":
            await self._inner.__aenter__()
            return self

        async def __aexit__(self, *exc: Any) -> None:
            await self._inner.__aexit__(*exc)

    return SyncAttempts, AsyncAttempts
