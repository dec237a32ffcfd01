"""The span store: writes mapped rows to SQLite or PostgreSQL, one transaction per batch.

Idempotent by construction: a transaction looks up which span ids of its batch are
already stored, inserts only the others, and *adds* exactly those new rows to their
executions' totals (cost, tokens, LLM calls). A span delivered twice is skipped the
second time, so it is one row and counted once.

Concurrency. On PostgreSQL the executions the batch touches are looked up
first. A stored one is upserted, in id order, with ``ON CONFLICT DO UPDATE ...
WHERE`` (which locks the row even when the WHERE is false), and later gets the
totals its new steps add. A new one is inserted with the totals of its steps in
the batch already in it (none of them can be stored: their foreign key needs the
execution). Two writers racing on one execution serialise there (on the lock, or
on the unique index of the new row), and the later one's look-up sees the
earlier one's committed steps. Stored executions are locked in id order before
anything new is inserted, and new rows go in key order, so writers cannot
deadlock each other; a deadlock or serialization failure (SQLSTATE
40P01/40001), or a unique violation from a writer that stored the same execution
or span between our look-up and our insert (23505), runs the transaction again.
On SQLite each batch runs under ``BEGIN IMMEDIATE`` (one writer at a time, others
wait up to the busy timeout), in WAL mode, so its look-ups are exact; the same
rule for new executions applies. A background thread checkpoints the WAL after
each commit (``checkpoint``), so a commit does not pay for it.

Speed. The rows are written through the driver connection of the SQLAlchemy pool
with statements prepared once. On PostgreSQL, definitions and stored executions go as one
``INSERT ... SELECT FROM unnest($1::text[], ...)`` each (an upsert), and new
executions and steps by binary ``COPY`` straight into their tables — about twice the rate of the
``unnest`` insert, whose array encoding costs on both ends (``bench/export.py``).
On SQLite, ``executemany``. Values are converted to what each driver stores exactly
as SQLAlchemy would (JSON text; SQLite timestamps in SQLAlchemy's storage format),
so the Core tables in ``schema.py`` read them back unchanged.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import json
import logging
import math
import os
import random
import re
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Sequence
from urllib.parse import urlencode

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from wflo_otel.attributes import STATUS_RUNNING

from .checkpoint import BACKSTOP_PAGES, WalCheckpointer, database_path
from .mapping import RowBatch
from .rollups import Rollup, rollup_rows, tenant_of
from .schema import step_executions, workflow_definitions, workflow_executions

_log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./wflo.db"
# Rows per statement on SQLite (executemany has no limit; the IN-lists do).
_CHUNK = 500
# SQLSTATEs worth running the same transaction again for: serialization failure, deadlock,
# and a unique violation, which only arises when a concurrent writer stored the same span
# between our look-up and our COPY (run again, the look-up then skips it).
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01", "23505"})
# Of those, the ones that say nothing about the rows: a unique violation that outlasts the
# retries is a data problem (the batch is kept aside), not a database that is away.
_TRANSIENT_RETRYABLE = frozenset({"40001", "40P01"})


SUPPORTED_DATABASES = (
    "SQLite through aiosqlite (sqlite:///path/to/wflo.db or sqlite+aiosqlite:///...) and "
    "PostgreSQL through asyncpg (postgresql://user:password@host:5432/dbname, postgres://, "
    "postgresql+asyncpg://; +psycopg and +psycopg2 URLs are read as asyncpg)"
)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


class UnsupportedDatabaseError(ValueError):
    """A database URL naming an engine or driver wflo-otel does not write to.

    Raised when the URL is read, so a ``mysql://`` URL says which databases work instead of
    failing later on a driver import (``No module named 'MySQLdb'``). The message names only
    the scheme: the rest of a URL may hold a password.
    """


def normalize_url(url: str) -> str:
    """Accept plain ``sqlite://`` / ``postgresql://`` URLs and pick the async drivers.

    The query is kept as written: a ``postgresql://`` URL's libpq parameters (``sslmode``,
    ``connect_timeout``, ``application_name``...) are translated for asyncpg when the engine
    is made (``asyncpg_connect_args``), as some become connect arguments no URL can carry.
    The text also names the URL's spool folder, which so stays the same.
    ``UnsupportedDatabaseError`` for any other scheme; text with no scheme is left to
    SQLAlchemy's parser, whose error says it is no URL.
    """
    if url.startswith("sqlite://"):
        return "sqlite+aiosqlite://" + url[len("sqlite://") :]
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://", "postgresql+psycopg://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    scheme = _SCHEME.match(url)
    if scheme and scheme.group(1).lower() not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise UnsupportedDatabaseError(f"unsupported database {scheme.group(1)!r}: wflo-otel writes to {SUPPORTED_DATABASES}")
    return url


def create_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int = 5,
    connect_timeout_s: float = 10.0,
    command_timeout_s: float | None = 60.0,
) -> AsyncEngine:
    """An async engine with wflo-otel's settings.

    SQLite: WAL, ``synchronous=NORMAL``, foreign keys on, a 30 s busy timeout; the
    folder of a database file is created if missing.
    PostgreSQL (asyncpg): a pool of ``pool_size`` (+ ``max_overflow``) connections,
    pinged on checkout (a connection the server dropped is replaced, not used), a
    connect timeout so a database that went away fails fast instead of hanging (the
    URL's ``connect_timeout``, else ``connect_timeout_s``).
    """
    url = normalize_url(url)
    if url.startswith("sqlite"):
        _create_sqlite_folder(url)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        sa.event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {"timeout": connect_timeout_s}
    if command_timeout_s:
        connect_args["command_timeout"] = command_timeout_s
    if url.startswith("postgresql+asyncpg"):
        url, from_url = asyncpg_connect_args(url)
        connect_args.update(from_url)
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=3600,
        connect_args=connect_args,
    )


def _create_sqlite_folder(url: str) -> None:
    """Create the folder of a SQLite database file, as SQLite creates the file itself.

    Without it SQLite answers "unable to open database file", which reads as a database
    that is away: every batch would wait in the spool for a folder nobody makes.
    In-memory and ``file:`` URI databases (which may be read-only) are left alone; a
    folder that cannot be made is logged, and the connection's own error follows.
    """
    path = database_path(url)
    if path is None:
        return
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        _log.warning("wflo-otel: cannot create the folder %s of the SQLite database: %s", folder, exc)


# libpq's connection parameters, as a ``postgresql://`` URL written for psql or psycopg
# carries them in its query (libpq-connect.html, "Parameter Key Words", PostgreSQL 17).
_LIBPQ_PARAMETERS = frozenset(
    {
        "host", "hostaddr", "port", "dbname", "user", "password", "passfile", "require_auth",
        "channel_binding", "connect_timeout", "client_encoding", "options", "application_name",
        "fallback_application_name", "keepalives", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "tcp_user_timeout", "replication", "gssencmode", "sslmode", "requiressl",
        "sslnegotiation", "sslcompression", "sslcert", "sslkey", "sslpassword", "sslcertmode",
        "sslrootcert", "sslcrl", "sslcrldir", "sslsni", "requirepeer", "ssl_min_protocol_version",
        "ssl_max_protocol_version", "krbsrvname", "gsslib", "gssdelegation", "service",
        "target_session_attrs", "load_balance_hosts",
    }
)
# The TLS files and protocol bounds: asyncpg reads these from a DSN only, not as arguments.
_LIBPQ_DSN_ONLY = (
    "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslpassword",
    "ssl_min_protocol_version", "ssl_max_protocol_version", "sslnegotiation",
)
# Startup parameters: libpq sends them to the server when it connects, as asyncpg sends
# its ``server_settings`` (``options`` is the server's command line: ``-c name=value``).
_LIBPQ_STARTUP = ("application_name", "options")


@functools.lru_cache(maxsize=1)
def _asyncpg_keywords() -> frozenset[str]:
    """The keyword arguments of the installed ``asyncpg.connect`` (``service`` arrived in 0.30)."""
    import asyncpg

    return frozenset(inspect.signature(asyncpg.connect).parameters)


def asyncpg_connect_args(url: str) -> tuple[sa.URL, dict[str, Any]]:
    """``url`` without the libpq parameters asyncpg refuses, and the connect arguments they become.

    SQLAlchemy hands every query parameter to ``asyncpg.connect()`` as a keyword, which
    has no ``sslmode`` or ``connect_timeout`` (a ``TypeError`` on every connect). So:
    ``sslmode`` -> ``ssl`` (the same mode names), ``connect_timeout`` -> ``timeout``,
    ``application_name`` and ``options`` -> ``server_settings``, the TLS files -> a
    ``dsn`` holding only them, ``dbname`` -> ``database``. Parameters asyncpg takes
    under their libpq name (``target_session_attrs``, ``passfile``...) and any that are
    not libpq's stay. The rest have no asyncpg equivalent: dropped, with a warning.
    """
    parsed = sa.engine.make_url(url)
    kept: dict[str, str] = {}
    libpq: dict[str, str] = {}
    for name, value in parsed.query.items():
        value = value[-1] if isinstance(value, tuple) else value  # libpq: the last one wins
        foreign = name in _LIBPQ_PARAMETERS and name not in _asyncpg_keywords()
        (libpq if foreign else kept)[name] = value
    args, ignored = _translate_libpq(libpq, kept)
    if ignored:  # names only: a value can be a secret
        _log.warning("wflo-otel: database URL parameter(s) %s ignored: asyncpg has no equivalent", ", ".join(ignored))
    return parsed.set(query=kept), args


def _translate_libpq(libpq: dict[str, str], kept: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """(asyncpg connect arguments, names ignored) for the libpq parameters; ``ssl`` goes into ``kept``."""
    args: dict[str, Any] = {}
    ignored: list[str] = []
    if "sslmode" in libpq:
        mode = libpq.pop("sslmode")
        if "ssl" in kept:  # asyncpg's own name, written as well: it wins
            ignored.append("sslmode")
        else:
            kept["ssl"] = mode
    if "connect_timeout" in libpq:
        seconds = _positive_seconds(libpq.pop("connect_timeout"))
        if seconds is None:  # 0 (libpq: wait forever) or not a number: the engine's own timeout stays
            ignored.append("connect_timeout")
        else:
            args["timeout"] = seconds
    settings = {name: libpq.pop(name) for name in _LIBPQ_STARTUP if name in libpq}
    fallback = libpq.pop("fallback_application_name", None)
    if fallback is not None:
        settings.setdefault("application_name", fallback)
    if settings:
        args["server_settings"] = settings
    tls = {name: libpq.pop(name) for name in _LIBPQ_DSN_ONLY if name in libpq}
    if tls:  # host, user and database still come as arguments, which asyncpg prefers to a DSN's
        args["dsn"] = "postgresql://?" + urlencode(tls)
    if "dbname" in libpq:
        args["database"] = libpq.pop("dbname")
    ignored.extend(sorted(libpq))
    return args, ignored


def _positive_seconds(text: str) -> float | None:
    try:
        seconds = float(text)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# --------------------------------------------------------------------------- values


try:  # a dependency; the json module remains the fallback where it cannot be installed
    from orjson import dumps as _orjson_dumps
except ImportError:  # pragma: no cover
    _orjson_dumps = None

_encode_json = json.JSONEncoder(allow_nan=False, default=str, check_circular=False).encode  # attributes cannot nest
_encode_json_lenient = json.JSONEncoder(default=str).encode


def _json_text(value: Any) -> str | None:
    """JSON text both engines accept (PostgreSQL's jsonb refuses NaN and \\u0000).

    orjson first (this runs for every stored span). It writes NaN and Infinity as
    ``null``: any ``null`` in its output (a real one, or only the word in a string)
    sends the value down the json module's path, which keeps them as strings.
    """
    if value is None:
        return None
    if _orjson_dumps is not None:
        try:
            text = _orjson_dumps(value, default=str).decode()
        except TypeError:  # orjson.JSONEncodeError: a non-str key, an int beyond 64 bits
            text = None
        # A backslash is rare in this text and found by memchr: test it before the escape.
        if text is not None and "null" not in text and ("\\" not in text or "\\u0000" not in text):
            return text
    try:
        text = _encode_json(value)
    except ValueError:  # NaN / Infinity somewhere
        try:
            text = _encode_json_lenient(_json_clean(value))
        except RecursionError:
            return _too_deep(value)
    except RecursionError:
        return _too_deep(value)
    if "\\u0000" in text:
        text = _encode_json_lenient(_json_clean(value))
    return text


def _too_deep(value: Any) -> str:
    """JSON text for a value nested deeper than the encoder recurses: stored, not refused.

    In a mapping (a span's attributes), only the items too deep become text (their
    ``repr``, cut to 64 KiB, or a note when even that recurses too deep); the others
    stay as they were.
    """
    if isinstance(value, dict):
        kept = {}
        for key, item in value.items():
            try:
                _encode_json_lenient(_json_clean(item))
            except RecursionError:
                item = _deep_text(item)
            kept[str(key)] = item
        try:
            return _encode_json_lenient(_json_clean(kept))
        except RecursionError:  # a key nested too deep? (keys are strings) - keep the note alone
            pass
    return _encode_json_lenient(_deep_text(value))


def _deep_text(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        text = f"<{type(value).__name__} nested too deeply to store>"
    return text[:65536].replace("\x00", "")


def _json_clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    return value


_MINUTES: dict[tuple[int, int, int, int, int], str] = {}


def _sqlite_timestamp(value: datetime | None) -> str | None:
    """SQLAlchemy's SQLite DATETIME storage format (UTC wall time: every timestamp we write is UTC).

    The "YYYY-MM-DD HH:MM:" part is kept per minute: spans of a batch share a few
    minutes, and this runs twice per span.
    """
    if value is None:
        return None
    minute = (value.year, value.month, value.day, value.hour, value.minute)
    prefix = _MINUTES.get(minute)
    if prefix is None:
        if len(_MINUTES) > 4096:
            _MINUTES.clear()
        prefix = _MINUTES[minute] = "%04d-%02d-%02d %02d:%02d:" % minute
    return "%s%02d.%06d" % (prefix, value.second, value.microsecond)


def _text(length: int | None) -> Callable[[Any], Any]:
    limit = length if length is not None else 1 << 62

    def convert(value: Any) -> Any:
        if value is None:
            return None
        if value.__class__ is str and len(value) <= limit and "\x00" not in value:
            return value
        if not isinstance(value, str):
            value = str(value)
        if "\x00" in value:  # PostgreSQL text cannot hold NUL
            value = value.replace("\x00", "")
        if length is not None and len(value) > length:
            value = value[:length]
        return value

    return convert


def _number(kind: type) -> Callable[[Any], Any]:
    def convert(value: Any) -> Any:
        if value is None or isinstance(value, kind):
            return value
        try:
            return kind(value)
        except (TypeError, ValueError, OverflowError):
            return None

    return convert


@dataclass(frozen=True)
class _Column:
    name: str
    pg_type: str  # element type of the unnest() array
    pg_cast: str | None  # cast applied in the SELECT list (jsonb arrives as text)
    convert: Callable[[Any], Any]
    sqlite_convert: Callable[[Any], Any]
    # When ``v`` passes unchanged (the converter's own first test), as inline Python:
    # the generated row builder calls the converter only when this is false.
    unchanged: str | None = None


def _columns(table: sa.Table) -> tuple[_Column, ...]:
    columns = []
    for column in table.columns:
        t = column.type
        if isinstance(t, sa.JSON):
            columns.append(_Column(column.name, "text", "jsonb", _json_text, _json_text))
        elif isinstance(t, sa.DateTime):
            columns.append(_Column(column.name, "timestamptz", None, _identity, _sqlite_timestamp))
        elif isinstance(t, (sa.BigInteger, sa.Integer)):
            pg_type = "int8" if isinstance(t, sa.BigInteger) else "int4"
            unchanged = "v is None or v.__class__ is int"
            columns.append(_Column(column.name, pg_type, None, _number(int), _number(int), unchanged))
        elif isinstance(t, (sa.Float, sa.Double)):
            unchanged = "v is None or v.__class__ is float"
            columns.append(_Column(column.name, "float8", None, _number(float), _number(float), unchanged))
        elif isinstance(t, (sa.String, sa.Text)):
            length = getattr(t, "length", None)
            convert = _text(length)
            limit = length if length is not None else 1 << 62
            unchanged = f"v is None or (v.__class__ is str and len(v) <= {limit} and '\\x00' not in v)"
            columns.append(_Column(column.name, "text", None, convert, convert, unchanged))
        else:  # pragma: no cover - the schema has no other types
            raise TypeError(f"unsupported column type {t!r} for {table.name}.{column.name}")
    return tuple(columns)


def _identity(value: Any) -> Any:
    return value


# Execution totals saturate here (SQL ``LEAST``/``MIN`` in the update that adds to them):
# each step's count is bounded by the mapping (``TOKEN_LIMIT``), so a stored total below
# 2**62 plus a batch's share stays below BIGINT's 2**63 and the sum never overflows; a
# refused total would refuse every later LLM span of its execution (SQLSTATE 22003).
TOTAL_TOKENS_LIMIT = (1 << 62) - 1
TOTAL_CALLS_LIMIT = (1 << 31) - 1  # llm_calls is INTEGER

# Columns the writers fill (totals are computed in SQL, never taken from a row).
_TOTALS = ("cost_total_usd", "input_tokens", "output_tokens", "llm_calls")
DEF_COLUMNS = _columns(workflow_definitions)
EXEC_COLUMNS = tuple(c for c in _columns(workflow_executions) if c.name not in _TOTALS)
EXEC_COLUMN_NAMES = tuple(c.name for c in EXEC_COLUMNS)
# A new execution is inserted with its totals: the row, then these four.
NEW_EXEC_COLUMN_NAMES = EXEC_COLUMN_NAMES + _TOTALS
STEP_COLUMNS = _columns(step_executions)
STEP_COLUMN_NAMES = tuple(c.name for c in STEP_COLUMNS)
# Positions in a step row tuple (the id comes first).
_EXECUTION, _KIND, _ERROR, _COST, _INPUT, _OUTPUT = (
    STEP_COLUMN_NAMES.index(name)
    for name in ("execution_id", "kind", "error_type", "cost_usd", "input_tokens", "output_tokens")
)

_STEP_POSITIONS = {name: i for i, name in enumerate(STEP_COLUMN_NAMES)}


async def _rollup_rows(
    batch: RowBatch, inserted: list[tuple], new_executions: list[tuple], lookup, *, sqlite: bool
) -> dict[Rollup, list[tuple]]:
    """The rollup additions (``rollups.py``) of the step rows this transaction inserted.

    An execution's workflow is the batch's row when that row is what the database now holds
    (a new execution, or a root that just overwrote it); a placeholder of a stored execution
    may name another, so those are looked up (``lookup``: ids -> {id: workflow_id}).
    """
    llm = [row for row in inserted if row[_KIND] == "llm"]
    if not llm:
        return {}
    new_ids = {row[0] for row in new_executions}
    workflow_of: dict[str, str] = {}
    unresolved = []
    for execution_id in {row[_EXECUTION] for row in llm}:
        execution = batch.executions.get(execution_id)
        if execution is not None and (execution_id in new_ids or execution["status"] != STATUS_RUNNING):
            workflow_of[execution_id] = execution["workflow_id"]
        else:
            unresolved.append(execution_id)
    if unresolved:
        workflow_of.update(await lookup(sorted(unresolved)))
    steps = batch.steps
    return rollup_rows(llm, _STEP_POSITIONS, workflow_of, lambda step_id: tenant_of(steps[step_id].get("attributes")), sqlite=sqlite)


# What a newer row of an execution overwrites: the root span's view is authoritative,
# a child's placeholder (status RUNNING) never overwrites anything.
_EXEC_UPDATE = (
    "workflow_id",
    "status",
    "inputs",
    "error",
    "budget_usd",
    "trace_id",
    "correlation_id",
    "started_at",
    "ended_at",
)


def _exec_update_sql(excluded: str = "excluded") -> str:
    sets = [f"{c} = {excluded}.{c}" for c in _EXEC_UPDATE]
    sets.append(f"service_name = COALESCE({excluded}.service_name, workflow_executions.service_name)")
    return ", ".join(sets)


# Definitions: insert if new; a changed budget policy is updated by a separate UPDATE that
# locks only the rows it changes (writers of one workflow must not queue on its definition).
_DEF_CONFLICT = "ON CONFLICT (id) DO NOTHING"
# DO UPDATE ... WHERE locks every conflicting row, updated or not (see the module doc).
_EXEC_CONFLICT = f"ON CONFLICT (id) DO UPDATE SET {_exec_update_sql()} WHERE excluded.status <> 'RUNNING'"
_STEP_CONFLICT = "ON CONFLICT (id) DO NOTHING"

# Totals are *added*, never recomputed: a transaction inserts only the steps not stored
# yet, and adds exactly what those rows bring to their executions. A step stored by
# another writer is skipped by this one, so it is counted by the writer that stored it.
def _totals_added(steps: list[tuple]) -> list[tuple]:
    """(execution id, cost, input tokens, output tokens, LLM calls) per execution, in id order.

    Only LLM steps count. A call the budget refused was never sent: it is an LLM step
    (cost 0) but not an LLM call.
    """
    added: dict[str, list] = {}
    for row in steps:
        if row[_KIND] != "llm":
            continue
        totals = added.get(row[_EXECUTION])
        if totals is None:
            totals = added[row[_EXECUTION]] = [0.0, 0, 0, 0]
        totals[0] += row[_COST] or 0.0
        totals[1] += row[_INPUT] or 0
        totals[2] += row[_OUTPUT] or 0
        if row[_ERROR] != "BudgetExceededError":
            totals[3] += 1
    return [_saturated(execution_id, *added[execution_id]) for execution_id in sorted(added)]


def _saturated(execution_id: str, cost: float, input_tokens: int, output_tokens: int, calls: int) -> tuple:
    """One execution's share of a batch, each sum within what its column holds."""
    return (
        execution_id,
        cost,
        min(input_tokens, TOTAL_TOKENS_LIMIT),
        min(output_tokens, TOTAL_TOKENS_LIMIT),
        min(calls, TOTAL_CALLS_LIMIT),
    )


def _compile_rows(columns: Sequence[_Column], sqlite: bool) -> Callable[[Sequence[dict]], list[tuple]]:
    """A function turning row dicts into driver tuples, generated once per table and engine.

    Straight-line code costs a third of a generic per-column loop, and this runs for
    every span: a plain ``get`` where nothing is converted, the converter's first test
    inline (so the common value costs no call), the converter otherwise.
    """
    namespace: dict[str, Any] = {}
    items = []
    for i, column in enumerate(columns):
        convert = column.sqlite_convert if sqlite else column.convert
        get = f"g({column.name!r})"
        if convert is _identity:
            items.append(get)
            continue
        namespace[f"c{i}"] = convert
        if column.unchanged is None:
            items.append(f"c{i}({get})")
        else:  # the first ``v`` of the test is where the value is fetched
            test = column.unchanged.replace("v", f"(v := {get})", 1)
            items.append(f"(v if {test} else c{i}(v))")
    source = (
        "def rows(dicts):\n"
        "    out = []\n"
        "    append = out.append\n"
        "    for d in dicts:\n"
        "        g = d.get\n"
        f"        append(({', '.join(items)},))\n"
        "    return out\n"
    )
    exec(compile(source, f"<wflo-otel rows {'sqlite' if sqlite else 'postgresql'}>", "exec"), namespace)
    return namespace["rows"]


_ROWS: dict[tuple[int, bool], Callable[[Sequence[dict]], list[tuple]]] = {}


def _rows(rows: Sequence[dict[str, Any]], columns: Sequence[_Column], sqlite: bool) -> list[tuple]:
    key = (id(columns), sqlite)
    convert = _ROWS.get(key)
    if convert is None:
        convert = _ROWS[key] = _compile_rows(columns, sqlite)
    return convert(rows)


def _sorted(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [rows[key] for key in sorted(rows)]


# --------------------------------------------------------------------------- PostgreSQL


def _pg_insert_sql(table: str, columns: Sequence[_Column], conflict: str) -> str:
    names = ", ".join(c.name for c in columns)
    arrays = ", ".join(f"${i}::{c.pg_type}[]" for i, c in enumerate(columns, 1))
    select = ", ".join(f"u.{c.name}::{c.pg_cast}" if c.pg_cast else f"u.{c.name}" for c in columns)
    return f"INSERT INTO {table} ({names}) SELECT {select} FROM unnest({arrays}) AS u({names}) {conflict}"


_PG_DEF_SQL = _pg_insert_sql("workflow_definitions", DEF_COLUMNS, _DEF_CONFLICT)
_PG_POLICY_SQL = """
UPDATE workflow_definitions AS d SET policies = u.policies::jsonb, updated_at = u.updated_at
FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS u(id, policies, updated_at)
WHERE d.id = u.id AND d.policies IS DISTINCT FROM u.policies::jsonb
"""
_PG_EXEC_SQL = _pg_insert_sql("workflow_executions", EXEC_COLUMNS, _EXEC_CONFLICT)
_PG_ADD_TOTALS_SQL = """
UPDATE workflow_executions AS e
SET cost_total_usd = e.cost_total_usd + t.cost,
    input_tokens = LEAST(e.input_tokens + t.input_tokens, {tokens}),
    output_tokens = LEAST(e.output_tokens + t.output_tokens, {tokens}),
    llm_calls = LEAST(e.llm_calls::int8 + t.calls, {calls})
FROM unnest($1::text[], $2::float8[], $3::int8[], $4::int8[], $5::int4[])
    AS t(execution_id, cost, input_tokens, output_tokens, calls)
WHERE e.id = t.execution_id
""".format(tokens=TOTAL_TOKENS_LIMIT, calls=TOTAL_CALLS_LIMIT)
# The default step path: the ids of the batch already stored are looked up, and the new
# rows are written by binary COPY straight into the table (``bench/export.py`` measured
# it at about twice the rate of the ``unnest`` INSERT, which costs array encoding on
# both ends). COPY has no ON CONFLICT: a concurrent writer of the same span id makes it
# fail with a unique violation, and the transaction is run again (its look-up then sees
# the other writer's committed rows). Writers of one execution rarely get there: they
# queue on the execution row upserted before the steps.
_PG_STEP_IDS_SQL = "SELECT id FROM step_executions WHERE id = ANY($1::text[])"
# Executions likewise: the new ones by COPY, the stored ones by the upsert, which locks them.
_PG_EXEC_IDS_SQL = "SELECT id FROM workflow_executions WHERE id = ANY($1::text[])"


def _policy_rows(batch: RowBatch) -> list[tuple]:
    """(id, policies JSON, updated_at) of the definitions that carry a policy, in id order."""
    return [
        (row["id"], _json_text(row["policies"]), row["updated_at"])
        for row in _sorted(batch.definitions)
        if row.get("policies") is not None
    ]


def _columnar(rows: list[tuple], width: int) -> list[list[Any]]:
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows)]


async def _pg_write(pg, batch: RowBatch, before_commit=None, rollups: bool = True) -> None:
    """One transaction on an asyncpg connection.

    An execution not stored yet is COPYed with the totals of its steps in the batch
    already in it: none of those steps can be stored (their foreign key needs the
    execution), so they need no look-up, and the execution needs no UPDATE. Only
    executions stored before are upserted (locking them) and have totals added.
    """
    definitions = _rows(_sorted(batch.definitions), DEF_COLUMNS, sqlite=False)
    executions = _rows(_sorted(batch.executions), EXEC_COLUMNS, sqlite=False)
    steps = _rows(_sorted(batch.steps), STEP_COLUMNS, sqlite=False)
    async with pg.transaction():
        if definitions:
            await pg.execute(_PG_DEF_SQL, *_columnar(definitions, len(DEF_COLUMNS)))
            policies = _policy_rows(batch)
            if policies:
                await pg.execute(_PG_POLICY_SQL, *_columnar(policies, 3))
        new_executions, stored = await _pg_split_stored(pg, _PG_EXEC_IDS_SQL, executions) if executions else ([], [])
        if stored:  # locked here, in id order, before any step of theirs is written
            await pg.execute(_PG_EXEC_SQL, *_columnar(stored, len(EXEC_COLUMNS)))
        fresh, maybe_stored = _steps_of(steps, new_executions)
        added = (await _pg_split_stored(pg, _PG_STEP_IDS_SQL, maybe_stored))[0] if maybe_stored else []
        if new_executions:
            await pg.copy_records_to_table(
                "workflow_executions", records=_with_totals(new_executions, fresh), columns=NEW_EXEC_COLUMN_NAMES
            )
        if fresh or added:
            await pg.copy_records_to_table("step_executions", records=fresh + added, columns=STEP_COLUMN_NAMES)
        totals = _totals_added(added)  # the stored executions' share; the new ones carry theirs
        if totals:
            await pg.execute(_PG_ADD_TOTALS_SQL, *_columnar(totals, 5))
        if rollups and (fresh or added):
            additions = await _rollup_rows(batch, fresh + added, new_executions, functools.partial(_pg_workflows, pg), sqlite=False)
            for rollup, rows in additions.items():
                await pg.execute(rollup.pg_upsert_sql, *_columnar(rows, len(rollup.columns)))
        if before_commit is not None:
            await before_commit()


def _steps_of(steps: list[tuple], new_executions: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """(steps of the executions about to be inserted, the others), each in the given order."""
    if not new_executions:
        return [], steps
    new_ids = {row[0] for row in new_executions}
    if len(new_ids) == len({row[_EXECUTION] for row in steps} | new_ids):  # every step's execution is new
        return steps, []
    return [row for row in steps if row[_EXECUTION] in new_ids], [row for row in steps if row[_EXECUTION] not in new_ids]


def _with_totals(executions: list[tuple], steps: list[tuple]) -> list[tuple]:
    """Execution rows extended with the totals that ``steps`` (all new) bring them."""
    totals = {row[0]: row[1:] for row in _totals_added(steps)}
    return [row + totals.get(row[0], _NO_TOTALS) for row in executions]


_NO_TOTALS = (0.0, 0, 0, 0)


async def _pg_split_stored(pg, ids_sql: str, rows: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """(rows whose id is not in the table, rows whose id is): the id is the first column."""
    found = await pg.fetch(ids_sql, [row[0] for row in rows])
    if not found:
        return rows, []
    known = {record[0] for record in found}
    return [row for row in rows if row[0] not in known], [row for row in rows if row[0] in known]


async def _pg_workflows(pg, ids: list[str]) -> dict[str, str]:
    return {r[0]: r[1] for r in await pg.fetch("SELECT id, workflow_id FROM workflow_executions WHERE id = ANY($1::text[])", ids)}


# --------------------------------------------------------------------------- SQLite


def _sqlite_insert_sql(table: str, names: Sequence[str], conflict: str = "") -> str:
    marks = ", ".join("?" for _ in names)
    return f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks}) {conflict}".rstrip()


_SQLITE_DEF_SQL = _sqlite_insert_sql("workflow_definitions", [c.name for c in DEF_COLUMNS], _DEF_CONFLICT)
_SQLITE_POLICY_SQL = "UPDATE workflow_definitions SET policies = ?, updated_at = ? WHERE id = ? AND policies IS NOT ?"
_SQLITE_EXEC_SQL = _sqlite_insert_sql("workflow_executions", EXEC_COLUMN_NAMES, _EXEC_CONFLICT)
_SQLITE_STEP_SQL = _sqlite_insert_sql("step_executions", STEP_COLUMN_NAMES, _STEP_CONFLICT)
_SQLITE_NEW_EXEC_SQL = _sqlite_insert_sql("workflow_executions", NEW_EXEC_COLUMN_NAMES)
_SQLITE_ADD_TOTALS_SQL = (
    "UPDATE workflow_executions SET cost_total_usd = cost_total_usd + ?,"
    f" input_tokens = MIN(input_tokens + ?, {TOTAL_TOKENS_LIMIT}), output_tokens = MIN(output_tokens + ?, {TOTAL_TOKENS_LIMIT}),"
    f" llm_calls = MIN(llm_calls + ?, {TOTAL_CALLS_LIMIT}) WHERE id = ?"
)


async def _sqlite_write(db, batch: RowBatch, before_commit=None, rollups: bool = True) -> None:
    """One ``BEGIN IMMEDIATE`` transaction on an aiosqlite connection (the only writer meanwhile).

    As on PostgreSQL, a new execution is inserted with the totals of its steps in the
    batch, and only stored executions are upserted and have totals added.
    """
    definitions = _rows(_sorted(batch.definitions), DEF_COLUMNS, sqlite=True)
    executions = _rows(_sorted(batch.executions), EXEC_COLUMNS, sqlite=True)
    steps = _rows(_sorted(batch.steps), STEP_COLUMNS, sqlite=True)
    await db.execute("BEGIN IMMEDIATE")
    try:
        if definitions:
            await db.executemany(_SQLITE_DEF_SQL, definitions)
            policies = _policy_rows(batch)
            if policies:
                await db.executemany(
                    _SQLITE_POLICY_SQL, [(p, _sqlite_timestamp(at), i, p) for i, p, at in policies]
                )
        new_executions, stored = await _sqlite_split_stored(db, "workflow_executions", executions)
        if stored:
            await db.executemany(_SQLITE_EXEC_SQL, stored)
        fresh, maybe_stored = _steps_of(steps, new_executions)
        if new_executions:
            await db.executemany(_SQLITE_NEW_EXEC_SQL, _with_totals(new_executions, fresh))
        added = (await _sqlite_split_stored(db, "step_executions", maybe_stored))[0]
        if fresh or added:
            await db.executemany(_SQLITE_STEP_SQL, fresh + added)
        totals = _totals_added(added)  # the stored executions' share; the new ones carry theirs
        if totals:
            await db.executemany(_SQLITE_ADD_TOTALS_SQL, [(*t[1:], t[0]) for t in totals])
        if rollups and (fresh or added):
            additions = await _rollup_rows(batch, fresh + added, new_executions, functools.partial(_sqlite_workflows, db), sqlite=True)
            for rollup, rows in additions.items():
                await db.executemany(rollup.sqlite_upsert_sql, rows)
        if before_commit is not None:
            await before_commit()
        await db.commit()
    except BaseException:
        try:
            await db.rollback()
        except Exception:  # the connection may be gone; the pool will drop it
            _log.debug("wflo-otel: rollback failed", exc_info=True)
        raise


async def _sqlite_split_stored(db, table: str, rows: list[tuple]) -> tuple[list[tuple], list[tuple]]:
    """(rows whose id is not in ``table``, rows whose id is): exact, no other writer runs meanwhile."""
    known: set[str] = set()
    for start in range(0, len(rows), _CHUNK):
        ids = [row[0] for row in rows[start : start + _CHUNK]]
        marks = ", ".join("?" * len(ids))
        async with db.execute(f"SELECT id FROM {table} WHERE id IN ({marks})", ids) as cursor:
            known.update(row[0] for row in await cursor.fetchall())
    if not known:
        return rows, []
    return [row for row in rows if row[0] not in known], [row for row in rows if row[0] in known]


async def _sqlite_workflows(db, ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        sql = f"SELECT id, workflow_id FROM workflow_executions WHERE id IN ({', '.join('?' * len(chunk))})"
        async with db.execute(sql, chunk) as cursor:
            found.update((row[0], row[1]) for row in await cursor.fetchall())
    return found


# --------------------------------------------------------------------------- errors


def sqlstate_of(exc: BaseException) -> str | None:
    """The SQLSTATE of a driver error, wrapped by SQLAlchemy or not."""
    for candidate in (exc, getattr(exc, "orig", None), getattr(exc, "__cause__", None)):
        state = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(state, str):
            return state
    return None


def is_retryable(exc: BaseException) -> bool:
    """A serialization failure, deadlock or lost race on a span id: the same transaction will likely succeed now."""
    return sqlstate_of(exc) in RETRYABLE_SQLSTATES


def is_refusal(exc: BaseException) -> bool:
    """The server answers, and refuses us: no database of that name (3D000), or not for
    these credentials (class 28). Waiting seconds will not change it; someone must act.

    Still transient (the exporter spools, and replays once it is fixed), but not worth
    retrying at once nor waiting for at shutdown.
    """
    state = sqlstate_of(exc)
    return state is not None and (state == "3D000" or state[:2] == "28")


def is_transient(exc: BaseException) -> bool:
    """Could this failure go away by itself (database down, connection cut, lock timeout)?

    Anything else (a constraint or data error) would fail again on the same rows. A
    ``TypeError`` is a programming or configuration error (a connect argument the driver
    does not take): never transient, whatever its text says ("timeout"), or its batches
    would wait in the spool forever. A database that does not exist (yet) or refuses our
    credentials is unavailable, not a data error: it is created, or the role granted, and
    the spooled batches land.
    """
    if isinstance(exc, TypeError):
        return False
    if sqlstate_of(exc) in _TRANSIENT_RETRYABLE:
        return True
    if isinstance(exc, (OSError, TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError, EOFError)):
        return True
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    state = sqlstate_of(exc)
    if state is not None:
        # 08 connection, 28 invalid authorization, 53 resources, 57 operator intervention (shutdown,
        # terminated), 58 system, 3D000 database does not exist, 55P03 lock not available,
        # 25P03 idle-in-transaction timeout
        return state[:2] in {"08", "28", "53", "57", "58"} or state in {"3D000", "55P03", "25P03"}
    text = f"{type(exc).__name__} {exc}".lower()
    for marker in (
        "connection",
        "database is locked",
        "unable to open database",
        "disk i/o error",
        "disk is full",
        "readonly database",
        "interfaceerror",
        "timeout",
        "terminat",
        "closed",
        "broken pipe",
        "cannot connect",
        "shutting down",
    ):
        if marker in text:
            return True
    return False


# --------------------------------------------------------------------------- the store


class SpanStore:
    """Async writer for mapped batches; owns its engine (and so its connection pool).

    ``SpanStore(url)``, ``await store.migrate()``, ``await store.write(batch)``,
    ``await store.dispose()``. ``write`` is one transaction; it retries a
    deadlock or serialization failure up to ``deadlock_retries`` times and raises
    anything else (the caller decides about connection errors: the exporter retries
    with backoff, then spools; the ingest service answers 503).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 5,
        max_overflow: int = 5,
        connect_timeout_s: float = 10.0,
        deadlock_retries: int = 5,
        rollups: bool = True,
    ) -> None:
        self.url = normalize_url(url)
        # Keep the rollup tables in each write transaction (off only to measure what it costs).
        self.rollups = rollups
        self.engine = create_engine(
            self.url, pool_size=pool_size, max_overflow=max_overflow, connect_timeout_s=connect_timeout_s
        )
        self.dialect = self.engine.dialect.name
        self.deadlock_retries = deadlock_retries
        self.retried_transactions = 0
        # Awaited inside each write transaction just before COMMIT; tests use it to hold a
        # transaction open while another writer races it.
        self.before_commit = None
        # One writer at a time per process on SQLite (others wait on the busy timeout anyway).
        self._sqlite_locks: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = (
            weakref.WeakKeyDictionary()
        )
        self._checkpointer = _checkpointer_for(self.engine, self.url) if self.dialect == "sqlite" else None

    async def migrate(self) -> None:
        """Bring the schema to the latest alembic revision (safe to call from many processes).

        PostgreSQL serialises concurrent migrations with an advisory lock inside the
        transaction; SQLite with a file lock held around it (``sqlite_migration_lock``).
        """
        from wflo_otel.migrations import sqlite_migration_lock, upgrade_connection

        async with sqlite_migration_lock(self.url):
            async with self.engine.begin() as conn:
                await conn.run_sync(upgrade_connection, "head")

    async def ping(self) -> None:
        """Raise unless the database answers."""
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def write(self, batch: RowBatch) -> None:
        """Write one batch in one transaction; idempotent."""
        if not batch.steps and not batch.executions and not batch.definitions:
            return
        attempt = 0
        while True:
            try:
                if self.dialect == "sqlite":
                    async with self._sqlite_lock():
                        await self._write_once(batch)
                    if self._checkpointer is not None:
                        self._checkpointer.kick()
                else:
                    await self._write_once(batch)
                return
            except Exception as exc:
                if not is_retryable(exc) or attempt >= self.deadlock_retries:
                    raise
                attempt += 1
                self.retried_transactions += 1
                delay = random.uniform(0.005, 0.05) * attempt
                _log.info("wflo-otel: transaction failed with %s; retry %d in %.3fs", sqlstate_of(exc), attempt, delay)
                await asyncio.sleep(delay)

    async def dispose(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.close()
        await self.engine.dispose()

    def _sqlite_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._sqlite_locks.get(loop)
        if lock is None:
            lock = self._sqlite_locks[loop] = asyncio.Lock()
        return lock

    async def _write_once(self, batch: RowBatch) -> None:
        async with self.engine.connect() as conn:
            driver = await _driver_connection(conn)
            try:
                if self.dialect == "postgresql":
                    await _pg_write(driver, batch, self.before_commit, self.rollups)
                else:
                    await _sqlite_write(driver, batch, self.before_commit, self.rollups)
            except Exception as exc:
                if is_transient(exc) and not is_retryable(exc):
                    # The connection may be broken: never hand it out again.
                    await conn.invalidate()
                raise


def _checkpointer_for(engine: AsyncEngine, url: str) -> WalCheckpointer | None:
    """A background checkpointer for a SQLite file, with the writer's own checkpoint as a backstop."""
    path = database_path(url)
    if path is None:
        return None
    sa.event.listen(engine.sync_engine, "connect", _backstop_autocheckpoint)
    return WalCheckpointer(path)


def _backstop_autocheckpoint(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
    cursor.close()


async def _driver_connection(conn: AsyncConnection):
    fairy = await conn.get_raw_connection()
    return fairy.driver_connection
