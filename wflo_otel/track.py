"""``@track_llm_call``: price and budget-check calls to clients we do not patch.

The decorated function (sync or async) is treated as one LLM call: its span is
started and its worst-case cost reserved before it runs, exactly like an
instrumented OpenAI call, and its return value — an OpenAI-shaped response or
a plain dict with ``usage`` — is priced when it returns. It stacks with
``@wflo_otel.step(...)`` in either order.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable, TypeVar

from opentelemetry import trace

from .instrumentation.openai.call import LLMCall, Telemetry, begin
from .instrumentation.openai.parsing import field, response_attributes, usage_from

F = TypeVar("F", bound=Callable[..., Any])

_log = logging.getLogger(__name__)

_cached: tuple[object, object, Telemetry] | None = None


def _telemetry() -> Telemetry:
    """Telemetry bound to the providers and prices configure() set up (cached per configuration)."""
    global _cached
    from . import __version__
    from .configuration import current_handle, tracer_provider
    from .metrics import GenAIMetrics
    from .pricing import default_pricebook
    from .settings import default_service_tier

    provider = tracer_provider()
    handle = current_handle()
    cached = _cached
    if cached is not None and cached[0] is provider and cached[1] is handle:
        return cached[2]
    tel = Telemetry(
        tracer=trace.get_tracer("wflo_otel.track", __version__, tracer_provider=provider),
        metrics=GenAIMetrics.for_provider(handle.meter_provider if handle is not None else None),
        pricebook=handle.pricebook if handle is not None else default_pricebook(),
        default_output_tokens=_default_output_tokens(),
        default_service_tier=default_service_tier(),
    )
    _cached = (provider, handle, tel)
    return tel


def _default_output_tokens() -> Any:
    """The output ceiling configure() gave the OpenAI instrumentation, else ``$WFLO_DEFAULT_OUTPUT_TOKENS``.

    A tracked call reserves as an instrumented one does: an invalid or missing ceiling
    holds this, so it must be the same number (Telemetry validates it).
    """
    from .instrumentation.openai import _state
    from .settings import ENV_DEFAULT_OUTPUT_TOKENS, env_int

    if _state.tel is not None:
        return _state.tel.default_output_tokens
    try:
        return env_int(ENV_DEFAULT_OUTPUT_TOKENS) or 4096
    except (ValueError, OverflowError):  # "nan", "inf": Telemetry falls back to its default
        return None


def _start(model: str | None, operation: str, signature: inspect.Signature, args, kwargs) -> LLMCall:
    bound = signature.bind_partial(*args, **kwargs)
    bound.apply_defaults()  # a max_tokens=50 default caps the call as much as a passed one
    request = dict(bound.arguments)
    for name, parameter in signature.parameters.items():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:  # **options: their keys are the request's
            request.update(request.pop(name, None) or {})
    if model is not None:
        request["model"] = model
    return begin(_telemetry(), operation, None, request)


def _finish(call: LLMCall, result: Any) -> Any:
    """Price what the function returned; a result we cannot read never fails the user's call."""
    try:
        usage, attrs = usage_from(field(result, "usage")), response_attributes(result)
    except Exception:  # e.g. usage {"prompt_tokens": NaN}: no usage, the reservation stays charged
        _log.debug("wflo-otel: unreadable tracked result", exc_info=True)
        usage, attrs = None, {}
    call.finish(usage, attrs)  # may raise BudgetExceededError: the call pushed a budget over
    return result


def track_llm_call(model: str | None = None, *, operation: str = "chat") -> Callable[[F], F]:
    """Decorate a function that calls an LLM and returns its response (or ``{"usage": ...}``).

    ``model`` names the priced model; without it the function's own ``model`` argument
    is used. ``max_tokens``/``max_completion_tokens``/``messages`` arguments, when the
    function has them, feed the pre-call reservation as they do for OpenAI calls.
    """

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args, **kwargs):
                with _start(model, operation, signature, args, kwargs) as call:
                    result = await fn(*args, **kwargs)
                return _finish(call, result)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with _start(model, operation, signature, args, kwargs) as call:
                result = fn(*args, **kwargs)
            return _finish(call, result)

        return wrapper  # type: ignore[return-value]

    return decorate
