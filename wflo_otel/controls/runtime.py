"""The controls on a running workflow: checkpoint, resume, rollback, approval gates.

``WorkflowControls`` is a mixin of ``wflo_otel.Workflow``: the workflow calls three hooks
(``_resume_links`` before its span starts, ``_controls_started`` once its budget scope is
attached, ``_controls_finished`` when its body ended) and the user calls the methods.
Every control is a row (``store``) and a span or span event in the trace.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
import math
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, TypeVar

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, TraceFlags

from ..attributes import STATUS_COMPLETED
from ..errors import BudgetExceededError, error_type
from ..redaction import redact_message
from .errors import ApprovalExpired, ApprovalRejected, CheckpointNotFound, ExecutionNotFound
from .records import (
    ROLLBACK_COMPLETED,
    ROLLBACK_FAILED,
    ROLLBACK_PARTIAL,
    STATUS_APPROVED,
    STATUS_EXPIRED,
    STATUS_PENDING,
    Approval,
    ExecutionInfo,
    Snapshot,
)
from .state import json_state, storable_text

if TYPE_CHECKING:  # pragma: no cover  (the store loads SQLAlchemy: only when a control is used)
    from .store import ControlStore, ExecutionRef

_log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

ROLLBACK_ON_ERROR = "error"
ROLLBACK_ON_BUDGET = "budget"
_ROLLBACK_ON = (ROLLBACK_ON_ERROR, ROLLBACK_ON_BUDGET)
DEFAULT_APPROVAL_TIMEOUT_S = 3600.0
MAX_TIMEOUT_S = 10 * 366 * 86400.0  # ten years: far beyond any wait, far below datetime's range
POLICY = "policy"

# Span attributes and events of the controls.
CHECKPOINT_EVENT = "wflo.checkpoint"
ATTR_SNAPSHOT_ID = "wflo.checkpoint.id"
ATTR_SNAPSHOT_NAME = "wflo.checkpoint.name"
ATTR_SNAPSHOT_VERSION = "wflo.checkpoint.version"
ATTR_RESUMED_FROM = "wflo.resume.snapshot_id"
ATTR_RESUMED_SPENT = "wflo.resume.spent_usd"
ATTR_RESUMED_TRACE = "wflo.resume.previous_trace_id"
ATTR_CONTROL = "wflo.control"
ATTR_APPROVAL_ID = "wflo.approval.id"
ATTR_APPROVAL_STATUS = "wflo.approval.status"
ATTR_APPROVAL_DECIDED_BY = "wflo.approval.decided_by"
ATTR_ROLLBACK_STATUS = "wflo.rollback.status"

_current: contextvars.ContextVar["WorkflowControls | None"] = contextvars.ContextVar("wflo_otel_workflow", default=None)


def current_workflow() -> "WorkflowControls | None":
    """The innermost ``workflow()`` open in this context (thread / task), if any."""
    return _current.get()


def _require_workflow(what: str) -> "WorkflowControls":
    wf = _current.get()
    if wf is None:
        raise RuntimeError(f"{what} needs an enclosing wflo_otel.workflow()")
    return wf


def _span_hex() -> tuple[str | None, str | None]:
    """(trace id, span id) of the current span in hex, or Nones."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


class Compensation:
    """How to undo one step: ``fn(*args, **kwargs)``, registered after checkpoint version ``after_version``."""

    __slots__ = ("step", "step_id", "fn", "args", "kwargs", "after_version")

    def __init__(self, step: str, step_id: str | None, fn: Callable[..., Any], args: tuple, kwargs: dict, after_version: int) -> None:
        self.step, self.step_id, self.fn, self.args, self.kwargs, self.after_version = step, step_id, fn, args, kwargs, after_version

    def describe(self) -> dict[str, Any]:
        return {"step": self.step, "step_id": self.step_id, "fn": getattr(self.fn, "__qualname__", repr(self.fn))}


def normalize_rollback_on(value: str | Iterable[str] | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    chosen = frozenset((value,) if isinstance(value, str) else value)
    unknown = chosen - set(_ROLLBACK_ON)
    if unknown:
        raise ValueError(f"rollback_on takes {_ROLLBACK_ON}, got {sorted(unknown)}")
    return chosen


class WorkflowControls:
    """Checkpoints, resume, rollback and approvals of one workflow execution (mixed into ``Workflow``)."""

    # Set by Workflow; declared for type checkers.
    name: str
    execution_id: str | None
    correlation_id: str | None
    budget_usd: float | None
    inputs: dict[str, Any]

    def _init_controls(
        self,
        *,
        resume: str | None,
        rollback_on: str | Iterable[str] | None,
        auto_approve_below_usd: float | None,
        approval_timeout_s: float | None,
    ) -> None:
        if resume is not None and (not isinstance(resume, str) or not resume):
            raise ValueError(f"resume must be an execution id, got {resume!r}")
        if auto_approve_below_usd is not None and (
            isinstance(auto_approve_below_usd, bool)
            or not isinstance(auto_approve_below_usd, (int, float))
            or not 0 <= auto_approve_below_usd < math.inf
        ):
            raise ValueError(f"auto_approve_below_usd must be a finite, non-negative number of USD, got {auto_approve_below_usd!r}")
        _check_timeout(approval_timeout_s, "approval_timeout_s")
        self.resume_id = resume
        self.rollback_on = normalize_rollback_on(rollback_on)
        self.auto_approve_below_usd = auto_approve_below_usd
        self.approval_timeout_s = approval_timeout_s
        self._resumed: ExecutionInfo | None = None
        self._restored: Snapshot | None = None
        self._baseline_usd = 0.0
        self._resume_row: str | None = None
        self._compensations: list[Compensation] = []
        self._last_version = 0
        self._current_token: contextvars.Token | None = None

    def _controls_kwargs(self) -> dict[str, Any]:
        """What a decorated workflow passes on to each call's fresh block."""
        return {
            "resume": self.resume_id,
            "rollback_on": tuple(self.rollback_on),
            "auto_approve_below_usd": self.auto_approve_below_usd,
            "approval_timeout_s": self.approval_timeout_s,
        }

    # -- public ------------------------------------------------------------------------

    @property
    def restored(self) -> Any:
        """The state of the latest checkpoint of the execution resumed (None when not resuming or none was taken)."""
        return self._restored.state if self._restored is not None else None

    @property
    def resumed(self) -> bool:
        return self._resumed is not None

    @property
    def store(self) -> "ControlStore":
        from .store import control_store

        return control_store()

    def checkpoint(self, name: str, state: Any) -> Snapshot:
        """Save ``state`` (JSON) as the next version; durable (committed) when this returns.

        ``TypeError`` naming the key path when the state is not JSON; nothing is written then.
        """
        if not name or not isinstance(name, str):
            raise ValueError("a checkpoint needs a non-empty name")
        storable_text(name, "the checkpoint's name")
        plain = json_state(state)
        trace_id, step_id = _span_hex()
        ref = self._ref()
        store = self.store
        snapshot = store.run(
            lambda: store.checkpoint(ref, name, plain, step_id=step_id, spent_usd=self._spent(), trace_id=trace_id)
        )
        self._last_version = snapshot.version
        trace.get_current_span().add_event(
            CHECKPOINT_EVENT,
            {ATTR_SNAPSHOT_ID: snapshot.id, ATTR_SNAPSHOT_NAME: name, ATTR_SNAPSHOT_VERSION: snapshot.version},
        )
        return snapshot

    def restore(self, name: str | None = None) -> Any:
        """The state of the execution's latest checkpoint (named ``name`` if given); ``CheckpointNotFound`` if none."""
        store = self.store
        execution_id = self._execution_id()
        snapshot = store.run(lambda: store.latest_snapshot(execution_id, name))
        if snapshot is None:
            raise CheckpointNotFound(execution_id, name or "(any)")
        return snapshot.state

    def checkpoints(self) -> list[Snapshot]:
        """Every checkpoint of this execution (resumed ones included), oldest first."""
        store = self.store
        execution_id = self._execution_id()
        return store.run(lambda: store.snapshots(execution_id))

    def rollback(self, to: str | None = None, reason: str | None = None, *, initiated_by: str = "user") -> Any:
        """Run the compensations registered after checkpoint ``to`` (all when None), newest first.

        Each runs as a span; one that raises is recorded and the others still run. One
        ``rollback_actions`` row says what ran and failed (status COMPLETED, PARTIAL or
        FAILED). Returns the checkpoint's state (None without ``to``).
        """
        store = self.store
        execution_id = self._execution_id()
        snapshot = None
        if to is not None:
            snapshot = store.run(lambda: store.latest_snapshot(execution_id, to))
            if snapshot is None:
                raise CheckpointNotFound(execution_id, to)
        chosen = [c for c in self._compensations if snapshot is None or c.after_version >= snapshot.version]
        from ..workflow import step  # the compensations are steps of the trace

        ran: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        with step(f"rollback {to or 'all'}", attributes={ATTR_CONTROL: "rollback"}) as block:
            for compensation in reversed(chosen):
                self._compensations.remove(compensation)
                try:
                    with step(f"compensate {compensation.step}", attributes={ATTR_CONTROL: "compensation"}):
                        _call_sync(compensation.fn, compensation.args, compensation.kwargs)
                    ran.append(compensation.describe())
                except Exception as exc:  # recorded; the other compensations still run
                    failed.append({**compensation.describe(), "error": redact_message(f"{error_type(exc)}: {exc}")})
            status = ROLLBACK_COMPLETED if not failed else (ROLLBACK_PARTIAL if ran else ROLLBACK_FAILED)
            block.span.set_attribute(ATTR_ROLLBACK_STATUS, status)
            ref = self._ref()
            store.run(
                lambda: store.record_rollback(
                    ref,
                    snapshot_id=snapshot.id if snapshot else None,
                    reason=redact_message(reason),  # an exception's text may carry a key, as in workflow_executions.error
                    initiated_by=initiated_by,
                    status=status,
                    details={"ran": ran, "failed": failed, "to_version": snapshot.version if snapshot else None},
                )
            )
        return snapshot.state if snapshot is not None else None

    def require_approval(
        self,
        name: str,
        *,
        message: str | None = None,
        context: Mapping[str, Any] | None = None,
        timeout_s: float | None = DEFAULT_APPROVAL_TIMEOUT_S,
        policy: Callable[[dict[str, Any]], bool | None] | None = None,
    ) -> Approval:
        """Wait until a person approves (returns the decision) or rejects / lets it expire (raises).

        ``policy(request)`` may decide first: True approves, False rejects (recorded as
        decided by ``policy``), None leaves it to a person. The wait is a span.
        """
        gate = self._gate(name, message=message, context=context, timeout_s=timeout_s, policy=policy)
        store = self.store
        with gate.span() as block:
            return gate.outcome(block, store.run(gate.decide))

    async def arequire_approval(
        self,
        name: str,
        *,
        message: str | None = None,
        context: Mapping[str, Any] | None = None,
        timeout_s: float | None = DEFAULT_APPROVAL_TIMEOUT_S,
        policy: Callable[[dict[str, Any]], bool | None] | None = None,
    ) -> Approval:
        """``require_approval`` for async code: the wait does not block the event loop."""
        gate = self._gate(name, message=message, context=context, timeout_s=timeout_s, policy=policy)
        store = self.store
        with gate.span() as block:
            return gate.outcome(block, await store.arun(gate.decide))

    # -- hooks called by Workflow ------------------------------------------------------

    def _resume_links(self) -> list[Link]:
        """Before the span starts: load what a resume continues (``ExecutionNotFound`` if nothing)."""
        if self.resume_id is None:
            return []
        store = self.store
        execution_id = self.resume_id
        generation = store.run(lambda: store.resume_generation(execution_id))  # first: see claim_resume
        info = store.run(lambda: store.execution(execution_id))
        if info is None:
            raise ExecutionNotFound(execution_id)
        _check_resumable(info, self.name)
        restored = store.run(lambda: store.latest_snapshot(execution_id))
        spent_then = restored.spent_usd if restored is not None else 0.0
        baseline = max(spent_then, info.cost_total_usd)
        if self.budget_usd is None:
            self.budget_usd = info.budget_usd
        previous = restored.trace_id if restored is not None else info.trace_id
        ref = self._ref()
        snapshot_id = restored.id if restored is not None else None
        # The claim: of two resumes that read this state, one inserts; the other is ExecutionBusy here,
        # before its span starts or its body runs.
        self._resume_row = store.run(lambda: store.claim_resume(ref, generation, snapshot_id, previous, baseline))
        self._resumed, self._restored, self._baseline_usd = info, restored, baseline
        self._last_version = restored.version if restored is not None else 0
        linked = self._restored if self._restored is not None and self._restored.step_id else None
        if linked is None or not linked.trace_id:
            return []
        context = SpanContext(int(linked.trace_id, 16), int(linked.step_id, 16), is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        return [Link(context, {"wflo.link": "resumed-from"})]

    def _controls_started(self, span: trace.Span, scope: Any) -> None:
        """The span and budget scope exist: carry the spend over, wire budget approvals, become current."""
        if scope is not None and self.on_exceed == "approve":  # type: ignore[attr-defined]
            from .budget_approval import BudgetApprover

            scope.approver = BudgetApprover(self)
        if self._resumed is not None:
            self._record_resume(span, scope)
        self._current_token = _current.set(self)  # last: nothing above may leave it set

    def _record_resume(self, span: trace.Span, scope: Any) -> None:
        if scope is not None:
            scope.spent_usd = self._baseline_usd
        previous = self._restored.trace_id if self._restored is not None else self._resumed.trace_id
        span.set_attribute(ATTR_RESUMED_SPENT, self._baseline_usd)
        if previous:
            span.set_attribute(ATTR_RESUMED_TRACE, previous)
        if self._restored is not None:
            span.set_attribute(ATTR_RESUMED_FROM, self._restored.id)
        store, resume_row = self.store, self._resume_row
        trace_id = format(span.get_span_context().trace_id, "032x")
        store.run(lambda: store.resume_started(resume_row, trace_id))

    def _controls_finished(self, exc: BaseException | None) -> None:
        """The body ended: roll back if ``rollback_on`` says so (the exception then propagates)."""
        try:
            trigger = _rollback_trigger(exc, self.rollback_on)
            if trigger is not None and self._compensations:
                try:
                    self.rollback(reason=f"{error_type(exc)}: {exc}", initiated_by=f"rollback_on:{trigger}")
                except Exception:  # never hide the body's exception behind the rollback's
                    _log.exception("wflo-otel: automatic rollback of execution %s failed", self.execution_id)
        finally:
            if self._current_token is not None:
                _current.reset(self._current_token)
                self._current_token = None

    # -- internals ---------------------------------------------------------------------

    def register_compensation(self, step_name: str, step_id: str | None, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        if not callable(fn):
            raise TypeError(f"a compensation must be callable, got {fn!r}")
        self._compensations.append(Compensation(step_name, step_id, fn, args, kwargs, self._last_version))

    def _spent(self) -> float:
        return float(self.spent_usd)  # type: ignore[attr-defined]

    def _execution_id(self) -> str:
        if self.execution_id is None:
            raise RuntimeError("the workflow has not started: use the controls inside `with workflow(...)`")
        return self.execution_id

    def _ref(self) -> "ExecutionRef":
        from .store import ExecutionRef

        trace_id, _ = _span_hex()
        span = getattr(self, "_span", None)
        if span is not None:
            trace_id = format(span.get_span_context().trace_id, "032x")
        return ExecutionRef(
            self._execution_id(),
            self.name,
            budget_usd=self.budget_usd,
            trace_id=trace_id,
            correlation_id=self.correlation_id,
            inputs=json_state(self.inputs, "inputs") if _is_json(self.inputs) else None,
        )

    def _gate(self, name: str, **kwargs: Any) -> "_Gate":
        return _Gate(self, name, **kwargs)


class _Gate:
    """One approval request: validated before anything is written; the wait is a step span."""

    def __init__(
        self,
        wf: WorkflowControls,
        name: str,
        *,
        message: str | None,
        context: Mapping[str, Any] | None,
        timeout_s: float | None,
        policy: Callable[[dict[str, Any]], bool | None] | None,
        kind: str = "gate",
        requested_usd: float | None = None,
        policy_decision: bool | None = None,
    ) -> None:
        if not name or not isinstance(name, str):
            raise ValueError("an approval needs a non-empty name")
        _check_timeout(timeout_s)
        self.wf = wf
        self.name = name
        storable_text(name, "the approval's name")
        if message is not None:
            if not isinstance(message, str):
                raise TypeError(f"an approval's message must be text, got {type(message).__name__}")
            storable_text(message, "the approval's message")
        self.message = message
        self.context = json_state(context, "context") if context is not None else None
        self.timeout_s = float(timeout_s) if timeout_s is not None else None
        self.kind = kind
        self.requested_usd = requested_usd
        self.decision = policy_decision
        if policy is not None and self.decision is None:
            self.decision = _policy_decision(
                policy({"name": name, "message": message, "context": self.context, "workflow": wf.name, "execution_id": wf.execution_id})
            )
        self.ref = wf._ref()
        self.step_id: str | None = None

    @contextlib.contextmanager
    def span(self):
        """The wait's step span; the request row names it (``step_id``)."""
        from ..workflow import step

        with step(f"approval {self.name}", attributes={ATTR_CONTROL: "approval", "wflo.approval.name": self.name}) as block:
            self.step_id = format(block.span.get_span_context().span_id, "016x")
            yield block

    async def decide(self) -> Approval:
        """Write the request (decided at once by a policy, else PENDING) and wait for its decision."""
        store = self.wf.store
        decided = self.decision is not None
        approval = await store.create_approval(
            self.ref,
            self.name,
            kind=self.kind,
            message=self.message,
            context=self.context,
            requested_usd=self.requested_usd,
            timeout_s=self.timeout_s,
            step_id=self.step_id,
            decided_by=POLICY if decided else None,
            approved=bool(self.decision) if decided else None,
        )
        if approval.status != STATUS_PENDING:
            return approval
        return await store.wait_for_decision(approval.id)

    def outcome(self, block: Any, approval: Approval) -> Approval:
        span = block.span
        span.set_attribute(ATTR_APPROVAL_ID, approval.id)
        span.set_attribute(ATTR_APPROVAL_STATUS, approval.status)
        if approval.decided_by:
            span.set_attribute(ATTR_APPROVAL_DECIDED_BY, approval.decided_by)
        if approval.status == STATUS_APPROVED:
            return approval
        if approval.status == STATUS_EXPIRED:
            raise ApprovalExpired(approval)
        raise ApprovalRejected(approval)


def _call_sync(fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """Call a compensation; one that returns a coroutine is an error (it would never run)."""
    result = fn(*args, **kwargs)
    if inspect.iscoroutine(result):
        result.close()
        raise TypeError(
            f"compensation {getattr(fn, '__qualname__', fn)!r} is async: rollback runs compensations "
            "synchronously; register a sync function (e.g. one that calls asyncio.run_coroutine_threadsafe)"
        )


def _check_resumable(info: ExecutionInfo, workflow: str) -> None:
    """Refuse, before any span or row, a resume that would continue the wrong thing."""
    if info.workflow != workflow:
        raise ValueError(
            f"execution {info.id} is of workflow {info.workflow!r}, not {workflow!r}: resume it with workflow({info.workflow!r}, resume=...)"
        )
    if info.status == STATUS_COMPLETED:
        raise ValueError(f"execution {info.id} of workflow {workflow!r} is COMPLETED; there is nothing to resume")


def _policy_decision(value: Any) -> bool | None:
    """A policy's answer: only True, False and None decide; a truthy "deny" must not approve."""
    if value is None or isinstance(value, bool):
        return value
    raise TypeError(f"an approval policy must return True, False or None, got {value!r}")


def _check_timeout(timeout_s: float | None, name: str = "timeout_s") -> None:
    """Finite, positive and at most ``MAX_TIMEOUT_S``: ``now + timedelta(seconds=inf)`` would overflow after validation."""
    if timeout_s is None:
        return
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not 0 < timeout_s <= MAX_TIMEOUT_S:
        raise ValueError(
            f"{name} must be a positive number of seconds up to {MAX_TIMEOUT_S:.0f} (10 years) or None, got {timeout_s!r}"
        )


def _is_json(value: Any) -> bool:
    try:
        json_state(value)
    except TypeError:
        return False
    return True


def _rollback_trigger(exc: BaseException | None, rollback_on: frozenset[str]) -> str | None:
    if exc is None or not isinstance(exc, Exception):
        return None
    kind = ROLLBACK_ON_BUDGET if isinstance(exc, BudgetExceededError) else ROLLBACK_ON_ERROR
    return kind if kind in rollback_on else None


def checkpoint(name: str) -> Callable[[F], F]:
    """Decorator: the function's return value is saved as checkpoint ``name`` of the current workflow.

    Sync and async functions; the checkpoint is durable before the caller gets the value.
    """
    if not name or not isinstance(name, str):
        raise ValueError("a checkpoint needs a non-empty name")

    def decorate(fn: F) -> F:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args, **kwargs):
                state = await fn(*args, **kwargs)
                _require_workflow(f"@checkpoint({name!r})").checkpoint(name, state)  # a few ms: durable first
                return state

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            state = fn(*args, **kwargs)
            _require_workflow(f"@checkpoint({name!r})").checkpoint(name, state)
            return state

        return wrapper  # type: ignore[return-value]

    return decorate


def on_rollback(step_name: str, step_id: str | None, fn: Callable[..., Any], args: tuple, kwargs: dict) -> None:
    """Register ``fn(*args, **kwargs)`` as the undo of a step, with the workflow open around it."""
    _require_workflow("on_rollback").register_compensation(step_name, step_id, fn, args, kwargs)
