"""A downstream service for the cross-process budget test.

Serves ``POST /work`` on 127.0.0.1 (port printed on stdout). Each request
continues the caller's trace (W3C traceparent + baggage), then makes LLM calls
with the real openai client against ``OPENAI_BASE_URL`` until the budget that
travelled with the request refuses one, and answers what it saw.
"""

from __future__ import annotations

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

import wflo_otel

handle = wflo_otel.configure(tracer_provider=TracerProvider(), exporter=False)
tracer = trace.get_tracer("downstream", tracer_provider=handle.tracer_provider)
client = openai.OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="k", max_retries=0)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        context = propagate.extract({k.lower(): v for k, v in self.headers.items()})
        answer = {"calls": 0, "refused": None}
        with tracer.start_as_current_span("POST /work", context=context, kind=SpanKind.SERVER) as span:
            answer["execution_id"] = span.attributes.get("wflo.execution.id")
            answer["workflow"] = span.attributes.get("wflo.workflow.name")
            scope = handle.budget_processor.chain_of(span.get_span_context().span_id)[0]
            answer["budget_usd"] = scope.budget_usd
            for _ in range(body["max_calls"]):
                try:
                    client.chat.completions.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": "work"}], max_tokens=body["max_tokens"]
                    )
                    answer["calls"] += 1
                except wflo_otel.BudgetExceededError as exc:
                    answer["refused"] = {"workflow": exc.workflow, "execution_id": exc.execution_id, "refused": exc.refused}
                    break
            answer["spent_usd"] = scope.spent_usd
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
try:
    server.serve_forever()
finally:
    handle.shutdown()
    sys.exit(0)
