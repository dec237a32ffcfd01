"""The ``wflo-otel`` command: schema migrations, cost reports, the demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any, Sequence

from .exporters.store import DEFAULT_DATABASE_URL, create_engine, normalize_url
from .reports import QUERIES


def _database_url(args: argparse.Namespace) -> str:
    return normalize_url(args.database_url or os.environ.get("WFLO_DATABASE_URL") or DEFAULT_DATABASE_URL)


def _cmd_db(args: argparse.Namespace) -> int:
    from . import migrations

    url = _database_url(args)
    if args.db_command == "upgrade":
        migrations.upgrade(url, args.revision)
        print(f"schema at {args.revision} on {_safe(url)}")
    elif args.db_command == "downgrade":
        migrations.downgrade(url, args.revision)
        print(f"schema downgraded to {args.revision} on {_safe(url)}")
    else:
        revision = asyncio.run(migrations.run_async(url, migrations.current_revision))
        print(revision or "(empty database)")
    return 0


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


def print_report(url: str, out=sys.stdout) -> None:
    for title, name in (
        ("Recent executions", "recent_executions"),
        ("Cost per workflow", "cost_per_workflow"),
        ("Cost per model per day", "cost_per_model_per_day"),
    ):
        columns, rows = asyncio.run(fetch(url, QUERIES[name]))
        print(f"\n== {title}", file=out)
        print(format_table(columns, rows) if rows else "(no rows)", file=out)


def _cmd_report(args: argparse.Namespace) -> int:
    print_report(_database_url(args))
    return 0


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
    db_sub.add_parser("current", help="print the current revision")
    db.set_defaults(func=_cmd_db)

    report = sub.add_parser("report", help="recent executions, cost per workflow and per model")
    report.set_defaults(func=_cmd_report)

    demo = sub.add_parser("demo", help="run the demo agent against a local OpenAI-compatible server")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
