"""Spend limits that must never be silently absent or overshot (hostile review of issues 15 and 16)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from wflo_otel.limits import SpendLimit

DAILY = "limits:\n  - {name: a, usd: 1, per: day}\n"


def _zero_code_settings(tmp_path, limits_file: str, **env: str) -> subprocess.CompletedProcess:
    """The distro's up-front settings check, in a fresh process, as opentelemetry-instrument runs it."""
    path = tmp_path / "limits.yaml"
    path.write_text(limits_file)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WFLO_")}
    environ.update(WFLO_LIMITS_FILE=str(path), **env)
    return subprocess.run(
        [sys.executable, "-c", "from wflo_otel.distro import settings; settings(); print('application ran')"],
        capture_output=True, text=True, env=environ, timeout=60,
    )


@pytest.mark.parametrize(
    "limits_file, env, said",
    [
        ("limits:\n  - {name: a, usd: 1, per: run}\n  - {name: a, usd: 2, per: run}\n", {}, "distinct names; repeated: a"),
        (DAILY, {"WFLO_LIMITS_LEASE_TTL_S": "0"}, "WFLO_LIMITS_LEASE_TTL_S must be a finite number of seconds > 0"),
        (DAILY, {"WFLO_LIMITS_LEASE_TTL_S": "-5"}, "WFLO_LIMITS_LEASE_TTL_S must be a finite number of seconds > 0"),
        (DAILY, {"WFLO_LIMITS_LEASE_TTL_S": "nan"}, "WFLO_LIMITS_LEASE_TTL_S must be a finite number of seconds > 0"),
        (DAILY, {"WFLO_LIMITS_LEASE_TTL_S": "inf"}, "WFLO_LIMITS_LEASE_TTL_S must be a finite number of seconds > 0"),
        (DAILY, {"WFLO_LIMITS_LEASE_TTL_S": "60s"}, "WFLO_LIMITS_LEASE_TTL_S must be a number"),
    ],
)
def test_a_zero_code_run_whose_limits_build_engine_cannot_use_exits_2_before_the_app(tmp_path, limits_file, env, said):
    run = _zero_code_settings(tmp_path, limits_file, **env)
    assert run.returncode == 2 and "application ran" not in run.stdout
    (line,) = run.stderr.strip().splitlines()
    assert said in line


def test_configure_refuses_two_limits_of_one_name_before_setting_anything_up():
    from wflo_otel.limits_config import resolve

    with pytest.raises(ValueError, match="distinct names"):
        resolve([SpendLimit("a", usd=1, per="run"), SpendLimit("a", usd=1, per="run")], None)


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
def test_a_lease_ttl_of_zero_or_less_or_not_finite_is_an_error_not_the_default(ttl):
    from wflo_otel.limits_config import checked_lease_ttl

    with pytest.raises(ValueError, match="finite number of seconds > 0"):
        checked_lease_ttl(ttl)


def test_the_heartbeat_refuses_an_interval_that_would_spin():
    from wflo_otel.limits import LimitEngine
    from wflo_otel.limits_config import start_heartbeat

    engine = LimitEngine([SpendLimit("a", usd=1, per="day")], store=object())
    with pytest.raises(ValueError, match="interval > 0"):
        start_heartbeat(engine, interval_s=-20.0)
