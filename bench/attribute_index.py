"""Benchmark: what a GIN index on step attributes costs the store's insert throughput (PostgreSQL).

Run: python bench/attribute_index.py [--spans 35000] [--repeat 3]
                                     [--pg-url postgresql://postgres@127.0.0.1:5432/postgres]

The dashboard's attribute filter needs an index to stay fast on millions of steps. Three
variants, each run into a fresh database per run, alternating, ``--repeat`` times: the
schema as migrated but without ``ix_step_executions_workflow_attributes`` (``none``); that
partial index on root and workflow spans only (``roots``, what revision 0008 creates); and a
GIN index over every step's attributes (``all``, the alternative not taken). The same
pre-mapped batches of 2,048 spans as ``bench/dashboard.py``'s store figures (7 spans, 5 LLM
calls an execution). Prints spans/s per run and the median of the per-round ratios to ``none``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dashboard as dashboard_bench  # noqa: E402

INDEX = "ix_step_executions_workflow_attributes"
VARIANTS = {
    "none": [f"DROP INDEX {INDEX}"],
    "roots": [],
    "all": [f"DROP INDEX {INDEX}", f"CREATE INDEX {INDEX}_all ON step_executions USING gin (attributes jsonb_path_ops)"],
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=35_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)
    count, batches = dashboard_bench.store_batches(args.spans)
    rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeat):
        for name, ddl in VARIANTS.items():
            database = f"wflo_bench_{uuid.uuid4().hex[:8]}"
            asyncio.run(dashboard_bench._admin(args.pg_url, f'CREATE DATABASE "{database}"'))
            try:
                url = dashboard_bench._dsn(args.pg_url, database).replace("postgresql://", "postgresql+asyncpg://", 1)
                rates[name].append(asyncio.run(dashboard_bench._store_rate(url, batches, count, True, tuple(ddl))))
            finally:
                asyncio.run(dashboard_bench._admin(args.pg_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    print(f"store throughput, PostgreSQL, {count:,} spans a run, {args.repeat} runs a variant (spans/s)")
    for name, values in rates.items():
        runs = ", ".join(f"{v:,.0f}" for v in values)
        ratio = statistics.median(v / base for v, base in zip(values, rates["none"]))  # per round: same drift
        print(f"  {name:6} median {statistics.median(values):9,.0f}   ratio to none {ratio:.3f}   ({runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
