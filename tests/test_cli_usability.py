"""What a newcomer meets on the ``wflo-otel`` command: global options in either place, an unknown
id or name that is an error, an unsupported database named as such (for the CLI and for
``configure()``), help text without markup, and install hints that are true.

Real components: the installed console script (or ``main(argv)``), SQLite files, PostgreSQL.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import wflo_otel
from test_store_support import make_workflows
from wflo_otel.cli import main
from wflo_otel.exporters.sql import SQLSpanExporter
from wflo_otel.exporters.store import UnsupportedDatabaseError, normalize_url

WFLO_OTEL = str(Path(sys.executable).with_name("wflo-otel"))
ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("WFLO_DATABASE_URL", "WFLO_DEBUG")}
    return subprocess.run([WFLO_OTEL, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def _stored(url: str, tmp_path, seed: int = 41) -> tuple[str, str]:
    """One workflow exported into ``url``; (its execution id, its workflow name)."""
    spans, _ = make_workflows(1, llm_calls=2, steps=1, seed=seed, workflow="triage")
    exporter = SQLSpanExporter(url, spool_dir=tmp_path / "spool", handle_sigterm=False)
    try:
        assert exporter.export(spans).name == "SUCCESS"
    finally:
        exporter.shutdown()
    execution = next(s for s in spans if s.name.startswith("invoke_workflow")).attributes["wflo.execution.id"]
    return execution, "triage"


# ----------------------------------------------------------------- global options in either place


@pytest.mark.parametrize(
    "argv",
    [
        ["--database-url", "{url}", "db", "upgrade"],
        ["db", "--database-url", "{url}", "upgrade"],
        ["db", "upgrade", "--database-url", "{url}"],
        ["db", "upgrade", "head", "--database-url", "{url}", "--debug"],
    ],
    ids=["before", "between", "after", "after-revision"],
)
def test_the_database_url_is_accepted_before_or_after_the_subcommand(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default ./wflo.db must stay untouched
    url = f"sqlite:///{tmp_path}/chosen.db"
    assert main([part.format(url=url) for part in argv]) == 0
    assert "chosen.db" in capsys.readouterr().out
    assert (tmp_path / "chosen.db").exists() and not (tmp_path / "wflo.db").exists()


def test_report_takes_the_database_url_after_the_subcommand(tmp_path):
    url = f"sqlite:///{tmp_path}/wflo.db"
    _stored(url, tmp_path)
    result = _run("report", "--database-url", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "triage" in result.stdout and "== Cost per workflow" in result.stdout


def test_an_option_given_in_both_places_takes_the_later_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    early, late = f"sqlite:///{tmp_path}/early.db", f"sqlite:///{tmp_path}/late.db"
    assert main(["--database-url", early, "db", "upgrade", "--database-url", late]) == 0
    assert (tmp_path / "late.db").exists() and not (tmp_path / "early.db").exists()


def test_spool_dir_is_accepted_after_the_spool_subcommand(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/wflo.db"
    assert main(["spool", "status", "--spool-dir", str(tmp_path / "spools"), "--database-url", url]) == 0
    assert str(tmp_path / "spools") in capsys.readouterr().out


def test_debug_after_the_subcommand_prints_the_traceback(tmp_path):
    result = _run("report", "--debug", "--database-url", "postgresql://u@127.0.0.1:1/x")
    assert result.returncode == 1 and result.stderr.startswith("Traceback")


# ----------------------------------------------------------------- an unknown id is an error


def test_report_on_an_unknown_execution_fails_in_one_line(database_url, tmp_path, capsys):
    _stored(database_url, tmp_path)
    assert main(["--database-url", database_url, "report", "--execution", "nope"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [f"wflo-otel: report: no execution 'nope' in the database"]
    assert captured.out == ""  # nothing printed before the error


def test_report_on_an_unknown_workflow_fails_in_one_line(database_url, tmp_path, capsys):
    _stored(database_url, tmp_path)
    assert main(["--database-url", database_url, "report", "--workflow", "nope"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == ["wflo-otel: report: no workflow 'nope' in the database"]
    assert captured.out == ""


def test_report_on_a_known_execution_and_workflow_lists_them(database_url, tmp_path, capsys):
    execution, workflow = _stored(database_url, tmp_path)
    assert main(["--database-url", database_url, "report", "--execution", execution, "--workflow", workflow]) == 0
    out = capsys.readouterr().out
    assert f"== Steps of execution {execution}" in out and f"workflow {workflow} go" in out
    steps = out.split(f"== Steps of execution {execution}")[1]
    assert "(no rows)" not in steps and "llm" in steps


# ----------------------------------------------------------------- unsupported engines


@pytest.mark.parametrize("url", ["mysql://u:s3cret@localhost/db", "mssql+pyodbc://u@dsn", "oracle://h/x", "sqlite+pysqlcipher:///x.db"])
def test_an_unsupported_database_url_names_the_supported_ones(url):
    with pytest.raises(UnsupportedDatabaseError) as caught:
        normalize_url(url)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "sqlite+aiosqlite" in message and "postgresql+asyncpg" in message
    assert "sqlite:///" in message and "postgresql://" in message
    assert "s3cret" not in message


@pytest.mark.parametrize(
    "url, expected",
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgres://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql://u@h/d?sslmode=require", "postgresql+asyncpg://u@h/d?sslmode=require"),
        ("postgresql+psycopg2://u@h/d", "postgresql+asyncpg://u@h/d"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
    ],
)
def test_the_supported_url_forms_are_normalised_to_the_async_drivers(url, expected):
    assert normalize_url(url) == expected


def test_the_cli_on_an_unsupported_database_says_which_are_supported():
    result = _run("--database-url", "mysql://u:s3cret@localhost/db", "report")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "MySQLdb" not in result.stderr and "s3cret" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("wflo-otel: unsupported database 'mysql'")
    assert "sqlite+aiosqlite" in lines[0] and "postgresql+asyncpg" in lines[0]


def test_configure_on_an_unsupported_database_says_which_are_supported():
    with pytest.raises(UnsupportedDatabaseError, match="unsupported database 'mysql'.*postgresql\\+asyncpg"):
        wflo_otel.configure("mysql://u@localhost/db")
    assert wflo_otel.configuration.current_handle() is None


# ----------------------------------------------------------------- help text


def test_help_names_every_command_without_markup():
    result = _run("--help")
    assert result.returncode == 0
    assert "`" not in result.stdout, result.stdout
    description = result.stdout.split("positional arguments")[0]
    for command in ("db", "report", "spool", "demo", "serve"):
        assert re.search(rf"\b{command}\b", description), (command, description)


@pytest.mark.parametrize("command", [["db"], ["db", "prune"], ["report"], ["spool"], ["spool", "replay"], ["demo"], ["serve"]])
def test_subcommand_help_has_no_markup_and_lists_the_global_options(command):
    result = _run(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "`" not in result.stdout, result.stdout
    assert "--database-url" in result.stdout


# ----------------------------------------------------------------- hints that are true


def test_the_demo_without_openai_says_how_to_install_it_truthfully(monkeypatch, capsys):
    from wflo_otel.demo import agent

    monkeypatch.setitem(sys.modules, "openai", None)  # import openai -> ImportError
    assert agent.main("sqlite+aiosqlite:///unused.db", quiet=True) == 1
    err = capsys.readouterr().err
    assert "pip install openai" in err
    assert "wflo-otel[" not in err.replace("'.[openai]'", "")  # not on any index: no extra by name


def test_no_hint_in_the_code_installs_wflo_otel_from_an_index():
    """The package is not on PyPI: a hint may install from a path (``-e '.[openai]'``), never by name."""
    by_name = re.compile(r"pip install [^\n\"]*?(?<![./\w-])['\"]?wflo[-_]otel\b")
    offenders = []
    for folder in ("wflo_otel", "exporters", "migrations"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if by_name.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


# ----------------------------------------------------------------- a new command group is one function


def test_a_registered_command_group_takes_the_global_options_in_either_place(monkeypatch, capsys):
    from wflo_otel import cli

    def register_widgets(commands: cli.Commands) -> None:
        widgets = commands.add("widgets", help="widgets")
        widget_commands = commands.group(widgets, "widgets_command")
        widget_commands.add("list", help="list them")
        widgets.set_defaults(func=lambda args: print(f"widgets {args.widgets_command} on {args.database_url}") or 0)

    monkeypatch.setattr(cli, "COMMAND_GROUPS", [*cli.COMMAND_GROUPS, register_widgets])
    assert main(["widgets", "list", "--database-url", "sqlite:///a.db"]) == 0
    assert main(["--database-url", "sqlite:///b.db", "widgets", "list"]) == 0
    assert capsys.readouterr().out.splitlines() == ["widgets list on sqlite:///a.db", "widgets list on sqlite:///b.db"]
