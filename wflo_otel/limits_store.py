"""The shared ledger of spend limits: periods and leases in the exporter's database.

Every process holds a *lease* per (limit, key, period): a slice of the period's money
it may spend from memory. ``sync`` is the one operation, one transaction: report what
was spent since the last sync, give back what is not needed, reclaim the leases of
processes that stopped renewing them (crashed, SIGKILLed), and grant more when asked.
The period row is locked for the transaction (``FOR UPDATE`` on PostgreSQL; SQLite's
write lock, taken by the transaction's first statement, an insert), so two processes
can never both take the same money: ``spent + leased <= limit`` always holds.

Lease sizing: a call that finds its lease short asks for ``need`` (what it lacks) and
would like ``want`` (32 of its worst cases); it gets ``min(want, free * fraction)``
(an eighth of the unleased money), never less than ``need`` while ``need`` fits. Far
from the cap a process so goes to the database once per ~32 calls; near it leases
shrink to one call, and a refused process gives its remainder back, so money idle in
one process's lease cannot strand another's call.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from .limits import Bucket, StoreUnavailable

_log = logging.getLogger(__name__)

DEFAULT_LEASE_TTL_S = 60.0
_EPSILON = 1e-12


class LeaseStore:
    """Leases on one database (the exporter's URL); every method is synchronous and thread-safe.

    ``ttl_s``: a lease not renewed for this long is reclaimed by the next process that
    syncs its period. ``timeout_s``: a database slower than this counts as unavailable.
    ``clock``: epoch seconds (expiry), injectable for tests.
    """

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = DEFAULT_LEASE_TTL_S,
        timeout_s: float = 5.0,
        holder: str | None = None,
        auto_migrate: bool = True,
    ) -> None:
        from .exporters._loop import LoopThread
        from .exporters.store import SpanStore

        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.holder = holder or f"{uuid.uuid4().hex[:12]}"
        self._store = SpanStore(url, pool_size=2, max_overflow=2, connect_timeout_s=timeout_s)
        self.sqlite = self._store.dialect == "sqlite"
        self._loop = LoopThread("wflo-otel-limits")
        self.auto_migrate = auto_migrate
        self._migrated = False
        self._migrate_lock = threading.Lock()
        self.round_trips = 0

    # -- the one operation --------------------------------------------------------------------

    def sync(
        self,
        bucket: Bucket,
        *,
        want: float,
        need: float,
        fraction: float = 0.125,
        give_back: bool = False,
        now: float | None = None,
        lock: Any = None,
    ) -> None:
        """Report the bucket's unreported spend, give back its unused lease (``give_back``),
        and lease ``need`` or more when it fits. Updates the bucket; ``StoreUnavailable``
        when the database cannot be reached (the bucket is then as it was)."""
        now = time.time() if now is None else now
        lock = lock or _NO_LOCK
        with lock:  # taken out of the lease before the round trip, so no call can spend them meanwhile
            reported = bucket.unreported
            returned = max(bucket.granted - bucket.reserved - reported, 0.0) if give_back else 0.0
            bucket.unreported -= reported
            bucket.granted -= reported + returned
        try:
            lease, spent = self._run(self._sync(bucket, reported, returned, want, need, fraction, now))
        except BaseException:
            with lock:
                bucket.unreported += reported
                bucket.granted += reported + returned
            raise
        with lock:
            bucket.granted = lease  # the database's word (spend settled meanwhile is still inside it, unreported)
            bucket.db_spent = spent
            bucket.last_sync = now

    async def _sync(self, bucket: Bucket, reported: float, returned: float, want: float, need: float, fraction: float, now: float):
        self.round_trips += 1
        ident = {"name": bucket.limit.name, "key": bucket.key, "start": self._ts(bucket.start)}
        async with self._store.engine.begin() as conn:
            # The first statement writes: SQLite takes its write lock here, not at a later upgrade.
            await conn.execute(_INSERT_PERIOD, {**ident, "end": self._ts(bucket.end), "per": bucket.limit.per, "usd": bucket.limit.usd})
            row = (await conn.execute(_SELECT_PERIOD_PG if not self.sqlite else _SELECT_PERIOD, ident)).one()
            spent, leased = float(row.spent_usd), float(row.leased_usd)
            expired = (await conn.execute(_EXPIRED, {**ident, "holder": self.holder, "now": now})).scalar() or 0.0
            if expired:
                await conn.execute(_DELETE_EXPIRED, {**ident, "holder": self.holder, "now": now})
                _log.info("wflo-otel: spend limit %r: reclaimed $%.6f of expired leases", bucket.limit.name, expired)
            mine = (await conn.execute(_MY_LEASE, {**ident, "holder": self.holder})).scalar()
            mine = float(mine or 0.0)
            taken = min(reported + returned, mine)  # a lease reclaimed while we were away has nothing left
            spent += reported
            leased = max(leased - float(expired) - taken, 0.0)
            mine -= taken
            grant = 0.0
            if need > 0 or want > 0:
                free = bucket.limit.usd - spent - leased
                if free + _EPSILON >= need:
                    grant = max(min(free, max(need, min(want, free * fraction))), 0.0)
            mine += grant
            leased += grant
            await conn.execute(_UPDATE_PERIOD, {**ident, "spent": spent, "leased": leased, "usd": bucket.limit.usd})
            if mine > _EPSILON:
                await conn.execute(_UPSERT_LEASE, {**ident, "holder": self.holder, "amount": mine, "expires": now + self.ttl_s})
            else:
                await conn.execute(_DELETE_LEASE, {**ident, "holder": self.holder})
        return mine, spent

    # -- alerts ---------------------------------------------------------------------------------

    def fire(self, bucket: Bucket, threshold: float, spent: float, now: float | None = None) -> bool:
        """Record that ``threshold`` fired for this bucket's period; True only for the first caller."""
        now = time.time() if now is None else now
        params = {
            "name": bucket.limit.name, "key": bucket.key, "start": self._ts(bucket.start),
            "threshold": threshold, "spent": spent, "fired": self._ts(datetime.fromtimestamp(now, timezone.utc)),
        }
        return bool(self._run(self._fire(params)))

    async def _fire(self, params) -> int:
        async with self._store.engine.begin() as conn:
            return (await conn.execute(_INSERT_FIRING, params)).rowcount

    # -- plumbing -------------------------------------------------------------------------------

    def _ts(self, value: datetime) -> Any:
        return timestamp_param(value, self.sqlite)

    def _run(self, coro):
        try:
            self._ensure_migrated()
        except Exception as exc:
            coro.close()  # never started: closing it keeps "never awaited" warnings away
            raise StoreUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}") from exc
        try:
            return self._loop.run(coro, self.timeout_s)
        except (concurrent.futures.TimeoutError, TimeoutError) as exc:
            raise StoreUnavailable(f"no answer within {self.timeout_s:g} s") from exc
        except Exception as exc:  # down, refusing, or broken: the limit cannot be checked
            raise StoreUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}") from exc

    def _ensure_migrated(self) -> None:
        if self._migrated or not self.auto_migrate:
            return
        with self._migrate_lock:
            if not self._migrated:
                self._loop.run(self._store.migrate(), max(self.timeout_s, 30.0))
                self._migrated = True

    def close(self) -> None:
        try:
            self._loop.run(self._store.engine.dispose(), self.timeout_s)
        except Exception:
            _log.debug("wflo-otel: limits store dispose failed", exc_info=True)
        self._loop.stop()


def timestamp_param(value: datetime, sqlite: bool) -> Any:
    """A UTC datetime as the driver compares it with the timestamp columns (SQLite: SQLAlchemy's text)."""
    if sqlite:
        from .exporters.store import _sqlite_timestamp

        return _sqlite_timestamp(value.astimezone(timezone.utc))
    return value


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NO_LOCK = _NoLock()

_PK = "limit_name = :name AND limit_key = :key AND period_start = :start"
_INSERT_PERIOD = sa.text(
    "INSERT INTO spend_limit_periods (limit_name, limit_key, period_start, period_end, per, limit_usd, spent_usd, leased_usd) "
    "VALUES (:name, :key, :start, :end, :per, :usd, 0, 0) "
    "ON CONFLICT (limit_name, limit_key, period_start) DO NOTHING"
)
_SELECT_PERIOD = sa.text(f"SELECT spent_usd, leased_usd FROM spend_limit_periods WHERE {_PK}")
_SELECT_PERIOD_PG = sa.text(f"SELECT spent_usd, leased_usd FROM spend_limit_periods WHERE {_PK} FOR UPDATE")
_EXPIRED = sa.text(f"SELECT SUM(amount_usd) FROM spend_limit_leases WHERE {_PK} AND holder <> :holder AND expires_at < :now")
_DELETE_EXPIRED = sa.text(f"DELETE FROM spend_limit_leases WHERE {_PK} AND holder <> :holder AND expires_at < :now")
_MY_LEASE = sa.text(f"SELECT amount_usd FROM spend_limit_leases WHERE {_PK} AND holder = :holder")
_UPDATE_PERIOD = sa.text(
    f"UPDATE spend_limit_periods SET spent_usd = :spent, leased_usd = :leased, limit_usd = :usd WHERE {_PK}"
)
_UPSERT_LEASE = sa.text(
    "INSERT INTO spend_limit_leases (limit_name, limit_key, period_start, holder, amount_usd, expires_at) "
    "VALUES (:name, :key, :start, :holder, :amount, :expires) "
    "ON CONFLICT (limit_name, limit_key, period_start, holder) DO UPDATE SET amount_usd = :amount, expires_at = :expires"
)
_DELETE_LEASE = sa.text(f"DELETE FROM spend_limit_leases WHERE {_PK} AND holder = :holder")
_INSERT_FIRING = sa.text(
    "INSERT INTO spend_limit_alerts (limit_name, limit_key, period_start, threshold, spent_usd, fired_at) "
    "VALUES (:name, :key, :start, :threshold, :spent, :fired) "
    "ON CONFLICT (limit_name, limit_key, period_start, threshold) DO NOTHING"
)
