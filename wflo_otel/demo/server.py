"""A fake, OpenAI-compatible HTTP server on loopback.

Used by ``wflo-otel demo`` and by the test suite, driven by the real ``openai``
client::

    with FakeOpenAIServer() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        client.chat.completions.create(model="gpt-4o-mini", messages=[...])

Standard library only.  The server binds to 127.0.0.1 (any other host is
refused), runs ``http.server.ThreadingHTTPServer`` in a daemon thread, speaks
HTTP/1.1 with keep-alive (``Content-Length`` on every plain response,
``Transfer-Encoding: chunked`` for SSE streams) and logs nothing.

Deterministic token accounting (so tests can predict the numbers):

* chat prompt tokens   = ceil(total text chars of all message contents / 4) + 4 * len(messages)
  (see :func:`chat_prompt_tokens`); Responses API input is counted the same way over
  ``instructions`` + ``input`` items (:func:`responses_input_tokens`).
* cached tokens        = prompt_tokens // 2 if any message contains ``"[cached]"``,
  else (prompt_tokens // 128) * 128 if prompt_tokens >= 1024, else 0.
* completion tokens    = mode ``"realistic"``: 20 + crc32(last message text, choice index) % 181,
  capped by ``max_completion_tokens`` / ``max_tokens`` / ``max_output_tokens``
  (finish_reason ``"length"`` when capped);
  mode ``"max_output"``: exactly that cap (or 256 when none is given) per choice.
* reasoning tokens     = completion_tokens // 2 for models starting with o1/o3/o4/gpt-5, else 0
  (reasoning tokens are part of completion_tokens, like OpenAI's).

Behaviour switches carried by the request:

* model ``"error-<status>"`` (e.g. ``error-429``) answers that status with an
  OpenAI-style error body (429 also sends ``retry-after: 0``).
* model ``"error-midstream"``: with ``stream=True`` sends the first events, two
  content deltas, then drops the connection; without streaming sends a truncated body.
* ``"[tool]"`` in the last message + ``tools`` in the request -> a tool call
  (finish_reason ``"tool_calls"``); ``tool_choice="required"`` or a named tool
  forces one too, ``tool_choice="none"`` prevents it.
* ``"[cached]"`` anywhere in the prompt -> non-zero cached tokens (see above).
* a ``json_schema`` structured-output format (chat ``response_format``, Responses
  ``text.format``) -> the text is a JSON object with a sample value for each
  top-level property of the schema (what ``.parse()`` needs); token counts unchanged.
"""

from __future__ import annotations

import argparse
import base64
import http
import json
import math
import random
import re
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

__all__ = [
    "FakeOpenAIServer",
    "chat_prompt_tokens",
    "responses_input_tokens",
    "cached_tokens_for",
    "is_reasoning_model",
    "resolve_model",
    "main",
]

MODES = ("realistic", "max_output")
MAX_KEPT_REQUESTS = 10_000
DEFAULT_MAX_OUTPUT = 256
DEFAULT_EMBEDDING_DIMS = 8
SYSTEM_FINGERPRINT = "fp_fake0penai"

_DATE_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")
# A few well-known snapshot dates so the common models look exactly like the real API;
# anything else gets the generic "-2025-01-01" suffix.
_KNOWN_SNAPSHOTS = {
    "gpt-4o-mini": "2024-07-18",
    "gpt-4o": "2024-08-06",
    "gpt-4.1": "2025-04-14",
    "gpt-4.1-mini": "2025-04-14",
    "gpt-4.1-nano": "2025-04-14",
    "o1": "2024-12-17",
    "o3": "2025-04-16",
    "o3-mini": "2025-01-31",
    "o4-mini": "2025-04-16",
    "gpt-5": "2025-08-07",
    "gpt-5-mini": "2025-08-07",
    "gpt-5-nano": "2025-08-07",
}
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")

_LOREM_WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
    "incididunt ut labore et dolore magna aliqua ut enim ad minim veniam quis nostrud "
    "exercitation ullamco laboris nisi ut aliquip ex ea commodo consequat duis aute irure "
    "dolor in reprehenderit in voluptate velit esse cillum dolore eu fugiat nulla pariatur "
    "excepteur sint occaecat cupidatat non proident sunt in culpa qui officia deserunt "
    "mollit anim id est laborum"
).split()


def _build_lorem() -> tuple[str, list[int]]:
    rng = random.Random(1234)
    parts: list[str] = []
    starts: list[int] = []
    pos = 0
    sentence_left = rng.randint(6, 14)
    capital = True
    for _ in range(1200):
        word = rng.choice(_LOREM_WORDS)
        if capital:
            word = word.capitalize()
            capital = False
        sentence_left -= 1
        if sentence_left == 0:
            word += "."
            sentence_left = rng.randint(6, 14)
            capital = True
        elif rng.random() < 0.08:
            word += ","
        starts.append(pos)
        parts.append(word)
        pos += len(word) + 1
    text = " ".join(parts) + " "
    return text, starts


_LOREM, _LOREM_STARTS = _build_lorem()


def _lorem(n_chars: int, seed: int) -> str:
    """Deterministic lorem text of exactly ``n_chars`` characters (n_chars >= 1)."""
    if n_chars <= 0:
        return ""
    start = _LOREM_STARTS[seed % len(_LOREM_STARTS)]
    end = start + n_chars
    reps = end // len(_LOREM) + 1
    text = (_LOREM * reps)[start:end] if reps > 1 else _LOREM[start:end]
    text = text[0].upper() + text[1:]
    if text[-1] == " ":
        text = text[:-1] + "."
    return text


def _crc(text: str, salt: int = 0) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"), salt & 0xFFFFFFFF)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _split(text: str, max_parts: int = 8, part_chars: int = 48) -> list[str]:
    """Split text into 1..max_parts roughly equal pieces (several when long enough)."""
    if not text:
        return []
    k = max(1, min(max_parts, math.ceil(len(text) / part_chars)))
    size = math.ceil(len(text) / k)
    return [text[i : i + size] for i in range(0, len(text), size)]


# --------------------------------------------------------------------------- token rules


def resolve_model(model: str) -> str:
    """The model name the fake API reports back: the request model with a date suffix."""
    if not model or _DATE_SUFFIX.search(model):
        return model
    snapshot = _KNOWN_SNAPSHOTS.get(model)
    if snapshot:
        return f"{model}-{snapshot}"
    return f"{model}-2025-01-01"


def is_reasoning_model(model: str) -> bool:
    name = model.split(":", 1)[1] if model.startswith("ft:") else model
    return name.startswith(_REASONING_PREFIXES)


def _content_text(content: Any) -> str:
    """Text of a message content: a string, or a list of parts with ``text``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out: list[str] = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    out.append(text)
        return "".join(out)
    if isinstance(content, dict):
        text = content.get("text")
        return text if isinstance(text, str) else ""
    return ""


def _message_texts(messages: Any) -> list[str]:
    if not isinstance(messages, list):
        return []
    return [_content_text(m.get("content")) if isinstance(m, dict) else "" for m in messages]


def chat_prompt_tokens(messages: Any) -> int:
    """ceil(total text chars of the message contents / 4) + 4 per message."""
    texts = _message_texts(messages)
    return math.ceil(sum(len(t) for t in texts) / 4) + 4 * len(texts)


def _responses_input_texts(body: dict) -> list[str]:
    texts: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        texts.append(instructions)
    inp = body.get("input")
    if isinstance(inp, str):
        texts.append(inp)
    elif isinstance(inp, list):
        for item in inp:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, dict):
                if "content" in item:
                    texts.append(_content_text(item.get("content")))
                elif isinstance(item.get("output"), str):  # function_call_output
                    texts.append(item["output"])
                elif isinstance(item.get("arguments"), str):  # function_call
                    texts.append(item["arguments"])
                else:
                    texts.append("")
    return texts


def responses_input_tokens(body: dict) -> int:
    """Same rule as chat: ceil(chars / 4) + 4 per item (``instructions`` counts as one item)."""
    texts = _responses_input_texts(body)
    return math.ceil(sum(len(t) for t in texts) / 4) + 4 * len(texts)


def cached_tokens_for(prompt_tokens: int, texts: list[str]) -> int:
    if any("[cached]" in t for t in texts):
        return prompt_tokens // 2
    if prompt_tokens >= 1024:
        return (prompt_tokens // 128) * 128
    return 0


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _first_cap(body: dict, keys: tuple[str, ...]) -> int | None:
    for key in keys:
        cap = _positive_int(body.get(key))
        if cap is not None:
            return cap
    return None


def _sample_arguments(parameters: Any) -> str:
    args: dict[str, Any] = {}
    props = parameters.get("properties") if isinstance(parameters, dict) else None
    if isinstance(props, dict):
        for name, schema in props.items():
            typ = schema.get("type") if isinstance(schema, dict) else None
            if isinstance(typ, list):
                typ = next((t for t in typ if t != "null"), None)
            if isinstance(schema, dict) and isinstance(schema.get("enum"), list) and schema["enum"]:
                args[name] = schema["enum"][0]
            elif typ == "integer":
                args[name] = 1
            elif typ == "number":
                args[name] = 1.5
            elif typ == "boolean":
                args[name] = True
            elif typ == "array":
                args[name] = []
            elif typ == "object":
                args[name] = {}
            else:
                args[name] = f"example {name}"
    return json.dumps(args, separators=(", ", ": "))


def _pick_tool(body: dict, last_text: str) -> tuple[str, str] | None:
    """(name, arguments) when the request should be answered by a tool call."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    choice = body.get("tool_choice")
    wanted: str | None = None
    if choice == "none":
        return None
    if isinstance(choice, dict):
        fn = choice.get("function")
        wanted = fn.get("name") if isinstance(fn, dict) else choice.get("name")
    elif choice != "required" and "[tool]" not in last_text:
        return None
    candidates = []
    for tool in tools:
        if not isinstance(tool, dict):
            continue
        fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        name = fn.get("name")
        if isinstance(name, str):
            candidates.append((name, fn.get("parameters")))
    if not candidates:
        return None
    name, params = next(((n, p) for n, p in candidates if n == wanted), candidates[0])
    return name, _sample_arguments(params)


_ERROR_INFO = {
    400: ("invalid_request_error", None, "Invalid request (injected by fake model {model})."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided (injected by fake model {model})."),
    403: ("invalid_request_error", "unsupported_country_region_territory", "Forbidden (injected by fake model {model})."),
    404: ("invalid_request_error", "model_not_found", "The model `{model}` does not exist or you do not have access to it."),
    409: ("invalid_request_error", None, "Conflict (injected by fake model {model})."),
    422: ("invalid_request_error", None, "Unprocessable entity (injected by fake model {model})."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for {model} (injected by fake server). Please try again in 0s."),
    500: ("server_error", None, "The server had an error while processing your request (injected by fake model {model})."),
    502: ("server_error", None, "Bad gateway (injected by fake model {model})."),
    503: ("server_error", None, "The engine is currently overloaded (injected by fake model {model})."),
}


def _error_body(message: str, type_: str, code: Any = None, param: Any = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# --------------------------------------------------------------------------- HTTP plumbing


class _Disconnect(Exception):
    """Raised internally to drop the connection on purpose (mid-stream error)."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # hundreds of concurrent clients connect at once

    def __init__(self, addr: tuple[str, int], owner: "FakeOpenAIServer") -> None:
        self.owner = owner
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self.connections_accepted = 0
        super().__init__(addr, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), i.e. a (possibly remote) DNS
        # lookup.  We never want that.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port

    def handle_error(self, request: Any, client_address: Any) -> None:  # quiet
        pass

    def track(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.add(conn)
            self.connections_accepted += 1

    def untrack(self, conn: socket.socket) -> None:
        with self._conns_lock:
            self._conns.discard(conn)

    def open_connections(self) -> int:
        with self._conns_lock:
            return len(self._conns)

    def close_all_connections(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-openai/1.0"
    sys_version = ""
    disable_nagle_algorithm = True
    server: _HTTPServer

    # ---- connection lifecycle / quietness
    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # ---- low-level I/O
    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise _Disconnect()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _head(self, status: int, headers: list[tuple[str, str]]) -> bytes:
        try:
            reason = http.HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"date: {self.date_time_string()}",
            f"server: {self.server_version}",
            f"x-request-id: req_{self._seq:012x}",
            "openai-version: 2020-10-01",
            "openai-processing-ms: 1",
        ]
        lines.extend(f"{k}: {v}" for k, v in headers)
        if self.close_connection:
            lines.append("connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _send_json(self, status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> None:
        body = _dumps(obj)
        hdrs = [("content-type", "application/json"), ("content-length", str(len(body)))]
        if headers:
            hdrs.extend(headers)
        self.wfile.write(self._head(status, hdrs) + body)
        self._headers_sent = True

    def _send_error(self, status: int, message: str, type_: str, code: Any = None,
                    headers: list[tuple[str, str]] | None = None) -> None:
        self._send_json(status, _error_body(message, type_, code), headers)

    def _sse_begin(self) -> None:
        self._chunked = self.request_version != "HTTP/1.0"
        hdrs = [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")]
        if self._chunked:
            hdrs.append(("transfer-encoding", "chunked"))
        else:
            self.close_connection = True  # close-delimited body for HTTP/1.0 clients
        self.wfile.write(self._head(200, hdrs))
        self._headers_sent = True

    def _sse_write(self, payload: bytes) -> None:
        if self._chunked:
            self.wfile.write(b"%X\r\n%s\r\n" % (len(payload), payload))
        else:
            self.wfile.write(payload)

    def _sse_end(self, last: bytes = b"") -> None:
        if self._chunked:
            out = (b"%X\r\n%s\r\n" % (len(last), last) if last else b"") + b"0\r\n\r\n"
        else:
            out = last
        if out:
            self.wfile.write(out)

    @staticmethod
    def _event(obj: Any, event: str | None = None) -> bytes:
        data = b"data: " + _dumps(obj) + b"\n\n"
        return b"event: " + event.encode() + b"\n" + data if event else data

    def _drop_connection(self) -> None:
        """Close the socket abruptly (no terminating chunk / truncated body)."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ---- dispatch
    def _handle(self, method: str) -> None:
        owner = self.server.owner
        self._seq = 0
        self._headers_sent = False
        self._chunked = True
        try:
            raw = self._read_body()
            path = urlsplit(self.path).path.rstrip("/") or "/"
            if method == "GET" and path in ("/health", "/healthz", "/v1/health"):
                self._send_json(200, {"status": "ok"})
                return
            route = _POST_ROUTES.get(path) if method == "POST" else None
            if route is None:
                self._seq = owner._record(None)
                if method == "GET" and path == "/v1/models":
                    self._send_json(200, _models_list())
                    return
                self._send_error(404, f"Invalid URL ({method} {path})", "invalid_request_error")
                return
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            if not isinstance(body, dict):
                self._seq = owner._record(None)
                self._send_error(
                    400,
                    "We could not parse the JSON body of your request. (HINT: This likely means you "
                    "aren't using your HTTP library correctly.)",
                    "invalid_request_error",
                )
                return
            self._seq = owner._record(body)
            latency = owner.latency_s
            if latency > 0:
                time.sleep(latency)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                self._send_error(400, "you must provide a model parameter", "invalid_request_error")
                return
            if model.startswith("error-") and model != "error-midstream":
                self._inject_error(model)
                return
            route(self, body, owner.mode)
        except _Disconnect:
            self._drop_connection()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # pragma: no cover - defensive: never print, answer 500
            self.close_connection = True
            if not self._headers_sent:
                try:
                    self._send_error(500, f"fake server failure: {exc!r}", "server_error")
                except OSError:
                    pass

    def _inject_error(self, model: str) -> None:
        try:
            status = int(model[len("error-"):])
        except ValueError:
            status = 0
        if not 400 <= status <= 599:
            self._send_error(404, f"The model `{model}` does not exist or you do not have access to it.",
                             "invalid_request_error", "model_not_found")
            return
        default = ("server_error", None, "Error {status} (injected by fake model {model}).") if status >= 500 \
            else ("invalid_request_error", None, "Error {status} (injected by fake model {model}).")
        type_, code, template = _ERROR_INFO.get(status, default)
        headers = [("retry-after", "0"), ("retry-after-ms", "0")] if status == 429 else None
        self._send_error(status, template.format(model=model, status=status), type_, code, headers)


# --------------------------------------------------------------------------- endpoints


def _models_list() -> dict:
    created = 1700000000
    ids = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o4-mini", "gpt-5-mini", "text-embedding-3-small"]
    return {"object": "list", "data": [
        {"id": m, "object": "model", "created": created, "owned_by": "system"} for m in ids
    ]}


def _plan_choice(mode: str, cap: int | None, seed: int, reasoning: bool,
                 tool: tuple[str, str] | None) -> dict:
    """Length/finish decision for one choice."""
    if mode == "max_output":
        completion = cap if cap is not None else DEFAULT_MAX_OUTPUT
        finish = "length" if cap is not None else "stop"
    else:
        natural = 20 + seed % 181
        if tool is not None:
            natural = math.ceil((len(tool[0]) + len(tool[1])) / 4) + 5
        if cap is not None and cap < natural:
            completion, finish = cap, "length"
        else:
            completion, finish = natural, "stop"
    if tool is not None:
        finish = "tool_calls"
    reasoning_tokens = completion // 2 if reasoning else 0
    visible = completion - reasoning_tokens
    text = None if tool is not None else _lorem(max(1, visible) * 4, seed)
    return {"completion": completion, "reasoning": reasoning_tokens, "finish": finish, "text": text, "tool": tool}


def _json_schema_of(fmt: Any) -> dict | None:
    """The JSON schema of a ``json_schema`` output format (chat or Responses shape), else None."""
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    schema = fmt.get("json_schema", fmt)  # chat nests it, the Responses API does not
    schema = schema.get("schema") if isinstance(schema, dict) else None
    return schema if isinstance(schema, dict) else None


def _apply_json_schema(plans: list[dict], schema: dict | None) -> None:
    """Structured output: text answers become a JSON object matching the schema."""
    if schema is None:
        return
    for plan in plans:
        if plan["text"] is not None:
            plan["text"] = _sample_arguments(schema)


def _chat_usage(prompt: int, cached: int, completion: int, reasoning: int) -> dict:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat(h: _Handler, body: dict, mode: str) -> None:
    seq = h._seq
    model = body["model"]
    messages = body.get("messages")
    texts = _message_texts(messages)
    last_text = texts[-1] if texts else ""
    prompt = chat_prompt_tokens(messages)
    cached = cached_tokens_for(prompt, texts)
    reasoning = is_reasoning_model(model)
    cap = _first_cap(body, ("max_completion_tokens", "max_tokens"))
    n = _positive_int(body.get("n")) or 1
    tool = _pick_tool(body, last_text)
    choices = [_plan_choice(mode, cap, _crc(last_text, i), reasoning, tool) for i in range(n)]
    _apply_json_schema(choices, _json_schema_of(body.get("response_format")))
    completion = sum(c["completion"] for c in choices)
    usage = _chat_usage(prompt, cached, completion, sum(c["reasoning"] for c in choices))
    common = {
        "id": f"chatcmpl-{seq}",
        "created": int(time.time()),
        "model": resolve_model(model),
        "service_tier": "default",
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    if not body.get("stream"):
        out_choices = []
        for i, c in enumerate(choices):
            msg: dict[str, Any] = {"role": "assistant", "content": c["text"], "refusal": None, "annotations": []}
            if c["tool"] is not None:
                msg["tool_calls"] = [{
                    "id": f"call_{seq}_{i}", "type": "function",
                    "function": {"name": c["tool"][0], "arguments": c["tool"][1]},
                }]
            out_choices.append({"index": i, "message": msg, "logprobs": None, "finish_reason": c["finish"]})
        obj = {"id": common["id"], "object": "chat.completion", "created": common["created"],
               "model": common["model"], "choices": out_choices, "usage": usage,
               "service_tier": "default", "system_fingerprint": SYSTEM_FINGERPRINT}
        _send_complete(h, model, obj)
        return

    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
    midstream = model == "error-midstream"

    def chunk(choice_list: list, usage_value: Any = None) -> bytes:
        obj = {"id": common["id"], "object": "chat.completion.chunk", "created": common["created"],
               "model": common["model"], "service_tier": "default",
               "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choice_list}
        if include_usage:
            obj["usage"] = usage_value
        return h._event(obj)

    h._sse_begin()
    sent_content = 0
    for i, c in enumerate(choices):
        if c["tool"] is not None:
            name, args = c["tool"]
            h._sse_write(chunk([{"index": i, "delta": {"role": "assistant", "content": None, "refusal": None,
                                 "tool_calls": [{"index": 0, "id": f"call_{seq}_{i}", "type": "function",
                                                 "function": {"name": name, "arguments": ""}}]},
                                 "logprobs": None, "finish_reason": None}]))
            for piece in _split(args, max_parts=4, part_chars=8):
                h._sse_write(chunk([{"index": i, "delta": {"tool_calls": [
                    {"index": 0, "function": {"arguments": piece}}]}, "logprobs": None, "finish_reason": None}]))
        else:
            h._sse_write(chunk([{"index": i, "delta": {"role": "assistant", "content": "", "refusal": None},
                                 "logprobs": None, "finish_reason": None}]))
            for piece in _split(c["text"]):
                h._sse_write(chunk([{"index": i, "delta": {"content": piece},
                                     "logprobs": None, "finish_reason": None}]))
                sent_content += 1
                if midstream and sent_content >= 2:
                    raise _Disconnect()
        h._sse_write(chunk([{"index": i, "delta": {}, "logprobs": None, "finish_reason": c["finish"]}]))
    if midstream:
        raise _Disconnect()
    tail = b""
    if include_usage:
        tail = chunk([], usage)
    h._sse_end(tail + b"data: [DONE]\n\n")


def _send_complete(h: _Handler, model: str, obj: dict) -> None:
    """A non-streamed answer: whole, or cut in half for the "error-midstream" model."""
    if model == "error-midstream":
        _send_truncated(h, obj)
    else:
        h._send_json(200, obj)


def _send_truncated(h: _Handler, obj: dict) -> None:
    """Send headers announcing the full body, half of it, then drop the connection."""
    body = _dumps(obj)
    h.wfile.write(h._head(200, [("content-type", "application/json"), ("content-length", str(len(body)))])
                  + body[: len(body) // 2])
    h._headers_sent = True
    raise _Disconnect()


def _responses(h: _Handler, body: dict, mode: str) -> None:
    seq = h._seq
    model = body["model"]
    texts = _responses_input_texts(body)
    inp = body.get("input")
    if isinstance(inp, list) and inp and isinstance(inp[-1], dict):
        last_text = _content_text(inp[-1].get("content"))
    elif isinstance(inp, list) and inp and isinstance(inp[-1], str):
        last_text = inp[-1]
    else:
        last_text = inp if isinstance(inp, str) else ""
    prompt = responses_input_tokens(body)
    cached = cached_tokens_for(prompt, texts)
    reasoning = is_reasoning_model(model)
    cap = _positive_int(body.get("max_output_tokens"))
    tool = _pick_tool(body, last_text)
    plan = _plan_choice(mode, cap, _crc(last_text), reasoning, tool)
    text_config = body.get("text")
    _apply_json_schema([plan], _json_schema_of(text_config.get("format") if isinstance(text_config, dict) else None))
    capped = plan["finish"] == "length"
    created_at = time.time()
    resp_id = f"resp_{seq:024x}"

    output: list[dict] = []
    if reasoning:
        output.append({"id": f"rs_{seq:024x}", "type": "reasoning", "summary": []})
    if tool is not None:
        output.append({"id": f"fc_{seq:024x}", "type": "function_call", "status": "completed",
                       "call_id": f"call_{seq}", "name": tool[0], "arguments": tool[1]})
    else:
        output.append({"id": f"msg_{seq:024x}", "type": "message", "status": "incomplete" if capped else "completed",
                       "role": "assistant", "content": [
                           {"type": "output_text", "text": plan["text"], "annotations": [], "logprobs": []}]})
    usage = {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": plan["completion"],
        "output_tokens_details": {"reasoning_tokens": plan["reasoning"]},
        "total_tokens": prompt + plan["completion"],
    }

    def response_obj(status: str, out: list, usage_value: Any, completed: bool) -> dict:
        return {
            "id": resp_id, "object": "response", "created_at": int(created_at),
            "status": status, "background": False, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "max_tool_calls": None,
            "model": resolve_model(model), "output": out, "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "prompt_cache_key": body.get("prompt_cache_key"),
            "reasoning": {"effort": "medium" if reasoning else None, "summary": None},
            "safety_identifier": None, "service_tier": "default", "store": body.get("store", True),
            "temperature": body.get("temperature", 1.0),
            "text": text_config if isinstance(text_config, dict) else {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_logprobs": 0, "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "usage": usage_value, "user": body.get("user"), "metadata": body.get("metadata") or {},
            "completed_at": int(time.time()) if completed else None,
        }

    final_status = "incomplete" if capped else "completed"
    if not body.get("stream"):
        obj = response_obj(final_status, output, usage, True)
        _send_complete(h, model, obj)
        return

    midstream = model == "error-midstream"
    sn = 0

    def ev(obj: dict) -> None:
        nonlocal sn
        obj["sequence_number"] = sn
        sn += 1
        h._sse_write(h._event(obj, obj["type"]))

    h._sse_begin()
    ev({"type": "response.created", "response": response_obj("in_progress", [], None, False)})
    ev({"type": "response.in_progress", "response": response_obj("in_progress", [], None, False)})
    for idx, item in enumerate(output):
        if item["type"] == "message":
            ev({"type": "response.output_item.added", "output_index": idx,
                "item": {**item, "status": "in_progress", "content": []}})
            empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            ev({"type": "response.content_part.added", "item_id": item["id"], "output_index": idx,
                "content_index": 0, "part": empty_part})
            for k, piece in enumerate(_split(plan["text"])):
                ev({"type": "response.output_text.delta", "item_id": item["id"], "output_index": idx,
                    "content_index": 0, "delta": piece, "logprobs": []})
                if midstream and k >= 1:
                    raise _Disconnect()
            ev({"type": "response.output_text.done", "item_id": item["id"], "output_index": idx,
                "content_index": 0, "text": plan["text"], "logprobs": []})
            ev({"type": "response.content_part.done", "item_id": item["id"], "output_index": idx,
                "content_index": 0, "part": item["content"][0]})
        elif item["type"] == "function_call":
            ev({"type": "response.output_item.added", "output_index": idx,
                "item": {**item, "status": "in_progress", "arguments": ""}})
            for piece in _split(item["arguments"], max_parts=4, part_chars=8):
                ev({"type": "response.function_call_arguments.delta", "item_id": item["id"],
                    "output_index": idx, "delta": piece})
            ev({"type": "response.function_call_arguments.done", "item_id": item["id"],
                "output_index": idx, "name": item["name"], "arguments": item["arguments"]})
        else:
            ev({"type": "response.output_item.added", "output_index": idx, "item": item})
        ev({"type": "response.output_item.done", "output_index": idx, "item": item})
    if midstream:
        raise _Disconnect()
    final_type = "response.incomplete" if capped else "response.completed"
    final = {"type": final_type, "response": response_obj(final_status, output, usage, True),
             "sequence_number": sn}
    h._sse_end(h._event(final, final_type))


def _embedding_vector(text: str, dims: int) -> list[float]:
    rng = random.Random(_crc(text))
    vec = [rng.uniform(-1.0, 1.0) for _ in range(dims)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    return [round(v / norm, 6) for v in vec]


def _embeddings(h: _Handler, body: dict, mode: str) -> None:
    raw = body.get("input")
    if isinstance(raw, str):
        inputs: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        inputs = [raw]  # a single token array
    elif isinstance(raw, list):
        inputs = raw
    else:
        inputs = []
    if not inputs:
        h._send_error(400, "'input' is a required property", "invalid_request_error")
        return
    dims = _positive_int(body.get("dimensions")) or DEFAULT_EMBEDDING_DIMS
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    tokens = 0
    for i, item in enumerate(inputs):
        if isinstance(item, list):
            text = " ".join(str(t) for t in item)
            tokens += len(item)
        else:
            text = str(item)
            tokens += max(1, math.ceil(len(text) / 4))
        vec = _embedding_vector(text, dims)
        emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode("ascii") if as_base64 else vec
        data.append({"object": "embedding", "index": i, "embedding": emb})
    if body["model"] == "error-midstream":
        _send_truncated(h, {"object": "list", "data": data})
        return
    h._send_json(200, {"object": "list", "data": data, "model": body["model"],
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


def _completions(h: _Handler, body: dict, mode: str) -> None:
    seq = h._seq
    model = body["model"]
    raw = body.get("prompt", "")
    if isinstance(raw, str):
        prompts: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        prompts = [raw]
    elif isinstance(raw, list) and raw:
        prompts = raw
    else:
        prompts = [""]
    texts = [" ".join(map(str, p)) if isinstance(p, list) else str(p) for p in prompts]
    prompt_tokens = sum(len(p) if isinstance(p, list) else math.ceil(len(str(p)) / 4) for p in prompts)
    cap = _positive_int(body.get("max_tokens"))
    n = _positive_int(body.get("n")) or 1
    reasoning = is_reasoning_model(model)
    plans = [_plan_choice(mode, cap, _crc(t, i), reasoning, None) for t in texts for i in range(n)]
    completion = sum(p["completion"] for p in plans)
    usage = _chat_usage(prompt_tokens, cached_tokens_for(prompt_tokens, texts), completion,
                        sum(p["reasoning"] for p in plans))
    common = {"id": f"cmpl-{seq}", "object": "text_completion", "created": int(time.time()),
              "model": resolve_model(model), "system_fingerprint": SYSTEM_FINGERPRINT}
    if not body.get("stream"):
        obj = {**common, "choices": [{"text": p["text"], "index": i, "logprobs": None,
                                      "finish_reason": p["finish"]} for i, p in enumerate(plans)],
               "usage": usage}
        _send_complete(h, model, obj)
        return
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
    midstream = model == "error-midstream"
    h._sse_begin()
    sent = 0
    for i, p in enumerate(plans):
        pieces = _split(p["text"])
        for k, piece in enumerate(pieces):
            last = k == len(pieces) - 1
            obj = {**common, "choices": [{"text": piece, "index": i, "logprobs": None,
                                          "finish_reason": p["finish"] if last else None}]}
            if include_usage:
                obj["usage"] = None
            h._sse_write(h._event(obj))
            sent += 1
            if midstream and sent >= 2:
                raise _Disconnect()
    if midstream:
        raise _Disconnect()
    tail = h._event({**common, "choices": [], "usage": usage}) if include_usage else b""
    h._sse_end(tail + b"data: [DONE]\n\n")


_POST_ROUTES: dict[str, Callable[[_Handler, dict, str], None]] = {
    "/v1/chat/completions": _chat,
    "/v1/responses": _responses,
    "/v1/embeddings": _embeddings,
    "/v1/completions": _completions,
}


# --------------------------------------------------------------------------- public class


def _check_loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    parts = host.split(".")
    if len(parts) == 4 and parts[0] == "127" and all(p.isdigit() and 0 <= int(p) <= 255 for p in parts):
        return host
    raise ValueError(f"FakeOpenAIServer only binds to loopback (127.x.x.x), got {host!r}")


class FakeOpenAIServer:
    """OpenAI-compatible fake API on loopback.  See the module docstring for the rules.

    ``request_count`` counts every handled request except ``GET /health``;
    ``requests`` holds the parsed JSON bodies received (last 10 000), in order.
    ``connection_count`` counts TCP connections accepted (keep-alive reuse keeps it low).
    ``mode`` and ``latency_s`` may be changed while the server runs.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, mode: str = "realistic",
                 latency_s: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if latency_s < 0:
            raise ValueError("latency_s must be >= 0")
        self.host = _check_loopback(host)
        self.port = port
        self.mode = mode
        self.latency_s = float(latency_s)
        self.requests: list[dict] = []
        self._count = 0
        self._lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._last_connection_count = 0

    # ---- bookkeeping
    @property
    def request_count(self) -> int:
        with self._lock:
            return self._count

    @property
    def connection_count(self) -> int:
        httpd = self._httpd
        return httpd.connections_accepted if httpd is not None else self._last_connection_count

    def _record(self, body: dict | None) -> int:
        with self._lock:
            self._count += 1
            if body is not None:
                self.requests.append(body)
                excess = len(self.requests) - MAX_KEPT_REQUESTS
                if excess > 0:
                    del self.requests[:excess]
            return self._count

    def reset(self) -> None:
        """Forget recorded requests and zero the counter."""
        with self._lock:
            self._count = 0
            self.requests.clear()

    # ---- lifecycle
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "FakeOpenAIServer":
        if self._httpd is not None:
            return self
        httpd = _HTTPServer((self.host, self.port), self)
        self.port = httpd.server_address[1]
        thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"fake-openai-{self.port}", daemon=True,
        )
        self._httpd, self._thread = httpd, thread
        thread.start()
        return self

    def stop(self) -> None:
        httpd, thread = self._httpd, self._thread
        if httpd is None:
            return
        self._httpd = self._thread = None
        self._last_connection_count = httpd.connections_accepted
        httpd.shutdown()  # stop accepting
        httpd.server_close()
        httpd.close_all_connections()  # wake handler threads blocked on idle keep-alive reads
        deadline = time.monotonic() + 2.0
        while httpd.open_connections() and time.monotonic() < deadline:
            time.sleep(0.005)
        if thread is not None:
            thread.join(timeout=2.0)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<FakeOpenAIServer {self.base_url} mode={self.mode} {state}>"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wflo_otel.demo.server",
        description="Serve a fake OpenAI-compatible API on 127.0.0.1 until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000, 0 = any free port)")
    parser.add_argument("--mode", choices=MODES, default="realistic")
    parser.add_argument("--latency", type=float, default=0.0, dest="latency_s",
                        help="seconds to wait before answering each API request")
    args = parser.parse_args(argv)
    try:
        server = FakeOpenAIServer(host=args.host, port=args.port, mode=args.mode, latency_s=args.latency_s)
        server.start()
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def _terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, _terminate)  # `kill` stops it as cleanly as Ctrl-C
    except ValueError:  # not in the main thread
        pass
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
