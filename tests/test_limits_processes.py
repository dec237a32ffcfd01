"""Spend limits across processes (issue 16's proof): the cap holds, a killed holder's lease
returns, an alert threshold fires once among twenty processes, a bad webhook slows no call."""

from __future__ import annotations

import asyncio
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import wflo_otel
from wflo_otel.alerts import SIGNATURE_HEADER, sign
from wflo_otel.cli import fetch
from wflo_otel.limits import LimitEngine, SpendLimit
from wflo_otel.limits_store import LeaseStore

from conftest import throwaway_database

WORKER = Path(__file__).parent / "apps" / "limits_worker.py"
# One call of the worker: gpt-4o-mini, 1000 output tokens at $0.60/M (the max_output server
# answers all of them) plus a few input tokens; its worst case is the same plus the estimate.
CALL_USD = 1000 * 0.60 / 1e6


def _spawn(args: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), json.dumps(args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _results(procs: list[subprocess.Popen], timeout: float = 60) -> list[dict]:
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _migrate(url: str) -> None:
    from wflo_otel import migrations

    migrations.upgrade(url)


def _run_cap(url: str, base_url: str, mode: str, processes: int, threads: int) -> None:
    _migrate(url)  # not timed: each process would otherwise race to migrate
    limit = CALL_USD * 40.5
    start_at = time.time() + 3.0
    procs = [
        _spawn({"url": url, "base_url": base_url, "mode": mode, "usd": limit, "threads": threads, "start_at": start_at})
        for _ in range(processes)
    ]
    results = _results(procs)
    spent = sum(r["usd"] for r in results)
    calls = sum(r["calls"] for r in results)
    per_call = spent / calls
    assert spent <= limit + 1e-9, (spent, limit)
    assert calls >= int(limit / per_call) - 1, (calls, limit / per_call)  # within one worst case of the most that fit
    _, rows = asyncio.run(fetch(url, "SELECT spent_usd, leased_usd FROM spend_limit_periods"))
    assert rows[0][0] == pytest.approx(spent, rel=1e-9) and rows[0][1] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.one_leg
def test_four_processes_of_eight_threads_never_exceed_a_postgresql_limit(tmp_path, max_output_server):
    with throwaway_database("postgresql", tmp_path) as url:
        _run_cap(url, max_output_server.base_url, "threads", processes=4, threads=8)


@pytest.mark.one_leg
def test_four_asyncio_processes_never_exceed_a_postgresql_limit(tmp_path, max_output_server):
    with throwaway_database("postgresql", tmp_path) as url:
        _run_cap(url, max_output_server.base_url, "asyncio", processes=4, threads=8)


@pytest.mark.one_leg
def test_four_processes_never_exceed_a_sqlite_limit(tmp_path, max_output_server):
    _run_cap(f"sqlite+aiosqlite:///{tmp_path}/limits.db", max_output_server.base_url, "threads", processes=4, threads=4)


@pytest.mark.one_leg
@pytest.mark.parametrize("engine", ["sqlite", "postgresql"])
def test_a_sigkilled_lease_holder_s_money_returns_within_the_ttl(tmp_path, engine):
    ttl = 2.0
    with throwaway_database(engine, tmp_path) as url:
        _migrate(url)
        holder = _spawn({"url": url, "mode": "hold", "usd": 1.0, "amount": 0.01, "ttl": ttl, "start_at": 0})
        assert json.loads(holder.stdout.readline()) == {"leased": True}
        _, rows = asyncio.run(fetch(url, "SELECT leased_usd FROM spend_limit_periods"))
        leased = rows[0][0]
        assert leased > 0.05  # a slice of the limit, not just the one call
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        killed_at = time.time()
        engine_ = LimitEngine([SpendLimit("shared", usd=1.0, per="day")], store=LeaseStore(url, ttl_s=ttl))
        try:
            rest = 1.0 - 0.01 - leased  # what was never leased
            engine_.reserve(engine_.match({}, ()), rest).release()
            with pytest.raises(wflo_otel.BudgetExceededError):  # the dead process's slice is still held...
                engine_.reserve(engine_.match({}, ()), rest + leased / 2)
            time.sleep(max(ttl - (time.time() - killed_at), 0) + 0.2)
            engine_.reserve(engine_.match({}, ()), rest + leased - 1e-9).settle(0.0)  # ...until its TTL passed
        finally:
            engine_.close()


class Receiver(http.server.ThreadingHTTPServer):
    """A local webhook endpoint: records POSTs; ``behaviour`` is ok, hang or fail (500)."""

    daemon_threads = True

    def __init__(self, behaviour: str = "ok") -> None:
        self.behaviour = behaviour
        self.posts: list[tuple[dict, bytes]] = []
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((dict(self.headers), body))
                if outer.behaviour == "hang":
                    outer.release.wait(30)
                self.send_response(500 if outer.behaviour == "fail" else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def close(self) -> None:
        self.release.set()
        self.shutdown()


@pytest.mark.one_leg
def test_twenty_processes_crossing_80_percent_send_exactly_one_signed_webhook(tmp_path):
    with throwaway_database("postgresql", tmp_path) as url:
        _twenty_processes_cross_80_percent(url)


def _twenty_processes_cross_80_percent(url: str) -> None:
    _migrate(url)
    # The period stands at 79 %: each of the 20 processes' spend crosses 80 % on its own.
    seed = LimitEngine([SpendLimit("shared", usd=1.0, per="day")], store=LeaseStore(url))
    seed.reserve(seed.match({}, ()), 0.79).settle(0.79)
    seed.close()
    receiver = Receiver()
    try:
        start_at = time.time() + 4.0
        procs = [
            _spawn({"url": url, "mode": "spend", "usd": 1.0, "amount": 0.005, "start_at": start_at, "webhook": receiver.url, "secret": "s3cret"})
            for _ in range(20)
        ]
        _results(procs, timeout=90)
        assert len(receiver.posts) == 1
        headers, body = receiver.posts[0]
        assert headers[SIGNATURE_HEADER] == sign("s3cret", body)
        alert = json.loads(body)
        assert alert["limit"] == "shared" and alert["threshold"] == 0.8 and alert["spent_usd"] >= 0.8
        assert "80%" in alert["text"] and alert["remaining_usd"] == pytest.approx(1.0 - alert["spent_usd"])
        _, fired = asyncio.run(fetch(url, "SELECT threshold, alerted_threshold FROM spend_limit_alerts JOIN spend_per_limit USING (limit_name, limit_key, period_start)"))
        assert fired == [(0.8, 0.8)]
    finally:
        receiver.close()


@pytest.mark.parametrize("behaviour", ["hang", "fail"])
def test_a_hanging_or_failing_webhook_does_not_slow_calls(tmp_path, behaviour):
    receiver = Receiver(behaviour)
    try:
        alerts = wflo_otel.Alerts(webhook=receiver.url, at=(0.1, 0.2, 0.3), timeout_s=3, retries=2, backoff_s=0.05)
        engine = LimitEngine([SpendLimit("run", usd=1.0, per="run")], alerts=alerts)
        durations = []
        for _ in range(40):  # crosses 10 %, 20 % and 30 %
            started = time.perf_counter()
            engine.reserve(engine.match({}, ()), 0.01).settle(0.01)
            durations.append(time.perf_counter() - started)
        deadline = time.time() + 5
        while not receiver.posts and time.time() < deadline:
            time.sleep(0.01)
        assert receiver.posts  # the receiver was reached while calls went on
        assert max(durations) < 0.05, max(durations)  # 3 s timeouts and retries never touched a call
        if behaviour == "fail":
            deadline = time.time() + 5
            while len(receiver.posts) < 3 and time.time() < deadline:
                time.sleep(0.01)
            assert len(receiver.posts) >= 3  # retried with backoff
    finally:
        receiver.close()
        engine.close()
