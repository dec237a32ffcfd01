"""The lifecycle of one instrumented LLM call: span, reservation, cost, settlement.

``begin`` runs before the request is sent (it may refuse with
``BudgetExceededError``), ``LLMCall.finish`` after a response arrived (or when a
stream ends), ``LLMCall.fail`` when the client raised. The sync and async
wrappers are two lines around these three; nothing in here knows which one
called it.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from ... import attributes as A
from ...budget import BudgetSpanProcessor, Reservation, active_processor, overrun_error
from ...errors import BudgetExceededError
from ...errors import error_type as error_type_of
from ...metrics import GenAIMetrics
from ...pricing import PriceBook, provider_for_url, provider_name
from ...redaction import exception_attributes
from .parsing import (
    CHAT,
    MAX_RESERVED_TOKENS,
    OPERATION_EMBEDDINGS,
    Outcome,
    Shape,
    Usage,
    billed_response_of,
    effective_request,
    estimate_input_tokens,
    field,
    materialize_inputs,
    may_have_been_billed,
    output_ceiling,
    output_choices,
    raised_after_answer,
    request_attributes,
    usage_from,
)
from .http_attempts import attach_attempts, guard_propagation
from .tiers import TierMemory

_log = logging.getLogger(__name__)

# Set in the context (to the LLMCall) while a call is being sent: a patched method reached
# from inside it (``parse`` calling ``create``) is part of that call, not a new one; an
# HTTP request sent under it is one of its attempts, and carries no trace context.
_IN_CALL_KEY = otel_context.create_key("wflo_otel.in_llm_call")


def in_llm_call() -> bool:
    return otel_context.get_value(_IN_CALL_KEY) is not None


class Telemetry:
    """What every call needs: tracer, metrics, prices, budget processor, settings."""

    def __init__(
        self,
        tracer: Tracer,
        metrics: GenAIMetrics | None,
        pricebook: PriceBook,
        processor: BudgetSpanProcessor | None = None,
        default_output_tokens: int = 4096,
        capture_content: bool = False,
        default_service_tier: str | None = None,
        tiers: TierMemory | None = None,
        http_spans: bool = False,
        tracer_provider: Any = None,
    ) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.pricebook = pricebook
        self._processor = processor
        self.default_output_tokens = _valid_default_ceiling(default_output_tokens)
        # What the API serves a request naming no tier (or "auto"); None: unknown, so a
        # reservation is bounded at the model's most expensive tier.
        self.default_service_tier = default_service_tier
        # The tier each endpoint served each model at, for requests naming none (tiers.py).
        self.tiers = tiers if tiers is not None else TierMemory()
        # A span per HTTP attempt under each LLM call (http_attempts.py), on this provider.
        self.http_spans = http_spans
        self.tracer_provider = tracer_provider
        # Prompt and completion text on spans: opt-in only (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT).
        self.capture_content = capture_content

    @property
    def processor(self) -> BudgetSpanProcessor | None:
        return self._processor if self._processor is not None else active_processor()


_DEFAULT_OUTPUT_TOKENS = 4096


def _valid_default_ceiling(value: Any) -> int:
    """The output ceiling reserved for a request that names none (or an invalid one): a positive int.

    It is what stands between an unbounded request and a reservation of nothing, so a
    value that cannot bound anything (``0``, ``-1``, ``True``, ``"4k"``) is replaced by
    the built-in default, with a warning, rather than trusted.
    """
    if type(value) is int and value > 0:
        return min(value, MAX_RESERVED_TOKENS)
    _log.warning("wflo-otel: ignoring invalid default output ceiling %r; reserving %d tokens", value, _DEFAULT_OUTPUT_TOKENS)
    return _DEFAULT_OUTPUT_TOKENS


class Endpoint:
    """Where a client sends its calls: its base URL, the provider that serves it, span attributes."""

    __slots__ = ("url", "provider", "attributes")

    def __init__(self, url: str, provider: str | None, attributes: dict[str, Any]) -> None:
        self.url = url
        # genai-prices provider id matched from the URL; None: no provider's URL (a local
        # server, a proxy), so prices are found by model name.
        self.provider = provider
        self.attributes = attributes  # server.address, server.port, gen_ai.provider.name


_UNKNOWN_ENDPOINT = Endpoint("", None, {A.GEN_AI_PROVIDER_NAME: A.PROVIDER_OPENAI})
# id(base URL) -> (that URL, its Endpoint): reading host and port off an httpx URL (and
# matching it against every provider's pattern) on every call cost more than the rest
# of the request attributes together.
_endpoint_cache: dict[int, tuple[Any, Endpoint]] = {}


def endpoint_of(instance: Any) -> Endpoint:
    """The endpoint of the client behind a resource object (never raises)."""
    try:
        url = instance._client.base_url
        cached = _endpoint_cache.get(id(url))
        if cached is not None and cached[0] is url:  # the same object: ids are reused after collection
            return cached[1]
        text = str(url)
        provider = provider_for_url(text)
        attrs: dict[str, Any] = {A.GEN_AI_PROVIDER_NAME: provider_name(provider), A.SERVER_ADDRESS: url.host}
        port = url.port
        if port is not None:
            attrs[A.SERVER_PORT] = port
        elif url.scheme == "https":
            attrs[A.SERVER_PORT] = 443
        endpoint = Endpoint(text, provider, attrs)
        if len(_endpoint_cache) >= 64:
            _endpoint_cache.clear()
        _endpoint_cache[id(url)] = (url, endpoint)
        return endpoint
    except Exception:
        return _UNKNOWN_ENDPOINT


class LLMCall:
    """One call in flight. Ends its span exactly once, whichever way the call ends.

    ``with call:`` around sending the request makes the LLM span current (HTTP client
    spans nest under it, metric exemplars point at it) and marks the context as inside
    a call; an exception leaving the block fails the call and propagates unchanged.
    """

    __slots__ = (
        "tel", "span", "model", "operation", "endpoint", "tier_key", "attempts",
        "reservation", "started", "metric_attrs", "ended", "_token",
    )

    def __init__(
        self, tel: Telemetry, span: Span, model: Any, operation: str, endpoint: Endpoint = _UNKNOWN_ENDPOINT
    ) -> None:
        self.tel = tel
        self.span = span
        self.model = model if isinstance(model, str) else None
        self.operation = operation
        self.endpoint = endpoint
        # (endpoint, model) whose tier this call's response teaches; None when the request
        # named its own tier (that says nothing of the tier the project is served at).
        self.tier_key: tuple[str, str] | None = None
        self.attempts = 0  # HTTP requests sent for this call (counted when attempt spans are on)
        self.reservation: Reservation | None = None
        self.started = time.perf_counter()
        self.metric_attrs: dict[str, Any] | None = None
        self.ended = False

    def __enter__(self) -> "LLMCall":
        ctx = otel_context.set_value(_IN_CALL_KEY, self, trace.set_span_in_context(self.span))
        self._token = otel_context.attach(ctx)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        otel_context.detach(self._token)
        if exc is not None:
            self.fail(exc)
        return False

    # ------------------------------------------------------------------ outcomes

    def finish(self, usage: Usage | None, response_attrs: Mapping[str, Any], error_type: str | None = None) -> None:
        """Record the response and its cost, settle the budget, end the span.

        ``error_type`` marks a response that arrived but reports a failure (a Responses
        API ``failed`` status, an ``error`` stream event): the span ends as ERROR with
        what the response showed, usage included.

        Raises ``BudgetExceededError`` (after the span ended) when this call pushed a
        scope with ``on_exceed="raise"`` over its budget.
        """
        if self.ended:
            return
        self.ended = True
        over = None
        cost_usd = None
        try:
            span = self.span
            attrs = dict(response_attrs)  # one set_attributes for everything the response tells
            response_model = response_attrs.get(A.GEN_AI_RESPONSE_MODEL) or self.model
            if usage is not None:
                cost_usd = self._usage_attributes(attrs, usage, response_model)
            else:
                attrs[A.WFLO_COST_SOURCE] = "no-usage"
            if error_type is not None:
                attrs[A.ERROR_TYPE] = error_type
                span.set_status(Status(StatusCode.ERROR, error_type))
            if self.attempts:
                attrs[A.WFLO_HTTP_ATTEMPTS] = self.attempts
            span.set_attributes(attrs)
            if self.reservation is not None:
                over = self._settle(cost_usd)
            self._record_metrics(usage, cost_usd, error_type, response_model)
        except Exception:
            _log.debug("wflo-otel: failed to record LLM response", exc_info=True)
        finally:
            self.span.end()
        if over is not None:
            raise overrun_error(over)

    def fail(self, exc: BaseException, received: Outcome | None = None) -> None:
        """The client raised (or we refused): end the span as ERROR.

        The reservation is released only when the provider cannot have billed the
        request. It stays charged when it may have: ``received`` is what a stream had
        shown when it broke after its first chunk (settled at its usage if that was
        seen); an exception carrying the answer (``LengthFinishReasonError`` from
        ``.parse()``) is settled at that answer's usage; a ``.parse()`` failing on an
        answer it does not carry, a timeout or a connection broken after the request
        was sent, and a cancellation keep the worst case charged
        (``wflo.cost.source=no-usage``), as a stream whose usage was never seen does.
        Nothing but the original exception is raised.
        """
        if self.ended:
            return
        self.ended = True
        try:
            error_type = error_type_of(exc)
            span = self.span
            if received is not None:
                usage, attrs, billed = received[0], dict(received[1]), True
            else:
                usage, attrs = billed_response_of(exc)
                billed = usage is not None or raised_after_answer(exc) or may_have_been_billed(exc)
            cost_usd = None
            if usage is not None:
                cost_usd = self._usage_attributes(attrs, usage, attrs.get(A.GEN_AI_RESPONSE_MODEL) or self.model)
            elif billed:
                attrs[A.WFLO_COST_SOURCE] = "no-usage"
            attrs[A.ERROR_TYPE] = error_type
            if self.attempts:
                attrs[A.WFLO_HTTP_ATTEMPTS] = self.attempts
            span.set_attributes(attrs)
            recorded = exception_attributes(exc, self.tel.capture_content)  # no key, no echoed prompt
            span.set_status(Status(StatusCode.ERROR, recorded["exception.message"][:500]))
            span.record_exception(exc, attributes=recorded)
            if self.reservation is not None:
                if billed:
                    self._settle(cost_usd)  # an overrun is recorded on the scope; the original error propagates
                else:
                    self.tel.processor.ledger.release(self.reservation)
            self._record_metrics(usage, cost_usd, error_type, attrs.get(A.GEN_AI_RESPONSE_MODEL) or self.model)
        except Exception:
            _log.debug("wflo-otel: failed to record LLM error", exc_info=True)
        finally:
            self.span.end()

    # ------------------------------------------------------------------ helpers

    def _usage_attributes(self, attrs: dict[str, Any], usage: Usage, model: str | None) -> float | None:
        """Add token and cost attributes to ``attrs``; return the cost in USD (None if unknown).

        Negative counts (a broken or hostile server) are no usage at all: priced, they
        would hand money back to the budget. Nor is a usage without its output count
        (embeddings aside), which would price the answer at nothing. The call then
        keeps its worst case charged.
        """
        if not usage.plausible() or (usage.output_tokens is None and self.operation != OPERATION_EMBEDDINGS):
            _log.debug("wflo-otel: ignoring implausible usage %r", usage)
            attrs[A.WFLO_COST_SOURCE] = "no-usage"
            return None
        if usage.input_tokens is not None:
            attrs[A.GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
        if usage.output_tokens is not None:
            attrs[A.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
            # cache and reasoning details come with output (not with embeddings)
            attrs[A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = usage.cache_read_tokens
            attrs[A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = usage.reasoning_tokens
        tier = attrs.get(A.GEN_AI_OPENAI_RESPONSE_SERVICE_TIER)
        self.tel.tiers.learn(self.tier_key, tier)
        cost = self.tel.pricebook.cost(
            model,
            input_tokens=usage.input_tokens or 0,
            output_tokens=usage.output_tokens or 0,
            cache_read_tokens=usage.cache_read_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            service_tier=tier,
            input_audio_tokens=usage.input_audio_tokens,
            output_audio_tokens=usage.output_audio_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            provider=self.endpoint.provider,
        )
        usd = cost.usd
        if usd is not None and not 0.0 <= usd < math.inf:  # NaN, negative or infinite: not a cost to charge
            usd = None
        if usd is not None:
            attrs[A.WFLO_COST_USD] = usd
        attrs[A.WFLO_COST_SOURCE] = cost.source
        return usd

    def _settle(self, cost_usd: float | None):
        processor = self.tel.processor
        if cost_usd is None or not 0.0 <= cost_usd < math.inf:
            # Sent, but its usage was never seen (stream closed early, odd server) or
            # makes no sense: keep the worst case charged rather than let the budget leak.
            cost_usd = self.reservation.amount
        over = processor.ledger.settle(self.reservation, cost_usd)
        if over is not None and self.tel.metrics is not None:
            self.tel.metrics.record_budget_event(over.name, "overrun")
        return over

    def _record_metrics(self, usage: Usage | None, cost_usd: float | None, error_type: str | None, model) -> None:
        metrics = self.tel.metrics
        if metrics is None:
            return
        attrs = {
            A.GEN_AI_OPERATION_NAME: self.operation,
            A.GEN_AI_PROVIDER_NAME: self.endpoint.attributes[A.GEN_AI_PROVIDER_NAME],
        }
        if self.model:
            attrs[A.GEN_AI_REQUEST_MODEL] = self.model
        if model:
            attrs[A.GEN_AI_RESPONSE_MODEL] = model
        metrics.record_call(
            attrs,
            time.perf_counter() - self.started,
            usage.input_tokens if usage else None,
            usage.output_tokens if usage else None,
            usage.cache_read_tokens if usage else None,
            usage.reasoning_tokens if usage else None,
            cost_usd,
            error_type,
        )


def begin(tel: Telemetry, operation: str, instance: Any, kwargs: dict[str, Any], shape: Shape = CHAT) -> LLMCall:
    """Start the span and reserve the call's worst-case cost on every enclosing budget.

    ``shape`` says which API this is (chat by default): its own request attributes,
    where its input text lives, whether it produces output tokens to reserve for.
    May replace ``kwargs["messages"]``/``["input"]``/``["prompt"]`` by a list (a one-shot
    iterator must survive being measured). Raises ``BudgetExceededError`` with nothing
    sent when the call cannot fit; its span is then ended as ERROR with ``wflo.budget.refused``.
    """
    model = kwargs.get("model")
    if type(model) is not str and isinstance(model, str):  # a str Enum: the value the SDK sends
        model = str.__str__(model)
    endpoint = endpoint_of(instance)
    guard_propagation(_IN_CALL_KEY)
    if tel.http_spans:
        attach_attempts(getattr(instance, "_client", None), tel.tracer_provider, _IN_CALL_KEY)
    attributes = {
        A.GEN_AI_OPERATION_NAME: operation,
        **endpoint.attributes,
        **request_attributes(kwargs),
    }
    if shape.request_attributes is not None:
        attributes.update(shape.request_attributes(kwargs))
    if isinstance(model, str):
        attributes[A.GEN_AI_REQUEST_MODEL] = model
        name = f"{operation} {model}"
    else:  # per the conventions, a span without a model is named after the operation
        name = operation
    if tel.capture_content:
        materialize_inputs(kwargs)
        try:
            attributes.update(shape.input_attributes(kwargs))
        except Exception:
            _log.debug("wflo-otel: could not capture input messages", exc_info=True)
    span = tel.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    call = LLMCall(tel, span, model, operation, endpoint)
    if isinstance(model, str) and not _names_tier(kwargs):
        call.tier_key = (endpoint.url, model)
    processor = tel.processor
    if processor is not None:
        chain = processor.chain_of(span.get_span_context().span_id)
        if chain:
            limits = processor.limits.match(attributes, chain) if processor.limits is not None else ()
            if limits or any(scope.enforces for scope in chain):
                _reserve(call, processor, chain, kwargs, shape.has_output, limits)
            else:  # nothing to enforce, but the scopes still account what they spend
                call.reservation = Reservation(chain, 0.0)
    return call


def _worst_case(call: LLMCall, kwargs: dict[str, Any], has_output: bool) -> float | None:
    """What the call may cost at most, in USD (None: the model has no known price).

    Read from the request as the server gets it (``extra_body`` included). The output
    ceiling caps each choice, so a request for n of them may produce n times as much;
    embeddings produce no output tokens, so only their input is reserved. An input we
    cannot measure (an odd object the estimate chokes on) is left out of the bound
    rather than making the whole reservation nothing: the output ceiling, at the
    model's price, is still held.
    """
    try:
        materialize_inputs(kwargs)  # a one-shot iterator becomes a list before it is measured
        input_tokens = min(estimate_input_tokens(effective_request(kwargs)), MAX_RESERVED_TOKENS)
    except Exception:
        _log.warning("wflo-otel: could not estimate a call's input; reserving its output ceiling only", exc_info=True)
        input_tokens = 0
    request = effective_request(kwargs)
    output_tokens = 0
    if has_output:
        output_tokens = min(
            output_ceiling(request, call.tel.default_output_tokens) * output_choices(request), MAX_RESERVED_TOKENS
        )
    tier = request.get("service_tier")
    if not isinstance(tier, str) or tier == "auto":
        # The project's tier: as configured, else as responses showed it, else unknown (the dearest).
        tier = call.tel.default_service_tier or call.tel.tiers.tier(call.tier_key)
    model = call.model
    if request is not kwargs and isinstance(request.get("model"), str):
        model = str.__str__(request["model"])  # extra_body's model is the one that answers
    return call.tel.pricebook.max_cost(
        model, input_tokens, output_tokens, service_tier=tier, provider=call.endpoint.provider
    )


def _names_tier(kwargs: Mapping[str, Any]) -> bool:
    """Whether the request asks for a tier of its own (not none, not ``auto``)."""
    tier = kwargs.get("service_tier")
    extra = kwargs.get("extra_body")
    if isinstance(extra, Mapping) and "service_tier" in extra:
        tier = extra["service_tier"]
    return isinstance(tier, str) and tier != "auto"


def _reserve(
    call: LLMCall, processor: BudgetSpanProcessor, chain, kwargs: dict[str, Any], has_output: bool = True, limits=()
) -> None:
    try:
        amount = _worst_case(call, kwargs, has_output)
    except Exception:  # a request we cannot read still goes out, traced; the default ceiling is held for it
        _log.warning("wflo-otel: could not bound a call's worst case; reserving the default output ceiling", exc_info=True)
        amount = call.tel.pricebook.max_cost(
            call.model, 0, call.tel.default_output_tokens if has_output else 0, provider=call.endpoint.provider
        )
    try:
        call.reservation = processor.ledger.reserve(chain, amount)
        if limits:
            try:
                call.reservation.holds = processor.limits.reserve(limits, amount, call.span)
            except BaseException:
                processor.ledger.release(call.reservation)
                call.reservation = None
                raise
    except BudgetExceededError as exc:
        call.span.set_attribute(A.WFLO_BUDGET_REFUSED, True)
        if call.tel.metrics is not None and exc.limit is None:  # a limit's refusals: wflo.limit.refusals
            call.tel.metrics.record_budget_event(exc.workflow or "", "refused")
        call.fail(exc)
        raise


def usage_of(response: Any) -> Usage | None:
    return usage_from(field(response, "usage"))
