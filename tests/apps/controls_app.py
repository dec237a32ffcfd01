"""A workflow process for the cross-process control tests.

``crash URL EXECUTION_ID BUDGET``: steps 1 and 2 each make an LLM call, a checkpoint is
taken after step 2, then step 3 prints ``IN-STEP-3`` and waits to be SIGKILLed.
``approve URL TIMEOUT_S``: waits on an approval gate, then prints ``RELEASED <time>
<status>`` (or ``RAISED <time> <exception>``).
Spans go through the default batch processor, so a SIGKILL loses the ones still queued.
"""

from __future__ import annotations

import os
import sys
import time

import openai
from opentelemetry.sdk.trace import TracerProvider

import wflo_otel

MESSAGES = [{"role": "user", "content": "Research this, please."}]


def crash(url: str, execution_id: str, budget: float) -> None:
    wflo_otel.configure(url, tracer_provider=TracerProvider())
    client = openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="k", max_retries=0)
    with wflo_otel.workflow("research", budget_usd=budget, execution_id=execution_id) as wf:
        notes = []
        for name in ("step-1", "step-2"):
            with wflo_otel.step(name):
                client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=50)
                notes.append(name)
        wf.checkpoint("after-step-2", {"done": notes, "findings": {"count": 2}})
        with wflo_otel.step("step-3"):
            print("IN-STEP-3", wf.spent_usd, flush=True)
            time.sleep(60)


def approve(url: str, timeout_s: float) -> None:
    wflo_otel.configure(url, tracer_provider=TracerProvider())
    with wflo_otel.workflow("refunds") as wf:
        print("EXECUTION", wf.execution_id, flush=True)
        try:
            decision = wf.require_approval("send-refund", message="Refund $420", context={"amount": 420}, timeout_s=timeout_s)
        except (wflo_otel.ApprovalRejected, wflo_otel.ApprovalExpired) as exc:
            print("RAISED", time.time(), type(exc).__name__, exc.decided_by, flush=True)
            return
        print("RELEASED", time.time(), decision.status, decision.decided_by, flush=True)


if __name__ == "__main__":
    mode, *rest = sys.argv[1:]
    if mode == "crash":
        crash(rest[0], rest[1], float(rest[2]))
    else:
        approve(rest[0], float(rest[1]))
