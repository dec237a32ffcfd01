"""The two ways past the budget cap of issue 14, measured (run it before and after a change).

1. ``max_tokens=-1``: 8 threads, each calling until refused, in a tight budget, against a
   local OpenAI-compatible server that ignores the bad ceiling and answers 256 tokens.
   Reported: spent / budget (must stay <= 1).
2. 80 streams broken mid-way (two content chunks, then the connection drops) against a
   tiny budget. Reported: how many were refused, and the $ charged (the provider bills
   what it generated, so $0 charged means the budget leaked).

Loopback only, bounded in count and time::

    .venv/bin/python bench/budget_holes.py
"""

from __future__ import annotations

import contextvars
import threading

import openai
from opentelemetry.sdk.trace import TracerProvider

import wflo_otel
from wflo_otel import BudgetExceededError
from wflo_otel.demo.server import FakeOpenAIServer

MESSAGES = [{"role": "user", "content": "Write the longest answer you are allowed to."}]


def invalid_ceiling(threads: int = 8, budget: float = 0.0005, calls_per_thread: int = 50) -> tuple[float, int]:
    """spent/budget and calls sent, 8 threads with ``max_tokens=-1``."""
    sent = [0]
    lock = threading.Lock()
    with FakeOpenAIServer(mode="max_output") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        with wflo_otel.workflow("invalid-ceiling", budget_usd=budget, on_exceed="record") as wf:

            def worker() -> None:
                for _ in range(calls_per_thread):
                    try:
                        client.chat.completions.create(
                            model="gpt-4o-mini", messages=MESSAGES, max_tokens=-1, service_tier="default"
                        )
                    except BudgetExceededError:
                        return
                    with lock:
                        sent[0] += 1
                    if wf.remaining_usd == 0:
                        return

            # Each thread runs in a copy of this context: its calls belong to the workflow.
            pool = [threading.Thread(target=contextvars.copy_context().run, args=(worker,)) for _ in range(threads)]
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join(60)
            spent = wf.spent_usd
        client.close()
    return spent / budget, sent[0]


def broken_streams(handle, calls: int = 80, budget: float = 0.001) -> tuple[int, float]:
    """(refused, $ charged) for ``calls`` streams the server cuts after two content chunks."""
    handle.pricebook.set_price("error-midstream", input_per_mtok=0.15, output_per_mtok=0.6)
    refused = 0
    with FakeOpenAIServer() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        with wflo_otel.workflow("broken-streams", budget_usd=budget, on_exceed="record") as wf:
            for _ in range(calls):
                try:
                    stream = client.chat.completions.create(
                        model="error-midstream", messages=MESSAGES, max_tokens=100, stream=True
                    )
                    for _chunk in stream:
                        pass
                except BudgetExceededError:
                    refused += 1
                except Exception:  # the cut connection
                    pass
            spent = wf.spent_usd
        client.close()
    return refused, spent


def main() -> None:
    handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=False, default_output_tokens=300)
    try:
        ratio, sent = invalid_ceiling()
        print(f"max_tokens=-1, 8 threads, budget $0.0005: spent/budget = {ratio:.2f} ({sent} calls sent)")
        refused, spent = broken_streams(handle)
        print(f"80 broken streams, budget $0.001: refused {refused}, charged ${spent:.6f}")
    finally:
        handle.shutdown()


if __name__ == "__main__":
    main()
