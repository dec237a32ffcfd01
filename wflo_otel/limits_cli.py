"""``wflo-otel limits``: each spend limit's current period per key; ``limits reset NAME [--key K]``.

Reads and writes the tables of ``limits_store`` in the exporter's database. A reset
starts the current period's spend over (the leases running processes hold stay
theirs) and lets its alert thresholds fire again.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import datetime, timezone
from typing import Any

from .limits_store import timestamp_param

_CURRENT = """
SELECT limit_name AS "limit", limit_key AS "key", per, period_start, spent_usd, leased_usd,
       remaining_usd, alerted_threshold, period_end AS resets_at
FROM spend_per_limit
WHERE period_end > :now
ORDER BY limit_name, limit_key
"""
_HISTORY = _CURRENT.replace("WHERE period_end > :now\n", "").replace("ORDER BY limit_name", "ORDER BY period_start DESC, limit_name")
_KEY = " AND limit_key = :key"
_RESET = "UPDATE spend_limit_periods SET spent_usd = 0 WHERE limit_name = :name AND period_end > :now{key}"
_UNFIRE = (
    "DELETE FROM spend_limit_alerts WHERE limit_name = :name{key} AND period_start IN "
    "(SELECT period_start FROM spend_limit_periods WHERE limit_name = :name AND period_end > :now{key})"
)


def register_limits(commands: Any) -> None:
    """The ``limits`` command group (see ``cli.COMMAND_GROUPS``)."""
    limits = commands.add("limits", help="spend limits: each limit's current period per key (spent, leased, remaining, resets at)")
    limits.add_argument("--history", action="store_true", help="every period kept, newest first, not only the current ones")
    limits.set_defaults(func=_cmd_limits, limits_command=None)
    sub = commands.group(limits, "limits_command")
    sub._subparsers.required = False  # bare `wflo-otel limits` shows them
    reset = sub.add("reset", help="start the current period of a limit over (an operator's override)")
    reset.add_argument("name", help="the limit's name")
    reset.add_argument("--key", help="only this key (e.g. one tenant); default: every key")


def _cmd_limits(args: argparse.Namespace) -> int:
    from .cli import CommandError, _existing_database_url, fetch, format_table

    url = _existing_database_url(args)
    now = timestamp_param(datetime.now(timezone.utc), url.startswith("sqlite"))
    if args.limits_command == "reset":
        count = asyncio.run(_reset(url, args.name, args.key, now))
        if not count:
            which = f"{args.name!r}" + (f" with key {args.key!r}" if args.key else "")
            raise CommandError(f"limits reset: no current period of limit {which} in the database")
        print(f"reset {count} current period(s) of limit {args.name!r}" + (f" (key {args.key!r})" if args.key else ""))
        return 0
    sql, params = (_HISTORY, {}) if args.history else (_CURRENT, {"now": now})
    columns, rows = asyncio.run(fetch(url, sql, params))
    print(format_table(columns, rows) if rows else "(no spend limit has a current period in this database)")
    return 0


async def _reset(url: str, name: str, key: str | None, now: Any) -> int:
    import sqlalchemy as sa

    from .exporters.store import create_engine

    params = {"name": name, "now": now, "key": key}
    where_key = _KEY if key is not None else ""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(sa.text(_UNFIRE.format(key=where_key)), params)
            return (await conn.execute(sa.text(_RESET.format(key=where_key)), params)).rowcount
    finally:
        await engine.dispose()
