"""The dashboard's Limits and Approvals pages over HTTP on both engines.

Limits: the current periods shown equal the view ``spend_per_limit`` (ended periods left out),
and the Overview shows them too. Approvals: deciding goes through the controls' store, needs
the CSRF token and (with a token) a signed-in browser, is refused by a read-only ``ui``, and a
second decision is answered 409 with the first one, which stays.
"""

from __future__ import annotations

import re

import pytest

from dashboard_support import Client, add_limit_periods, add_pending_approval, dashboard_spans, write_spans
from test_store_support import query
from wflo_otel.dashboard.server import UIServer

TOKEN = "s3cret"


@pytest.fixture
def filled_url(database_url):
    write_spans(database_url, dashboard_spans(6, hostile_every=0))
    return database_url


def _status(url: str, approval_id: str):
    return query(url, "SELECT status, decided_by, reason FROM approval_requests WHERE id = :i", i=approval_id)[0]


def _csrf(page: str) -> str:
    return re.search(r'name=csrf value="([^"]+)"', page).group(1)


def _signed_in(server) -> Client:
    client = Client(server.url)
    csrf = _csrf(client.get("/signin").text)
    assert client.post("/signin", data={"token": TOKEN, "csrf": csrf, "next": "/approvals"}).status_code == 303
    return client


def test_the_limits_page_shows_each_current_period_as_the_view_has_it(filled_url, monkeypatch):
    from wflo_otel.dashboard import queries

    monkeypatch.setattr(queries, "OVERVIEW_LIMITS", 2)
    current = add_limit_periods(filled_url)
    with UIServer(filled_url, port=0) as ui:
        client = Client(ui.url)
        page = client.get("/limits").text
        overview = client.get("/").text
        api = client.get("/api/overview?window=today").json()
    expected = query(
        filled_url,
        "SELECT limit_name, limit_key, spent_usd, leased_usd, remaining_usd FROM spend_per_limit"
        " WHERE limit_name || '/' || limit_key IN ('daily-total/*', 'per-tenant/tenant-0', 'per-tenant/tenant-1')"
        " AND spent_usd <> 0.009 ORDER BY limit_name, limit_key",
    )
    assert [(n, k, s) for n, k, s, _, _ in expected] == sorted(current)
    shown = [float(v) for v in re.findall(r'id="limit-spent-\d+" data-value="([^"]+)"', page)]
    assert shown == [s for _, _, s, _, _ in expected]  # the ended period of tenant-1 is not shown
    for _, _, _, leased, remaining in expected:
        assert f"${leased:,.6f}" in page and f"${remaining:,.6f}" in page
    assert 'class="meter over"' in page  # tenant-0 spent past its limit
    # The Overview: the periods nearest their limit first (tenant-0 125 %, tenant-1 30 %), and how many in all.
    nearest = [0.0125, 0.003]
    assert [float(v) for v in re.findall(r'id="limit-spent-\d+" data-value="([^"]+)"', overview)] == nearest
    assert "all 3 on the Limits page" in overview
    assert [p["spent_usd"] for p in api["limits"]] == nearest and api["limits_total"] == 3


def test_a_read_only_ui_lists_approvals_without_buttons_and_refuses_a_decision(filled_url):
    approval_id = add_pending_approval(filled_url)
    with UIServer(filled_url, port=0) as ui:
        client = Client(ui.url)
        page = client.get("/approvals").text
        assert "send-refund" in page and "Refund $420" in page and "--allow-approvals" in page
        assert f'id="approve-{approval_id}"' not in page
        csrf = client.cookies["wflo_csrf"]
        answer = client.post(f"/approvals/{approval_id}/decide", data={"csrf": csrf, "decision": "approve", "by": "eve"})
    assert answer.status_code == 403
    assert _status(filled_url, approval_id) == ("PENDING", None, None)


def test_an_approval_needs_sign_in_and_the_csrf_token_and_a_second_decision_shows_the_first(filled_url):
    approval_id = add_pending_approval(filled_url)
    path = f"/approvals/{approval_id}/decide"
    with UIServer(filled_url, port=0, token=TOKEN, allow_approvals=True) as ui:
        stranger = Client(ui.url)
        refused = stranger.post(path, data={"csrf": "x", "decision": "approve", "by": "eve"})
        assert refused.status_code == 303 and "/signin" in refused.headers["Location"]
        client = _signed_in(ui)
        page = client.get("/approvals").text
        assert f'id="approve-{approval_id}"' in page
        assert client.post(path, data={"csrf": "forged", "decision": "approve", "by": "eve"}).status_code == 403
        assert client.post(path, data={"csrf": _csrf(page), "decision": "reject", "by": "bob"}).status_code == 400  # no reason
        invisible = client.post(path, data={"csrf": _csrf(page), "decision": "approve", "by": "\u200b\ufeff"})
        assert invisible.status_code == 400 and "non-blank name" in invisible.text  # the CLI's and HTTP's check, not a 503
        assert _status(filled_url, approval_id) == ("PENDING", None, None)

        done = client.post(path, data={"csrf": _csrf(page), "decision": "approve", "by": "alice", "comment": "known customer"})
        assert done.status_code == 303 and done.headers["Location"] == f"/approvals?decided={approval_id}"
        assert _status(filled_url, approval_id) == ("APPROVED", "alice", "known customer")
        after = client.get(done.headers["Location"]).text
        assert "approved by alice" in after and f'id="approve-{approval_id}"' not in after

        second = client.post(path, data={"csrf": _csrf(page), "decision": "reject", "by": "bob", "comment": "no"})
    assert second.status_code == 409
    assert "Already decided: APPROVED by alice" in second.text and "known customer" in second.text
    assert _status(filled_url, approval_id) == ("APPROVED", "alice", "known customer")


def test_a_configured_approver_name_is_who_decides(filled_url):
    approval_id = add_pending_approval(filled_url)
    with UIServer(filled_url, port=0, allow_approvals=True, approver="ops-oncall") as ui:
        client = Client(ui.url)
        page = client.get("/approvals").text
        assert "as ops-oncall" in page and f'id="by-{approval_id}"' not in page
        answer = client.post(
            f"/approvals/{approval_id}/decide", data={"csrf": _csrf(page), "decision": "reject", "by": "mallory", "comment": "too much"}
        )
    assert answer.status_code == 303
    assert _status(filled_url, approval_id) == ("REJECTED", "ops-oncall", "too much")


def test_serve_decides_in_the_browser_with_its_token(filled_url):
    from wflo_otel.ingest.server import IngestService

    approval_id = add_pending_approval(filled_url)
    with IngestService(filled_url, port=0, token=TOKEN) as service:
        client = _signed_in(service)
        page = client.get("/approvals").text
        assert f'id="approve-{approval_id}"' in page
        answer = client.post(f"/approvals/{approval_id}/decide", data={"csrf": _csrf(page), "decision": "approve", "by": "carol"})
    assert answer.status_code == 303
    assert _status(filled_url, approval_id) == ("APPROVED", "carol", None)


def test_the_ui_command_decides_only_with_allow_approvals(tmp_path):
    import os
    import signal
    import subprocess
    import sys

    url = f"sqlite+aiosqlite:///{tmp_path}/wflo.db"
    write_spans(url, dashboard_spans(3, hostile_every=0))
    approval_id = add_pending_approval(url)
    command = [sys.executable, "-c", "from wflo_otel.cli import main; raise SystemExit(main())", "--database-url", url, "ui", "--port", "0"]
    env = {k: v for k, v in os.environ.items() if k not in ("WFLO_INGEST_TOKEN", "WFLO_APPROVER")}
    for extra, expected in (([], ("PENDING", None, None)), (["--allow-approvals", "--approver", "ops-oncall"], ("APPROVED", "ops-oncall", None))):
        process = subprocess.Popen(command + extra, stdout=subprocess.PIPE, text=True, env=env)
        try:
            base = re.search(r"on (http://\S+)/", process.stdout.readline()).group(1)
            client = Client(base)
            client.get("/approvals")
            client.post(f"/approvals/{approval_id}/decide", data={"csrf": client.cookies["wflo_csrf"], "decision": "approve"})
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=20) == 0
        assert _status(url, approval_id) == expected
