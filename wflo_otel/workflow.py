"""``workflow()`` and ``step()``: spans that are context managers and decorators.

Both are thin: they start a span with the right attributes and make it current.
The budget processor turns a workflow span into a budget scope from those
attributes, so ``wflo_otel.workflow(...)`` and a manual tracer span carrying
``wflo.budget.usd`` behave the same.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import uuid
from typing import Any, Callable, Iterable, Mapping, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from . import attributes as A
from .budget import (
    ON_EXCEED_APPROVE,
    ON_EXCEED_RAISE,
    ON_EXCEED_RECORD,
    UNKNOWN_MODEL_ALLOW,
    UNKNOWN_MODEL_REFUSE,
    Scope,
    active_processor,
)
from .controls.runtime import DEFAULT_APPROVAL_TIMEOUT_S, WorkflowControls, on_rollback
from .errors import BudgetExceededError, error_type
from .redaction import exception_attributes

_log = logging.getLogger(__name__)
_TRACER_NAME = "wflo_otel"
F = TypeVar("F", bound=Callable[..., Any])


_cached: tuple[object, trace.Tracer] | None = None


def _tracer() -> trace.Tracer:
    """The tracer of the provider configure() set up (or the global one), cached per provider."""
    from . import __version__
    from .configuration import tracer_provider

    global _cached
    provider = tracer_provider()
    cached = _cached
    if cached is not None and cached[0] is provider:
        return cached[1]
    tracer = trace.get_tracer(_TRACER_NAME, __version__, tracer_provider=provider)
    _cached = (provider, tracer)
    return tracer


class _SpanBlock:
    """A span that is a sync/async context manager and, when called, a decorator.

    Subclasses say which span to start (``_start``) and what to record when the
    block ends (``_finish``); the protocol plumbing lives only here.
    """

    def __init__(self) -> None:
        self._span: Span | None = None
        self._token: object | None = None

    # context manager protocol --------------------------------------------------------
    def __enter__(self):
        self._span = self._start()
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            self._finish(self._span, exc)
        finally:
            otel_context.detach(self._token)
            self._span.end()
        return False

    async def __aenter__(self):
        return self.__enter__()

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        return self.__exit__(exc_type, exc, tb)

    # decorator protocol --------------------------------------------------------------
    def __call__(self, fn: F) -> F:
        signature = inspect.signature(fn)

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args, **kwargs):
                async with self._for_call(signature, args, kwargs) as block:
                    return block._returned(await fn(*args, **kwargs))

            wrapper = async_wrapper
        else:

            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                with self._for_call(signature, args, kwargs) as block:
                    return block._returned(fn(*args, **kwargs))

        wrapper.__wflo_block__ = self  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    def _for_call(self, signature: inspect.Signature, args, kwargs) -> "_SpanBlock":
        """A fresh block for one call of a decorated function (blocks are not re-entrant)."""
        raise NotImplementedError

    def _start(self) -> Span:
        raise NotImplementedError

    def _returned(self, result: Any) -> Any:
        """What a decorated function returned, seen before the block ends."""
        return result

    def _finish(self, span: Span, exc: BaseException | None) -> None:
        raise NotImplementedError


def _record_exception(span: Span, exc: BaseException) -> None:
    """Record a failure on the span: redacted, and an HTTP error's body only with content capture."""
    recorded = exception_attributes(exc)
    span.record_exception(exc, attributes=recorded)
    span.set_attribute(A.ERROR_TYPE, error_type(exc))
    span.set_status(Status(StatusCode.ERROR, recorded["exception.message"][:500]))


def _inputs_json(inputs: Mapping[str, Any] | None) -> str | None:
    if not inputs:
        return None
    try:
        return json.dumps(dict(inputs), default=repr, sort_keys=True)
    except (TypeError, ValueError):
        return json.dumps({k: repr(v) for k, v in inputs.items()})


class Workflow(_SpanBlock, WorkflowControls):
    """One workflow execution: the root of its trace, a budget scope, a row in ``workflow_executions``.

    Use as ``with``/``async with`` or as a decorator (each call is a new execution whose
    keyword arguments become its inputs). Checkpoints, resume, rollback and approvals are
    the methods of ``WorkflowControls`` (docs/controls.md).
    """

    def __init__(
        self,
        name: str,
        *,
        budget_usd: float | None = None,
        inputs: Mapping[str, Any] | None = None,
        execution_id: str | None = None,
        correlation_id: str | None = None,
        on_exceed: str = ON_EXCEED_RAISE,
        unknown_model: str = UNKNOWN_MODEL_ALLOW,
        description: str | None = None,
        resume: str | None = None,
        rollback_on: str | Iterable[str] | None = None,
        auto_approve_below_usd: float | None = None,
        approval_timeout_s: float | None = DEFAULT_APPROVAL_TIMEOUT_S,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not name or not isinstance(name, str):
            raise ValueError("workflow name must be a non-empty string")
        if budget_usd is not None and (not isinstance(budget_usd, (int, float)) or budget_usd < 0):
            raise ValueError(f"budget_usd must be a non-negative number, got {budget_usd!r}")
        if on_exceed not in (ON_EXCEED_RAISE, ON_EXCEED_RECORD, ON_EXCEED_APPROVE):
            raise ValueError(f"on_exceed must be 'raise', 'record' or 'approve', got {on_exceed!r}")
        if resume is not None and execution_id is not None and resume != execution_id:
            raise ValueError("resume= continues an execution under its own id; do not pass another execution_id")
        if unknown_model not in (UNKNOWN_MODEL_ALLOW, UNKNOWN_MODEL_REFUSE):
            raise ValueError(f"unknown_model must be 'allow' or 'refuse', got {unknown_model!r}")
        self.name = name
        self.budget_usd = float(budget_usd) if budget_usd is not None else None
        self.inputs = dict(inputs) if inputs else {}
        self._given_execution_id = resume or execution_id
        self._given_correlation_id = correlation_id
        self.on_exceed = on_exceed
        self.unknown_model = unknown_model
        self.description = description
        self.attributes = _workflow_attributes(attributes)
        self.execution_id: str | None = None
        self.correlation_id: str | None = None
        self._scope: Scope | None = None
        self._init_controls(
            resume=resume,
            rollback_on=rollback_on,
            auto_approve_below_usd=auto_approve_below_usd,
            approval_timeout_s=approval_timeout_s,
        )

    @property
    def spent_usd(self) -> float:
        return self._scope.spent_usd if self._scope is not None else 0.0

    @property
    def remaining_usd(self) -> float | None:
        return self._scope.remaining_usd if self._scope is not None else self.budget_usd

    @property
    def span(self) -> Span | None:
        return self._span

    def _for_call(self, signature, args, kwargs) -> "Workflow":
        bound = signature.bind_partial(*args, **kwargs)
        return Workflow(
            self.name,
            budget_usd=self.budget_usd,
            inputs={**self.inputs, **bound.arguments},
            execution_id=self._given_execution_id,
            correlation_id=self._given_correlation_id,
            on_exceed=self.on_exceed,
            unknown_model=self.unknown_model,
            description=self.description,
            **self._controls_kwargs(),
            attributes=self.attributes,
        )

    def _start(self) -> Span:
        self.execution_id = self._given_execution_id or uuid.uuid4().hex
        self.correlation_id = self._given_correlation_id or self.execution_id
        attributes: dict[str, Any] = {
            A.GEN_AI_OPERATION_NAME: A.OPERATION_INVOKE_WORKFLOW,
            A.GEN_AI_WORKFLOW_NAME: self.name,
            A.WFLO_EXECUTION_ID: self.execution_id,
            A.WFLO_CORRELATION_ID: self.correlation_id,
            A.WFLO_BUDGET_ON_EXCEED: self.on_exceed,
            A.WFLO_BUDGET_UNKNOWN_MODEL: self.unknown_model,
            A.WFLO_STEP_KIND: "workflow",
        }
        for key, value in self.attributes.items():
            attributes.setdefault(key, value)
        inputs = _inputs_json(self.inputs)
        if inputs is not None:
            attributes[A.WFLO_WORKFLOW_INPUTS] = inputs
        if self.description:
            attributes["wflo.workflow.description"] = self.description
        links = self._resume_links()  # before the span: a resume reads the budget and the old trace
        if self.budget_usd is not None:
            attributes[A.WFLO_BUDGET_USD] = self.budget_usd
        span = _tracer().start_span(
            f"{A.OPERATION_INVOKE_WORKFLOW} {self.name}", kind=SpanKind.INTERNAL, attributes=attributes, links=links
        )
        self._attach_scope(span)
        try:
            self._controls_started(span, self._scope)
        except BaseException:
            span.end()
            raise
        return span

    def _attach_scope(self, span: Span) -> None:
        processor = active_processor()
        if processor is None:
            if self.budget_usd is not None:
                _log.warning(
                    "wflo-otel: workflow %r has a budget but no BudgetSpanProcessor is active; "
                    "call wflo_otel.configure() so the budget is enforced",
                    self.name,
                )
            return
        span_id = span.get_span_context().span_id
        self._scope = processor.scope_of(span_id)
        if self._scope is not None and self.attributes:
            self._scope.attributes = {**self._scope.attributes, **self.attributes}
            self._scope.applied = self.attributes
        chain = processor.chain_of(span_id)
        if chain:
            # Nested inside another workflow: the execution is the outer one.
            self.execution_id = chain[0].execution_id

    def _finish(self, span: Span, exc: BaseException | None) -> None:
        self._controls_finished(exc)  # a rollback_on rollback runs here, inside the workflow span
        if isinstance(exc, BudgetExceededError) or (self._scope is not None and self._scope.exceeded):
            status = A.STATUS_BUDGET_EXCEEDED
        elif exc is not None:
            status = A.STATUS_FAILED
        else:
            status = A.STATUS_COMPLETED
        if exc is not None:
            _record_exception(span, exc)
        span.set_attribute(A.WFLO_EXECUTION_STATUS, status)
        span.set_attribute(A.WFLO_EXECUTION_COST_USD, self.spent_usd)


def workflow(
    name: str,
    *,
    budget_usd: float | None = None,
    inputs: Mapping[str, Any] | None = None,
    execution_id: str | None = None,
    correlation_id: str | None = None,
    on_exceed: str = ON_EXCEED_RAISE,
    unknown_model: str = UNKNOWN_MODEL_ALLOW,
    description: str | None = None,
    resume: str | None = None,
    rollback_on: str | Iterable[str] | None = None,
    auto_approve_below_usd: float | None = None,
    approval_timeout_s: float | None = DEFAULT_APPROVAL_TIMEOUT_S,
    attributes: Mapping[str, Any] | None = None,
) -> Workflow:
    """Open a workflow execution (``with``/``async with``) or decorate a function (sync or async).

    ``budget_usd`` caps what LLM calls inside may spend (see DESIGN.md, budget semantics);
    ``on_exceed="record"`` never raises after a call, but still refuses calls that cannot fit;
    ``unknown_model="refuse"`` refuses calls to models without a known price;
    ``on_exceed="approve"`` asks for an approval to raise the budget instead of refusing
    (approved at once below ``auto_approve_below_usd``). ``resume=EXECUTION_ID`` continues
    a stopped execution from its latest checkpoint with its spend remembered;
    ``rollback_on=("error", "budget")`` runs the registered compensations when the body
    raises (see docs/controls.md).
    ``attributes`` (``{"tenant.id": "acme"}``) are set on the workflow span and apply to
    every call under it, here and downstream (baggage): spend limits match calls by them.
    """
    return Workflow(
        name,
        budget_usd=budget_usd,
        inputs=inputs,
        execution_id=execution_id,
        correlation_id=correlation_id,
        on_exceed=on_exceed,
        unknown_model=unknown_model,
        description=description,
        resume=resume,
        rollback_on=rollback_on,
        auto_approve_below_usd=auto_approve_below_usd,
        approval_timeout_s=approval_timeout_s,
        attributes=attributes,
    )


def _workflow_attributes(attributes: Mapping[str, Any] | None) -> dict[str, str | int | float | bool]:
    """Span attribute values only, checked when the workflow is declared (not at its first call)."""
    if not attributes:
        return {}
    checked = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"workflow attribute names must be non-empty strings, got {key!r}")
        if not isinstance(value, (str, int, float, bool)):
            raise ValueError(f"workflow attribute {key!r} must be a string, number or bool, got {type(value).__name__}")
        checked[key] = value
    return checked


class Step(_SpanBlock):
    """A named unit of work inside a workflow (a row in ``step_executions``)."""

    def __init__(
        self,
        name: str,
        *,
        kind: str = "step",
        attributes: Mapping[str, Any] | None = None,
        compensate: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__()
        if not name or not isinstance(name, str):
            raise ValueError("step name must be a non-empty string")
        if compensate is not None and not callable(compensate):
            raise TypeError(f"compensate must be callable, got {compensate!r}")
        self.name = name
        self.kind = kind
        self.attributes = dict(attributes) if attributes else {}
        self.compensate = compensate

    @property
    def span(self) -> Span | None:
        return self._span

    def on_rollback(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Register ``fn(*args, **kwargs)`` as this step's undo; ``wf.rollback()`` / ``rollback_on`` run it."""
        span_id = format(self._span.get_span_context().span_id, "016x") if self._span is not None else None
        on_rollback(self.name, span_id, fn, args, kwargs)

    def _for_call(self, signature, args, kwargs) -> "Step":
        return Step(self.name, kind=self.kind, attributes=self.attributes, compensate=self.compensate)

    def _returned(self, result: Any) -> Any:
        if self.compensate is not None:  # the decorated step succeeded: its undo gets its result
            self.on_rollback(self.compensate, result)
        return result

    def _start(self) -> Span:
        return _tracer().start_span(
            self.name, kind=SpanKind.INTERNAL, attributes={**self.attributes, A.WFLO_STEP_KIND: self.kind}
        )

    def _finish(self, span: Span, exc: BaseException | None) -> None:
        if exc is not None:
            _record_exception(span, exc)


def step(
    name: str,
    *,
    kind: str = "step",
    attributes: Mapping[str, Any] | None = None,
    compensate: Callable[..., Any] | None = None,
) -> Step:
    """Open a step span (``with``/``async with``) or decorate a function with one (``kind`` may be "tool").

    ``compensate`` (decorator): once the function returned, ``compensate(result)`` is
    registered as the step's undo (``with`` blocks use ``s.on_rollback(fn, *args)``).
    """
    return Step(name, kind=kind, attributes=attributes, compensate=compensate)


async def execute(fn: Callable[..., Any], inputs: Mapping[str, Any] | None = None, **workflow_kwargs: Any) -> Any:
    """Call ``fn(**inputs)`` inside a workflow and return its result (sync or async ``fn``).

    A function already decorated with ``@workflow`` opens its own; any other function
    runs in a workflow named after it (``workflow_kwargs`` are passed to ``workflow()``).
    """
    inputs = dict(inputs or {})
    if isinstance(getattr(fn, "__wflo_block__", None), Workflow):
        result = fn(**inputs)
        return await result if inspect.isawaitable(result) else result
    name = workflow_kwargs.pop("name", None) or getattr(fn, "__name__", "workflow")
    async with workflow(name, inputs=inputs, **workflow_kwargs):
        result = fn(**inputs)
        return await result if inspect.isawaitable(result) else result
