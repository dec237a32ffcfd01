"""Hostile clients of the ingest service, for its limits' tests and benchmark (loopback only).

What one careless or hostile local client can do to ``wflo-otel serve``: send gzip
bombs (a ~31 KB body that inflates to a 31 MiB span), open connections and send
nothing, send headers or a body a few bytes at a time. ``ServerProcess`` runs the
service in a subprocess so its memory (``VmHWM``, the peak RSS) and its log can be
measured from outside. Shared by ``tests/test_ingest_hostile.py`` and
``bench/ingest_hostile.py``.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import aiohttp

from .synthetic import make_request

PROTOBUF = "application/x-protobuf"


def gzip_bomb(decompressed_mib: int = 31) -> bytes:
    """One OTLP request whose single span carries a ``decompressed_mib`` MiB attribute, gzipped (~1000:1)."""
    request = make_request(traces=1, spans_per_trace=1)
    span = request.resource_spans[0].scope_spans[0].spans[0]
    attribute = span.attributes.add()
    attribute.key = "padding"
    attribute.value.string_value = "a" * (decompressed_mib * 2**20)
    return gzip.compress(request.SerializeToString(), compresslevel=9)


def good_request() -> bytes:
    """A small, valid request (one workflow with two LLM calls)."""
    return make_request(traces=1, spans_per_trace=3).SerializeToString()


async def post(
    session: aiohttp.ClientSession, url: str, body: bytes, *, gzip_encoded: bool = False, timeout_s: float = 60
) -> tuple[int, str | None]:
    """POST one OTLP body; (status, Retry-After), or (0, None) when the connection failed."""
    headers = {"Content-Type": PROTOBUF}
    if gzip_encoded:
        headers["Content-Encoding"] = "gzip"
    try:
        async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
            await r.read()
            return r.status, r.headers.get("Retry-After")
    except (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError):
        return 0, None


async def answered_within(url: str, body: bytes, deadline_s: float) -> tuple[float | None, list[int]]:
    """Seconds until ``body`` is accepted (200), retrying 429/503 after their ``Retry-After``
    as an OTLP exporter does; None if not within ``deadline_s``. Also the statuses seen."""
    start = time.monotonic()
    statuses: list[int] = []
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        while time.monotonic() - start < deadline_s:
            left = deadline_s - (time.monotonic() - start)
            status, retry_after = await post(session, url, body, timeout_s=max(0.1, left))
            statuses.append(status)
            if status == 200:
                return time.monotonic() - start, statuses
            await asyncio.sleep(min(float(retry_after or 0.2), max(0.0, left)))
    return None, statuses


HOSTILE_KINDS = ("idle", "slow-headers", "slow-body")


async def open_hostile(host: str, port: int, kind: str, count: int) -> list[socket.socket]:
    """``count`` connections that hold the server: sending nothing, half a header, or a body's first bytes."""
    first_bytes = {
        "idle": b"",
        "slow-headers": b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n",
        "slow-body": b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
        b"Content-Length: 1000000\r\n\r\n\x0a",
    }[kind]
    loop = asyncio.get_running_loop()
    sockets: list[socket.socket] = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 5)
            if first_bytes:
                await loop.sock_sendall(sock, first_bytes)
        except (OSError, asyncio.TimeoutError):
            sock.close()
            continue
        sockets.append(sock)
    return sockets


DRIP = {"idle": b"", "slow-headers": b"X-Drip: 1\r\n", "slow-body": b"\x00"}


async def trickle(sockets: Sequence[socket.socket], seconds: float, payload: bytes, interval_s: float = 0.5) -> None:
    """Keep hostile connections alive: ``payload`` (a header line, a body byte) every ``interval_s``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for sock in sockets:
            try:
                sock.send(payload)  # b"" for idle connections: nothing is sent
            except OSError:
                pass
        await asyncio.sleep(interval_s)


async def hold_hostile(host: str, port: int, per_kind: int, seconds: float) -> None:
    """Open ``per_kind`` connections of each hostile kind and keep them going for ``seconds``."""
    opened = {kind: await open_hostile(host, port, kind, per_kind) for kind in HOSTILE_KINDS}
    try:
        await asyncio.gather(*(trickle(opened[kind], seconds, DRIP[kind]) for kind in HOSTILE_KINDS))
    finally:
        for sockets in opened.values():
            close_all(sockets)


def close_all(sockets: Sequence[socket.socket]) -> None:
    for sock in sockets:
        sock.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _limit_fds(nofile: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    return apply


@dataclass
class ServerProcess:
    """``python -m wflo_otel.ingest`` in a subprocess (any interpreter: ``python``), its log in a file."""

    database_url: str
    log_path: Path
    args: Sequence[str] = ()
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)
    nofile: int | None = None  # RLIMIT_NOFILE of the server
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1/traces"

    def start(self, timeout_s: float = 60) -> "ServerProcess":
        log = open(self.log_path, "wb")
        command = [self.python, "-m", "wflo_otel.ingest", "--database-url", self.database_url, "--port", str(self.port)]
        self.process = subprocess.Popen(
            [*command, *self.args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            cwd=self.log_path.parent,  # not a source tree: ``-m`` must import the interpreter's wflo_otel
            preexec_fn=_limit_fds(self.nofile) if self.nofile else None,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if b"listening on" in self.log_path.read_bytes():
                return self
            if self.process.poll() is not None:
                raise RuntimeError(f"the ingest service exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError("the ingest service did not start")

    def memory_kb(self, field_name: str = "VmHWM") -> int:
        """The server's peak (``VmHWM``) or current (``VmRSS``) resident set, in KiB."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field_name} for {self.process.pid}")

    def log_bytes(self) -> int:
        return self.log_path.stat().st_size

    def stop(self, timeout_s: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def bombs_in_flight(url: str, count: int, bomb: bytes) -> list[int]:
    """Send ``count`` gzip bombs at once; their statuses."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=count, force_close=True)) as session:
        sends = (post(session, url, bomb, gzip_encoded=True, timeout_s=120) for _ in range(count))
        answers = await asyncio.gather(*sends)
    return [status for status, _ in answers]


__all__ = [
    "HOSTILE_KINDS",
    "ServerProcess",
    "answered_within",
    "bombs_in_flight",
    "close_all",
    "free_port",
    "good_request",
    "gzip_bomb",
    "hold_hostile",
    "open_hostile",
    "post",
    "trickle",
]
