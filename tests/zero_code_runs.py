"""Running an app under ``opentelemetry-instrument``, as a user would, for the zero-code tests.

Each run is a subprocess in a temporary working directory, with every ``OTEL_*`` and
``WFLO_*`` variable of the test process removed and the local OpenAI-compatible
server's URL in ``FAKE_OPENAI_URL``.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

BIN = Path(sys.executable).parent

# Three small calls, then one whose worst case no small budget fits.
APP = """
import os
import openai

client = openai.OpenAI(base_url=os.environ["FAKE_OPENAI_URL"], api_key="test-key", max_retries=0)
for i in range(3):
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=100
    )
    print("answered", i)
try:
    client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "a long essay"}], max_tokens=100_000
    )
    print("big call sent")
except Exception as exc:
    print("big call refused:", type(exc).__name__, getattr(exc, "budget_usd", None))
"""


def run_instrumented(
    cwd: Path, source: str, openai_server, *, check: bool = True, **env_extra: str
) -> subprocess.CompletedProcess:
    """``opentelemetry-instrument python app.py`` with ``source`` as app.py; exit status 0 unless ``check=False``."""
    (cwd / "app.py").write_text(textwrap.dedent(source))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "WFLO_"))}
    env.update(
        FAKE_OPENAI_URL=openai_server.base_url,
        OTEL_SERVICE_NAME="zero-code-app",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        **env_extra,
    )
    result = subprocess.run(
        [str(BIN / "opentelemetry-instrument"), sys.executable, "app.py"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def rows(db: Path, sql: str) -> list[tuple]:
    connection = sqlite3.connect(db)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def install_fake_distribution(site: Path, module: str, source: str, entry_points: str) -> None:
    """A module and its dist-info with ``entry_points`` under ``site`` (put it on PYTHONPATH)."""
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{module}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module.replace('_', '-')}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
