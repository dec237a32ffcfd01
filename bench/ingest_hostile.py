"""One hostile local client against ``wflo-otel serve``: this code against another's, side by side.

    .venv/bin/python bench/ingest_hostile.py                                  # this checkout only
    .venv/bin/python bench/ingest_hostile.py --before-python /tmp/main/.venv/bin/python

``--before-python`` is an interpreter with another wflo-otel installed (e.g. main's, before
the ingest limits): the same scenarios run against a server started with it, then against
this checkout's, each with its default options, and the table prints both with ratios.

Scenarios (loopback, SQLite in a temporary folder, the server in a subprocess):

* **bombs**: N gzip bombs (~31 KB each, 31 MiB inflated) posted at once; the server's
  peak RSS (``VmHWM``), how many were accepted, wall time.
* **hostile**: the server's file-descriptor limit at 256 (so exhausting it is cheap),
  M connections opened (idle, half-sent headers, half-sent bodies, a byte every 0.5 s),
  then one good request, retried on 429/503 after ``Retry-After`` as an OTLP exporter
  does: seconds until it is accepted (or "timeout"), and the bytes the server logged
  over the scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from wflo_otel.ingest.hostile import (
    ServerProcess,
    answered_within,
    bombs_in_flight,
    good_request,
    gzip_bomb,
    hold_hostile,
)


def bombs(python: str, count: int, folder: Path) -> dict[str, float | str]:
    bomb = gzip_bomb(31)
    with ServerProcess(f"sqlite:///{folder}/bombs.db", folder / "bombs.log", python=python) as server:
        start = time.monotonic()
        statuses = asyncio.run(bombs_in_flight(server.url, count, bomb))
        seconds = time.monotonic() - start
        peak_mb = server.memory_kb("VmHWM") / 1024
    return {
        "peak RSS, MB": round(peak_mb),
        "bombs accepted (200)": statuses.count(200),
        "bombs refused (429)": statuses.count(429),
        "bombs wall time, s": round(seconds, 1),
    }


def hostile(python: str, per_kind: int, hold_s: float, folder: Path) -> dict[str, float | str]:
    log = folder / "hostile.log"
    with ServerProcess(f"sqlite:///{folder}/hostile.db", log, python=python, nofile=256) as server:
        before = server.log_bytes()

        async def attack_and_ask() -> float | None:
            attack = asyncio.ensure_future(hold_hostile(server.host, server.port, per_kind, hold_s))
            await asyncio.sleep(min(2.0, hold_s / 4))  # let them all connect first
            try:
                latency, _ = await answered_within(server.url, good_request(), deadline_s=hold_s)
            finally:
                await attack
            return latency

        latency = asyncio.run(attack_and_ask())
        logged = server.log_bytes() - before
    return {
        "good request answered in, s": "timeout" if latency is None else round(latency, 2),
        f"log bytes over {hold_s:g} s": logged,
    }


def run(python: str, args: argparse.Namespace) -> dict[str, float | str]:
    with tempfile.TemporaryDirectory(prefix="wflo-hostile-") as tmp:
        folder = Path(tmp)
        return {**bombs(python, args.bombs, folder), **hostile(python, args.per_kind, args.hold, folder)}


def _ratio(before: float | str, after: float | str) -> str:
    if isinstance(before, str) or isinstance(after, str):
        return f"{before} vs {after}"
    if isinstance(before, (int, float)) and isinstance(after, (int, float)) and after:
        return f"{before / after:.1f}x"
    return ""


_RATIOS = ("peak RSS, MB", "bombs wall time, s", "good request answered in, s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before-python", help="an interpreter with the wflo-otel to compare against")
    parser.add_argument("--bombs", type=int, default=32)
    parser.add_argument("--per-kind", type=int, default=100, help="hostile connections of each of 3 kinds")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds the hostile connections are held")
    args = parser.parse_args(argv)
    columns = {}
    if args.before_python:
        columns["before"] = run(args.before_python, args)
    columns["this checkout"] = run(sys.executable, args)
    print(f"{args.bombs} gzip bombs in flight; {3 * args.per_kind} hostile connections, server RLIMIT_NOFILE 256\n")
    names = list(columns)
    header = f"| measure | {' | '.join(names)} |" + (" before/after |" if len(names) == 2 else "")
    print(header)
    print("|" + " --- |" * (header.count("|") - 1))
    for measure in columns[names[-1]]:
        values = [columns[name][measure] for name in names]
        ratio = f" {_ratio(values[0], values[1]) if measure in _RATIOS else ''} |" if len(values) == 2 else ""
        print(f"| {measure} | {' | '.join(str(v) for v in values)} |{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
