"""The ``wflo-otel`` command: schema migrations, cost reports, the demo."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from .exporters.store import DEFAULT_DATABASE_URL, create_engine
from .reports import QUERIES, TITLES
from .settings import database_url


def _database_url(args: argparse.Namespace) -> str:
    return database_url(args.database_url)


def _cmd_db(args: argparse.Namespace) -> int:
    from . import migrations

    url = _database_url(args)
    if args.db_command == "upgrade":
        migrations.upgrade(url, args.revision)
        print(f"schema at {args.revision} on {_safe(url)}")
    elif args.db_command == "downgrade":
        migrations.downgrade(url, args.revision)
        print(f"schema downgraded to {args.revision} on {_safe(url)}")
    elif args.db_command == "prune":
        older_than = parse_age(args.older_than)
        executions, steps, cutoff = asyncio.run(prune(url, older_than, dry_run=args.dry_run))
        verb = "would delete" if args.dry_run else "deleted"
        print(f"{verb} {executions} executions and {steps} steps started before {cutoff.isoformat(timespec='seconds')}")
    else:
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
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s`` → a timedelta."""
    match = _AGE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (use e.g. 30d, 12h, 2w, 90m)")
    return timedelta(**{_AGE_UNITS[match.group(2).lower()]: float(match.group(1))})


async def prune(url: str, older_than: timedelta, *, dry_run: bool = False) -> tuple[int, int, datetime]:
    """Delete executions that started before now - ``older_than``, with their steps (FK cascade).

    Returns (executions, steps, cutoff). One transaction.
    """
    import sqlalchemy as sa

    from .exporters.schema import step_executions as s, workflow_executions as e

    cutoff = datetime.now(timezone.utc) - older_than
    old = e.c.started_at < cutoff
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            executions = (await conn.execute(sa.select(sa.func.count()).select_from(e).where(old))).scalar_one()
            steps = (
                await conn.execute(
                    sa.select(sa.func.count()).select_from(s.join(e, s.c.execution_id == e.c.id)).where(old)
                )
            ).scalar_one()
            if not dry_run and executions:
                await conn.execute(sa.delete(e).where(old))
    finally:
        await engine.dispose()
    return executions, steps, cutoff


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


def print_report(url: str, out=None, *, execution_id: str | None = None, workflow: str | None = None) -> None:
    out = out if out is not None else sys.stdout
    sections: list[tuple[str, dict[str, Any]]] = [(name, {}) for name in REPORT_SECTIONS]
    if workflow is not None:
        sections.append(("step_costs_of_a_workflow", {"workflow": workflow}))
    if execution_id is not None:
        sections.append(("steps_of_an_execution", {"execution_id": execution_id}))
    results = asyncio.run(fetch_many(url, [(QUERIES[name], params) for name, params in sections]))
    for (name, params), (columns, rows) in zip(sections, results):
        print(f"\n== {TITLES[name].format(**params)}", file=out)
        print(format_table(columns, rows) if rows else "(no rows)", file=out)


def _cmd_report(args: argparse.Namespace) -> int:
    url = _database_url(args)
    try:
        print_report(url, execution_id=args.execution, workflow=args.workflow)
    except Exception as exc:  # most often: a database not migrated to the report views yet
        print(f"wflo-otel: report failed on {_safe(url)}: {exc}", file=sys.stderr)
        print("hint: `wflo-otel db upgrade` creates the report views (alembic revision 0002)", file=sys.stderr)
        return 1
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
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wflo-otel", description=__doc__)
    parser.add_argument("--database-url", help="default: $WFLO_DATABASE_URL or " + DEFAULT_DATABASE_URL)
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="schema migrations (alembic)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="create or upgrade the schema")
    up.add_argument("revision", nargs="?", default="head")
    down = db_sub.add_parser("downgrade", help="downgrade the schema")
    down.add_argument("revision", help="target revision, e.g. base or -1")
    db_sub.add_parser("current", help="print the current revision and the revisions applied")
    prune_parser = db_sub.add_parser("prune", help="delete old executions with their steps")
    prune_parser.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 2w (by started_at)")
    prune_parser.add_argument("--dry-run", action="store_true", help="count, do not delete")
    db.set_defaults(func=_cmd_db)

    report = sub.add_parser(
        "report", help="recent executions, cost per workflow and per model, failures, most expensive and slowest steps"
    )
    report.add_argument("--execution", metavar="ID", help="also list the steps of this execution")
    report.add_argument("--workflow", metavar="NAME", help="also show where this workflow's cost and time go")
    report.set_defaults(func=_cmd_report)

    spool = sub.add_parser("spool", help="batches kept on disk while the database was unreachable")
    spool.add_argument("--spool-dir", help="default: $WFLO_SPOOL_DIR or ~/.cache/wflo-otel/spool")
    spool_sub = spool.add_subparsers(dest="spool_command", required=True)
    spool_sub.add_parser("status", help="count pending and failed batches")
    replay = spool_sub.add_parser("replay", help="write the spooled batches now")
    replay.add_argument("--failed", action="store_true", help="also retry batches the database refused before")
    spool.set_defaults(func=_cmd_spool)

    demo = sub.add_parser("demo", help="run the demo agent against a local OpenAI-compatible server")
    demo.set_defaults(func=_cmd_demo)

    from . import ingest  # the OTLP/HTTP ingest service; the server loads only when it runs

    serve = sub.add_parser("serve", help="OTLP/HTTP ingest service: receive spans on /v1/traces, write them to SQL")
    ingest.add_arguments(serve)
    serve.set_defaults(func=lambda args: ingest.run(args, args.database_url))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
