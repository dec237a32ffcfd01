"""Sampling decides what is exported, never what is budgeted.

A sampler that drops a trace makes the SDK hand out non-recording spans, which no
span processor sees: the budget processor would map no scope, and every LLM call
of that trace would go out unbudgeted. ``BudgetKeepingSampler`` turns the wrapped
sampler's ``DROP`` into ``RECORD_ONLY``: the spans are recorded (so budgets hold),
not sampled (so the SDK's batch and simple processors export none of them, and
the trace flags propagated downstream still say "not sampled").

The price is the cost of recording the spans of unsampled traces in memory until
they end (a few microseconds per span); nothing more is exported or stored.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult


class BudgetKeepingSampler(Sampler):
    """Delegates every decision; a ``DROP`` becomes ``RECORD_ONLY``."""

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        result = self.delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
        if result.decision is not Decision.DROP:
            return result
        # A dropped result carries no attributes; the span still needs the caller's
        # (the budget processor reads the model, the budget, the workflow name from them).
        return SamplingResult(Decision.RECORD_ONLY, attributes, result.trace_state)

    def get_description(self) -> str:
        return f"BudgetKeeping{{{self.delegate.get_description()}}}"


def keep_budgets_when_sampled_out(provider: TracerProvider) -> None:
    """Wrap ``provider``'s sampler (once). Tracers obtained from it afterwards use the wrapper.

    Tracers handed out before keep the sampler they were given: wflo-otel's own
    (workflow, LLM call) are obtained after ``configure()`` or the zero-code setup.
    """
    sampler = getattr(provider, "sampler", None)
    if isinstance(sampler, Sampler) and not isinstance(sampler, BudgetKeepingSampler):
        provider.sampler = BudgetKeepingSampler(sampler)


__all__ = ["BudgetKeepingSampler", "keep_budgets_when_sampled_out"]
