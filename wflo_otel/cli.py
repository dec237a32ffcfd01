"""The ``wflo-otel`` command: schema migrations, cost reports, the ingest service, the spool, the demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, Sequence

from .exporters.store import DEFAULT_DATABASE_URL, UnsupportedDatabaseError, create_engine
from .reports import QUERIES, TITLES
from .settings import database_url


ENV_DEBUG = "WFLO_DEBUG"


class CommandError(Exception):
    """A failure the command explains itself: its message is printed as is, without a traceback."""


def _database_url(args: argparse.Namespace) -> str:
    return database_url(args.database_url)


def _existing_database_url(args: argparse.Namespace) -> str:
    """The database URL of a command that only reads or deletes: a SQLite file must exist already.

    Opening a mistyped SQLite path would create its folder, an empty database and a migration
    lock file, and the command would then report an empty database instead of the typo.
    """
    from .exporters.checkpoint import database_path

    url = _database_url(args)
    if url.startswith("sqlite"):
        path = database_path(url)
        if path is not None and not os.path.isfile(path):
            raise CommandError(
                f"no database at {os.path.abspath(path)}\n"
                "hint: check the path (--database-url or $WFLO_DATABASE_URL); `wflo-otel db upgrade` creates a database"
            )
    return url


def _cmd_db(args: argparse.Namespace) -> int:
    from . import migrations

    if args.db_command == "upgrade":
        url = _database_url(args)
        migrations.upgrade(url, args.revision)
        print(f"schema at {args.revision} on {_safe(url)}")
    elif args.db_command == "downgrade":
        url = _existing_database_url(args)
        migrations.downgrade(url, args.revision)
        print(f"schema downgraded to {args.revision} on {_safe(url)}")
    elif args.db_command == "prune":
        url = _existing_database_url(args)
        result = asyncio.run(
            prune(url, args.older_than, dry_run=args.dry_run, include_running=args.include_running)
        )
        verb = "would delete" if args.dry_run else "deleted"
        cutoff = result.cutoff.isoformat(timespec="seconds")
        line = f"{verb} {result.executions} executions and {result.steps} steps started before {cutoff}"
        if result.running_kept:
            line += f"; kept {result.running_kept} still RUNNING (--include-running deletes them too)"
        print(line)
    else:
        url = _existing_database_url(args)
        revision = asyncio.run(migrations.run_async(url, migrations.current_revision))
        print(describe_revision(revision))
    return 0


def describe_revision(revision: str | None) -> str:
    """The current revision, whether it is the head, and the revisions applied to reach it."""
    if revision is None:
        return "(empty database)"
    from alembic.script import ScriptDirectory

    from . import migrations

    script = ScriptDirectory.from_config(migrations.alembic_config())
    head = script.get_current_head()
    lines = [f"{revision} ({'head' if revision == head else f'head is {head}: run wflo-otel db upgrade'})"]
    for rev in reversed(list(script.iterate_revisions(revision, "base"))):
        lines.append(f"  applied {rev.revision}: {(rev.doc or '').splitlines()[0] if rev.doc else ''}")
    return "\n".join(lines)


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s`` → a timedelta.

    ``argparse.ArgumentTypeError`` for text that is not an age, and for an age reaching back
    before year 1 (``100000000w``), which no date can be computed for.
    """
    match = _AGE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (use e.g. 30d, 12h, 2w, 90m)")
    try:
        age = timedelta(**{_AGE_UNITS[match.group(2).lower()]: float(match.group(1))})
        datetime.now(timezone.utc) - age  # the cutoff prune computes
    except (OverflowError, ValueError):
        raise argparse.ArgumentTypeError(f"age too large: {text!r}") from None
    return age


class PruneResult(NamedTuple):
    executions: int
    steps: int
    cutoff: datetime
    running_kept: int = 0  # old executions left alone because they are still RUNNING


async def prune(
    url: str, older_than: timedelta, *, dry_run: bool = False, include_running: bool = False
) -> PruneResult:
    """Delete executions that started before now - ``older_than``, with their steps (FK cascade).

    An execution still ``RUNNING`` (its workflow root span has not arrived yet) is kept unless
    ``include_running``: deleting it would lose its steps' totals, and the root landing later
    would bring it back with no calls and no cost. One transaction; a dry run counts the same rows.
    """
    import sqlalchemy as sa

    from .attributes import STATUS_RUNNING
    from .exporters.schema import step_executions as s, workflow_executions as e

    cutoff = datetime.now(timezone.utc) - older_than
    old = e.c.started_at < cutoff
    doomed = old if include_running else sa.and_(old, e.c.status != STATUS_RUNNING)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            executions = (await conn.execute(sa.select(sa.func.count()).select_from(e).where(doomed))).scalar_one()
            steps = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(s.join(e, s.c.execution_id == e.c.id)).where(doomed)
                )
            ).scalar_one()
            running_kept = 0
            if not include_running:
                running_kept = (
                    await conn.execute(
                        sa.select(sa.func.count()).select_from(e).where(old, e.c.status == STATUS_RUNNING)
                    )
                ).scalar_one()
            if not dry_run and executions:
                await conn.execute(sa.delete(e).where(doomed))
    finally:
        await engine.dispose()
    return PruneResult(executions, steps, cutoff, running_kept)


async def fetch(url: str, sql: str, params: dict[str, Any] | None = None) -> tuple[list[str], list[tuple]]:
    import sqlalchemy as sa

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(sa.text(sql), params or {})
            return list(result.keys()), [tuple(row) for row in result.fetchall()]
    finally:
        await engine.dispose()


def format_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.6f}"
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


REPORT_SECTIONS = (
    "recent_executions",
    "cost_per_workflow",
    "cost_per_model_per_day",
    "over_budget_or_failed",
    "most_expensive_steps",
    "slowest_steps",
)


async def fetch_many(url: str, queries: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[list[str], list[tuple]]]:
    """Run several queries on one connection."""
    import sqlalchemy as sa

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            results = []
            for sql, params in queries:
                result = await conn.execute(sa.text(sql), params)
                results.append((list(result.keys()), [tuple(row) for row in result.fetchall()]))
            return results
    finally:
        await engine.dispose()


# What ``report --execution`` / ``--workflow`` name must exist: an unknown one is an error, not "(no rows)".
_EXISTS = {
    "execution": "SELECT COUNT(*) FROM workflow_executions WHERE id = :name",
    "workflow": "SELECT COUNT(*) FROM workflow_definitions WHERE id = :name",
}


def print_report(url: str, out=None, *, execution_id: str | None = None, workflow: str | None = None) -> None:
    """Print every report section; ``CommandError`` before printing anything if a named execution
    or workflow is not in the database (a typo should not read as an empty result)."""
    out = out if out is not None else sys.stdout
    named = [(kind, name) for kind, name in (("execution", execution_id), ("workflow", workflow)) if name is not None]
    sections: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in REPORT_SECTIONS]
    if workflow is not None:
        sections.append(("step_costs_of_a_workflow", {"workflow": workflow}))
    if execution_id is not None:
        sections.append(("steps_of_an_execution", {"execution_id": execution_id}))
    queries = [(_EXISTS[kind], {"name": name}) for kind, name in named]
    queries += [(QUERIES[name], params) for name, params in sections]
    results = asyncio.run(fetch_many(url, queries))
    for (kind, name), (_, rows) in zip(named, results):
        if not rows[0][0]:
            raise CommandError(f"report: no {kind} {name!r} in the database")
    for (name, params), (columns, rows) in zip(sections, results[len(named) :]):
        print(f"\n== {TITLES[name].format(**params)}", file=out)
        print(format_table(columns, rows) if rows else "(no rows)", file=out)


def _cmd_report(args: argparse.Namespace) -> int:
    if args.html:
        return _write_html_report(args)
    print_report(_existing_database_url(args), execution_id=args.execution, workflow=args.workflow)
    return 0  # failures: main() prints one line, with a hint for the kind of error


def _write_html_report(args: argparse.Namespace) -> int:
    """The HTML report; its window is checked before the database is opened (a bad one: exit 2)."""
    from .dashboard.queries import BadRequest, window_from
    from .dashboard.report import html_report

    given = {"window": args.window, "from": args.date_from, "to": args.date_to}
    params = {k: v for k, v in given.items() if v}
    try:
        window_from(params)
    except BadRequest as exc:
        print(f"wflo-otel report: {exc}", file=sys.stderr)
        return 2
    text = asyncio.run(html_report(_existing_database_url(args), params))
    try:
        with open(args.html, "w", encoding="utf-8") as out:
            out.write(text)
    except OSError as exc:  # the file, not the database
        raise CommandError(f"report: cannot write {args.html}: {exc.strerror or exc}") from None
    print(f"wrote {args.html}")
    return 0


def _cmd_spool(args: argparse.Namespace) -> int:
    from .exporters.spool import Spool

    url = _database_url(args)
    spool = Spool.for_database(url, args.spool_dir)
    if args.spool_command == "status":
        failed = sorted(spool.failed_directory.glob("*.json")) if spool.failed_directory.exists() else []
        print(f"spool for {_safe(url)}: {spool.directory}")
        print(f"  pending batches: {len(spool.pending())}; failed batches: {len(failed)}; {spool.size_bytes() / 1048576:.2f} MB")
        return 0
    return asyncio.run(_replay_spool(url, spool, include_failed=args.failed))


async def _replay_spool(url: str, spool, *, include_failed: bool) -> int:
    from .exporters.store import SpanStore

    paths = list(spool.pending())
    if include_failed and spool.failed_directory.exists():
        paths += sorted(spool.failed_directory.glob("*.json"))
    store = SpanStore(url)
    written = failed = 0
    try:
        await store.migrate()
        for path in paths:
            try:
                await store.write(spool.read(path))
            except Exception as exc:
                failed += 1
                print(f"  {path.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
                continue
            spool.remove(path)
            error_note = path.with_name(path.name + ".error.txt")
            if error_note.exists():
                error_note.unlink()
            written += 1
    finally:
        await store.dispose()
    print(f"replayed {written} batches into {_safe(url)}; {failed} failed")
    return 0 if not failed else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo.agent import main as demo_main

    return demo_main(database_url=args.database_url)


def _safe(url: str) -> str:
    """``url`` with its password hidden; for text that is no URL, a best effort at the same."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


# Commands whose failures are about the database (the message names it, the hint is worded for it).
_DATABASE_COMMANDS = {"db", "report", "spool", "serve", "ui"}


def _error_chain(exc: BaseException) -> list[BaseException]:
    """``exc``, the driver error SQLAlchemy wraps, and the errors they were raised from."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain) and len(chain) < 16:
        chain.append(current)
        current = getattr(current, "orig", None) or current.__cause__
    return chain


def _describe_error(exc: BaseException) -> str:
    """The first line of the error, as Python's last traceback line names it.

    For an error SQLAlchemy wraps, the driver's own (``InvalidCatalogNameError: database "x"
    does not exist`` rather than SQLAlchemy's text with its SQL and background link).
    """
    if isinstance(exc, CommandError):
        return str(exc).splitlines()[0]
    error = exc
    while getattr(error, "orig", None) is not None:
        error = error.orig
    while type(error).__module__.startswith("sqlalchemy") and error.__cause__ is not None:
        error = error.__cause__
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def _hint(exc: BaseException, url: str) -> str | None:
    """What to do about a database failure, by its kind."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return "a database URL looks like sqlite:///path/to/wflo.db or postgresql://user:password@host:5432/dbname"
    chain = _error_chain(exc)
    states = [getattr(e, "sqlstate", None) or getattr(e, "pgcode", None) for e in chain]
    states = [state for state in states if isinstance(state, str)]
    texts = " ".join(f"{type(e).__name__} {e}".lower() for e in chain)
    if "42P01" in states or "no such table" in texts or "undefinedtable" in texts:
        return "run `wflo-otel db upgrade` to create the tables and report views"
    if parsed.get_backend_name() == "sqlite":
        if "unable to open database" in texts or any(isinstance(e, OSError) for e in chain):
            return "can the database file and its folder be opened (path, permissions)?"
        return None
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    running = f'is the database running at {where}, and does database "{parsed.database}" exist?'
    if "3D000" in states:
        return f"{running} (createdb it, then `wflo-otel db upgrade`)"
    if any(state.startswith("28") for state in states):
        return f"the server at {where} refused the credentials: check the user and password in the URL"
    unreachable = any(isinstance(e, (OSError, TimeoutError)) for e in chain)
    if unreachable or any(state.startswith(("08", "57P03")) for state in states):
        return running
    return None


def _command_name(args: argparse.Namespace) -> str:
    sub = getattr(args, "db_command", None) or getattr(args, "spool_command", None)
    return f"{args.command} {sub}" if sub else args.command


def _report_failure(args: argparse.Namespace, exc: BaseException) -> None:
    command = _command_name(args)
    if isinstance(exc, (CommandError, UnsupportedDatabaseError)):  # they say all there is to say
        print(f"wflo-otel: {exc}", file=sys.stderr)
        return
    if args.command not in _DATABASE_COMMANDS:
        print(f"wflo-otel: {command} failed: {_describe_error(exc)}", file=sys.stderr)
        return
    url = args.database_url or ""
    try:
        url = _database_url(args)
    except Exception:
        pass
    print(f"wflo-otel: {command} failed on {_safe(url)}: {_describe_error(exc)}", file=sys.stderr)
    hint = _hint(exc, url)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


DESCRIPTION = """\
Cost tracking and budget enforcement for LLM workflows, stored in SQL (SQLite or PostgreSQL).
Migrate or prune the schema (db), print the cost reports or write them as HTML (report),
show or reset spend limits (limits), receive spans from an OpenTelemetry pipeline over
OTLP/HTTP with the dashboard at / (serve), show the dashboard alone (ui), decide approval
requests (approvals), list an execution's checkpoints (checkpoints), write spans kept on
disk while the database was away (spool), or run the demo against a local
OpenAI-compatible server (demo)."""

EPILOG = """\
The global options (--database-url, --debug) may come before or after the command.
Database URLs: sqlite:///path/to/wflo.db (default ./wflo.db) or
postgresql://user:password@host:5432/dbname.

examples:
  wflo-otel db upgrade
  wflo-otel report --workflow support-agent
  wflo-otel report --database-url postgresql://postgres@127.0.0.1/wflo
  wflo-otel serve --port 4318
  wflo-otel ui --port 8318
  wflo-otel report --html report.html --window 30d
  wflo-otel spool status"""


class Commands:
    """Adds subcommands that accept the global options as well as their own.

    argparse reads an option only in the parser whose arguments it sits among, so
    ``wflo-otel report --database-url X`` needs ``--database-url`` on ``report`` too. Every
    parser made here gets the global options with ``SUPPRESS`` defaults: given after the
    command, they overwrite the top level's value; absent, they leave it alone. A command
    group registers itself with a function taking a ``Commands`` (see ``COMMAND_GROUPS``).
    """

    def __init__(self, subparsers: Any, common: Sequence[argparse.ArgumentParser]) -> None:
        self._subparsers = subparsers
        self._common = list(common)

    def add(self, name: str, *, help: str, **kwargs: Any) -> argparse.ArgumentParser:
        """A subcommand parser with the global options (and ``parents=`` of its own)."""
        parents = self._common + list(kwargs.pop("parents", ()))
        return self._subparsers.add_parser(name, help=help, parents=parents, **kwargs)

    def group(self, parser: argparse.ArgumentParser, dest: str, *, common: Sequence[argparse.ArgumentParser] = ()) -> "Commands":
        """Sub-subcommands of ``parser`` (``db upgrade``), inheriting these global options plus ``common``."""
        return Commands(parser.add_subparsers(dest=dest, required=True), self._common + list(common))


def _global_options(*, top_level: bool) -> argparse.ArgumentParser:
    """``--database-url`` and ``--debug``: with their defaults at the top level, ``SUPPRESS`` below it."""
    options = argparse.ArgumentParser(add_help=False)
    unset = {} if top_level else {"default": argparse.SUPPRESS}
    options.add_argument(
        "--database-url",
        help="where the spans are (default: $WFLO_DATABASE_URL or " + DEFAULT_DATABASE_URL + ")",
        **({"default": None} if top_level else unset),
    )
    options.add_argument(
        "--debug",
        action="store_true",
        help=f"print the traceback of a failure (or set {ENV_DEBUG}=1)",
        **unset,
    )
    return options


def register_db(commands: Commands) -> None:
    db = commands.add("db", help="create, upgrade, inspect or prune the schema (alembic migrations)")
    db_commands = commands.group(db, "db_command")
    up = db_commands.add("upgrade", help="create or upgrade the schema")
    up.add_argument("revision", nargs="?", default="head")
    down = db_commands.add("downgrade", help="downgrade the schema")
    down.add_argument("revision", help="target revision, e.g. base or -1")
    db_commands.add("current", help="print the current revision and the revisions applied")
    prune_parser = db_commands.add(
        "prune",
        help="delete old executions with their steps (not those still RUNNING)",
        description="Delete executions that started before now - AGE, with their steps. An execution still"
        " RUNNING (its workflow's root span has not arrived yet) is kept unless --include-running.",
    )
    prune_parser.add_argument(
        "--older-than", required=True, metavar="AGE", type=parse_age, help="e.g. 30d, 12h, 2w (by started_at)"
    )
    prune_parser.add_argument("--dry-run", action="store_true", help="count, do not delete")
    prune_parser.add_argument(
        "--include-running",
        action="store_true",
        help="also delete executions still RUNNING (whose root span never arrived, e.g. a crashed process)",
    )
    db.set_defaults(func=_cmd_db)


def register_report(commands: Commands) -> None:
    report = commands.add(
        "report", help="recent executions, cost per workflow and per model, failures, most expensive and slowest steps"
    )
    report.add_argument("--execution", metavar="ID", help="also list the steps of this execution")
    report.add_argument("--workflow", metavar="NAME", help="also show where this workflow's cost and time go")
    report.add_argument("--html", metavar="FILE", help="write the dashboard's overview and executions as one self-contained HTML file")
    report.add_argument("--window", choices=("today", "7d", "30d", "custom"), help="--html: the window (default 7d)")
    report.add_argument("--from", dest="date_from", metavar="YYYY-MM-DD", help="--html with --window custom: first day")
    report.add_argument("--to", dest="date_to", metavar="YYYY-MM-DD", help="--html with --window custom: last day")
    report.set_defaults(func=_cmd_report)


def register_spool(commands: Commands) -> None:
    spool_dir = argparse.ArgumentParser(add_help=False)
    spool_dir.add_argument(
        "--spool-dir", default=argparse.SUPPRESS, help="default: $WFLO_SPOOL_DIR or ~/.cache/wflo-otel/spool"
    )
    spool = commands.add(
        "spool", help="batches kept on disk while the database was unreachable: count or write them", parents=[spool_dir]
    )
    spool.set_defaults(spool_dir=None, func=_cmd_spool)
    spool_commands = commands.group(spool, "spool_command", common=[spool_dir])
    spool_commands.add("status", help="count pending and failed batches")
    replay = spool_commands.add("replay", help="write the spooled batches now")
    replay.add_argument("--failed", action="store_true", help="also retry batches the database refused before")


def register_demo(commands: Commands) -> None:
    demo = commands.add("demo", help="run the demo agent against a local OpenAI-compatible server")
    demo.set_defaults(func=_cmd_demo)


def register_serve(commands: Commands) -> None:
    from . import ingest  # the OTLP/HTTP ingest service; the server loads only when it runs

    serve = commands.add("serve", help="OTLP/HTTP ingest service: receive spans on /v1/traces, write them to SQL")
    ingest.add_arguments(serve)
    serve.set_defaults(func=lambda args: ingest.run(args, args.database_url))


def register_ui(commands: Commands) -> None:
    from .dashboard import server as ui  # aiohttp loads only when it runs

    parser = commands.add("ui", help="the browser dashboard alone on a database, read-only unless --allow-approvals (serve also has it at /)")
    ui.add_arguments(parser)
    parser.set_defaults(func=lambda args: ui.run(args, _existing_database_url(args)))


def register_controls(commands: Commands) -> None:
    from .controls.cli import register_approvals, register_checkpoints

    register_approvals(commands)
    register_checkpoints(commands)


# One registration function per command group, in the order --help lists them.
def register_limits(commands: Commands) -> None:
    from .limits_cli import register_limits as register

    register(commands)


COMMAND_GROUPS = [
    register_db,
    register_report,
    register_limits,
    register_spool,
    register_serve,
    register_ui,
    register_controls,
    register_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wflo-otel",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_options(top_level=True)],
    )
    commands = Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), [_global_options(top_level=False)])
    for register in COMMAND_GROUPS:
        register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command; a failure prints one line (and a hint) to stderr and returns 1, Ctrl-C 130."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug or os.environ.get(ENV_DEBUG, "").strip().lower() not in ("", "0", "false", "no"):
            import traceback

            traceback.print_exc()
        _report_failure(args, exc)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
