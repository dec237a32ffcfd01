"""The wflo-otel demo: a small support agent with a budget, its cost read back with SQL.

Run it with ``wflo-otel demo`` (or ``python -m wflo_otel.demo``). Nothing leaves
your machine: the real ``openai`` client talks to a fake OpenAI-compatible
server on 127.0.0.1, which answers with lorem ipsum but reports token usage the
way the real API does (cached prompt tokens, reasoning tokens, streamed usage).

What it shows, in order:

1. ``wflo_otel.configure()`` — one call: tracing, budgets, the OpenAI
   instrumentation and an exporter that writes every span to SQL (./wflo.db).
2. A workflow with steps (``wflo_otel.workflow`` / ``wflo_otel.step``): every
   LLM call inside becomes a span with its tokens and its cost in USD.
3. The same workflow with a budget too small for it: the call that cannot fit
   is refused *before* it is sent, with ``wflo_otel.BudgetExceededError``.
4. The decorator form, ``@wflo_otel.workflow(...)``.
5. A cost report, read back from the database with plain SQL.
"""

from __future__ import annotations

import io
import os
import sys
from typing import TextIO

import wflo_otel
from wflo_otel.settings import database_url as resolve_database_url
from wflo_otel.cli import print_report
from wflo_otel.configuration import current_handle

from .server import FakeOpenAIServer

CHEAP_MODEL = "gpt-4o-mini"
REASONING_MODEL = "o4-mini"  # reports reasoning tokens, which are billed as output

# Your ticket system and knowledge base would go here.
TICKETS = {
    4711: "Billing question: I was charged twice for my March invoice. Can you refund the duplicate?",
    4712: "The export to CSV has been failing since yesterday with 'permission denied'.",
}
KNOWLEDGE_BASE = {
    "billing": "Duplicate charges are refunded within 5 business days after verification.",
    "refund": "Refunds go back to the original payment method.",
    "export": "CSV exports need the 'reports:read' permission on the workspace.",
    "permission": "Workspace admins grant permissions under Settings > Members.",
}
# OpenAI caches long prompt prefixes that repeat across calls (a fixed system prompt)
# and bills those tokens at a discount. The local server imitates that for any
# prompt containing "[cached]": it reports half of the prompt tokens as cached.
TRIAGE_PROMPT = "[cached] You are a support triage assistant. Answer with one word: billing, bug or other."


def support_agent(client, ticket_id: int, *, budget_usd: float, out: TextIO) -> str:
    """One execution of the "support-agent" workflow: retrieve, classify, draft a reply, review it."""
    ticket = TICKETS[ticket_id]
    with wflo_otel.workflow("support-agent", budget_usd=budget_usd, inputs={"ticket": ticket_id}) as wf:

        def progress(step: str, detail: str) -> None:
            print(f"  {step:<12} {detail:<42} spent ${wf.spent_usd:.6f} of ${budget_usd:.4f}", file=out)

        # A tool step: no LLM call, just a span (kind "tool") with its timing.
        with wflo_otel.step("retrieve", kind="tool"):
            topics = [topic for topic in KNOWLEDGE_BASE if topic in ticket.lower()]
            notes = " ".join(KNOWLEDGE_BASE[topic] for topic in topics)
        progress("retrieve", "knowledge base: " + ", ".join(topics))

        # Calls made inside a workflow are traced and priced automatically.
        with wflo_otel.step("classify"):
            answer = client.chat.completions.create(
                model=CHEAP_MODEL,
                messages=[{"role": "system", "content": TRIAGE_PROMPT}, {"role": "user", "content": ticket}],
                max_completion_tokens=50,
            )
        usage = answer.usage
        progress("classify", f"{answer.model}, {usage.prompt_tokens_details.cached_tokens} cached tokens")

        # Streams too: wflo-otel asks for the usage chunk and prices the call when the stream ends.
        with wflo_otel.step("draft-reply"):
            stream = client.chat.completions.create(
                model=CHEAP_MODEL,
                messages=[
                    {"role": "system", "content": "Draft a friendly reply using these notes: " + notes},
                    {"role": "user", "content": ticket},
                ],
                max_completion_tokens=300,
                stream=True,
            )
            draft = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
        progress("draft-reply", f"streamed {len(draft)} characters")

        # A reasoning model: its hidden reasoning tokens are billed (and recorded) as output.
        # Before sending, its worst case (prompt + max_completion_tokens) must fit the budget.
        with wflo_otel.step("review"):
            review = client.chat.completions.create(
                model=REASONING_MODEL,
                messages=[{"role": "user", "content": f"Review this reply to '{ticket}':\n\n{draft}"}],
                max_completion_tokens=400,
            )
        reasoning = review.usage.completion_tokens_details.reasoning_tokens
        progress("review", f"{review.model}, {reasoning} reasoning tokens")
        return draft


def main(database_url: str | None = None, *, quiet: bool = False) -> int:
    """Run the demo; write to ``database_url`` (default: $WFLO_DATABASE_URL or ./wflo.db)."""
    try:
        import openai
    except ImportError:
        print(
            "The demo drives the real OpenAI client, which is not installed: pip install openai"
            " (or, in a clone of wflo-otel: pip install -e '.[openai]')",
            file=sys.stderr,
        )
        return 1
    if current_handle() is not None:
        print("wflo-otel is already configured in this process; run the demo on its own", file=sys.stderr)
        return 1
    out = io.StringIO() if quiet else sys.stdout
    url = resolve_database_url(database_url)

    with FakeOpenAIServer() as server:
        print(f"wflo-otel demo: a support agent against a local OpenAI-compatible server ({server.base_url})", file=out)
        handle = wflo_otel.configure(url)  # batch export; handle.shutdown() flushes
        try:
            client = openai.OpenAI(base_url=server.base_url, api_key="demo-key", max_retries=0)

            print("\n1) support-agent, ticket 4711, within budget", file=out)
            support_agent(client, 4711, budget_usd=0.05, out=out)

            print("\n2) support-agent, ticket 4712, with a budget too small for the review", file=out)
            sent_before = server.request_count
            try:
                support_agent(client, 4712, budget_usd=0.0005, out=out)
            except wflo_otel.BudgetExceededError as exc:
                print(f"  BudgetExceededError: {exc}", file=out)
                sent = server.request_count - sent_before
                print(f"  the review was never sent: the server received {sent} requests in this run", file=out)

            print("\n3) the decorator form: each call is one execution, its arguments are the inputs", file=out)

            @wflo_otel.workflow("summarize", budget_usd=0.01)
            def summarize(ticket: int) -> str:
                reply = client.chat.completions.create(
                    model=CHEAP_MODEL,
                    messages=[{"role": "user", "content": "Summarize in one line: " + TICKETS[ticket]}],
                    max_completion_tokens=60,
                )
                return reply.choices[0].message.content

            for ticket_id in TICKETS:
                print(f"  summarize(ticket={ticket_id}): {summarize(ticket=ticket_id)[:50]}...", file=out)
        finally:
            handle.shutdown()  # flushes every span to the database

    print_report(url, out=out)
    _print_next_steps(url, out)
    return 0


def _print_next_steps(url: str, out: TextIO) -> None:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    print("\nEvery span is a row you can query with plain SQL (wflo-otel report prints the above).", file=out)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        path = parsed.database
        shown = path if os.path.isabs(path) else os.path.normpath(path)  # ./wflo.db -> wflo.db
        print(f"Database: {os.path.abspath(path)}", file=out)
        print(
            f'Try: sqlite3 {shown} "SELECT workflow_id, status, budget_usd, cost_total_usd '
            'FROM workflow_executions ORDER BY started_at DESC LIMIT 5"',
            file=out,
        )
    else:
        print(f"Database: {parsed.render_as_string(hide_password=True)}", file=out)
