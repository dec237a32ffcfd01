"""A durable local spool for batches the database could not take.

When the database stays down, the exporter writes each mapped batch here — one
JSON file per batch, fsync'd, renamed into place so a reader never sees half a
file — and replays the files oldest first when the database answers again (and
when a new exporter for the same database starts). The spool is bounded; when it
is full the batch is refused and the loss is logged as an error.

Layout: ``$WFLO_SPOOL_DIR`` (default ``$XDG_CACHE_HOME/wflo-otel/spool``, i.e.
``~/.cache/wflo-otel/spool``) / one folder per database (a hash of its URL,
password left out; SQLite paths made absolute) / ``<time ns>-<pid>-<seq>.json``.
Batches the database refused for a reason that will not go away (a data error)
are moved to ``failed/`` in the same folder, never silently dropped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from .mapping import RowBatch

_log = logging.getLogger(__name__)

SPOOL_DIR_ENV = "WFLO_SPOOL_DIR"
SPOOL_MAX_MB_ENV = "WFLO_SPOOL_MAX_MB"
DEFAULT_MAX_MB = 256.0
FORMAT_VERSION = 1
_DATETIME_KEYS = ("created_at", "updated_at", "started_at", "ended_at")
_FULL_LOG_INTERVAL_S = 10.0

try:  # POSIX: one replayer per spool folder across processes
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def default_spool_root() -> Path:
    configured = os.environ.get(SPOOL_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "wflo-otel" / "spool"


def default_max_bytes() -> int:
    raw = os.environ.get(SPOOL_MAX_MB_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MAX_MB
    except ValueError:
        raise ValueError(f"{SPOOL_MAX_MB_ENV} must be a number of MB, got {raw!r}") from None
    return int(mb * 1024 * 1024)


def database_key(url: str) -> str:
    """A folder name for a database: its engine and a hash of where it is."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        parsed = parsed.set(database=os.path.abspath(parsed.database))
    parsed = parsed.set(drivername=parsed.get_backend_name())
    digest = hashlib.sha256(parsed.render_as_string(hide_password=True).encode()).hexdigest()[:16]
    return f"{parsed.get_backend_name()}-{digest}"


# --------------------------------------------------------------------------- (de)serialisation


def _encode_row(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in _DATETIME_KEYS:
        value = out.get(key)
        if isinstance(value, datetime):
            out[key] = value.isoformat()
    return out


def _decode_row(row: dict[str, Any]) -> dict[str, Any]:
    for key in _DATETIME_KEYS:
        value = row.get(key)
        if isinstance(value, str):
            row[key] = datetime.fromisoformat(value)
    return row


def encode_batch(batch: RowBatch, **meta: Any) -> bytes:
    document = {
        "format": FORMAT_VERSION,
        **meta,
        "definitions": [_encode_row(r) for r in batch.definitions.values()],
        "executions": [_encode_row(r) for r in batch.executions.values()],
        "steps": [_encode_row(r) for r in batch.steps.values()],
    }
    return json.dumps(document, separators=(",", ":"), default=str).encode()


def decode_batch(data: bytes) -> RowBatch:
    document = json.loads(data)
    if document.get("format") != FORMAT_VERSION:
        raise ValueError(f"unknown spool format {document.get('format')!r}")
    batch = RowBatch()
    for name in ("definitions", "executions", "steps"):
        rows = getattr(batch, name)
        for row in document.get(name, []):
            rows[row["id"]] = _decode_row(row)
    return batch


# --------------------------------------------------------------------------- the spool


class SpoolFull(Exception):
    pass


class Spool:
    """The spool folder of one database."""

    def __init__(self, directory: Path, max_bytes: int | None = None, *, label: str = "") -> None:
        self.directory = Path(directory)
        self.failed_directory = self.directory / "failed"
        self.max_bytes = default_max_bytes() if max_bytes is None else int(max_bytes)
        self.label = label  # the database, for log lines
        self._lock = threading.Lock()
        self._seq = 0
        self._bytes: int | None = None  # lazily scanned; kept up to date by this process
        self._refused_spans = 0
        self._last_full_log = 0.0

    @classmethod
    def for_database(cls, url: str, root: Path | str | None = None, max_bytes: int | None = None, label: str = ""):
        base = Path(root).expanduser() if root is not None else default_spool_root()
        return cls(base / database_key(url), max_bytes, label=label)

    # ----------------------------------------------------------------- state

    def pending(self) -> list[Path]:
        """Spooled batches, oldest first."""
        try:
            names = [p for p in self.directory.iterdir() if p.suffix == ".json" and not p.name.startswith(".")]
        except FileNotFoundError:
            return []
        return sorted(names, key=lambda p: p.name)

    def __bool__(self) -> bool:
        return bool(self.pending())

    def size_bytes(self) -> int:
        with self._lock:
            return self._scan_locked()

    def _scan_locked(self) -> int:
        total = 0
        for folder in (self.directory, self.failed_directory):
            try:
                for entry in os.scandir(folder):
                    if entry.is_file():
                        with contextlib.suppress(FileNotFoundError):
                            total += entry.stat().st_size
            except FileNotFoundError:
                pass
        self._bytes = total
        return total

    # ----------------------------------------------------------------- writing

    def append(self, batch: RowBatch, spans: int | None = None) -> Path:
        """Write one batch durably; raise ``SpoolFull`` (after logging) when over the bound."""
        data = encode_batch(batch, spans=spans if spans is not None else len(batch), pid=os.getpid())
        with self._lock:
            used = self._bytes if self._bytes is not None else self._scan_locked()
            if used + len(data) > self.max_bytes:
                self._refused_spans += spans if spans is not None else len(batch)
                self._log_full_locked(used)
                raise SpoolFull(f"spool {self.directory} is full")
            self._seq += 1
            name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.json"
            path = _write_durably(self.directory, name, data)
            self._bytes = used + len(data)
        return path

    def _log_full_locked(self, used: int) -> None:
        now = time.monotonic()
        if now - self._last_full_log >= _FULL_LOG_INTERVAL_S:
            self._last_full_log = now
            _log.error(
                "wflo-otel: SPOOL FULL — the database %s is unreachable and the spool %s holds %.1f MB "
                "(limit %.1f MB, %s): %d spans LOST so far. Bring the database back or raise the limit.",
                self.label or "(unknown)",
                self.directory,
                used / 1048576,
                self.max_bytes / 1048576,
                SPOOL_MAX_MB_ENV,
                self._refused_spans,
            )

    @property
    def refused_spans(self) -> int:
        return self._refused_spans

    # ----------------------------------------------------------------- reading

    def read(self, path: Path) -> RowBatch:
        return decode_batch(path.read_bytes())

    def remove(self, path: Path) -> None:
        with self._lock:
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:  # another process replayed it
                return
            if self._bytes is not None:
                self._bytes = max(0, self._bytes - size)

    def quarantine(self, path: Path, reason: str) -> Path | None:
        """Move a batch the database refuses for good to ``failed/`` (kept, not retried)."""
        self.failed_directory.mkdir(parents=True, exist_ok=True)
        target = self.failed_directory / path.name
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError):
            (self.failed_directory / (path.name + ".error.txt")).write_text(reason)
        _fsync_dir(self.failed_directory)
        _log.error("wflo-otel: spooled batch %s was refused by the database and moved to %s: %s", path.name, target, reason)
        return target

    def quarantine_batch(self, batch: RowBatch, reason: str, spans: int | None = None) -> Path:
        """Keep a live batch the database refuses for good (a data error) in ``failed/``."""
        data = encode_batch(batch, spans=spans if spans is not None else len(batch), pid=os.getpid(), error=reason)
        with self._lock:
            self._seq += 1
            name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.json"
            path = _write_durably(self.failed_directory, name, data)
            if self._bytes is not None:
                self._bytes += len(data)
        _log.error("wflo-otel: the database refused a batch of %d spans (%s); kept in %s", len(batch), reason, path)
        return path

    @contextlib.contextmanager
    def replay_lock(self) -> Iterator[bool]:
        """Hold the folder's replay lock if no other process does; yields whether we got it."""
        if fcntl is None:  # pragma: no cover
            yield True
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / ".replay.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def _write_durably(directory: Path, name: str, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    path = directory / name
    os.replace(tmp, path)
    _fsync_dir(directory)
    return path


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
