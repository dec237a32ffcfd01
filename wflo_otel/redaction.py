"""What an exception may say in storage: no secrets, no prompt, not too much.

Exception text is recorded on spans (the status description, the ``exception``
event's message and stack trace) and from there lands in ``step_executions.events``
and ``workflow_executions.error``. A server's error can echo what it was sent: an
OpenAI-compatible server answering 401 with the ``Authorization`` header, or 400
with the request body, prompt included. So every recorded exception text goes
through here:

- bearer tokens, ``Authorization``/``api-key`` header values and key-shaped strings
  (``sk-…``, ``gsk_…``, ``AIza…``, ``hf_…``, ``xai-…``) become ``[REDACTED]``;
- the body of an HTTP status error (an ``openai.APIStatusError`` or any exception
  with ``status_code``, ``body`` and ``response``) is left out unless message content
  capture is on (``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``): only its
  status code and the body's ``error.type`` / ``error.code`` identifiers are kept;
- messages are cut at ``MESSAGE_LIMIT`` characters, stack traces at ``STACKTRACE_LIMIT``.

The mapping applies ``redact_message`` / ``redact_exception_attributes`` again to
whatever a span carries, so spans from other instrumentations (through the ingest
service) are redacted too; it cannot know their prompts, only their secrets.
"""

from __future__ import annotations

import os
import re
import traceback
from typing import Any, Mapping

MESSAGE_LIMIT = 1000
STACKTRACE_LIMIT = 8000
REDACTED = "[REDACTED]"
_CAPTURE_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
_CAPTURE_ON = frozenset(("true", "1", "yes", "on", "span_only", "span_and_event"))

# A header (or JSON/dict key) naming a credential, its separator, an optional scheme, the value.
_HEADER = re.compile(
    r"""(?ix)
    ( \b(?:proxy-)?authorization | \bx-api-key | \bapi[-_]key | \bx-goog-api-key | \bapi-token )
    ( ["']? \s* [:=] \s* ["']? )
    (?: (?:bearer|basic|token|apikey)\s+ )?
    (?!\[REDACTED\])        # already redacted: redacting twice must not leave a stray "]"
    [^\s"',}\]]+
    """
)
_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=\-]{4,}")
_KEY_SHAPED = re.compile(
    r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-]{8,}|\bgsk_[A-Za-z0-9]{8,}|\bAIza[0-9A-Za-z_\-]{20,}|\bhf_[A-Za-z0-9]{8,}|\bxai-[A-Za-z0-9]{8,}"
)


def redact(text: str) -> str:
    """``text`` with credentials replaced by ``[REDACTED]`` (cheap when there are none)."""
    if not text:
        return text
    text = _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _KEY_SHAPED.sub(REDACTED, text)


_CUT = "… [truncated]"


def truncate(text: str, limit: int) -> str:
    """At most ``limit`` characters, saying so when it cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(_CUT))] + _CUT


def redact_message(text: Any, limit: int = MESSAGE_LIMIT) -> str | None:
    """A recorded message: credentials redacted, at most ``limit`` characters. None stays None."""
    if text is None:
        return None
    if not isinstance(text, str):
        text = str(text)
    text = storable_text(text)
    # Cut before the regexes run (they are linear, but a 30 MB message need not be scanned),
    # leaving room for a key the cut would otherwise halve into something unredacted.
    return truncate(redact(text[: limit * 2]), limit)


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")  # a str holds surrogates only unpaired


def storable_text(text: str) -> str:
    """``text`` with NUL and lone surrogates replaced by U+FFFD.

    PostgreSQL refuses both in ``text`` and ``jsonb`` columns, and an exception message may
    carry either (it echoes whatever the failing code was given), so a message recorded by
    the controls' synchronous store would otherwise fail its whole insert.
    """
    return _UNSTORABLE.sub("\ufffd", text)


def capture_content_enabled() -> bool:
    return os.environ.get(_CAPTURE_ENV, "").strip().lower() in _CAPTURE_ON


def _http_status_error(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if isinstance(status, int) and hasattr(exc, "body") and hasattr(exc, "response"):
        return status
    return None


_IDENTIFIER = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


def _error_identifiers(body: Any) -> str:
    """``type=…, code=…`` from an error body (``{"error": {...}}`` or the error itself), identifiers only."""
    error = body.get("error", body) if isinstance(body, Mapping) else None
    if not isinstance(error, Mapping):
        return ""
    parts = [
        f"{key}={error[key]}"
        for key in ("type", "code")
        if isinstance(error.get(key), str) and _IDENTIFIER.match(error[key])
    ]
    return f" ({', '.join(parts)})" if parts else ""


def exception_message(exc: BaseException, capture_content: bool | None = None) -> str:
    """What may be recorded of ``str(exc)``.

    An HTTP status error's message carries the server's body, which may echo the
    prompt: without content capture only its status and error identifiers are kept.
    ``capture_content`` None reads ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``.
    """
    if capture_content is None:
        capture_content = capture_content_enabled()
    status = _http_status_error(exc)
    if status is not None and not capture_content:
        text = f"Error code: {status}{_error_identifiers(getattr(exc, 'body', None))}"
    else:
        try:
            text = str(exc)
        except Exception:  # a broken __str__ must not break recording
            text = ""
    return redact_message(text) or type(exc).__name__


def exception_attributes(exc: BaseException, capture_content: bool | None = None) -> dict[str, str]:
    """``exception.message`` and ``exception.stacktrace`` for ``span.record_exception(exc, attributes=...)``.

    The SDK would record ``str(exc)`` and the full formatted traceback, whose last line
    repeats it; here both carry the safe message instead, redacted and cut.
    """
    message = exception_message(exc, capture_content)
    try:
        raw = str(exc)
    except Exception:
        raw = ""
    try:
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    except Exception:
        stack = ""
    if raw and raw != message:
        stack = stack.replace(raw, message)
    return {"exception.message": message, "exception.stacktrace": truncate(redact(stack), STACKTRACE_LIMIT)}


def redact_exception_attributes(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """An ``exception`` event's attributes with its message and stack trace redacted and cut."""
    out = dict(attrs)
    message = out.get("exception.message")
    if message is not None:
        out["exception.message"] = redact_message(message)
    stack = out.get("exception.stacktrace")
    if stack is not None:
        out["exception.stacktrace"] = redact_message(stack, STACKTRACE_LIMIT)
    return out
