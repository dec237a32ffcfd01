"""Alerts when a spend limit's period crosses a threshold (50 %, 80 %, 100 % by default).

Each threshold of each period of each key fires once across every process: the
first process to insert the firing into ``spend_limit_alerts`` delivers it, the
others' inserts do nothing. Delivery is an OpenTelemetry log record (through the
``wflo_otel.alerts`` logger, which the SDK's logging handler exports), a metric
(``wflo.limit.alerts``) and, when configured, a webhook: a JSON POST with a
Slack-compatible ``text``, signed with HMAC-SHA256 when a secret is set, retried
with backoff. All of it runs on a background thread; an LLM call only appends
to a queue, so a slow or failing receiver never slows or fails a call.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import queue
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

_log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Wflo-Signature"  # "sha256=<hex HMAC-SHA256 of the body with the secret>"


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``: what a receiver recomputes to verify it."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Alerts:
    """Where and when spend-limit alerts go.

    ``webhook``: URL to POST each alert to (None: log record and metric only).
    ``secret``: signs the body (``X-Wflo-Signature: sha256=...``). ``at``: the
    fractions of a limit that fire, each once per period and key.
    """

    webhook: str | None = field(default=None, repr=False)  # a Slack hook URL is itself a secret
    secret: str | None = field(default=None, repr=False)
    at: Sequence[float] = (0.5, 0.8, 1.0)
    timeout_s: float = 5.0
    retries: int = 3
    backoff_s: float = 0.5
    store: Any = field(default=None, repr=False, compare=False)  # set when attached to an engine
    on_alert: Callable[[dict], None] | None = field(default=None, repr=False)  # tests, custom sinks

    def __post_init__(self) -> None:
        try:
            at = tuple(sorted(float(x) for x in self.at))
        except (TypeError, ValueError):
            raise ValueError(f"Alerts(at=...) must be fractions like (0.5, 0.8, 1.0), got {self.at!r}") from None
        if not at or any(not 0 < x <= 1 for x in at):  # 50 would be 5,000 %: never fired
            raise ValueError(f"Alerts(at=...) must be fractions in (0, 1] like (0.5, 0.8, 1.0), got {self.at!r}")
        self.at = at
        if type(self.retries) is not int or self.retries < 0:
            raise ValueError(f"Alerts(retries=...) must be a whole number >= 0, got {self.retries!r}")
        for name in ("timeout_s", "backoff_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"Alerts({name}=...) must be a finite number of seconds > 0, got {value!r}")
        if self.webhook is not None and not str(self.webhook).startswith(("http://", "https://")):
            raise ValueError(f"Alerts(webhook=...) must be an http(s) URL, got {self.webhook!r}")
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.fired: dict[tuple[str, float], int] = {}  # (limit, threshold) -> alerts delivered by this process
        self.delivered = 0

    # -- the call path: enqueue only -------------------------------------------------------------

    def crossed(self, bucket: Any, threshold: float, spent: float, *, shared: bool) -> None:
        self._queue.put((bucket, threshold, spent, shared))
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="wflo-otel-alerts", daemon=True)
                    self._thread.start()

    # -- the background thread -------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._handle(*item)
            except Exception:
                _log.exception("wflo-otel: alert delivery failed")
            finally:
                self._queue.task_done()

    def _handle(self, bucket: Any, threshold: float, spent: float, shared: bool) -> None:
        if shared and self.store is not None:
            try:
                if not self.store.fire(bucket, threshold, spent):
                    return  # another process fired it
            except Exception as exc:
                _log.warning("wflo-otel: could not record alert %s of %r (%s); delivering it anyway", threshold, bucket.limit.name, exc)
        self.deliver(payload(bucket, threshold, spent))

    def deliver(self, body: dict) -> None:
        key = (body["limit"], body["threshold"])
        self.fired[key] = self.fired.get(key, 0) + 1
        self.delivered += 1
        _log.warning(body["text"], extra={"wflo_alert": body})
        if self.on_alert is not None:
            self.on_alert(body)
        if self.webhook:
            self._post(body)

    def _post(self, body: dict) -> None:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "wflo-otel"}
        if self.secret:
            headers[SIGNATURE_HEADER] = sign(self.secret, data)
        for attempt in range(self.retries + 1):
            try:
                request = urllib.request.Request(self.webhook, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    if 200 <= response.status < 300:
                        return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                _log.info("wflo-otel: alert webhook attempt %d failed: %s", attempt + 1, exc)
            if attempt < self.retries:
                time.sleep(self.backoff_s * (2**attempt))
        _log.warning("wflo-otel: alert webhook gave up after %d attempts", self.retries + 1)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued alert was handled (tests, shutdown)."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self._queue.unfinished_tasks

    def close(self, timeout_s: float = 2.0) -> None:
        """Deliver what is queued, waiting at most ``timeout_s`` (a hanging receiver is abandoned)."""
        if self._thread is not None:
            self.flush(timeout_s)
            self._queue.put(None)


def payload(bucket: Any, threshold: float, spent: float) -> dict:
    """The webhook's JSON body (also the log record's attributes)."""
    limit = bucket.limit
    remaining = max(limit.usd - spent, 0.0)
    key = f" for {limit.key}={bucket.key}" if limit.key and bucket.key else ""
    return {
        "limit": limit.name,
        "key": bucket.key,
        "per": limit.per,
        "period_start": bucket.start.isoformat(),
        "period_end": bucket.end.isoformat() if limit.per != "run" else None,
        "limit_usd": limit.usd,
        "spent_usd": round(spent, 9),
        "remaining_usd": round(remaining, 9),
        "threshold": threshold,
        "text": (
            f"wflo-otel: spend limit {limit.name!r}{key} crossed {threshold:.0%}: "
            f"{_usd(spent)} of {_usd(limit.usd)} spent this {limit.per}, {_usd(remaining)} left"
        ),
    }


def _usd(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 10 else f"${amount:.4g}"
