"""The built wheel: one top-level import name, and it can migrate a database on its own."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("wflo_otel-*.whl")
    return path


def test_wheel_installs_only_the_wflo_otel_import_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"wflo_otel"}
    assert "wflo_otel/exporters/sql.py" in names
    assert "wflo_otel/migrations/env.py" in names
    assert "wflo_otel/migrations/script.py.mako" in names
    assert any(n.startswith("wflo_otel/migrations/versions/0001") for n in names)


def test_wheel_entry_points_are_declared(wheel):
    (entry_points,) = [n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[opentelemetry_instrumentor]\nopenai = wflo_otel.instrumentation.openai:OpenAIInstrumentor" in text
    assert "[opentelemetry_traces_exporter]\nwflo = wflo_otel.exporters.sql:SQLSpanExporter" in text
    assert "wflo-otel = wflo_otel.cli:main" in text


def test_unpacked_wheel_runs_its_migrations(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    db = tmp_path / "w.db"
    code = (
        "import wflo_otel, sys; from wflo_otel import migrations;"
        f"assert wflo_otel.__file__.startswith({str(site)!r}), wflo_otel.__file__;"
        f"migrations.upgrade('sqlite:///{db}'); print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": str(site)}, cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    import sqlite3

    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"workflow_definitions", "workflow_executions", "step_executions"} <= tables
