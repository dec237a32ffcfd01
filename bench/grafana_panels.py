"""Benchmark: every PostgreSQL panel of the Grafana dashboard on a million step rows.

Run: python bench/grafana_panels.py [--steps 1000000] [--compare OTHER.json] [--pg-url postgresql://postgres@127.0.0.1:5432/postgres]
                                    [--repeat 3] [--keep]

Loads the same data as ``bench/queries.py`` (its ``LOAD_SQL``: 90 days, 20 workflows, 6 models,
one execution per 8 steps, migrated to head by alembic), then expands each panel's SQL exactly
as Grafana would (``tests/grafana_support.py``) and times it, side by side:

- the time range: the last 1, 7 and 30 days (the panels cost in proportion to the window);
- *All* as the dashboard writes it (a custom all-value, ``'__all__'``: no filter) against
  Grafana's default *All* (every option listed in ``IN (...)``), over 7 days;
- with ``--compare OTHER.json`` (say an earlier version: ``git show REV:dashboards/wflo-otel-postgres.json``),
  the same-titled panel of that dashboard over 7 days.

Prints the median of ``--repeat`` runs after one warm-up, the ratios, and each query's access
paths. The database is dropped afterwards unless ``--keep``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from grafana_support import Variables, grafana_sql  # noqa: E402
from queries import _plan_summary, loaded_database, parse_args  # noqa: E402

DASHBOARD = ROOT / "dashboards" / "wflo-otel-postgres.json"
WINDOWS = (1, 7, 30)


async def _median_ms(conn, sql: str, repeat: int) -> float:
    await conn.fetch(sql)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await conn.fetch(sql)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def _variables(definitions: dict, panel: dict, enumerated: dict | None = None) -> Variables:
    """*All* selected; ``enumerated`` drops the custom all-value so *All* lists every option."""
    if enumerated is not None:
        definitions = {name: {**d, "allValue": None} for name, d in definitions.items()}
    return Variables(definitions, {}, options=enumerated or {}, builtins={"__interval": panel.get("interval", "1h")})


async def _options(conn, definitions: dict, start: datetime, end: datetime) -> dict[str, list[str]]:
    options = {}
    for name, variable in definitions.items():
        if variable["type"] == "query":
            sql = grafana_sql(variable["query"], Variables(definitions, {}), start, end)
            options[name] = [r[0] for r in await conn.fetch(sql)]
    return options


def _sql_panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p.get("datasource", {}).get("type") == "grafana-postgresql-datasource"]


async def run(args) -> int:
    dashboard = json.loads(DASHBOARD.read_text())
    other = {p["title"]: p for p in _sql_panels(json.loads(Path(args.compare).read_text()))} if args.compare else {}
    definitions = {v["name"]: v for v in dashboard["templating"]["list"]}
    panels = _sql_panels(dashboard)
    results = []
    async with loaded_database(args.pg_url, args.steps, args.keep) as (conn, _):
        end = datetime.now(timezone.utc)
        week = end - timedelta(days=7)
        enumerated = await _options(conn, definitions, week, end)
        for panel in panels:
            raw = panel["targets"][0]["rawSql"]
            by_window = {}
            for days in WINDOWS:
                sql = grafana_sql(raw, _variables(definitions, panel), end - timedelta(days=days), end)
                by_window[days] = await _median_ms(conn, sql, args.repeat)
            sql_7d = grafana_sql(raw, _variables(definitions, panel), week, end)
            listed = await _median_ms(conn, grafana_sql(raw, _variables(definitions, panel, enumerated), week, end), args.repeat)
            compared = None
            if panel["title"] in other:
                before = grafana_sql(other[panel["title"]]["targets"][0]["rawSql"], _variables(definitions, panel), week, end)
                compared = await _median_ms(conn, before, args.repeat)
            plan = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql_7d))[0]
            results.append((panel["title"], by_window, listed, compared, _plan_summary(plan)))

    width = max(len(r[0]) for r in results)
    head = "  ".join(f"{d}d ms".rjust(8) for d in WINDOWS)
    print(f"{'panel'.ljust(width)}  {head}  30d/7d  All listed 7d ms  listed/custom  compared 7d ms  compared/this  access paths (7d)")
    for title, by_window, listed, compared, paths in results:
        cells = "  ".join(f"{by_window[d]:8.1f}" for d in WINDOWS)
        versus = f"{compared:14.1f}  {compared / by_window[7]:13.2f}" if compared is not None else f"{'-':>14}  {'-':>13}"
        print(f"{title.ljust(width)}  {cells}  {by_window[30] / by_window[7]:6.2f}  {listed:16.1f}  {listed / by_window[7]:13.2f}  {versus}  {paths}")
    slowest = max(max(r[1].values()) for r in results)
    print(f"\nslowest panel median: {slowest:.1f} ms")
    return 0


def main(argv=None) -> int:
    def compare(parser) -> None:
        parser.add_argument("--compare", metavar="OTHER.json", help="also time the same-titled panels of this dashboard")

    return asyncio.run(run(parse_args(__doc__, argv, repeat=3, add_arguments=compare)))


if __name__ == "__main__":
    sys.exit(main())
