"""Reading OpenAI requests and responses: the one place that knows their shapes.

Everything here is defensive: a field that is missing, None or of an odd type
yields "unknown", never an exception, because a response we cannot fully read
must still give a span with what could be read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ... import attributes as A

# Per-message framing tokens (role, separators) — generous, it only feeds an upper bound.
_MESSAGE_OVERHEAD_TOKENS = 8
_REQUEST_OVERHEAD_TOKENS = 16
# Upper bound for one image part (high detail, largest tiling) in tokens.
_IMAGE_PART_TOKENS = 2_000


@dataclass(slots=True)
class Usage:
    """Token usage of one call, in OpenAI's convention: input includes cached, output includes reasoning."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0


def field(obj: Any, name: str) -> Any:
    """``obj.name`` for SDK models, ``obj[name]`` for dicts, None otherwise."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _int(value: Any) -> int | None:
    return value if type(value) is int else (int(value) if isinstance(value, (int, float)) else None)


def usage_from(usage_obj: Any) -> Usage | None:
    """Usage from a Chat Completions, Responses, Completions or Embeddings ``usage`` object."""
    if usage_obj is None:
        return None
    prompt = _int(field(usage_obj, "prompt_tokens"))
    if prompt is not None:  # chat, legacy completions, embeddings
        return Usage(
            input_tokens=prompt,
            output_tokens=_int(field(usage_obj, "completion_tokens")),
            cache_read_tokens=_int(field(field(usage_obj, "prompt_tokens_details"), "cached_tokens")) or 0,
            reasoning_tokens=_int(field(field(usage_obj, "completion_tokens_details"), "reasoning_tokens")) or 0,
        )
    inp = _int(field(usage_obj, "input_tokens"))
    if inp is not None:  # responses API
        return Usage(
            input_tokens=inp,
            output_tokens=_int(field(usage_obj, "output_tokens")),
            cache_read_tokens=_int(field(field(usage_obj, "input_tokens_details"), "cached_tokens")) or 0,
            reasoning_tokens=_int(field(field(usage_obj, "output_tokens_details"), "reasoning_tokens")) or 0,
        )
    return None


def is_given(value: Any) -> bool:
    """False for None and the SDK's ``NOT_GIVEN``/``omit`` sentinels."""
    return value is not None and type(value).__name__ not in ("NotGiven", "Omit")


def output_ceiling(kwargs: Mapping[str, Any]) -> int | None:
    """The request's own cap on output tokens, if it set one."""
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = kwargs.get(key)
        if type(value) is int:
            return value
    return None


def request_attributes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Semantic-convention request attributes that the caller set."""
    attrs: dict[str, Any] = {}
    ceiling = output_ceiling(kwargs)
    if ceiling is not None:
        attrs[A.GEN_AI_REQUEST_MAX_TOKENS] = ceiling
    temperature = kwargs.get("temperature")
    if isinstance(temperature, (int, float)):
        attrs[A.GEN_AI_REQUEST_TEMPERATURE] = temperature
    top_p = kwargs.get("top_p")
    if isinstance(top_p, (int, float)):
        attrs[A.GEN_AI_REQUEST_TOP_P] = top_p
    if kwargs.get("stream") is True:
        attrs[A.GEN_AI_REQUEST_STREAM] = True
    return attrs


def response_attributes(response: Any) -> dict[str, Any]:
    """id, model, finish reasons and service tier of a non-streamed response."""
    attrs: dict[str, Any] = {}
    response_id = field(response, "id")
    if isinstance(response_id, str):
        attrs[A.GEN_AI_RESPONSE_ID] = response_id
    model = field(response, "model")
    if isinstance(model, str):
        attrs[A.GEN_AI_RESPONSE_MODEL] = model
    tier = field(response, "service_tier")
    if isinstance(tier, str):
        attrs[A.GEN_AI_OPENAI_RESPONSE_SERVICE_TIER] = tier
    choices = field(response, "choices")
    if isinstance(choices, list):
        reasons = [r for r in (field(c, "finish_reason") for c in choices) if isinstance(r, str)]
        if reasons:
            attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = reasons
    return attrs


class ChatStreamState:
    """What a Chat Completions stream has shown so far: enough to finish its span."""

    __slots__ = ("response_id", "model", "service_tier", "finish_reasons", "usage_obj", "chunks")

    def __init__(self) -> None:
        self.response_id: str | None = None
        self.model: str | None = None
        self.service_tier: str | None = None
        self.finish_reasons: dict[int, str] = {}
        self.usage_obj: Any = None
        self.chunks = 0

    def observe(self, chunk: Any) -> bool:
        """Record one chunk; True if it is the usage-only chunk (no choices, only usage)."""
        self.chunks += 1
        if self.response_id is None:
            self.response_id = field(chunk, "id")
            self.model = field(chunk, "model")
        usage = field(chunk, "usage")
        if usage is not None:
            self.usage_obj = usage
            tier = field(chunk, "service_tier")
            if isinstance(tier, str):
                self.service_tier = tier
        choices = field(chunk, "choices")
        if not choices:
            return usage is not None
        for choice in choices:
            reason = field(choice, "finish_reason")
            if reason is not None:
                index = field(choice, "index")
                self.finish_reasons[index if isinstance(index, int) else 0] = reason
        return False

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if isinstance(self.response_id, str):
            attrs[A.GEN_AI_RESPONSE_ID] = self.response_id
        if isinstance(self.model, str):
            attrs[A.GEN_AI_RESPONSE_MODEL] = self.model
        if self.service_tier:
            attrs[A.GEN_AI_OPENAI_RESPONSE_SERVICE_TIER] = self.service_tier
        if self.finish_reasons:
            attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = [self.finish_reasons[i] for i in sorted(self.finish_reasons)]
        return attrs


def estimate_input_tokens(kwargs: Mapping[str, Any]) -> int:
    """An upper bound on the request's input tokens, without a tokenizer.

    A BPE token is at least one byte of UTF-8, so the byte length of all text
    bounds the token count; framing, images and tool schemas get generous
    allowances. Loose on purpose: it only decides what to *reserve*.
    """
    total = _REQUEST_OVERHEAD_TOKENS
    for key in ("messages", "input", "prompt", "instructions"):
        value = kwargs.get(key)
        if value is not None:
            total += _text_bound(value)
    for key in ("tools", "functions", "response_format", "text"):
        value = kwargs.get(key)
        if is_given(value):
            total += len(repr(value).encode())
    return total


def _text_bound(value: Any) -> int:
    if isinstance(value, str):
        return len(value) if value.isascii() else len(value.encode())
    if isinstance(value, Mapping):
        part_type = value.get("type")
        if part_type in ("image_url", "input_image", "image", "input_file", "file", "input_audio"):
            return _IMAGE_PART_TOKENS
        return _MESSAGE_OVERHEAD_TOKENS + sum(_text_bound(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_text_bound(v) for v in value)
    if isinstance(value, (int, float, bool)) or value is None:
        return 1
    return len(repr(value).encode())
