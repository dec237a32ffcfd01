"""Recorded-shape provider responses, served locally to a client configured with the provider's real URL.

The client keeps the provider's base URL (``https://api.groq.com/openai/v1``...), which
is what the instrumentation decides the provider from; its HTTP transport sends the
request to a local server instead, so nothing leaves the machine. The local server
answers with the configured queue of responses (status, JSON body) and keeps the
headers of every request it received.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai


def httpx_module():
    """The httpx the installed openai is built on (httpx2 for openai 3.x, httpx for 2.x)."""
    import openai._base_client as base

    return getattr(base, "httpx2", None) or base.httpx


class CannedServer:
    """A local HTTP server answering POSTs with queued responses (the last one repeats)."""

    def __init__(self) -> None:
        self.responses: list[tuple[int, dict[str, Any]]] = []
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                owner.requests.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body or b"{}")})
                status, payload = owner.responses.pop(0) if len(owner.responses) > 1 else owner.responses[0]
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                if status == 429:
                    self.send_header("retry-after-ms", "1")
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def answer(self, *responses: tuple[int, dict[str, Any]] | dict[str, Any]) -> None:
        """Queue responses: a dict is a 200 with that body; ``(status, body)`` for others."""
        self.responses = [r if isinstance(r, tuple) else (200, r) for r in responses]
        self.requests.clear()

    def __enter__(self) -> "CannedServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()


def local_transport(port: int):
    """An HTTP transport of openai's httpx that sends every request to 127.0.0.1:port, whatever its URL."""
    httpx = httpx_module()

    class LocalTransport(httpx.HTTPTransport):
        def handle_request(self, request):
            request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=port)
            return super().handle_request(request)

    return LocalTransport()


def client_for(base_url: str, server: CannedServer, **kwargs: Any) -> openai.OpenAI:
    """An OpenAI client configured with ``base_url`` whose requests the local server answers."""
    http_client = openai.DefaultHttpxClient(transport=local_transport(server.port))
    kwargs.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=base_url, api_key="test-key", http_client=http_client, **kwargs)


def azure_client(endpoint: str, server: CannedServer) -> openai.AzureOpenAI:
    http_client = openai.DefaultHttpxClient(transport=local_transport(server.port))
    return openai.AzureOpenAI(
        azure_endpoint=endpoint, api_version="2024-10-21", api_key="test-key", http_client=http_client, max_retries=0
    )


# ---------------------------------------------------------------- recorded shapes
# Bodies as each provider returns them (ids and texts shortened), usage included.

AZURE_CHAT = {
    "choices": [
        {
            "content_filter_results": {"hate": {"filtered": False, "severity": "safe"}},
            "finish_reason": "stop",
            "index": 0,
            "logprobs": None,
            "message": {"annotations": [], "content": "Hello!", "refusal": None, "role": "assistant"},
        }
    ],
    "created": 1760000000,
    "id": "chatcmpl-AZURE1",
    "model": "gpt-4o-mini-2024-07-18",
    "object": "chat.completion",
    "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    "system_fingerprint": "fp_efad92c60b",
    "usage": {
        "completion_tokens": 412,
        "completion_tokens_details": {"accepted_prediction_tokens": 0, "audio_tokens": 0, "reasoning_tokens": 0, "rejected_prediction_tokens": 0},
        "prompt_tokens": 1830,
        "prompt_tokens_details": {"audio_tokens": 0, "cached_tokens": 1024},
        "total_tokens": 2242,
    },
}

GROQ_CHAT = {
    "id": "chatcmpl-GROQ1",
    "object": "chat.completion",
    "created": 1760000000,
    "model": "llama-3.3-70b-versatile",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "logprobs": None, "finish_reason": "stop"}
    ],
    "usage": {
        "queue_time": 0.0203,
        "prompt_tokens": 1830,
        "prompt_time": 0.0411,
        "completion_tokens": 412,
        "completion_time": 0.3745,
        "total_tokens": 2242,
        "total_time": 0.4156,
    },
    "usage_breakdown": None,
    "system_fingerprint": "fp_3f3b593e33",
    "x_groq": {"id": "req_01k0groq"},
    "service_tier": "on_demand",
}

DEEPSEEK_CHAT = {
    "id": "5e2c-deepseek",
    "object": "chat.completion",
    "created": 1760000000,
    "model": "deepseek-chat",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "logprobs": None, "finish_reason": "stop"}
    ],
    "usage": {
        "prompt_tokens": 1830,
        "completion_tokens": 412,
        "total_tokens": 2242,
        "prompt_tokens_details": {"cached_tokens": 1024},
        "prompt_cache_hit_tokens": 1024,
        "prompt_cache_miss_tokens": 806,
    },
    "system_fingerprint": "fp_8802369eaa_prod0623_fp8_kvcache",
}

OPENROUTER_CHAT = {
    "id": "gen-1760000000-OPENROUTER",
    "provider": "DeepSeek",
    "model": "deepseek/deepseek-chat",
    "object": "chat.completion",
    "created": 1760000000,
    "choices": [
        {
            "logprobs": None,
            "finish_reason": "stop",
            "native_finish_reason": "stop",
            "index": 0,
            "message": {"role": "assistant", "content": "Hello!", "refusal": None, "reasoning": None},
        }
    ],
    "usage": {
        "prompt_tokens": 1830,
        "completion_tokens": 412,
        "total_tokens": 2242,
        "cost": 0.00075,
        "is_byok": False,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    },
}


def openai_chat(model: str = "gpt-4o-mini", service_tier: str | None = "default", prompt: int = 1000, completion: int = 200) -> dict:
    """A chat completion as api.openai.com returns it, served at ``service_tier``."""
    body = {
        "id": "chatcmpl-OPENAI1",
        "object": "chat.completion",
        "created": 1760000000,
        "model": f"{model}-2024-07-18" if model == "gpt-4o-mini" else model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "system_fingerprint": "fp_1",
    }
    if service_tier is not None:
        body["service_tier"] = service_tier
    return body
