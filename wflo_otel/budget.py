"""Budget enforcement: the in-memory ledger and the span processor that feeds it.

Every span that starts under a workflow is mapped to its *chain* of budget
scopes (outermost first). The OpenAI instrumentation reserves a call's
worst-case cost on every scope of the chain before sending, and settles the
reservation to the actual cost when the call ends. Nothing here does I/O; every
operation is a few dictionary and float operations under one short lock.

Scopes are created by the processor from span attributes, so manual tracer
spans are first-class: a local root span is an execution (a workflow named
after the span unless it carries ``gen_ai.workflow.name``), and any span that
starts with ``wflo.budget.usd`` is a nested scope.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from . import attributes as A
from .errors import BudgetExceededError
from .genai_spans import call_usage, is_llm_call, service_tier

_log = logging.getLogger(__name__)

ON_EXCEED_RAISE = "raise"
ON_EXCEED_RECORD = "record"
ON_EXCEED_APPROVE = "approve"  # a refusal asks for an approval to raise the budget (controls/budget_approval.py)
_APPROVAL_ROUNDS = 3  # budget raises one call may ask for (concurrent calls may take the room first)
UNKNOWN_MODEL_ALLOW = "allow"
UNKNOWN_MODEL_REFUSE = "refuse"
DEFAULT_SCOPE_TTL_S = 6 * 3600.0
_EVICT_EVERY = 4096  # span starts between two scans for spans that never ended

# W3C baggage keys that carry a scope to downstream services (see propagation.py).
BAGGAGE_EXECUTION_ID = A.WFLO_EXECUTION_ID
BAGGAGE_WORKFLOW_NAME = A.WFLO_WORKFLOW_NAME
BAGGAGE_REMAINING_USD = "wflo.budget.remaining_usd"
_EPSILON = 1e-12  # float slack so a budget spent exactly to the cent is not "over"


class Scope:
    """One budget scope: a workflow execution or a nested span with ``wflo.budget.usd``."""

    __slots__ = (
        "span_id",
        "name",
        "execution_id",
        "budget_usd",
        "on_exceed",
        "spent_usd",
        "reserved_usd",
        "overran",
        "refusals",
        "unknown_model",
        "enforces",
        "span",
        "approver",
        "attributes",
        "applied",
    )

    def __init__(
        self,
        span_id: int,
        name: str,
        execution_id: str,
        budget_usd: float | None,
        on_exceed: str = ON_EXCEED_RAISE,
        unknown_model: str = UNKNOWN_MODEL_ALLOW,
        span: Span | None = None,
    ) -> None:
        self.span_id = span_id
        self.span = span  # the span that opened the scope: it is told when the scope is exceeded
        self.name = name
        self.execution_id = execution_id
        self.budget_usd = budget_usd
        self.on_exceed = on_exceed
        self.unknown_model = unknown_model
        self.spent_usd = 0.0
        self.reserved_usd = 0.0
        self.overran = False
        self.refusals = 0
        # What spend limits match calls by: workflow(..., attributes=) and a root span's
        # attributes, inherited by nested scopes and carried downstream in baggage.
        self.attributes: dict = _NO_ATTRIBUTES
        # What the workflow itself declared (``workflow(..., attributes=)``): set on each of
        # its calls' spans. Never baggage: a caller must not write into our rows.
        self.applied: dict = _NO_ATTRIBUTES
        # Whether a call in this scope must be checked before it is sent: a budget to fit,
        # or models without a price to refuse. Scopes that do neither only account.
        self.enforces = budget_usd is not None or unknown_model == UNKNOWN_MODEL_REFUSE
        # on_exceed="approve": approver(scope, needed_usd) -> USD approved (0: no); it may wait.
        self.approver = None

    @property
    def remaining_usd(self) -> float | None:
        if self.budget_usd is None:
            return None
        return max(self.budget_usd - self.spent_usd, 0.0)

    @property
    def exceeded(self) -> bool:
        """True once the scope overran, or refused a call because it was exhausted."""
        return self.overran or self.refusals > 0

    def _mark_exceeded(self) -> None:
        """Say so on the scope's span, as ``workflow()`` does when it ends: a manual span
        or a zero-code root then lands as ``BUDGET_EXCEEDED`` too. Rare (a refusal, a first
        overrun), so it costs the call path nothing."""
        span = self.span
        if span is not None and span.is_recording():
            span.set_attribute(A.WFLO_EXECUTION_STATUS, A.STATUS_BUDGET_EXCEEDED)

    def __repr__(self) -> str:
        return (
            f"Scope({self.name!r}, execution={self.execution_id}, budget={self.budget_usd}, "
            f"spent={self.spent_usd:.6f}, reserved={self.reserved_usd:.6f})"
        )


Chain = tuple  # tuple[Scope, ...], outermost (the execution) first
_NO_ATTRIBUTES: dict = {}


class Reservation:
    """Money held on every scope of a chain (and ``holds``: on spend limits) for one in-flight call."""

    __slots__ = ("chain", "amount", "open", "holds")

    def __init__(self, chain: Chain, amount: float) -> None:
        self.chain = chain
        self.amount = amount
        self.open = True
        self.holds = None  # limits.Holds when spend limits matched the call


class Ledger:
    """Check-and-reserve in one critical section, so concurrent calls cannot overspend."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def reserve(self, chain: Chain, amount: float | None) -> Reservation:
        """Hold ``amount`` on every budgeted scope of ``chain`` or raise without holding anything.

        ``amount`` None means the model's price is unknown: scopes with
        ``unknown_model="refuse"`` refuse the call (budget or not), the others hold
        nothing for it.
        """
        unknown = amount is None
        if unknown:
            amount = 0.0
        with self._lock:
            if _refusing(chain, amount, unknown) is None:
                for scope in chain:
                    scope.reserved_usd += amount
                return Reservation(chain, amount)
        return self._reserve_refused(chain, amount, unknown)

    def _reserve_refused(self, chain: Chain, amount: float, unknown: bool) -> Reservation:
        """A scope refuses: raise, unless its approver (``on_exceed="approve"``) raises its budget.

        The approver runs outside the lock (it may wait for a person); the check runs again
        after each raise, as a concurrent call may have taken the room meanwhile.
        """
        for _ in range(_APPROVAL_ROUNDS + 1):
            with self._lock:
                refusing = _refusing(chain, amount, unknown)
                if refusing is None:
                    for scope in chain:
                        scope.reserved_usd += amount
                    return Reservation(chain, amount)
                scope, unpriced = refusing
                approver = scope.approver if not unpriced else None
                if approver is None:
                    raise _refusal(scope, None if unpriced else amount)
                needed = max(scope.spent_usd + scope.reserved_usd + amount - scope.budget_usd, _EPSILON)
            approved = approver(scope, needed)
            with self._lock:
                if not approved:
                    raise _refusal(scope, amount)
                scope.budget_usd += approved
        with self._lock:
            raise _refusal(scope, amount)

    def settle(self, reservation: Reservation, actual_usd: float) -> Scope | None:
        """Replace the reservation by the actual cost.

        Returns the innermost scope that is now over budget and wants the
        caller to raise (``on_exceed="raise"``), else None.
        """
        over: Scope | None = None
        with self._lock:
            held = reservation.amount if reservation.open else 0.0
            reservation.open = False
            for scope in reservation.chain:
                scope.reserved_usd -= held
                scope.spent_usd += actual_usd
                budget = scope.budget_usd
                if budget is not None and scope.spent_usd > budget + _EPSILON:
                    if not scope.overran:
                        scope.overran = True
                        scope._mark_exceeded()
                    if scope.on_exceed != ON_EXCEED_RECORD:
                        over = scope
        if reservation.holds is not None:
            reservation.holds.settle(actual_usd)
        return over

    def release(self, reservation: Reservation) -> None:
        """Give the money back: the call failed and cost nothing we know of."""
        with self._lock:
            if reservation.open:
                reservation.open = False
                for scope in reservation.chain:
                    scope.reserved_usd -= reservation.amount
        if reservation.holds is not None:
            reservation.holds.release()

    def charge(self, chain: Chain, amount: float) -> None:
        """Add the cost of a call that was not reserved (spans of other instrumentations)."""
        self.settle(Reservation(chain, 0.0), amount)


def _refusing(chain: Chain, amount: float, unknown: bool) -> tuple[Scope, bool] | None:
    """The first scope of ``chain`` that refuses the call, and whether for an unknown price."""
    for scope in chain:
        if unknown and scope.unknown_model == UNKNOWN_MODEL_REFUSE:
            return scope, True
        budget = scope.budget_usd
        if budget is None:
            continue
        if scope.spent_usd + scope.reserved_usd + amount > budget + _EPSILON or scope.spent_usd >= budget:
            return scope, False
    return None


def _refusal(scope: Scope, requested_usd: float | None) -> BudgetExceededError:
    """Count a refusal on the scope; ``requested_usd`` None: the model has no known price."""
    scope.refusals += 1
    scope._mark_exceeded()
    return BudgetExceededError(
        scope.spent_usd,
        scope.budget_usd,
        workflow=scope.name,
        execution_id=scope.execution_id,
        reserved_usd=scope.reserved_usd,
        requested_usd=requested_usd,
        refused=True,
        unknown_price=requested_usd is None,
    )


def overrun_error(scope: Scope) -> BudgetExceededError:
    return BudgetExceededError(
        scope.spent_usd,
        scope.budget_usd or 0.0,
        workflow=scope.name,
        execution_id=scope.execution_id,
        reserved_usd=scope.reserved_usd,
        refused=False,
    )


class BudgetSpanProcessor(SpanProcessor):
    """Maps spans to budget scopes and stamps ``wflo.execution.id`` at span start.

    Register it on the TracerProvider *before* exporting processors so the
    attributes it stamps are on the span when it is exported. Each started span
    costs one dict insert, each ended span one dict pop; scopes whose span never
    ends are evicted after ``scope_ttl_s``.
    """

    def __init__(
        self,
        *,
        default_budget_usd: float | None = None,
        default_on_exceed: str = ON_EXCEED_RAISE,
        default_unknown_model: str = UNKNOWN_MODEL_ALLOW,
        scope_ttl_s: float = DEFAULT_SCOPE_TTL_S,
        pricebook=None,
    ) -> None:
        self.ledger = Ledger()
        self.default_budget_usd = default_budget_usd
        self.default_on_exceed = default_on_exceed
        self.default_unknown_model = default_unknown_model
        self.scope_ttl_s = scope_ttl_s
        self._pricebook = pricebook
        # span id -> (chain, monotonic start); insertion order is start order (eviction scans the front)
        self._chains: dict[int, tuple[Chain, float]] = {}
        self.limits = None  # limits.LimitEngine when spend limits are configured
        self._starts = 0
        self._evict_lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            self._on_start(span, parent_context)
        except Exception:  # never break span creation
            _log.exception("wflo-otel: budget processor failed on span start")

    def on_end(self, span: ReadableSpan) -> None:
        entry = self._chains.pop(span.context.span_id, None)
        if entry is None:
            return
        attrs = span.attributes
        if attrs and A.WFLO_COST_SOURCE not in attrs and is_llm_call(attrs):  # priced: one of ours
            self._charge_foreign(entry[0], attrs)

    def shutdown(self) -> None:
        self._chains.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    # -- queries used by the instrumentation and the workflow API -------------------

    def chain_of(self, span_id: int) -> Chain:
        entry = self._chains.get(span_id)
        return entry[0] if entry is not None else ()

    def scope_of(self, span_id: int) -> Scope | None:
        """The scope opened by this very span, if it opened one."""
        chain = self.chain_of(span_id)
        if chain and chain[-1].span_id == span_id:
            return chain[-1]
        return None

    @property
    def open_spans(self) -> int:
        return len(self._chains)

    def evict_expired(self, now: float | None = None) -> int:
        """Forget spans started more than ``scope_ttl_s`` ago that never ended; returns how many."""
        now = time.monotonic() if now is None else now
        deadline = now - self.scope_ttl_s
        expired = []
        with self._evict_lock:
            try:
                for span_id, (_, started) in self._chains.items():
                    if started > deadline:
                        break
                    expired.append(span_id)
            except RuntimeError:  # another thread changed the dict; next scan catches up
                pass
            for span_id in expired:
                self._chains.pop(span_id, None)
        if expired:
            _log.warning("wflo-otel: evicted %d budget entries of spans that never ended", len(expired))
        return len(expired)

    # -- internals -----------------------------------------------------------------

    def _on_start(self, span: Span, parent_context: Context | None) -> None:
        parent = trace.get_current_span(parent_context).get_span_context()
        parent_entry = self._chains.get(parent.span_id) if parent.is_valid else None
        attrs = span.attributes or {}
        span_id = span.context.span_id
        budget = _as_budget(attrs.get(A.WFLO_BUDGET_USD))
        # A nested workflow is a scope even without a budget: it reports its own spend
        # and applies its own unknown-model policy.
        opens_scope = budget is not None or attrs.get(A.GEN_AI_OPERATION_NAME) == A.OPERATION_INVOKE_WORKFLOW
        if parent_entry is not None:
            parent_chain = parent_entry[0]
            chain = parent_chain + (self._nested_scope(span, attrs, budget, parent_chain),) if opens_scope else parent_chain
        else:
            joined = self._joined_scope(span, parent, parent_context)
            if joined is None:
                chain = (self._new_execution(span, attrs, budget),)
                span.set_attribute(A.WFLO_EXECUTION_ROOT, True)
            elif opens_scope:
                chain = (joined, self._nested_scope(span, attrs, budget, (joined,)))
            else:
                chain = (joined,)
        if opens_scope or parent_entry is None:
            self._scope_attributes(chain, attrs, parent_context, fresh=parent_entry is None)
        execution = chain[0]
        span.set_attributes({A.WFLO_EXECUTION_ID: execution.execution_id, A.WFLO_WORKFLOW_NAME: execution.name})
        if not opens_scope:
            applied = _applied_attributes(chain, span, attrs)  # {} at once when no workflow declared any
            if applied and is_llm_call(attrs):
                span.set_attributes(applied)
        self._chains[span_id] = (chain, time.monotonic())
        self._starts += 1
        if self._starts % _EVICT_EVERY == 0:
            self.evict_expired()

    def _scope_attributes(self, chain: Chain, attrs, parent_context: Context | None, fresh: bool) -> None:
        """Give a new scope what spend limits match by: its parent's attributes, the baggage an
        upstream service sent (``fresh``: every scope of the chain is new), and its span's
        attributes the limits read. Only when limits are configured; a scope then costs one small dict."""
        limits = self.limits
        if limits is None:
            return
        inherited = dict(chain[-2].attributes) if len(chain) > 1 else {}
        if fresh:
            for name, value in baggage.get_all(parent_context).items():
                if not name.startswith("wflo."):
                    inherited[name] = value
        for name in limits.attribute_names:
            value = attrs.get(name)
            if value is not None:
                inherited[name] = value
        if inherited:
            for scope in chain if fresh else chain[-1:]:
                scope.attributes = inherited

    def _nested_scope(self, span: Span, attrs, budget: float | None, parent_chain: Chain) -> Scope:
        inner = parent_chain[-1]
        return Scope(
            span.context.span_id,
            attrs.get(A.GEN_AI_WORKFLOW_NAME) or span.name,
            parent_chain[0].execution_id,
            budget,
            _policy(attrs, A.WFLO_BUDGET_ON_EXCEED, _ON_EXCEED, inner.on_exceed),
            _policy(attrs, A.WFLO_BUDGET_UNKNOWN_MODEL, _UNKNOWN_MODEL, inner.unknown_model),
            span,
        )

    def _joined_scope(self, span: Span, parent, parent_context: Context | None) -> Scope | None:
        """The scope an upstream service sent as baggage, when this span continues its trace."""
        if not (parent.is_valid and parent.is_remote):
            return None
        execution_id = baggage.get_baggage(BAGGAGE_EXECUTION_ID, parent_context)
        if not execution_id:
            return None
        remaining = _as_budget(baggage.get_baggage(BAGGAGE_REMAINING_USD, parent_context))
        name = baggage.get_baggage(BAGGAGE_WORKFLOW_NAME, parent_context) or span.name
        return Scope(
            span.context.span_id,
            str(name),
            str(execution_id),
            remaining,
            self.default_on_exceed,
            self.default_unknown_model,
            span,
        )

    def _new_execution(self, span: Span, attrs, budget: float | None) -> Scope:
        execution_id = attrs.get(A.WFLO_EXECUTION_ID)
        if not execution_id:
            # A plain root span: the trace is the execution (as the ingest service sees it).
            execution_id = format(span.context.trace_id, "032x") if span.parent is None else uuid.uuid4().hex
        name = attrs.get(A.GEN_AI_WORKFLOW_NAME) or (is_llm_call(attrs) and _service_name(span)) or span.name
        if budget is None:
            budget = self.default_budget_usd
            if budget is not None:
                span.set_attribute(A.WFLO_BUDGET_USD, budget)
        return Scope(
            span.context.span_id,
            name,
            str(execution_id),
            budget,
            _policy(attrs, A.WFLO_BUDGET_ON_EXCEED, _ON_EXCEED, self.default_on_exceed),
            _policy(attrs, A.WFLO_BUDGET_UNKNOWN_MODEL, _UNKNOWN_MODEL, self.default_unknown_model),
            span,
        )

    def _charge_foreign(self, chain: Chain, attrs) -> None:
        """Price and charge a span of another instrumentation that carries GenAI usage."""
        from .pricing import default_pricebook

        request_model, response_model, input_tokens, output_tokens, cache_read, reasoning = call_usage(attrs)
        if input_tokens is None and output_tokens is None:  # a failed call: nothing to charge
            return
        pricebook = self._pricebook or default_pricebook()
        cost = pricebook.cost(
            response_model or request_model,
            input_tokens=max(input_tokens or 0, 0),
            output_tokens=max(output_tokens or 0, 0),
            cache_read_tokens=max(cache_read or 0, 0),
            reasoning_tokens=max(reasoning or 0, 0),
            service_tier=service_tier(attrs),
        )
        if cost.usd:
            self.ledger.charge(chain, cost.usd)
            if self.limits is not None:  # matched as wflo's own calls are: span, scopes, baggage
                try:
                    self.limits.charge(self.limits.match(attrs, chain), cost.usd)
                except Exception:  # never break span end
                    _log.exception("wflo-otel: could not charge a call of another instrumentation to spend limits")


def _service_name(span: Span) -> str | None:
    """What a call with no parent span is an execution of: the service that made it.

    Named after the call (``chat gpt-4o-mini``), every model would be a workflow of
    its own and a zero-code run's executions would not read as the program's.
    """
    resource = getattr(span, "resource", None)
    name = resource.attributes.get("service.name") if resource is not None else None
    return name if isinstance(name, str) and name else None


def _as_budget(value) -> float | None:
    if value is None:
        return None
    try:
        budget = float(value)
    except (TypeError, ValueError):
        _log.warning("wflo-otel: ignoring non-numeric %s=%r", A.WFLO_BUDGET_USD, value)
        return None
    if budget != budget:  # NaN: no spend compares with it, so it would cap nothing; fail closed
        _log.warning("wflo-otel: %s is NaN; treating it as a budget of 0", A.WFLO_BUDGET_USD)
        return 0.0
    return budget if budget >= 0 else None


_ON_EXCEED = (ON_EXCEED_RAISE, ON_EXCEED_RECORD, ON_EXCEED_APPROVE)
_UNKNOWN_MODEL = (UNKNOWN_MODEL_ALLOW, UNKNOWN_MODEL_REFUSE)


# Stamped on calls only outside the namespaces the instrumentation and the store read:
# a workflow attribute named like usage or a model must not change what a call costs.
_NOT_APPLIED = ("gen_ai.", "wflo.", "llm.", "openai.", "server.", "error.", "http.", "url.")
_ROOM_KEPT = 32  # attribute slots left for what the call sets when it ends (usage, cost, ...)


def _applied_attributes(chain: Chain, span: Span, attrs) -> dict:
    """What the workflows around a call declared (``workflow(..., attributes=...)``, the
    innermost winning) that the call's span does not set itself, to be stamped on it so
    its row carries them: the tenant of the cost rollups and the dashboard, SQL by
    customer over ``step_executions``. Only what fits the span's attribute limit with room
    to spare (the SDK would evict the call's own attributes to make room).
    """
    merged: dict = {}
    for scope in chain:
        if scope.applied:
            merged.update(scope.applied)
    if not merged:
        return merged
    cap = getattr(getattr(span, "_limits", None), "max_span_attributes", 128)  # None: no limit
    room = len(merged) if cap is None else cap - len(attrs) - _ROOM_KEPT
    applied = {}
    for key, value in merged.items():
        if len(applied) >= room:
            break
        if key not in attrs and not key.startswith(_NOT_APPLIED):
            applied[key] = value
    return applied


def _policy(attrs, key: str, allowed: tuple[str, ...], default: str) -> str:
    value = attrs.get(key)
    return value if value in allowed else default


# The processor the instrumentation and the workflow API consult. configure() (and
# the OpenTelemetry distro) set it; tests may set their own.
_active: BudgetSpanProcessor | None = None


def set_active_processor(processor: BudgetSpanProcessor | None) -> None:
    global _active
    _active = processor


def active_processor() -> BudgetSpanProcessor | None:
    return _active
