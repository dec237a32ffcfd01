"""Spend limits beyond one execution: per key (tenant, user, workflow...) per calendar period.

A :class:`SpendLimit` caps what every call it *matches* may spend together in one
period (an hour, day, week or month in a time zone, or ``run``: the life of the
process). Before a call is sent, its worst case is held on the current period of
every matching limit, at the same point the budget processor holds it on the
execution's scopes; the hold is settled to the actual cost when the call ends.

Money of calendar periods is shared by every process through leases in the
exporter's database (``limits_store``): a process spends a leased slice from
memory and goes back to the database only when the slice runs short, so the
common call does no I/O. ``run`` periods are one process's alone and never touch
the database.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

from opentelemetry import baggage, context as otel_context

from . import attributes as A
from .errors import BudgetExceededError

_log = logging.getLogger(__name__)

PERIODS = ("hour", "day", "week", "month", "run")
ON_UNAVAILABLE = ("refuse", "allow")
MISSING_KEY = ""  # the bucket of calls that do not carry a keyed limit's attribute
_EPSILON = 1e-12

# Span attributes the limits stamp on a call.
WFLO_LIMIT_REFUSED = "wflo.limit.refused"  # the name of the limit that refused the call
WFLO_LIMIT_UNAVAILABLE = "wflo.limit.unavailable"  # limits let through with their database down
WFLO_LIMITS = "wflo.limits"  # the names of the limits the call was held on


@dataclass(frozen=True)
class SpendLimit:
    """At most ``usd`` per ``per`` for the calls this limit matches (for each value of ``key``).

    ``key``: the attribute whose value partitions the limit (``"tenant.id"``: each tenant
    has its own ``usd``); calls without it share one bucket. ``where``: attribute
    equalities a call must satisfy to count (a value may be a list: any of them).
    ``tz``: the IANA zone whose calendar the period follows. ``on_unavailable``:
    ``"refuse"`` (fail closed) or ``"allow"`` calls when the shared database is down.
    """

    name: str
    usd: float
    per: str
    key: str | None = None
    where: Mapping[str, Any] | None = None
    tz: str = "UTC"
    on_unavailable: str = "refuse"
    _zone: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"a spend limit needs a non-empty name, got {self.name!r}")
        what = f"spend limit {self.name!r}"
        if isinstance(self.usd, bool) or not isinstance(self.usd, (int, float)) or not math.isfinite(self.usd) or self.usd < 0:
            raise ValueError(f"{what}: usd must be a non-negative number, got {self.usd!r}")
        object.__setattr__(self, "usd", float(self.usd))
        if self.per not in PERIODS:
            raise ValueError(f"{what}: per must be one of {', '.join(PERIODS)}; got {self.per!r}")
        if self.key is not None and (not isinstance(self.key, str) or not self.key.strip()):
            raise ValueError(f"{what}: key must name an attribute (like 'tenant.id'), got {self.key!r}")
        if self.where is not None:
            object.__setattr__(self, "where", _where(what, self.where))
        if self.on_unavailable not in ON_UNAVAILABLE:
            raise ValueError(f"{what}: on_unavailable must be 'refuse' or 'allow', got {self.on_unavailable!r}")
        object.__setattr__(self, "_zone", _zone(what, self.tz))

    @property
    def attribute_names(self) -> frozenset[str]:
        """The attributes this limit reads from a call."""
        return frozenset(([self.key] if self.key else []) + list(self.where or ()))

    def period(self, now: float) -> tuple[datetime, datetime]:
        """The [start, end) of the calendar period holding ``now`` (epoch seconds), in UTC."""
        return period_bounds(self.per, self._zone, now)


def _where(what: str, where: Mapping[str, Any]) -> dict[str, frozenset]:
    if not isinstance(where, Mapping) or not where:
        raise ValueError(f"{what}: where must map attribute names to values, got {where!r} (it names nothing)")
    selected: dict[str, frozenset] = {}
    for name, value in where.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{what}: where names an empty attribute: {where!r}")
        values = value if isinstance(value, (list, tuple, set, frozenset)) else [value]
        if not values or any(not isinstance(v, (str, int, float, bool)) for v in values):
            raise ValueError(f"{what}: where[{name!r}] must be a string, number or list of them, got {value!r}")
        selected[name] = frozenset(attribute_text(v) for v in values)
    return selected


def attribute_text(value: Any) -> str:
    """The text a ``where`` value, a call's attribute and a key are compared and stored as.

    Both sides go through here, so ``{"tier": 1}`` matches an attribute ``1.0`` and
    ``{"vip": True}`` matches ``"true"`` (baggage carries only strings): bools are
    ``"true"``/``"false"``, whole floats their integer text, other floats ``repr``.
    Strings are taken as they are: case and whitespace matter.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


# Files of the zone database that are not IANA zone keys: "localtime" is whatever this machine
# is set to (another machine's day would start at another hour), the others are artefacts.
_NOT_ZONE_KEYS = frozenset({"localtime", "Factory", "posixrules"})


def _zone(what: str, tz: str):
    if tz in ("UTC", "utc", "Z"):
        return timezone.utc
    bad = ValueError(f"{what}: tz must be an IANA time zone like 'Europe/Paris', got {tz!r}")
    if not isinstance(tz, str) or tz in _NOT_ZONE_KEYS or tz.startswith(("posix/", "right/")):
        raise bad
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(tz)
    except Exception:
        raise bad from None


_RUN_START = datetime.now(timezone.utc)


def period_bounds(per: str, zone, now: float) -> tuple[datetime, datetime]:
    """[start, end) in UTC of the ``per`` period of ``zone``'s calendar that holds ``now``.

    Boundaries are local midnights (first of the month, Monday for weeks), so a day in
    ``Europe/Paris`` starts at 22:00 or 23:00 UTC depending on daylight saving time.
    ``run`` is the life of this process: it started when wflo-otel was imported.
    """
    if per == "run":
        return _RUN_START, datetime.max.replace(tzinfo=timezone.utc)
    local = datetime.fromtimestamp(now, zone)
    if per == "hour":
        start = local.replace(minute=0, second=0, microsecond=0).astimezone(timezone.utc)
        return start, start + timedelta(hours=1)
    if per == "day":
        first = local.date()
        following = first + timedelta(days=1)
    elif per == "week":
        first = local.date() - timedelta(days=local.weekday())
        following = first + timedelta(days=7)
    else:  # month
        first = local.date().replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
    return _midnight(first, zone), _midnight(following, zone)


def _midnight(day, zone) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(timezone.utc)


class Bucket:
    """One limit's money for one key in one period, as this process sees it.

    ``granted``: money this process holds (the whole limit for ``run`` periods, else
    its lease, which still includes ``unreported`` spend); ``reserved``: held by calls
    in flight; ``unreported``: spent but not yet reported to the database;
    ``db_spent``: the period's spend across processes when last synchronised.
    """

    __slots__ = (
        "limit", "key", "start", "end", "granted", "reserved", "unreported", "spent", "db_spent",
        "fired", "lease_lock", "shared", "last_sync", "unavailable",
    )

    def __init__(self, limit: SpendLimit, key: str, start: datetime, end: datetime, shared: bool) -> None:
        self.limit = limit
        self.key = key
        self.start = start
        self.end = end
        self.shared = shared  # leased from the database (calendar periods with a store)
        self.granted = 0.0 if shared else limit.usd
        self.reserved = 0.0
        self.unreported = 0.0
        self.spent = 0.0  # what this process spent in the period
        self.db_spent = 0.0
        self.fired: set[float] = set()
        self.lease_lock = threading.Lock()
        self.last_sync = 0.0
        self.unavailable = False

    @property
    def available(self) -> float:
        return self.granted - self.reserved - self.unreported if self.shared else self.limit.usd - self.reserved - self.spent

    @property
    def known_spent(self) -> float:
        """The period's spend as this process knows it: the database's plus its own unreported."""
        return self.db_spent + self.unreported if self.shared else self.spent

    def __repr__(self) -> str:
        return (
            f"Bucket({self.limit.name!r}, key={self.key!r}, start={self.start.isoformat()}, granted={self.granted:.6f}, "
            f"reserved={self.reserved:.6f}, unreported={self.unreported:.6f}, db_spent={self.db_spent:.6f})"
        )


class Holds:
    """What one call holds on its limits' buckets; settled or released once, with the call."""

    __slots__ = ("engine", "held", "open")

    def __init__(self, engine: "LimitEngine", held: list[tuple[Bucket, float]]) -> None:
        self.engine = engine
        self.held = held
        self.open = True

    def settle(self, actual_usd: float) -> None:
        self.engine._settle(self, actual_usd)

    def release(self) -> None:
        self.engine._settle(self, None)


class StoreUnavailable(Exception):
    """The shared database could not be reached (or answered too slowly) for a lease."""


class LimitEngine:
    """Matches calls to limits and holds their worst case on each matching limit's period.

    ``store``: the shared ledger (``limits_store.LeaseStore``); None keeps calendar periods
    in this process's memory (one process, or tests). ``clock``: epoch seconds, injectable
    so tests cross a period boundary without waiting for it.
    """

    def __init__(
        self,
        limits: Sequence[SpendLimit],
        *,
        store: Any = None,
        alerts: Any = None,
        clock: Callable[[], float] = time.time,
        lease_calls: int = 32,
        lease_fraction: float = 0.125,
    ) -> None:
        names = [limit.name for limit in limits]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"spend limits must have distinct names; repeated: {', '.join(duplicates)}")
        self.limits = tuple(limits)
        self.store = store
        self.alerts = alerts
        self.clock = clock
        self.lease_calls = lease_calls  # a lease covers this many worst cases of the call that asked...
        self.lease_fraction = lease_fraction  # ...but never more than this share of what is left unleased
        self.attribute_names = frozenset().union(*(limit.attribute_names for limit in limits)) if limits else frozenset()
        self._lock = threading.Lock()
        self._buckets: dict[tuple[str, str, datetime], Bucket] = {}
        self._periods: dict[str, tuple[float, float, datetime, datetime]] = {}
        self.refusals: dict[str, int] = {limit.name: 0 for limit in limits}
        self.lease_round_trips = 0
        self._closed = False
        self._heartbeat_stop: threading.Event | None = None

    def add_limits(self, limits: Sequence[SpendLimit]) -> list[SpendLimit]:
        """Add limits given by a later ``configure()``: a call must then fit every limit.

        A name already here with the same definition is kept as it is; with another
        definition it is a ``ValueError`` (two caps of one name would share buckets).
        Returns the limits actually added.
        """
        with self._lock:
            known = {limit.name: limit for limit in self.limits}
            added = []
            for limit in limits:
                if limit.name in known:
                    if known[limit.name] != limit:
                        raise ValueError(
                            f"spend limit {limit.name!r} is already configured as {known[limit.name]!r}; "
                            f"a later configure() cannot redefine it as {limit!r}"
                        )
                    continue
                known[limit.name] = limit
                added.append(limit)
            if added:
                self.limits = self.limits + tuple(added)
                self.attribute_names = self.attribute_names | all_attribute_names(added)
                for limit in added:
                    self.refusals.setdefault(limit.name, 0)
            return added

    # -- matching --------------------------------------------------------------------------------

    def match(self, call_attributes: Mapping[str, Any] | None, chain: Sequence[Any]) -> list[tuple[SpendLimit, str]]:
        """The limits a call counts toward, each with the key it counts under."""
        lookup = _Lookup(call_attributes, chain)
        matched = []
        for limit in self.limits:
            where = limit.where
            if where is not None and not all(lookup.get(name) in values for name, values in where.items()):
                continue
            key = MISSING_KEY
            if limit.key is not None:
                key = lookup.get(limit.key) or MISSING_KEY
            matched.append((limit, key))
        return matched

    # -- holding ---------------------------------------------------------------------------------

    def reserve(self, matched: Sequence[tuple[SpendLimit, str]], amount: float | None, span: Any = None) -> Holds:
        """Hold ``amount`` on the current period of every matched limit, or raise holding nothing.

        ``amount`` None (a model without a price) holds nothing, as a budget does for it.
        Raises ``BudgetExceededError`` naming the limit that cannot fit the call.
        """
        amount = 0.0 if amount is None else amount
        now = self.clock()
        buckets = [self._bucket(limit, key, now) for limit, key in matched]
        held: list[tuple[Bucket, float]] = []
        try:
            for bucket in buckets:
                self._hold(bucket, amount, span)
                held.append((bucket, amount))
        except BaseException:
            self._settle(Holds(self, held), None)
            raise
        if span is not None and buckets:
            span.set_attribute(WFLO_LIMITS, [bucket.limit.name for bucket in buckets])
        return Holds(self, held)

    def _hold(self, bucket: Bucket, amount: float, span: Any) -> None:
        with self._lock:
            if bucket.available + _EPSILON >= amount:
                bucket.reserved += amount
                return
            if not bucket.shared:
                raise self._refusal(bucket, amount, span)
        self._lease(bucket, amount, span)

    def _lease(self, bucket: Bucket, amount: float, span: Any) -> None:
        """Lease what the call lacks (and a slice more) from the database, then hold it."""
        with bucket.lease_lock:  # one thread of this process leases at a time; the others then find money
            with self._lock:
                if bucket.available + _EPSILON >= amount:
                    bucket.reserved += amount
                    return
                need = amount - bucket.available
                want = max(need, amount * self.lease_calls)
            try:
                self.lease_round_trips += 1
                self.store.sync(bucket, want=want, need=need, fraction=self.lease_fraction, now=self.clock(), lock=self._lock)
                bucket.unavailable = False
            except StoreUnavailable as exc:
                bucket.unavailable = True
                if span is not None:
                    span.set_attribute(WFLO_LIMIT_UNAVAILABLE, bucket.limit.name)
                if bucket.limit.on_unavailable == "allow" and self._trust(bucket, amount):
                    _log.warning("wflo-otel: spend limit %r: database unavailable (%s); allowing the call", bucket.limit.name, exc)
                    return
                raise self._refusal(bucket, amount, span, unavailable=str(exc))
            with self._lock:
                if bucket.available + _EPSILON >= amount:
                    bucket.reserved += amount
                    self._check_alerts(bucket)
                    return
            self._give_back(bucket)  # what little this process holds may complete another's call
            raise self._refusal(bucket, amount, span)

    def _trust(self, bucket: Bucket, amount: float) -> bool:
        """Hold ``amount`` on trust while the database is down, if this process alone stays within the limit.

        The bucket is this period's local ledger: what the database last said was spent
        (``db_spent``), plus this process's unreported spend and holds, plus this call,
        must fit ``usd``. Other processes may spend meanwhile (that is what "allow"
        accepts), but one process never spends past what it could check itself.
        """
        with self._lock:
            if bucket.known_spent + bucket.reserved + amount > bucket.limit.usd + _EPSILON:
                return False
            bucket.reserved += amount
            bucket.granted += amount  # spent on trust: reported (and charged) once the database is back
            return True

    def _give_back(self, bucket: Bucket) -> None:
        """Return the unused part of this process's lease (a refused process must not hoard)."""
        try:
            self.store.sync(bucket, want=0.0, need=0.0, give_back=True, now=self.clock(), lock=self._lock)
        except StoreUnavailable:
            pass

    def _refusal(self, bucket: Bucket, amount: float, span: Any, unavailable: str | None = None) -> BudgetExceededError:
        limit = bucket.limit
        self.refusals[limit.name] = self.refusals.get(limit.name, 0) + 1
        if span is not None:
            span.set_attribute(WFLO_LIMIT_REFUSED, limit.name)
        return BudgetExceededError(
            bucket.known_spent,
            limit.usd,
            reserved_usd=bucket.reserved,
            requested_usd=amount,
            refused=True,
            limit=limit.name,
            key=bucket.key,
            period_start=bucket.start,
            unavailable=unavailable,
        )

    def _settle(self, holds: Holds, actual_usd: float | None) -> None:
        """Replace each hold by the actual cost (None: release it, the call cost nothing)."""
        if not holds.held:
            return
        with self._lock:
            if not holds.open:
                return
            holds.open = False
            for bucket, amount in holds.held:
                bucket.reserved -= amount
                if actual_usd:
                    self._spend(bucket, actual_usd)

    def charge(self, matched: Sequence[tuple[SpendLimit, str]], actual_usd: float | None) -> None:
        """Charge a call that held nothing to the current period of every matched limit.

        Another instrumentation's call is priced only when its span ends, so nothing
        could be reserved for it: its cost is spent as it is, even past the limit (by
        one call at most each), and the limit then refuses the next calls wflo holds.
        No database round trip: a shared bucket reports it at its next sync.
        """
        if not matched or not actual_usd or actual_usd <= 0:
            return
        now = self.clock()
        buckets = [self._bucket(limit, key, now) for limit, key in matched]
        with self._lock:
            for bucket in buckets:
                if bucket.shared:
                    # What the lease cannot cover was spent beyond it: granted grows by that much
                    # (as _trust's money does), so the next sync reports it once and leases afresh.
                    bucket.granted += max(actual_usd - max(bucket.available, 0.0), 0.0)
                self._spend(bucket, actual_usd)

    def _spend(self, bucket: Bucket, actual_usd: float) -> None:
        """Called under the lock: ``actual_usd`` was spent on the bucket."""
        bucket.spent += actual_usd
        if bucket.shared:
            bucket.unreported += actual_usd
        self._check_alerts(bucket)

    # -- alerts ----------------------------------------------------------------------------------

    def _check_alerts(self, bucket: Bucket) -> None:
        """Called under the lock: a threshold this process believes crossed is fired (once, by the store)."""
        alerts = self.alerts
        if alerts is None or bucket.limit.usd <= 0:
            return
        fraction = bucket.known_spent / bucket.limit.usd
        for threshold in alerts.at:
            if fraction + _EPSILON >= threshold and threshold not in bucket.fired:
                bucket.fired.add(threshold)
                alerts.crossed(bucket, threshold, bucket.known_spent, shared=bucket.shared)

    # -- periods ---------------------------------------------------------------------------------

    def _bucket(self, limit: SpendLimit, key: str, now: float) -> Bucket:
        period = self._periods.get(limit.name)
        if period is None or not period[0] <= now < period[1]:
            start, end = limit.period(now)
            period = (start.timestamp(), end.timestamp() if limit.per != "run" else math.inf, start, end)
            self._periods[limit.name] = period
        ident = (limit.name, key, period[2])
        bucket = self._buckets.get(ident)
        if bucket is None:
            with self._lock:
                bucket = self._buckets.get(ident)
                if bucket is None:
                    shared = self.store is not None and limit.per != "run"
                    bucket = self._buckets[ident] = Bucket(limit, key, period[2], period[3], shared)
        return bucket

    def buckets(self) -> list[Bucket]:
        with self._lock:
            return list(self._buckets.values())

    def sync_all(self, *, final: bool = False) -> None:
        """Report spend and renew leases; drop buckets of ended periods. ``final``: return every lease."""
        if self.store is None:
            return
        now = self.clock()
        for bucket in self.buckets():
            if not bucket.shared:
                continue
            ended = bucket.end.timestamp() <= now
            give_back = final or ended
            if bucket.unreported <= _EPSILON and bucket.granted <= _EPSILON and bucket.reserved <= _EPSILON:
                if ended:  # nothing to report or return: forget it
                    with self._lock:
                        self._buckets.pop((bucket.limit.name, bucket.key, bucket.start), None)
                continue  # holds nothing: no transaction (a thousand idle tenants cost nothing)
            try:
                with bucket.lease_lock:
                    self.store.sync(bucket, want=0.0, need=0.0, give_back=give_back, now=now, lock=self._lock)
                    bucket.unavailable = False
            except StoreUnavailable:
                bucket.unavailable = True
                continue
            with self._lock:
                self._check_alerts(bucket)
                if ended and bucket.reserved <= _EPSILON and bucket.unreported <= _EPSILON:
                    self._buckets.pop((bucket.limit.name, bucket.key, bucket.start), None)

    def close(self) -> None:
        """Report what was spent and return every unused lease (a stopping process)."""
        if self._closed:
            return
        self._closed = True
        if self._heartbeat_stop is not None:
            self._heartbeat_stop.set()
        self.sync_all(final=True)
        if self.alerts is not None:
            self.alerts.close()  # before the store: the last alerts are recorded there
        if self.store is not None:
            self.store.close()


class _Lookup:
    """An attribute of a call: its own span's, else its scopes' (workflow ``attributes``), else baggage."""

    __slots__ = ("call", "chain", "_baggage")

    def __init__(self, call: Mapping[str, Any] | None, chain: Sequence[Any]) -> None:
        self.call = call or {}
        self.chain = chain
        self._baggage: Mapping[str, Any] | None = None

    def get(self, name: str) -> str | None:
        value = self.call.get(name)
        if value is None and self.chain:
            value = getattr(self.chain[-1], "attributes", {}).get(name)
            if value is None and name == A.GEN_AI_WORKFLOW_NAME:
                value = self.chain[0].name
        if value is None:
            if self._baggage is None:
                self._baggage = baggage.get_all(otel_context.get_current())
            value = self._baggage.get(name)
        return None if value is None else attribute_text(value)


def all_attribute_names(limits: Iterable[SpendLimit]) -> frozenset[str]:
    return frozenset().union(*(limit.attribute_names for limit in limits))
