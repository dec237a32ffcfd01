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


# -- limits given to a later configure() apply --------------------------------------------------


@pytest.fixture
def reconfigured(tmp_path):
    """configure() on a SQLite file; undone after the test."""
    import wflo_otel
    from opentelemetry.sdk.trace import TracerProvider

    handle = wflo_otel.configure(f"sqlite+aiosqlite:///{tmp_path}/limits.db", tracer_provider=TracerProvider(), exporter=False)
    yield handle
    handle.shutdown()


def _ask(base_url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="k", max_retries=0)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=100)


def test_limits_given_to_a_second_configure_refuse_calls(reconfigured, tmp_path, max_output_server):
    import wflo_otel

    again = wflo_otel.configure(f"sqlite+aiosqlite:///{tmp_path}/limits.db", limits=[SpendLimit("zero", usd=0.0, per="run")])
    assert again is reconfigured
    with pytest.raises(wflo_otel.BudgetExceededError) as refused:
        _ask(max_output_server.base_url)
    assert refused.value.limit == "zero"


def test_a_third_configure_adds_its_limits_to_those_already_there(reconfigured, tmp_path, max_output_server):
    import wflo_otel

    url = f"sqlite+aiosqlite:///{tmp_path}/limits.db"
    wflo_otel.configure(url, limits=[SpendLimit("generous", usd=100.0, per="run")])
    wflo_otel.configure(url, limits=[SpendLimit("daily-zero", usd=0.0, per="day")])
    assert [limit.name for limit in reconfigured.budget_processor.limits.limits] == ["generous", "daily-zero"]
    with pytest.raises(wflo_otel.BudgetExceededError) as refused:
        _ask(max_output_server.base_url)
    assert refused.value.limit == "daily-zero"  # a call must fit every limit


def test_a_later_configure_cannot_redefine_a_limit_of_the_same_name(reconfigured):
    import wflo_otel

    wflo_otel.configure(limits=[SpendLimit("cap", usd=1.0, per="run")])
    wflo_otel.configure(limits=[SpendLimit("cap", usd=1.0, per="run")])  # the same again: nothing to do
    with pytest.raises(ValueError, match="cannot redefine"):
        wflo_otel.configure(limits=[SpendLimit("cap", usd=5.0, per="run")])
    assert [limit.usd for limit in reconfigured.budget_processor.limits.limits] == [1.0]


def test_alerts_given_to_a_later_configure_apply_or_are_an_error(reconfigured):
    import wflo_otel

    first = wflo_otel.Alerts(at=(0.5,))
    wflo_otel.configure(limits=[SpendLimit("cap", usd=1.0, per="run")], alerts=first)
    assert reconfigured.budget_processor.limits.alerts is first
    with pytest.raises(ValueError, match="cannot replace them"):
        wflo_otel.configure(alerts=wflo_otel.Alerts(at=(0.9,)))


def test_alerts_without_any_limit_are_an_error_not_ignored(reconfigured):
    import wflo_otel

    with pytest.raises(ValueError, match="needs spend limits"):
        wflo_otel.configure(alerts=wflo_otel.Alerts())


@pytest.mark.one_leg
def test_configure_limits_inside_opentelemetry_instrument_join_the_limits_file(tmp_path, openai_server):
    from zero_code_runs import run_instrumented

    (tmp_path / "limits.yaml").write_text("limits:\n  - {name: generous, usd: 100, per: run}\n")
    app = """
    import os, openai, wflo_otel
    wflo_otel.configure(limits=[wflo_otel.SpendLimit("zero", usd=0.0, per="run")])
    client = openai.OpenAI(base_url=os.environ["FAKE_OPENAI_URL"], api_key="k", max_retries=0)
    try:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=50)
        print("call went through")
    except wflo_otel.BudgetExceededError as exc:
        print("refused by", exc.limit)
    """
    result = run_instrumented(tmp_path, app, openai_server, WFLO_LIMITS_FILE="limits.yaml")
    assert result.stdout.strip() == "refused by zero", result.stderr


# -- where= and keys compare one normal form of each value ------------------------------------


@pytest.mark.parametrize(
    "where, attributes",
    [({"tier": 1}, {"tier": 1.0}), ({"tier": 1.0}, {"tier": 1}), ({"vip": True}, {"vip": "true"}), ({"vip": "false"}, {"vip": False})],
)
def test_where_matches_numbers_and_bools_however_they_are_written(where, attributes):
    from wflo_otel.limits import LimitEngine

    engine = LimitEngine([SpendLimit("f", usd=1.0, per="run", where=where)])
    assert [limit.name for limit, _ in engine.match(attributes, [])] == ["f"]


def test_where_strings_match_exactly_and_keys_share_the_normal_form():
    from wflo_otel.limits import LimitEngine

    engine = LimitEngine([SpendLimit("z", usd=1.0, per="run", where={"tenant.id": "acme"}, key="tier")])
    assert engine.match({"tenant.id": "ACME"}, []) == [] and engine.match({"tenant.id": " acme"}, []) == []
    [(_, key)] = engine.match({"tenant.id": "acme", "tier": 2.0}, [])
    [(_, same)] = engine.match({"tenant.id": "acme", "tier": 2}, [])
    assert key == same == "2"


# -- settings that would quietly do nothing are errors ------------------------------------------


@pytest.mark.parametrize(
    "kwargs, said",
    [
        ({"at": (50, 80, 100)}, "fractions in (0, 1]"),
        ({"at": (0.5, 1.5)}, "fractions in (0, 1]"),
        ({"at": (float("nan"),)}, "fractions in (0, 1]"),
        ({"retries": -1}, "retries"),
        ({"retries": 2.5}, "retries"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": float("inf")}, "timeout_s"),
        ({"backoff_s": -0.5}, "backoff_s"),
        ({"backoff_s": float("nan")}, "backoff_s"),
    ],
)
def test_alerts_refuse_percentages_and_settings_that_cannot_work(kwargs, said):
    import wflo_otel

    with pytest.raises(ValueError, match=said.replace("(", r"\(").replace("]", r"\]")):
        wflo_otel.Alerts(**kwargs)


def test_alerts_at_one_hundred_percent_is_accepted():
    import wflo_otel

    assert wflo_otel.Alerts(at=(1, 0.5)).at == (0.5, 1.0)


def test_a_single_spend_limit_is_taken_as_a_list_of_one():
    from wflo_otel.limits_config import resolve

    limit = SpendLimit("one", usd=1.0, per="run")
    assert resolve(limit, None) == ([limit], None)


@pytest.mark.parametrize("tz", ["localtime", "Factory", "posixrules", "posix/Europe/Paris", "Mars/Olympus", ""])
def test_a_time_zone_that_is_not_an_iana_key_is_refused(tz):
    with pytest.raises(ValueError, match="IANA time zone"):
        SpendLimit("a", usd=1.0, per="day", tz=tz)


def test_iana_time_zones_are_accepted():
    assert SpendLimit("a", usd=1.0, per="day", tz="Europe/Paris").tz == "Europe/Paris"


# -- on_unavailable="allow": one process never spends past what it could check -----------------


def test_with_the_database_down_allow_still_keeps_one_process_within_the_limit(max_output_server):
    import openai
    from opentelemetry.sdk.trace import TracerProvider

    import wflo_otel

    down = "postgresql+asyncpg://postgres@127.0.0.1:9/none?connect_timeout=1"
    limit = SpendLimit("daily", usd=0.002, per="day", on_unavailable="allow")
    handle = wflo_otel.configure(down, tracer_provider=TracerProvider(), exporter=False, limits=[limit], default_service_tier="default")
    try:
        handle.budget_processor.limits.store.timeout_s = 2
        client = openai.OpenAI(base_url=max_output_server.base_url, api_key="k", max_retries=0)
        spent, refused = 0.0, None
        for _ in range(10):  # each call ~$0.0006: at most 3 fit $0.002
            try:
                with wflo_otel.workflow("w", budget_usd=1.0) as wf:
                    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=1000)
                spent += wf.spent_usd
            except wflo_otel.BudgetExceededError as exc:
                refused = exc
                break
    finally:
        handle.shutdown()
    assert refused is not None and refused.limit == "daily" and refused.unavailable
    assert 0.0012 < spent <= 0.002
