"""Horizontal scale: replicas of ``wflo-otel serve`` sharing one database.

Two ``serve`` processes receive the same traces cut into batches at different
boundaries, in different orders, some batches twice, concurrently. The database
must end up with exactly the rows one service fed each span once writes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import throwaway_database
from wflo_otel.exporters.store import create_engine
from wflo_otel.ingest import IngestService
from wflo_otel.ingest.synthetic import make_request, split

from test_ingest import post

STEP_COLUMNS = (
    "id, execution_id, trace_id, parent_span_id, name, kind, status, error_type, provider, operation, "
    "request_model, response_model, input_tokens, output_tokens, cache_read_tokens, reasoning_tokens, "
    "cost_usd, cost_source, started_at, ended_at, duration_ms, attributes, events"
)
EXECUTION_COLUMNS = (
    "id, workflow_id, status, inputs, error, budget_usd, cost_total_usd, input_tokens, output_tokens, "
    "llm_calls, trace_id, correlation_id, service_name, started_at, ended_at"
)
# created_at / updated_at of a definition record which delivery came first: not compared.
DEFINITION_COLUMNS = "id, name, description, policies"


def snapshot(url: str) -> dict[str, list[tuple]]:
    async def run():
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                out = {}
                for table, columns in (
                    ("step_executions", STEP_COLUMNS),
                    ("workflow_executions", EXECUTION_COLUMNS),
                    ("workflow_definitions", DEFINITION_COLUMNS),
                ):
                    result = await conn.execute(sa.text(f"SELECT {columns} FROM {table} ORDER BY id"))
                    out[table] = [tuple(_normal(v) for v in row) for row in result.fetchall()]
                return out
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _normal(value):
    if isinstance(value, float):  # sums may add in another order
        return float(f"{value:.12g}")
    return value


class Replica:
    def __init__(self, url: str, cwd: Path) -> None:
        exe = Path(sys.executable).parent / "wflo-otel"
        self.process = subprocess.Popen(
            [str(exe), "--database-url", url, "serve", "--port", "0"],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={k: v for k, v in os.environ.items() if k != "WFLO_INGEST_TOKEN"},
        )
        line = self.process.stdout.readline()
        if "listening on http://127.0.0.1:" not in line:
            self.process.kill()
            raise AssertionError(f"serve did not start: {line!r} {self.process.stderr.read()}")
        self.port = int(line.split("http://127.0.0.1:")[1].split("/")[0])

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        self.process.communicate(timeout=60)
        return self.process.returncode


@pytest.fixture
def reference_url(database_url, tmp_path):
    """A second, empty database on the same engine, for the single-service reference."""
    engine = "sqlite" if database_url.startswith("sqlite") else "postgresql"
    with throwaway_database(engine, tmp_path, "reference.db") as url:
        yield url


def test_two_replicas_with_overlapping_duplicated_batches_write_the_rows_of_one(database_url, reference_url, tmp_path):
    request = make_request(traces=150, spans_per_trace=5, seed=31)
    rng = random.Random(31)
    # Shuffle spans so that children often arrive before their roots, across batches.
    spans = list(request.resource_spans[0].scope_spans[0].spans)
    rng.shuffle(spans)
    del request.resource_spans[0].scope_spans[0].spans[:]
    request.resource_spans[0].scope_spans[0].spans.extend(spans)

    # The reference: one service, every span once.
    with IngestService(reference_url, port=0) as single:
        for part in split(request, 100):
            assert post(single, part.SerializeToString())[0] == 200
    expected = snapshot(reference_url)
    assert len(expected["step_executions"]) == 750

    first = Replica(database_url, tmp_path)
    second = Replica(database_url, tmp_path)  # started once the first has migrated the schema
    try:
        to_first = [p.SerializeToString() for p in split(request, 37)]
        to_second = [p.SerializeToString() for p in reversed(split(request, 53))]
        to_second += rng.sample(to_first, 8)  # the same batches again, to the other replica
        jobs = [(first, body) for body in to_first] + [(second, body) for body in to_second]
        rng.shuffle(jobs)
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda job: post(job[0], job[1])[0], jobs))
        assert statuses == [200] * len(jobs)
    finally:
        codes = (first.stop(), second.stop())
    assert codes == (0, 0)

    assert snapshot(database_url) == expected
