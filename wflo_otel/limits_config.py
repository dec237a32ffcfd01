"""Spend limits from ``configure(limits=..., alerts=...)`` or ``$WFLO_LIMITS_FILE``, wired to a processor.

Bad input is an error at start, never a silent absence of a limit: an unknown
period, a negative amount, a selector naming nothing, a file that does not parse
or has fields we do not know all raise ``ValueError`` naming the file and limit.

The file (YAML; JSON is YAML too)::

    limits:
      - {name: per-customer, usd: 25, per: day, key: tenant.id}
      - {name: triage-monthly, usd: 400, per: month, where: {gen_ai.workflow.name: triage}}
    alerts:
      webhook: https://hooks.example/...
      secret_env: WFLO_ALERTS_SECRET      # or secret: ...
      at: [0.5, 0.8, 1.0]
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import weakref
from typing import Any, Sequence

from .alerts import Alerts
from .limits import LimitEngine, SpendLimit

_log = logging.getLogger(__name__)

ENV_LIMITS_FILE = "WFLO_LIMITS_FILE"
ENV_LEASE_TTL = "WFLO_LIMITS_LEASE_TTL_S"
_LIMIT_FIELDS = {"name", "usd", "per", "key", "where", "tz", "on_unavailable"}
_ALERT_FIELDS = {"webhook", "secret", "secret_env", "at", "timeout_s", "retries"}


def load_limits_file(path: str) -> tuple[list[SpendLimit], Alerts | None]:
    """Read a limits file; ``ValueError`` saying what is wrong and where."""
    import yaml

    where = f"{ENV_LIMITS_FILE} {path}"
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise ValueError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: does not parse as YAML: {str(exc).splitlines()[0]}") from None
    if isinstance(data, list):
        data = {"limits": data}
    if not isinstance(data, dict) or not isinstance(data.get("limits"), list) or not data["limits"]:
        raise ValueError(f"{where}: expected a mapping with a non-empty 'limits' list")
    unknown = set(data) - {"limits", "alerts"}
    if unknown:
        raise ValueError(f"{where}: unknown top-level fields {sorted(unknown)} (expected 'limits', 'alerts')")
    limits = [_limit(where, index, entry) for index, entry in enumerate(data["limits"])]
    alerts = _alerts(where, data["alerts"]) if data.get("alerts") is not None else None
    return limits, alerts


def _limit(where: str, index: int, entry: Any) -> SpendLimit:
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: limits[{index}] must be a mapping with name, usd and per")
    unknown = set(entry) - _LIMIT_FIELDS
    missing = {"name", "usd", "per"} - set(entry)
    if unknown or missing:
        problem = f"unknown fields {sorted(unknown)}" if unknown else f"missing {sorted(missing)}"
        raise ValueError(f"{where}: limits[{index}] ({entry.get('name', '?')}): {problem}")
    try:
        return SpendLimit(**entry)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: limits[{index}]: {exc}") from None


def _alerts(where: str, entry: Any) -> Alerts:
    if not isinstance(entry, dict) or set(entry) - _ALERT_FIELDS:
        raise ValueError(f"{where}: alerts must be a mapping of {sorted(_ALERT_FIELDS)}")
    entry = dict(entry)
    secret_env = entry.pop("secret_env", None)
    if secret_env:
        entry["secret"] = os.environ.get(secret_env)
        if not entry["secret"]:
            raise ValueError(f"{where}: alerts.secret_env names {secret_env}, which is not set")
    try:
        return Alerts(**entry)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: alerts: {exc}") from None


def resolve(limits: Sequence[SpendLimit] | None, alerts: Alerts | None) -> tuple[list[SpendLimit], Alerts | None]:
    """The limits of ``configure()``, else of ``$WFLO_LIMITS_FILE``; checked."""
    if limits is None:
        path = os.environ.get(ENV_LIMITS_FILE, "").strip()
        if not path:
            return [], alerts
        limits, from_file = load_limits_file(path)
        alerts = alerts or from_file
    limits = [limits] if isinstance(limits, SpendLimit) else list(limits)
    for limit in limits:
        if not isinstance(limit, SpendLimit):
            raise ValueError(f"configure(limits=...) takes wflo_otel.SpendLimit objects, got {limit!r}")
    check_distinct_names(limits)
    if any(limit.per != "run" for limit in limits):
        checked_lease_ttl()  # a malformed WFLO_LIMITS_LEASE_TTL_S fails here, not late in build_engine
    if alerts is not None and not isinstance(alerts, Alerts):
        raise ValueError(f"configure(alerts=...) takes wflo_otel.Alerts, got {alerts!r}")
    return limits, alerts


def check_distinct_names(limits: Sequence[SpendLimit]) -> None:
    """Two limits of one name would share buckets and leases: refuse them up front."""
    names = [limit.name for limit in limits]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"spend limits must have distinct names; repeated: {', '.join(duplicates)}")


def checked_lease_ttl(value: float | None = None) -> float:
    """The lease TTL: ``value``, else ``$WFLO_LIMITS_LEASE_TTL_S``, else the default; finite and > 0.

    0 is an error, not "the default": a lease that expires at once would be reclaimed
    by every other process, and a negative one would make the heartbeat spin.
    """
    from .limits_store import DEFAULT_LEASE_TTL_S
    from .settings import env_float

    name = "lease_ttl_s" if value is not None else ENV_LEASE_TTL
    ttl = value if value is not None else env_float(ENV_LEASE_TTL)
    if ttl is None:
        return DEFAULT_LEASE_TTL_S
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not (0 < ttl < math.inf):
        raise ValueError(f"{name} must be a finite number of seconds > 0, got {ttl!r}")
    return float(ttl)


def build_engine(
    limits: Sequence[SpendLimit],
    alerts: Alerts | None,
    database_url: str | None,
    *,
    meter_provider: Any = None,
    lease_ttl_s: float | None = None,
) -> LimitEngine:
    """A started engine: calendar periods leased from ``database_url``'s database."""
    from .limits_store import LeaseStore
    from .settings import database_url as resolve_url

    store = None
    if any(limit.per != "run" for limit in limits):
        store = LeaseStore(resolve_url(database_url), ttl_s=checked_lease_ttl(lease_ttl_s))
    if alerts is not None:
        alerts.store = store
    engine = LimitEngine(limits, store=store, alerts=alerts)
    atexit.register(engine.close)  # a process that never calls shutdown() still reports and returns its leases
    start_heartbeat(engine, interval_s=min(5.0, (store.ttl_s / 3) if store else 5.0))
    register_metrics(engine, meter_provider)
    return engine


def apply_limits(
    engine: LimitEngine | None,
    limits: Sequence[SpendLimit],
    alerts: Alerts | None,
    database_url: str | None,
    *,
    meter_provider: Any = None,
) -> LimitEngine | None:
    """The engine a budget processor has once ``configure()`` gives it ``limits`` and ``alerts``.

    Also for a ``configure()`` made after the processor exists (a second call, or one
    under ``opentelemetry-instrument``): they apply, never silently dropped. No engine yet → a new one; an engine → the
    new limits join it (``LimitEngine.add_limits``). Alerts join an engine that has
    none; an engine that already reports to other alerts is a ``ValueError``.
    Returns the engine the processor should now have.
    """
    if not limits and alerts is None:
        return engine
    if engine is None:
        if not limits:
            raise ValueError("configure(alerts=...) needs spend limits to alert on (limits=... or $WFLO_LIMITS_FILE)")
        return build_engine(limits, alerts, database_url, meter_provider=meter_provider)
    if alerts is not None and engine.alerts is not alerts:
        if engine.alerts is not None:
            raise ValueError("spend limit alerts are already configured; a later configure() cannot replace them")
        alerts.store = engine.store
        engine.alerts = alerts
    if any(limit.per != "run" for limit in limits) and engine.store is None:
        from .limits_store import LeaseStore
        from .settings import database_url as resolve_url

        check_distinct_names([*engine.limits, *limits])  # before opening anything
        engine.store = LeaseStore(resolve_url(database_url), ttl_s=checked_lease_ttl())
        if engine.alerts is not None:
            engine.alerts.store = engine.store
        start_heartbeat(engine, interval_s=min(5.0, engine.store.ttl_s / 3))
    engine.add_limits(limits)
    return engine


def start_heartbeat(engine: LimitEngine, interval_s: float) -> threading.Thread | None:
    """Report spend, renew leases and roll periods over every ``interval_s`` until the engine closes."""
    if engine.store is None:
        return None
    if not 0 < interval_s < math.inf:  # stop.wait(<= 0) returns at once: the thread would spin
        raise ValueError(f"the spend limits heartbeat needs an interval > 0 seconds, got {interval_s!r}")
    stop = threading.Event()
    ref = weakref.ref(engine)

    def beat() -> None:
        while not stop.wait(interval_s):
            current = ref()
            if current is None or current._closed:
                return
            try:
                current.sync_all()
            except Exception:
                _log.exception("wflo-otel: spend limits heartbeat failed")
            del current

    engine._heartbeat_stop = stop
    thread = threading.Thread(target=beat, name="wflo-otel-limits-heartbeat", daemon=True)
    thread.start()
    return thread


_registered: "weakref.WeakKeyDictionary[Any, list]" = weakref.WeakKeyDictionary()
_global_slot: list = [None]


def register_metrics(engine: LimitEngine, meter_provider: Any = None) -> None:
    """``wflo.limit.spent_usd`` / ``wflo.limit.remaining_usd`` (gauges), ``wflo.limit.refusals`` and
    ``wflo.limit.alerts`` (counters), labelled by the limit's name (and threshold) only: keys are
    unbounded. Instruments are made once
    per meter provider; they read whichever engine is current."""
    from opentelemetry import metrics

    from . import __version__

    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    try:
        slot = _registered.get(provider)
    except TypeError:
        slot = None
    if slot is not None:
        slot[0] = engine
        return
    slot = [engine]
    try:
        _registered[provider] = slot
    except TypeError:
        slot = _global_slot
        slot[0] = engine
    meter = metrics.get_meter("wflo_otel.limits", __version__, meter_provider=provider)

    def spent(_options):
        from opentelemetry.metrics import Observation

        current = slot[0]
        return [Observation(value, {"wflo.limit.name": name}) for name, value in _per_limit(current, "spent")] if current else []

    def remaining(_options):
        from opentelemetry.metrics import Observation

        current = slot[0]
        return [Observation(value, {"wflo.limit.name": name}) for name, value in _per_limit(current, "remaining")] if current else []

    def refusals(_options):
        from opentelemetry.metrics import Observation

        current = slot[0]
        return [Observation(count, {"wflo.limit.name": name}) for name, count in current.refusals.items()] if current else []

    meter.create_observable_gauge("wflo.limit.spent_usd", [spent], unit="USD", description="Spent in the current period (largest key)")
    meter.create_observable_gauge("wflo.limit.remaining_usd", [remaining], unit="USD", description="Left in the current period (smallest key)")
    meter.create_observable_counter("wflo.limit.refusals", [refusals], unit="{call}", description="Calls refused by a spend limit")

    def alerts(_options):
        from opentelemetry.metrics import Observation

        current = slot[0]
        fired = current.alerts.fired if current and current.alerts is not None else {}
        return [Observation(n, {"wflo.limit.name": name, "wflo.limit.threshold": t}) for (name, t), n in fired.items()]

    meter.create_observable_counter("wflo.limit.alerts", [alerts], unit="{alert}", description="Threshold alerts this process delivered")


def _per_limit(engine: LimitEngine, what: str) -> list[tuple[str, float]]:
    """Per limit name: the most spent / least remaining over the keys of its current period."""
    now = engine.clock()
    best: dict[str, float] = {}
    for bucket in engine.buckets():
        if not bucket.start.timestamp() <= now < bucket.end.timestamp():
            continue
        spent = bucket.known_spent
        value = spent if what == "spent" else max(bucket.limit.usd - spent, 0.0)
        name = bucket.limit.name
        if name not in best or (value > best[name] if what == "spent" else value < best[name]):
            best[name] = value
    return sorted(best.items())
