"""Helpers for the span store tests: real SDK spans of realistic workflows, and row checks.

(No tests here; the module is imported by ``test_store_*.py``.)
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from dataclasses import dataclass, field

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from wflo_otel.cli import fetch

import pytest


@pytest.fixture
def pg_url(tmp_path):
    """A throw-away PostgreSQL database (conftest's rules: skips without a server, fails under CI=true)."""
    from conftest import throwaway_database

    with throwaway_database("postgresql", tmp_path) as url:
        yield url


MODELS = ("gpt-4o-mini", "gpt-4o", "o3-mini")


@dataclass
class Expected:
    """What the database must hold for a set of spans."""

    spans: int = 0
    executions: dict[str, dict] = field(default_factory=dict)  # id -> totals and status

    def add(self, other: "Expected") -> None:
        self.spans += other.spans
        self.executions.update(other.executions)


def make_workflows(
    count: int,
    *,
    llm_calls: int = 3,
    steps: int = 1,
    seed: int = 0,
    start_ns: int | None = None,
    workflow: str | None = None,
    failing_every: int = 0,
    over_budget_every: int = 0,
):
    """``count`` workflow executions as real SDK ``ReadableSpan`` objects, and what they should become.

    Each execution: a workflow root span (as ``wflo_otel.workflow`` makes it), ``steps`` plain
    steps and ``llm_calls`` CLIENT spans with GenAI usage attributes and ``wflo.cost.usd``.
    """
    rng = random.Random(seed)
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("wflo-otel-tests")
    expected = Expected()
    clock = start_ns
    for i in range(count):
        name = workflow or f"wf-{i % 3}"
        execution_id = uuid.uuid4().hex
        common = {"wflo.execution.id": execution_id, "wflo.workflow.name": name}
        status = "COMPLETED"
        if failing_every and i % failing_every == failing_every - 1:
            status = "FAILED"
        elif over_budget_every and i % over_budget_every == over_budget_every - 1:
            status = "BUDGET_EXCEEDED"

        def t(step: int) -> int | None:
            return None if clock is None else clock + i * 10_000_000 + step * 1_000_000

        root = tracer.start_span(
            f"invoke_workflow {name}",
            start_time=t(0),
            attributes={
                "gen_ai.operation.name": "invoke_workflow",
                "gen_ai.workflow.name": name,
                "wflo.execution.root": True,
                "wflo.budget.usd": 0.5,
                "wflo.workflow.inputs": json.dumps({"ticket": i}),
                "wflo.step.kind": "workflow",
                **common,
            },
        )
        totals = {"cost": 0.0, "input": 0, "output": 0, "calls": 0, "status": status, "steps": 1 + steps + llm_calls}
        from opentelemetry import trace

        ctx = trace.set_span_in_context(root)
        k = 1
        for s in range(steps):
            tracer.start_span(f"step-{s}", context=ctx, start_time=t(k), attributes={"wflo.step.kind": "step", **common}).end(
                end_time=None if clock is None else t(k) + 500_000
            )
            k += 1
        for _ in range(llm_calls):
            model = rng.choice(MODELS)
            inp, out = rng.randrange(50, 3000), rng.randrange(5, 800)
            cost = round((inp * 0.15 + out * 0.6) / 1e6, 9)
            span = tracer.start_span(
                f"chat {model}",
                context=ctx,
                kind=SpanKind.CLIENT,
                start_time=t(k),
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": model,
                    "gen_ai.response.model": model,
                    "gen_ai.response.id": "chatcmpl-" + uuid.uuid4().hex,
                    "gen_ai.response.finish_reasons": ("stop",),
                    "gen_ai.usage.input_tokens": inp,
                    "gen_ai.usage.output_tokens": out,
                    "gen_ai.usage.cache_read.input_tokens": rng.choice((0, 128)),
                    "server.address": "api.openai.com",
                    "server.port": 443,
                    "wflo.cost.usd": cost,
                    "wflo.cost.source": "genai-prices@test",
                    **common,
                },
            )
            span.end(end_time=None if clock is None else t(k) + rng.randrange(100_000, 900_000))
            k += 1
            totals["cost"] += cost
            totals["input"] += inp
            totals["output"] += out
            totals["calls"] += 1
        root.set_attribute("wflo.execution.status", status)
        root.set_attribute("wflo.execution.cost_usd", totals["cost"])
        if status == "FAILED":
            root.set_status(Status(StatusCode.ERROR, "RateLimitError"))
        root.end(end_time=None if clock is None else t(k) + 1_000_000)
        expected.executions[execution_id] = totals
    spans = list(memory.get_finished_spans())
    expected.spans = len(spans)
    provider.shutdown()
    return spans, expected


def write_groups(url: str, groups, **store_options) -> None:
    """Map each group of SDK spans and write it with a real ``SpanStore`` (migrating first), in order."""
    from wflo_otel.exporters.mapping import map_records
    from wflo_otel.exporters.records import record_from_readable_span
    from wflo_otel.exporters.store import SpanStore

    async def run():
        store = SpanStore(url, **store_options)
        try:
            await store.migrate()
            for group in groups:
                await store.write(map_records(record_from_readable_span(s) for s in group))
        finally:
            await store.dispose()

    asyncio.run(run())


def query(url: str, sql: str, **params):
    return asyncio.run(fetch(url, sql, params))[1]


def assert_database_holds(url: str, expected: Expected) -> None:
    """Every span exactly once, every execution with exact totals from its steps."""
    (steps,) = query(url, "SELECT COUNT(*), COUNT(DISTINCT id) FROM step_executions")
    assert steps == (expected.spans, expected.spans), f"step rows {steps}, expected {expected.spans}"
    rows = query(
        url,
        "SELECT id, status, cost_total_usd, input_tokens, output_tokens, llm_calls,"
        " (SELECT COUNT(*) FROM step_executions s WHERE s.execution_id = e.id) FROM workflow_executions e",
    )
    found = {r[0]: r[1:] for r in rows}
    assert set(found) == set(expected.executions), "executions differ"
    wrong = []
    for execution_id, want in expected.executions.items():
        status, cost, inp, out, calls, nsteps = found[execution_id]
        if (
            status != want["status"]
            or abs(cost - want["cost"]) > 1e-9
            or (inp, out, calls, nsteps) != (want["input"], want["output"], want["calls"], want["steps"])
        ):
            wrong.append((execution_id, found[execution_id], want))
    assert not wrong, f"{len(wrong)} executions with wrong totals, e.g. {wrong[:2]}"
    assert_rollups_match_steps(url)


def assert_rollups_match_steps(url: str) -> None:
    """Each rollup table holds exactly the SUM over the stored LLM steps (its definition)."""
    from wflo_otel.exporters.rollups import ROLLUPS, aggregate_sql

    dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
    for rollup in ROLLUPS:
        keys = ", ".join(rollup.key_columns)
        stored = query(url, f"SELECT {', '.join(rollup.columns)} FROM {rollup.table} ORDER BY {keys}")
        computed = query(url, f"SELECT * FROM ({aggregate_sql(rollup, dialect)}) AS a ORDER BY {keys}")
        assert [r[:-1] for r in stored] == [r[:-1] for r in computed], f"{rollup.table}: keys or counts differ from the steps"
        assert all(abs(a[-1] - b[-1]) < 1e-9 for a, b in zip(stored, computed)), f"{rollup.table}: cost differs"


def batches(spans, size: int, *, seed: int = 0, shuffle: bool = True):
    spans = list(spans)
    if shuffle:
        random.Random(seed).shuffle(spans)
    return [spans[i : i + size] for i in range(0, len(spans), size)]


def block_folder(folder):
    """Take a SQLite database "down": a file holds the name of its folder (a volume not mounted yet).

    A missing folder no longer does: wflo-otel creates it. ``unblock_folder`` brings the database up.
    """
    folder.write_text("not a folder")
    return folder


def unblock_folder(folder) -> None:
    folder.unlink()
    folder.mkdir()
