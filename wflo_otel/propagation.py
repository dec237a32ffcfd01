"""Carry a budget scope across processes as W3C baggage.

At inject time (an outgoing HTTP call made by an instrumented client, or
``propagate.inject``) the current span's execution id, workflow name and the
*current* remaining budget are added to the baggage; the downstream service's
``BudgetSpanProcessor`` joins that execution and enforces what remains. The
remaining amount is computed when the request leaves, not when the workflow
started, so a long workflow hands on what is actually left.

Downstream spend is enforced downstream; it is not charged back to the
upstream ledger (the upstream process sees it in SQL, by execution id).
"""

from __future__ import annotations

from typing import Optional

from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import CarrierT, Setter, default_setter

from .budget import BAGGAGE_EXECUTION_ID, BAGGAGE_REMAINING_USD, BAGGAGE_WORKFLOW_NAME, active_processor


def _remaining(chain) -> float | None:
    """The tightest remaining amount over every budgeted scope of the chain."""
    left = [
        scope.budget_usd - scope.spent_usd - scope.reserved_usd for scope in chain if scope.budget_usd is not None
    ]
    return max(min(left), 0.0) if left else None


def with_scope_baggage(context: Optional[Context] = None) -> Context | None:
    """The context plus wflo baggage for the current span's scope (unchanged outside a workflow)."""
    processor = active_processor()
    if processor is None:
        return context
    span_context = trace.get_current_span(context).get_span_context()
    chain = processor.chain_of(span_context.span_id) if span_context.is_valid else ()
    if not chain:
        return context
    execution = chain[0]
    context = baggage.set_baggage(BAGGAGE_EXECUTION_ID, execution.execution_id, context)
    context = baggage.set_baggage(BAGGAGE_WORKFLOW_NAME, execution.name, context)
    for name, value in chain[-1].attributes.items():  # workflow(..., attributes=): what limits match by
        context = baggage.set_baggage(name, str(value), context)
    remaining = _remaining(chain)
    if remaining is not None:
        context = baggage.set_baggage(BAGGAGE_REMAINING_USD, f"{remaining:.12g}", context)
    return context


class WfloBaggagePropagator(W3CBaggagePropagator):
    """The W3C baggage propagator, plus the current budget scope on inject.

    Use it in place of ``baggage`` (``OTEL_PROPAGATORS=tracecontext,wflo_baggage``);
    ``configure()`` installs it unless ``OTEL_PROPAGATORS`` says otherwise.
    """

    def inject(self, carrier: CarrierT, context: Optional[Context] = None, setter: Setter = default_setter) -> None:
        super().inject(carrier, with_scope_baggage(context), setter)
