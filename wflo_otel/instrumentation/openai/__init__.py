"""Auto-instrumentation of the ``openai`` client (2.x on httpx, 3.x on httpx2).

Patched with ``wrapt`` on the resource classes, so clients created before or
after ``instrument()`` are covered, and ``uninstrument()`` restores the very
same function objects.
"""

from __future__ import annotations

import logging
from typing import Any, Collection, Mapping

import wrapt
from opentelemetry import trace
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor
from opentelemetry.instrumentation.utils import is_instrumentation_enabled, unwrap

from ...errors import BudgetExceededError
from ...metrics import GenAIMetrics
from ...pricing import default_pricebook
from .call import LLMCall, Telemetry, begin, usage_of
from .parsing import response_attributes
from .streams import AsyncStreamProxy, SyncStreamProxy

__all__ = ["OpenAIInstrumentor"]

_OPERATION_CHAT = "chat"
_log = logging.getLogger(__name__)


class OpenAIInstrumentor(BaseInstrumentor):
    """Every ``chat.completions.create`` becomes a CLIENT span with tokens, cost and a budget check.

    ``instrument()`` keywords: ``tracer_provider``, ``meter_provider``, ``pricebook``,
    ``budget_processor`` (defaults to the one ``configure()`` installed) and
    ``default_output_tokens`` (the output ceiling reserved when a request sets none).
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        return ("openai >= 2.0",)

    def _instrument(self, **kwargs: Any) -> None:
        from ... import __version__
        from openai.resources.chat.completions import AsyncCompletions, Completions

        tel = Telemetry(
            tracer=trace.get_tracer(__name__, __version__, tracer_provider=kwargs.get("tracer_provider")),
            metrics=GenAIMetrics(kwargs.get("meter_provider")),
            pricebook=kwargs.get("pricebook") or default_pricebook(),
            processor=kwargs.get("budget_processor"),
            default_output_tokens=kwargs.get("default_output_tokens") or 4096,
        )
        wrapt.wrap_function_wrapper(Completions, "create", _sync_chat(tel))
        wrapt.wrap_function_wrapper(AsyncCompletions, "create", _async_chat(tel))

    def _uninstrument(self, **kwargs: Any) -> None:
        from openai.resources.chat.completions import AsyncCompletions, Completions

        unwrap(Completions, "create")
        unwrap(AsyncCompletions, "create")


def _prepare_chat(tel: Telemetry, instance: Any, kwargs: dict[str, Any]) -> tuple[LLMCall | None, bool]:
    """Start the call; for streams, ask the API for usage if the user did not (and remember to hide it).

    Returns ``(None, False)`` if the instrumentation itself failed: the call then goes
    out uninstrumented rather than break the application.
    """
    try:
        return _begin_chat(tel, instance, kwargs)
    except BudgetExceededError:
        raise
    except Exception:
        _log.debug("wflo-otel: could not instrument chat call", exc_info=True)
        return None, False


def _begin_chat(tel: Telemetry, instance: Any, kwargs: dict[str, Any]) -> tuple[LLMCall, bool]:
    hide_usage_chunk = False
    if kwargs.get("stream") is True:
        options = kwargs.get("stream_options")
        if not (isinstance(options, Mapping) and options.get("include_usage")):
            kwargs["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
            hide_usage_chunk = True
    return begin(tel, _OPERATION_CHAT, instance, kwargs), hide_usage_chunk


def _chat_result(call: LLMCall, result: Any, hide_usage_chunk: bool, proxy: type) -> Any:
    """Hand back a stream proxy, or finish the call on a complete response."""
    if hasattr(result, "__next__") or hasattr(result, "__anext__"):
        return proxy(result, call, hide_usage_chunk)
    if hasattr(result, "choices"):
        call.finish(usage_of(result), response_attributes(result))
    else:  # e.g. a raw HTTP response object: end the span with what we know
        call.finish(None, {})
    return result


def _sync_chat(tel: Telemetry):
    def wrapper(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled():
            return wrapped(*args, **kwargs)
        call, hide = _prepare_chat(tel, instance, kwargs)
        if call is None:
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        return _chat_result(call, result, hide, SyncStreamProxy)

    return wrapper


def _async_chat(tel: Telemetry):
    async def wrapper(wrapped, instance, args, kwargs):
        if not is_instrumentation_enabled():
            return await wrapped(*args, **kwargs)
        call, hide = _prepare_chat(tel, instance, kwargs)
        if call is None:
            return await wrapped(*args, **kwargs)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            raise
        return _chat_result(call, result, hide, AsyncStreamProxy)

    return wrapper
