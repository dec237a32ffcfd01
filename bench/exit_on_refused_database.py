"""How long a script takes to exit when its PostgreSQL database name is mistyped: before and after.

The script is the README's shape: ``configure(url)``, one workflow with a step, then
``handle.shutdown()`` (a flush and a shutdown, as an application's exit does). Its
database name does not exist (SQLSTATE 3D000). Before issue 15's fix the flush waited
for the replayer's back-off until its 30 s timeout; after, the exporter spools at once,
probes once more at flush and shutdown, and exits printing one line.

"before" runs the code of a git revision (default ``main``), exported with ``git archive``
into a temporary folder laid out as the installed package (``exporters/`` and
``migrations/`` inside ``wflo_otel/``) and put first on ``PYTHONPATH``; "after" runs this
checkout. Both in this venv, alternately, ``--runs`` times each; a throw-away spool folder
each run. Needs PostgreSQL on 127.0.0.1:5432 (or ``$WFLO_TEST_PG_URL``'s server)::

    .venv/bin/python bench/exit_on_refused_database.py [--runs 3] [--before main]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = """
import sys, wflo_otel
handle = wflo_otel.configure(sys.argv[1])
with wflo_otel.workflow("typo"):
    with wflo_otel.step("retrieve"):
        pass
handle.shutdown()
"""


def export_revision(revision: str, into: Path) -> Path:
    """``revision``'s package, importable as ``wflo_otel`` from ``into``."""
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    for name in ("exporters", "migrations"):  # pyproject's package-dir mapping
        shutil.move(str(into / name), str(into / "wflo_otel" / name))
    return into


def run_once(pythonpath: Path, url: str, workdir: Path) -> tuple[float, str]:
    spool = workdir / f"spool-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "WFLO_SPOOL_DIR": str(spool)}
    script = workdir / "app.py"
    script.write_text(SCRIPT)
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(script), url], env=env, capture_output=True, text=True, timeout=300, cwd=workdir)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"the script failed:\n{result.stderr}")
    shutil.rmtree(spool, ignore_errors=True)
    return elapsed, result.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--before", default="main", help="git revision for the 'before' side (default: main)")
    args = parser.parse_args()
    admin = os.environ.get("WFLO_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    url = admin.rsplit("/", 1)[0] + f"/does_not_exist_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="wflo-bench-refused-") as tmp:
        tmp = Path(tmp)
        before = export_revision(args.before, tmp / "before")
        sides = {
            f"before ({args.before})": (before, url),
            "after (this checkout)": (ROOT, url),
            # The floor: the same script writing to a SQLite file that works (imports, configure, one commit).
            "floor: a working SQLite": (ROOT, f"sqlite:///{tmp}/floor.db"),
        }
        times: dict[str, list[float]] = {name: [] for name in sides}
        last_stderr: dict[str, str] = {}
        for _ in range(args.runs):  # alternately, so all see the same machine load
            for name, (path, database) in sides.items():
                elapsed, stderr = run_once(path, database, tmp)
                times[name].append(elapsed)
                last_stderr[name] = stderr
        print(f"script exit time with a mistyped database name ({url}), {args.runs} runs each:")
        for name, values in times.items():
            print(f"  {name:24} median {statistics.median(values):6.2f} s   (runs: {', '.join(f'{v:.2f}' for v in values)})")
        names = list(times)
        ratio = statistics.median(times[names[0]]) / statistics.median(times[names[1]])
        print(f"  before / after: {ratio:.1f}x")
        print("\nwhat 'after' prints on stderr:")
        for line in last_stderr[names[1]].strip().splitlines():
            print("  " + line)


if __name__ == "__main__":
    main()
