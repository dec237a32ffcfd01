"""One process of the multi-process spend-limit tests (tests/test_limits_processes.py).

argv[1] is a JSON object: ``url`` (database), ``mode`` (``threads``, ``asyncio``,
``hold``: lease then wait to be killed, ``spend``: reserve/settle on the engine
without HTTP), ``usd``, ``start_at`` (epoch: every process begins together), plus
``base_url``, ``threads``, ``ttl``, ``webhook``, ``secret``, ``amount``.
Prints one JSON line: calls that ran, their actual USD, refusals.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import wflo_otel

MODEL = "gpt-4o-mini"


def main() -> None:
    args = json.loads(sys.argv[1])
    alerts = wflo_otel.Alerts(webhook=args["webhook"], secret=args.get("secret"), at=(0.8,), backoff_s=0.1) if args.get("webhook") else None
    spans = InMemorySpanExporter()
    handle = wflo_otel.configure(
        args["url"],
        tracer_provider=TracerProvider(),
        exporter=spans,
        batch=False,
        limits=[wflo_otel.SpendLimit("shared", usd=args["usd"], per="day")],
        alerts=alerts,
        default_service_tier="default",
        instrument_openai=args["mode"] in ("threads", "asyncio"),
    )
    engine = handle.budget_processor.limits
    engine.store.ttl_s = args.get("ttl", 60.0)
    engine.store.timeout_s = 30.0  # twenty processes on a shared CI machine: slow is not down
    engine.store.auto_migrate = False  # the test migrated the database, as `wflo-otel db upgrade` would
    while time.time() < args["start_at"]:
        time.sleep(0.005)
    refused = 0
    mode = args["mode"]
    if mode == "threads":
        refused = _threads(args)
    elif mode == "asyncio":
        refused = asyncio.run(_tasks(args))
    elif mode == "spend":
        holds = engine.reserve(engine.match({}, ()), args["amount"])
        holds.settle(args["amount"])
        engine.sync_all()
    elif mode == "hold":
        engine.reserve(engine.match({}, ()), args["amount"]).settle(args["amount"])
        print(json.dumps({"leased": True}), flush=True)
        time.sleep(600)  # SIGKILLed here
    handle.shutdown()  # reports the spend, returns the unused lease, flushes alerts
    costs = [s.attributes.get("wflo.cost.usd", 0.0) for s in spans.get_finished_spans() if "wflo.cost.usd" in s.attributes]
    print(json.dumps({"calls": len(costs), "usd": sum(costs), "refused": refused, "round_trips": engine.lease_round_trips}), flush=True)


def _request() -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}


def _threads(args) -> int:
    import openai

    client = openai.OpenAI(base_url=args["base_url"], api_key="k", max_retries=0)
    refused = []

    def loop() -> None:
        while True:
            try:
                client.chat.completions.create(**_request())
            except wflo_otel.BudgetExceededError:
                refused.append(1)
                return

    threads = [threading.Thread(target=loop) for _ in range(args["threads"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(refused)


async def _tasks(args) -> int:
    import openai

    client = openai.AsyncOpenAI(base_url=args["base_url"], api_key="k", max_retries=0)
    refused = 0

    async def loop() -> None:
        nonlocal refused
        while True:
            try:
                await client.chat.completions.create(**_request())
            except wflo_otel.BudgetExceededError:
                refused += 1
                return

    try:
        await asyncio.gather(*[loop() for _ in range(args["threads"])])
    finally:
        await client.close()
    return refused


if __name__ == "__main__":
    main()
