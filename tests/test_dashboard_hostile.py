"""The dashboard and the other non-ingest routes under hostile input: slow and large bodies,
open redirects, empty tokens, out-of-range dates and pages (each was a hang, a redirect
off-site, an open dashboard or a 500).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from dashboard_support import Client
from test_ingest import get
from wflo_otel.ingest import IngestLimits, IngestService

pytestmark = pytest.mark.one_leg  # nothing here depends on the openai line

SLOW = IngestLimits(max_connections=4, header_timeout_s=5.0, body_timeout_s=0.5, idle_timeout_s=5.0)


def _answer(sock: socket.socket) -> bytes:
    """Everything the server says until it closes ``sock`` (a socket timeout if it never does)."""
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


@pytest.mark.parametrize("path", ["/signin", "/signout", "/approvals/a1/decide", "/v1/approvals/a1/approve"])
def test_slow_bodies_before_sign_in_are_answered_408_and_cannot_take_the_connection_cap(tmp_path, path):
    with IngestService(f"sqlite+aiosqlite:///{tmp_path}/w.db", port=0, token="tok", limits=SLOW) as service:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            "Content-Length: 1000\r\n\r\ncsrf="
        ).encode()
        socks = [socket.create_connection(("127.0.0.1", service.port), timeout=3) for _ in range(SLOW.max_connections)]
        try:
            for sock in socks:
                sock.sendall(head)
            start = time.monotonic()
            answers = [_answer(sock) for sock in socks]  # before the fix: no answer, socket.timeout
            assert time.monotonic() - start < 2.5
        finally:
            for sock in socks:
                sock.close()
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers
        assert get(service, "/health")[0] == 200  # the cap is free again


def test_bodies_of_non_ingest_routes_are_bounded_and_the_sign_in_form_is_small(tmp_path):
    with IngestService(f"sqlite+aiosqlite:///{tmp_path}/w.db", port=0, token="tok") as service:
        client = Client(service.url)
        assert client.post("/signin", body=b"x" * 70_000).status_code == 413  # over the 64 KiB of any form
        chunked = b"".join(b"%x\r\n%s\r\n" % (8192, b"y" * 8192) for _ in range(9)) + b"0\r\n\r\n"
        with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
            sock.sendall(b"POST /v1/approvals/a1/approve HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
            assert _answer(sock).startswith(b"HTTP/1.1 413 ")
        token = "token=" + "t" * 5000
        assert client.post("/signin", body=token.encode(), headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code == 413


OFF_SITE = [
    "//evil.example/x",
    "/\t/evil.example/x",
    "/\n/evil.example/x",
    "/\r/evil.example/x",
    "/\\evil.example/x",
    "\\\\evil.example/x",
    "/\\/evil.example/x",
    " //evil.example/x",
    "/\u3000/evil.example/x",
    "/\x00/evil.example/x",
    "https://evil.example/x",
]


def _signed_in_to(ui, next_path: str):
    import re

    client = Client(ui.url)
    csrf = re.search(r'name=csrf value="([^"]+)"', client.get("/signin").text).group(1)
    return client.post("/signin", data={"token": "s3cret", "csrf": csrf, "next": next_path})


def test_sign_in_never_redirects_off_site_whatever_next_says(tmp_path):
    from wflo_otel.dashboard.server import UIServer

    with UIServer(f"sqlite+aiosqlite:///{tmp_path}/w.db", port=0, token="s3cret") as ui:
        for payload in OFF_SITE:
            response = _signed_in_to(ui, payload)
            assert (response.status_code, response.headers["location"]) == (303, "/"), repr(payload)
        kept = _signed_in_to(ui, "/executions?window=7d&sort=cost")
        assert kept.headers["location"] == "/executions?window=7d&sort=cost"


@pytest.mark.parametrize("argv, env", [(["--token", ""], None), (["--token", "  "], None), ([], ""), ([], " ")])
def test_ui_refuses_an_empty_token_instead_of_serving_without_auth(argv, env, tmp_path, monkeypatch, capsys):
    from wflo_otel.cli import main

    db = tmp_path / "w.db"
    db.touch()  # an existing file: the database is not what is wrong
    if env is None:
        monkeypatch.delenv("WFLO_INGEST_TOKEN", raising=False)
    else:
        monkeypatch.setenv("WFLO_INGEST_TOKEN", env)
    # Before the fix it served without auth: stopped by SIGINT after 10 s, exit 0.
    stop = threading.Timer(10, os.kill, (os.getpid(), signal.SIGINT))
    stop.start()
    try:
        code = main(["--database-url", f"sqlite:///{db}", "ui", "--port", "0", *argv])
    finally:
        stop.cancel()
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("wflo-otel ui:") and "empty" in err and err.count("\n") == 1
    with pytest.raises(ValueError):
        from wflo_otel.dashboard.server import UIServer

        UIServer(f"sqlite:///{db}", token="")


@pytest.fixture
def filled_url(database_url):
    from dashboard_support import dashboard_spans, write_spans

    write_spans(database_url, dashboard_spans(executions=3))
    return database_url


OUT_OF_RANGE = [
    ("/api/overview?window=custom&from=9999-12-31&to=9999-12-31", "before 9999-12-31"),
    ("/?window=custom&from=9999-12-31", "before 9999-12-31"),
    ("/api/executions?window=custom&from=9999-12-30&to=9999-12-31", "before 9999-12-31"),
    (f"/api/executions?page={10**30}", "page must be at most"),
    (f"/executions?page={10**30}", "page must be at most"),
    ("/api/executions?page=1000001", "page must be at most"),
]


def test_out_of_range_dates_and_pages_are_400_with_the_reason_not_500(filled_url):
    from wflo_otel.dashboard.server import UIServer

    with UIServer(filled_url, port=0) as ui:
        client = Client(ui.url)
        for path, says in OUT_OF_RANGE:
            response = client.get(path)
            assert (response.status_code, says in response.text) == (400, True), (path, response.text[:300])
        last = client.get("/api/executions?page=1000000").json()
        assert (last["page"], last["executions"]) == (1000000, [])
        assert client.get("/api/overview?window=custom&from=0001-01-01&to=0001-01-02").status_code == 200
        assert client.get("/api/overview?window=custom&from=9999-12-30").status_code == 200


def test_report_html_says_what_is_wrong_with_the_window_or_the_file(filled_url, tmp_path, capsys):
    from wflo_otel.cli import main

    out = tmp_path / "r.html"
    code = main(["--database-url", filled_url, "report", "--html", str(out), "--window", "custom", "--from", "9999-12-31"])
    err = capsys.readouterr().err
    assert (code, err) == (2, "wflo-otel report: a custom window must end before 9999-12-31\n")
    assert not out.exists()
    code = main(["--database-url", filled_url, "report", "--html", "/nonexistent/dir/r.html"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("wflo-otel: report: cannot write /nonexistent/dir/r.html: No such file")
    assert "database" not in err and "hint" not in err and err.count("\n") == 1


def test_a_window_without_data_is_an_empty_overview_on_both_engines(filled_url):
    from wflo_otel.dashboard.server import UIServer

    with UIServer(filled_url, port=0) as ui:
        client = Client(ui.url)
        empty = client.get("/api/overview?window=custom&from=2001-01-01&to=2001-01-02")  # before: 500 on PostgreSQL
        assert empty.status_code == 200 and empty.json()["totals"]["calls"] == 0
        assert client.get("/?window=custom&from=2001-01-01").status_code == 200
