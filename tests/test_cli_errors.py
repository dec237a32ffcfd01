"""How the ``wflo-otel`` command fails: one line and a hint instead of a traceback, usage errors
from argparse, no database created by a command that only reads, RUNNING executions kept by prune.

Real components: the installed console script (or ``main(argv)``), SQLite files, PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_store_support import make_workflows, query
from wflo_otel.cli import main, parse_age
from wflo_otel.exporters.sql import SQLSpanExporter

WFLO_OTEL = str(Path(sys.executable).with_name("wflo-otel"))


def _free_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(*args: str, cwd=None, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WFLO_DATABASE_URL", "WFLO_DEBUG")}
    env.update(env_extra or {})
    return subprocess.run(
        [WFLO_OTEL, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60
    )


def _assert_one_line_failure(stderr: str, prefix: str) -> list[str]:
    """No traceback; the first line is ``prefix...``; at most a hint follows. Returns the lines."""
    assert "Traceback" not in stderr and '  File "' not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines and lines[0].startswith(prefix), stderr
    assert len(lines) <= 2 and all(line.startswith("hint: ") for line in lines[1:]), stderr
    return lines


# ----------------------------------------------------------------- errors: one line, a hint, exit 1


@pytest.mark.parametrize(
    "command",
    [
        ["db", "upgrade"],
        ["db", "current"],
        ["db", "prune", "--older-than", "30d"],
        ["spool", "replay"],
        ["report"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_database_that_is_down_fails_in_one_line_with_a_hint_to_start_it(command, tmp_path):
    url = f"postgresql://wflo:s3cret@127.0.0.1:{_free_port()}/wflo"
    extra = ["--spool-dir", str(tmp_path / "spool")] if command[0] == "spool" else []
    argv = ["--database-url", url, command[0], *extra, *command[1:]]
    result = _run(*argv)

    assert result.returncode == 1, result.stderr
    name = " ".join(c for c in command if not c.startswith("-") and c != "30d")
    prefix = f"wflo-otel: {name} failed on postgresql+asyncpg://wflo:***@127.0.0.1:"
    lines = _assert_one_line_failure(result.stderr, prefix)
    assert "s3cret" not in result.stderr and "ConnectionRefusedError" in lines[0]
    assert lines[1].startswith("hint: is the database running") and "db upgrade" not in lines[1]

    debug = _run("--debug", *argv)
    assert debug.returncode == 1 and debug.stderr.startswith("Traceback") and lines[0] in debug.stderr


@pytest.fixture
def postgresql_server():
    """The test PostgreSQL server's URL without a database name (skip, or fail under CI, without one)."""
    import asyncio

    from conftest import IN_CI, PG_ADMIN_URL, _pg_admin

    try:
        asyncio.run(_pg_admin("SELECT 1"))
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"PostgreSQL is required under CI=true but unreachable at {PG_ADMIN_URL}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}")
    return PG_ADMIN_URL.rsplit("/", 1)[0]


def test_a_database_that_does_not_exist_is_named_in_the_hint(postgresql_server, capsys):
    missing = postgresql_server + "/wflo_test_no_such_database"
    for command in (["db", "current"], ["report"], ["db", "upgrade"]):
        assert main(["--database-url", missing, *command]) == 1
        lines = _assert_one_line_failure(capsys.readouterr().err, f"wflo-otel: {' '.join(command)} failed on ")
        assert 'InvalidCatalogNameError: database "wflo_test_no_such_database" does not exist' in lines[0]
        assert 'does database "wflo_test_no_such_database" exist?' in lines[1]


def test_report_on_a_database_without_the_schema_says_to_run_db_upgrade(database_url, tmp_path, capsys):
    if database_url.startswith("sqlite"):
        (tmp_path / "wflo.db").touch()  # an empty SQLite database: it exists, without tables
    assert main(["--database-url", database_url, "report"]) == 1
    lines = _assert_one_line_failure(capsys.readouterr().err, "wflo-otel: report failed on ")
    missing = ("no such table: workflow_executions", 'relation "workflow_executions" does not exist')
    assert any(text in lines[0] for text in missing)
    assert lines[1] == "hint: run `wflo-otel db upgrade` to create the tables and report views"


@pytest.mark.parametrize(
    "command", [["db", "current"], ["db", "upgrade"], ["report"], ["serve", "--port", "0"]], ids=" ".join
)
def test_an_unparseable_url_fails_in_one_line(command, capsys):
    assert main(["--database-url", "notaurl", *command]) == 1
    lines = _assert_one_line_failure(capsys.readouterr().err, f"wflo-otel: {command[0]}")
    assert "failed on notaurl: ArgumentError: Could not parse SQLAlchemy URL" in lines[0]
    assert lines[1].startswith("hint: a database URL looks like sqlite:///")


def test_downgrade_to_an_unknown_revision_fails_in_one_line(tmp_path):
    url = f"sqlite:///{tmp_path}/wflo.db"
    assert _run("--database-url", url, "db", "upgrade").returncode == 0
    result = _run("--database-url", url, "db", "downgrade", "nosuch")
    assert result.returncode == 1
    lines = _assert_one_line_failure(result.stderr, "wflo-otel: db downgrade failed on sqlite+aiosqlite:///")
    assert lines[0].endswith("CommandError: Can't locate revision identified by 'nosuch'")


def test_ctrl_c_exits_130_without_a_traceback(tmp_path):
    """``db upgrade`` waiting for another process's SQLite migration lock, interrupted."""
    import fcntl

    database = tmp_path / "wflo.db"
    lock = os.open(f"{database}.migrate.lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)  # held as a concurrent migration would hold it
    try:
        env = {k: v for k, v in os.environ.items() if k != "WFLO_DEBUG"}
        proc = subprocess.Popen(
            [WFLO_OTEL, "--database-url", f"sqlite:///{database}", "db", "upgrade"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until it has opened the lock file: it is waiting
            fds = Path(f"/proc/{proc.pid}/fd")
            try:
                if any(os.readlink(fd).endswith("wflo.db.migrate.lock") for fd in fds.iterdir()):
                    break
            except FileNotFoundError:
                pass
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        os.close(lock)
    assert proc.returncode == 130, err
    assert err == "" and "Traceback" not in out


# ----------------------------------------------------------------- ages: argparse usage errors


@pytest.mark.parametrize("age, message", [("30x", "not an age: '30x'"), ("100000000w", "age too large: '100000000w'")])
def test_prune_refuses_an_unreadable_or_impossible_age_with_usage_and_exit_2(age, message, tmp_path):
    result = _run("--database-url", f"sqlite:///{tmp_path}/wflo.db", "db", "prune", "--older-than", age)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: wflo-otel db prune")
    assert f"error: argument --older-than: {message}" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_parse_age_rejects_an_age_beyond_any_date():
    import argparse

    assert parse_age("2w") == dt.timedelta(weeks=2)
    for text in ("100000000w", "1e9d", "999999999999d"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_age(text)


# ----------------------------------------------------------------- read-only commands create nothing


@pytest.mark.parametrize(
    "command",
    [["db", "current"], ["report"], ["db", "prune", "--older-than", "30d"], ["db", "downgrade", "base"]],
    ids=lambda c: " ".join(c[:2]),
)
def test_a_read_only_command_on_a_mistyped_sqlite_path_creates_nothing(command, tmp_path):
    result = _run("--database-url", "sqlite:///typo/dir/wflo.db", *command, cwd=tmp_path)
    assert result.returncode == 1
    lines = _assert_one_line_failure(result.stderr, "wflo-otel: no database at ")
    assert lines[0] == f"wflo-otel: no database at {tmp_path / 'typo/dir/wflo.db'}"
    assert "(empty database)" not in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_default_database_is_not_created_by_db_current_but_is_by_db_upgrade(tmp_path):
    result = _run("db", "current", cwd=tmp_path)
    assert result.returncode == 1 and f"no database at {tmp_path / 'wflo.db'}" in result.stderr
    assert list(tmp_path.iterdir()) == []
    assert _run("db", "upgrade", cwd=tmp_path).returncode == 0
    current = _run("db", "current", cwd=tmp_path)
    from alembic.script import ScriptDirectory

    from wflo_otel import migrations

    head = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
    assert current.returncode == 0 and current.stdout.startswith(f"{head} (head)")


# ----------------------------------------------------------------- prune keeps RUNNING executions


def _export(url, spans, tmp_path) -> None:
    exporter = SQLSpanExporter(url, spool_dir=tmp_path / "spool", handle_sigterm=False)
    try:
        assert exporter.export(spans).name == "SUCCESS"
    finally:
        exporter.shutdown()


def _split_root(spans):
    root = [s for s in spans if s.name.startswith("invoke_workflow")]
    assert len(root) == 1
    return root, [s for s in spans if s not in root]


def test_prune_keeps_executions_still_running_unless_told(database_url, tmp_path, capsys):
    two_days_ago = int((dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)).timestamp() * 1e9)
    done, _ = make_workflows(1, llm_calls=2, steps=1, seed=31, start_ns=two_days_ago, workflow="done")
    running, _ = make_workflows(1, llm_calls=3, steps=1, seed=32, start_ns=two_days_ago, workflow="long-running")
    root, children = _split_root(running)
    _export(database_url, done + children, tmp_path)  # the long-running root has not ended yet
    statuses = dict(query(database_url, "SELECT status, llm_calls FROM workflow_executions"))
    assert statuses == {"COMPLETED": 2, "RUNNING": 3}

    prune = ["--database-url", database_url, "db", "prune", "--older-than", "1d"]
    assert main([*prune, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would delete 1 executions and 4 steps started before ")  # root, step, 2 llm
    assert "kept 1 still RUNNING" in out
    assert main(prune) == 0
    out = capsys.readouterr().out
    assert out.startswith("deleted 1 executions and 4 steps ") and "kept 1 still RUNNING" in out
    assert query(database_url, "SELECT status, llm_calls FROM workflow_executions") == [("RUNNING", 3)]

    _export(database_url, root, tmp_path)  # the root lands: the execution keeps its calls and cost
    ((status, calls, cost),) = query(database_url, "SELECT status, llm_calls, cost_total_usd FROM workflow_executions")
    assert (status, calls) == ("COMPLETED", 3)
    assert cost == pytest.approx(root[0].attributes["wflo.execution.cost_usd"]) and cost > 0


def test_prune_include_running_deletes_them_and_its_dry_run_counts_them(database_url, tmp_path, capsys):
    two_days_ago = int((dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)).timestamp() * 1e9)
    running, _ = make_workflows(1, llm_calls=3, steps=1, seed=33, start_ns=two_days_ago, workflow="crashed")
    _, children = _split_root(running)
    _export(database_url, children, tmp_path)  # its process died: the root never comes

    prune = ["--database-url", database_url, "db", "prune", "--older-than", "1d", "--include-running"]
    assert main([*prune, "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("would delete 1 executions and 4 steps ")
    assert main(prune) == 0
    out = capsys.readouterr().out
    assert out.startswith("deleted 1 executions and 4 steps ") and "RUNNING" not in out
    assert query(database_url, "SELECT COUNT(*) FROM workflow_executions") == [(0,)]
    assert query(database_url, "SELECT COUNT(*) FROM step_executions") == [(0,)]


def test_prune_help_documents_include_running():
    result = _run("db", "prune", "--help")
    assert result.returncode == 0
    assert "--include-running" in result.stdout and "RUNNING" in result.stdout
