"""The one exception wflo-otel raises into user code."""

from __future__ import annotations


class BudgetExceededError(Exception):
    """A workflow's (or budget scope's) spend would exceed, or has exceeded, its budget.

    ``refused`` is True when the call was stopped before anything was sent (its
    worst-case cost did not fit what remains); False when a call that was sent
    pushed the scope over its budget after it returned. ``unknown_price`` is True
    when the call was refused because its model has no known price and the scope
    says ``unknown_model="refuse"``; ``budget_usd`` is then None if the scope has
    no budget.

    A refusal by a spend limit (``wflo_otel.SpendLimit``) names it: ``limit`` (its name),
    ``key`` (the value it is partitioned by, "" when unkeyed) and ``period_start`` (UTC
    datetime); ``budget_usd`` is then the limit's amount and ``spent_usd`` the period's
    spend as known. ``unavailable`` says why when the limit's database was unreachable.
    """

    def __init__(
        self,
        spent_usd: float,
        budget_usd: float | None,
        *,
        workflow: str | None = None,
        execution_id: str | None = None,
        reserved_usd: float = 0.0,
        requested_usd: float | None = None,
        refused: bool = False,
        unknown_price: bool = False,
        limit: str | None = None,
        key: str | None = None,
        period_start=None,
        unavailable: str | None = None,
    ) -> None:
        self.spent_usd = spent_usd
        self.budget_usd = budget_usd
        self.workflow = workflow
        self.execution_id = execution_id
        self.reserved_usd = reserved_usd
        self.requested_usd = requested_usd
        self.refused = refused
        self.unknown_price = unknown_price
        self.limit = limit
        self.key = key
        self.period_start = period_start
        self.unavailable = unavailable
        super().__init__(self._message())

    def _message(self) -> str:
        if self.limit is not None:
            return self._limit_message()
        scope = f"workflow {self.workflow!r}" if self.workflow else "budget scope"
        if self.execution_id:
            scope += f" (execution {self.execution_id})"
        if self.unknown_price:
            return f"{scope}: refused before sending — the model's price is unknown (unknown_model='refuse')"
        if self.refused:
            need = f"${self.requested_usd:.6f}" if self.requested_usd is not None else "a call"
            return (
                f"{scope}: refused before sending — worst case {need} does not fit "
                f"budget ${self.budget_usd:.6f} (spent ${self.spent_usd:.6f}, "
                f"reserved in flight ${self.reserved_usd:.6f})"
            )
        return (
            f"{scope}: spent ${self.spent_usd:.6f} exceeds budget ${self.budget_usd or 0.0:.6f}"
        )

    def _limit_message(self) -> str:
        where = f"spend limit {self.limit!r}" + (f" (key {self.key!r})" if self.key else "")
        period = f" for the period from {self.period_start.isoformat()}" if self.period_start is not None else ""
        if self.unavailable:
            return f"{where}{period}: refused before sending — its database is unavailable ({self.unavailable})"
        remaining = max((self.budget_usd or 0.0) - self.spent_usd - self.reserved_usd, 0.0)
        need = f"${self.requested_usd:.6f}" if self.requested_usd is not None else "a call"
        return (
            f"{where}{period}: refused before sending — worst case {need} does not fit "
            f"${self.budget_usd or 0.0:.6f} (spent ${self.spent_usd:.6f}, in flight ${self.reserved_usd:.6f}, "
            f"remaining about ${remaining:.6f})"
        )

    def __reduce__(self):  # keep the error picklable (multiprocessing, task queues)
        return (
            _rebuild,
            (
                self.spent_usd,
                self.budget_usd,
                self.workflow,
                self.execution_id,
                self.reserved_usd,
                self.requested_usd,
                self.refused,
                self.unknown_price,
                self.limit,
                self.key,
                self.period_start,
                self.unavailable,
            ),
        )


def _rebuild(
    spent, budget, workflow, execution_id, reserved, requested, refused, unknown_price=False,
    limit=None, key=None, period_start=None, unavailable=None,
):
    return BudgetExceededError(
        spent,
        budget,
        workflow=workflow,
        execution_id=execution_id,
        reserved_usd=reserved,
        requested_usd=requested,
        refused=refused,
        unknown_price=unknown_price,
        limit=limit,
        key=key,
        period_start=period_start,
        unavailable=unavailable,
    )


def error_type(exc: BaseException) -> str:
    """``error.type`` per the semantic conventions: the exception's qualified class name."""
    return type(exc).__qualname__
