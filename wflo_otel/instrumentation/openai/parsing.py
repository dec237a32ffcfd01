"""Reading OpenAI requests and responses: the one place that knows their shapes.

Everything here is defensive: a field that is missing, None or of an odd type
yields "unknown", never an exception, because a response we cannot fully read
must still give a span with what could be read.

Each API the instrumentation covers is described by a :class:`Shape`: its
operation name, how to read a complete response, how to follow a stream of it,
and where its input text lives. The wrappers know nothing else about OpenAI.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ... import attributes as A

_log = logging.getLogger(__name__)

# GenAI semantic-convention names used only here (not yet in wflo_otel.attributes).
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
GEN_AI_SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
GEN_AI_EMBEDDINGS_DIMENSION_COUNT = "gen_ai.embeddings.dimension.count"
GEN_AI_REQUEST_ENCODING_FORMATS = "gen_ai.request.encoding_formats"

OPERATION_CHAT = A.OPERATION_CHAT
OPERATION_EMBEDDINGS = "embeddings"
OPERATION_TEXT_COMPLETION = "text_completion"

# Per-message framing tokens (role, separators) — generous, it only feeds an upper bound.
_MESSAGE_OVERHEAD_TOKENS = 8
_REQUEST_OVERHEAD_TOKENS = 16
# Upper bound for one image part (high detail, largest tiling) in tokens.
_IMAGE_PART_TOKENS = 2_000
_TEXT_PART_TYPES = frozenset(("text", "input_text", "output_text"))
_MISSING = object()

# (usage, response attributes, error.type or None): what finishing a call needs.
Outcome = tuple  # tuple[Usage | None, dict[str, Any], str | None]


@dataclass(slots=True)
class Usage:
    """Token usage of one call, in OpenAI's convention: input includes cached, output includes reasoning."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0
    # Within input/output, priced at their own rates where the model has them.
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    cache_write_tokens: int = 0

    def plausible(self) -> bool:
        """No negative count: a usage the budget may be settled at."""
        return (
            (self.input_tokens is None or self.input_tokens >= 0)
            and (self.output_tokens is None or self.output_tokens >= 0)
            and min(self.cache_read_tokens, self.reasoning_tokens, self.input_audio_tokens,
                    self.output_audio_tokens, self.cache_write_tokens) >= 0
        )


def field(obj: Any, name: str) -> Any:
    """``obj.name`` for SDK models, ``obj[name]`` for dicts, None otherwise."""
    if type(obj) is dict:
        return obj.get(name)
    value = getattr(obj, name, _MISSING)
    if value is _MISSING:
        return obj.get(name) if isinstance(obj, Mapping) else None
    return value


def _field_or_none(obj: Any, name: str, default: None = None) -> Any:
    """``field`` with ``getattr``'s signature."""
    return field(obj, name)


def _int(value: Any) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    return None


def usage_from(usage_obj: Any) -> Usage | None:
    """Usage from a Chat Completions, Responses, Completions or Embeddings ``usage`` object."""
    if usage_obj is None:
        return None
    prompt = _int(field(usage_obj, "prompt_tokens"))
    if prompt is not None:  # chat, legacy completions, embeddings
        return _usage(usage_obj, prompt, "completion_tokens", "prompt_tokens_details", "completion_tokens_details")
    inp = _int(field(usage_obj, "input_tokens"))
    if inp is not None:  # responses API
        return _usage(usage_obj, inp, "output_tokens", "input_tokens_details", "output_tokens_details")
    return None


def _usage(usage_obj: Any, input_tokens: int, output_key: str, input_details_key: str, output_details_key: str) -> Usage:
    """The two APIs name the same counts differently; their details objects hold the same keys."""
    input_details = field(usage_obj, input_details_key)
    output_details = field(usage_obj, output_details_key)
    if input_details is None and output_details is None:  # embeddings, legacy completions, many servers
        return Usage(input_tokens, _int(field(usage_obj, output_key)))
    return Usage(
        input_tokens=input_tokens,
        output_tokens=_int(field(usage_obj, output_key)),
        cache_read_tokens=_int(field(input_details, "cached_tokens")) or 0,
        reasoning_tokens=_int(field(output_details, "reasoning_tokens")) or 0,
        input_audio_tokens=_int(field(input_details, "audio_tokens")) or 0,
        output_audio_tokens=_int(field(output_details, "audio_tokens")) or 0,
        cache_write_tokens=_int(field(input_details, "cache_write_tokens")) or 0,
    )


def is_given(value: Any) -> bool:
    """False for None and the SDK's ``NOT_GIVEN``/``omit`` sentinels."""
    return value is not None and type(value).__name__ not in ("NotGiven", "Omit")


# A token count a reservation never goes past: finite on purpose (2**53, exact as a float),
# so a ceiling of 10**400 or ``n=10**9`` is priced as a sum every budget refuses, never
# as an overflow (which the price bound would take for "no price", and reserve nothing).
MAX_RESERVED_TOKENS = 2**53

_CEILING_KEYS = ("max_completion_tokens", "max_tokens", "max_output_tokens")


def requested_ceiling(kwargs: Mapping[str, Any]) -> int | None:
    """The cap on output tokens the request names, as sent (``gen_ai.request.max_tokens``)."""
    for key in _CEILING_KEYS:
        value = kwargs.get(key)
        if type(value) is int:
            return value
    return None


def effective_request(kwargs: Mapping[str, Any]) -> Mapping[str, Any]:
    """The request as the server gets it: ``extra_body`` keys replace the arguments' in the JSON."""
    extra = kwargs.get("extra_body")
    if not extra or not isinstance(extra, Mapping):
        return kwargs
    return {**kwargs, **extra}


def output_ceiling(request: Mapping[str, Any], default: int) -> int:
    """The most output tokens one choice of this request may be billed for, to reserve.

    A positive int is the request's own cap. Anything else it names (``-1``, ``0``, a
    bool, a float, a string, ...) is a cap the API should refuse, but an
    OpenAI-compatible server may ignore it, or read it its own way: it is reserved as
    if absent (``default``), or as the number it reads as when that is larger, never
    as nothing. Several caps (``max_tokens`` and ``max_completion_tokens``): the
    largest, as a server may honour either.
    """
    ceiling = 0
    for key in _CEILING_KEYS:
        value = request.get(key)
        if value is None:
            continue
        if type(value) is int and value > 0:
            if value > ceiling:
                ceiling = value
        elif is_given(value):
            ceiling = max(ceiling, default, lenient_count(value) or 0)
    return min(ceiling or default, MAX_RESERVED_TOKENS)


def lenient_count(value: Any) -> int | None:
    """The count a lenient server could read an invalid value as (``2.5`` -> 3, ``"300"`` -> 300), if any."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)):
        if value != value or value <= 0:  # NaN, or nothing to produce
            return None
        return MAX_RESERVED_TOKENS if value >= MAX_RESERVED_TOKENS else math.ceil(value)
    return None


def output_choices(request: Mapping[str, Any]) -> int:
    """How many completions the output ceiling applies to: ``max_tokens`` caps each choice.

    ``n`` choices (and the legacy API's ``best_of``, generated and billed even when
    fewer are returned), for each prompt of a batched legacy completion. An invalid
    ``n`` (``0``, ``-1``, ``True``, ``"3"``) counts as the most a server could read it as, at least one.
    """
    count = 1
    for key in ("n", "best_of"):
        value = request.get(key)
        if value is None:
            continue
        if type(value) is not int and is_given(value):
            value = lenient_count(value)
        if type(value) is int and value > count:
            count = value
    prompt = request.get("prompt")
    if type(prompt) is list and len(prompt) > 1 and type(prompt[0]) is not int:  # a list of ints is one prompt
        count *= len(prompt)
    return min(count, MAX_RESERVED_TOKENS)


# The header the SDK's ``.with_raw_response`` / ``.with_streaming_response`` set on their request.
_RAW_RESPONSE_HEADER = "X-Stainless-Raw-Response"


def is_raw_request(kwargs: Mapping[str, Any]) -> bool:
    """True for a call made through ``.with_raw_response`` / ``.with_streaming_response``."""
    headers = kwargs.get("extra_headers")
    return headers is not None and isinstance(headers, Mapping) and _RAW_RESPONSE_HEADER in headers


def ask_for_stream_usage(kwargs: dict[str, Any]) -> bool:
    """Make a streamed request report its usage; True if we asked on the user's behalf (hide that chunk).

    ``stream_options.include_usage`` goes out through ``extra_body``, which the SDK
    merges into the JSON as it is: passed as the ``stream_options`` argument, it
    would go through the SDK's type-driven request transform, which on openai 3.x
    costs about as much as all of wflo's own work on a 13-chunk stream. The key
    ``extra_body`` sets replaces the body's, so the user's stream options (from
    ``extra_body``, else from the argument) are carried over, never mutated.
    """
    extra = kwargs.get("extra_body")
    if extra is None:
        extra = {}
    elif not isinstance(extra, Mapping):  # nothing the SDK could merge into: the request stays as written
        return False
    options = extra["stream_options"] if "stream_options" in extra else kwargs.get("stream_options")
    if options is None or not isinstance(options, Mapping):  # None first: an ABC check is not free
        options = {}
    elif options.get("include_usage"):
        return False  # the user asked: the usage chunk is theirs
    kwargs["extra_body"] = {**extra, "stream_options": {**options, "include_usage": True}}
    return True


def request_attributes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Semantic-convention request attributes that the caller set."""
    attrs: dict[str, Any] = {}
    ceiling = requested_ceiling(kwargs)
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


def embeddings_request_attributes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    dimensions = kwargs.get("dimensions")
    if type(dimensions) is int:
        attrs[GEN_AI_EMBEDDINGS_DIMENSION_COUNT] = dimensions
    encoding = kwargs.get("encoding_format")
    if isinstance(encoding, str):
        attrs[GEN_AI_REQUEST_ENCODING_FORMATS] = [encoding]
    return attrs


def materialize_inputs(kwargs: dict[str, Any]) -> None:
    """Replace one-shot iterables of input by lists, so measuring them does not consume what is sent."""
    for key in ("messages", "input", "prompt"):
        value = kwargs.get(key)
        if value is not None and not isinstance(value, (str, list, tuple, dict)) and hasattr(value, "__iter__"):
            kwargs[key] = list(value)


# ---------------------------------------------------------------------- complete responses


def _identity_attributes(response: Any) -> dict[str, Any]:
    """id, model and service tier: the fields every OpenAI response object shares."""
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
    return attrs


def response_attributes(response: Any) -> dict[str, Any]:
    """id, model, finish reasons and service tier of a Chat Completions (or legacy Completions) response."""
    attrs = _identity_attributes(response)
    choices = field(response, "choices")
    if isinstance(choices, list):
        reasons = [r for r in (field(c, "finish_reason") for c in choices) if isinstance(r, str)]
        if reasons:
            attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = reasons
    return attrs


def read_chat(response: Any, capture: bool) -> Outcome:
    """Outcome of a ChatCompletion / ParsedChatCompletion / legacy Completion (model or dict)."""
    attrs = response_attributes(response)
    if capture:
        _set_json(attrs, GEN_AI_OUTPUT_MESSAGES, _choices_output(field(response, "choices")))
    return usage_from(field(response, "usage")), attrs, None


def _responses_finish_reason(response: Any) -> str | None:
    status = field(response, "status")
    if status == "completed":
        return "stop"
    if status == "incomplete":
        reason = field(field(response, "incomplete_details"), "reason")
        return reason if isinstance(reason, str) else "incomplete"
    return status if isinstance(status, str) else None


def _responses_error(response: Any) -> str | None:
    if field(response, "status") != "failed":
        return None
    code = field(field(response, "error"), "code")
    return code if isinstance(code, str) and code else "failed"


def read_responses(response: Any, capture: bool) -> Outcome:
    """Outcome of a Responses API ``Response`` / ``ParsedResponse`` (model or dict)."""
    attrs = _identity_attributes(response)
    reason = _responses_finish_reason(response)
    if reason is not None:
        attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = [reason]
    if capture:
        _set_json(attrs, GEN_AI_OUTPUT_MESSAGES, _responses_output(field(response, "output"), reason))
    return usage_from(field(response, "usage")), attrs, _responses_error(response)


def read_embeddings(response: Any, capture: bool) -> Outcome:
    """Outcome of a ``CreateEmbeddingResponse``: model and input tokens (there is no output)."""
    attrs: dict[str, Any] = {}
    model = field(response, "model")
    if isinstance(model, str):
        attrs[A.GEN_AI_RESPONSE_MODEL] = model
    return usage_from(field(response, "usage")), attrs, None


def billed_response_of(exc: BaseException) -> tuple[Usage | None, dict[str, Any]]:
    """Usage and attributes of a response an exception carries (``LengthFinishReasonError.completion``).

    The SDK's ``.parse()`` raises after the API answered (and billed) when the answer
    was cut by the length limit; the completion rides on the exception.
    """
    completion = getattr(exc, "completion", None)
    if completion is None:
        return None, {}
    try:
        return usage_from(field(completion, "usage")), response_attributes(completion)
    except Exception:
        return None, {}


def raised_after_answer(exc: BaseException) -> bool:
    """True when the API answered (and billed) and the SDK raised on reading the answer.

    ``.parse()`` raises ``LengthFinishReasonError`` / ``ContentFilterFinishReasonError``
    (an ``OpenAIError`` that is no ``APIError``: nothing failed on the wire) or, when
    the answer does not fit the user's model, pydantic's ``ValidationError``. Only the
    first carries the completion on every openai line; for the others the cost is unseen.
    """
    openai = sys.modules.get("openai")
    if openai is not None and isinstance(exc, openai.OpenAIError):
        return not isinstance(exc, openai.APIError)
    pydantic = sys.modules.get("pydantic")
    return pydantic is not None and isinstance(exc, pydantic.ValidationError)


# Transport errors (httpx / httpx2 names) raised before the request reached the server:
# nothing was processed, so nothing can have been billed.
_UNSENT_ERRORS = frozenset((
    "ConnectError", "ConnectTimeout", "PoolTimeout", "UnsupportedProtocol", "ProxyError",
    "LocalProtocolError", "WriteError", "WriteTimeout", "InvalidURL",
))


def may_have_been_billed(exc: BaseException) -> bool:
    """True when a failed request may have been processed, and billed, by the provider.

    The API bills an answer the client never read: a request that timed out or whose
    connection broke *after* it was sent (``APITimeoutError`` / ``APIConnectionError``
    from a read, or the transport's own error, which openai 2.x lets through from a
    stream), and a call cancelled (``asyncio.CancelledError``, ``KeyboardInterrupt``)
    at a moment nobody can tell. False for an error status, our own refusal, a
    connection that was never made, and errors raised before sending.
    """
    if not isinstance(exc, Exception):
        return True
    openai = sys.modules.get("openai")
    if openai is not None and isinstance(exc, openai.APIStatusError):  # the server answered: an error, not billed
        return False
    error: BaseException | None = exc
    for _ in range(8):  # a chain is short; a hand-made cycle must not loop
        if error is None:
            break
        if _is_transport_error(error):  # httpx / httpx2: the transport says when it failed
            return type(error).__name__ not in _UNSENT_ERRORS
        error = error.__cause__ if error.__cause__ is not None or error.__suppress_context__ else error.__context__
    return openai is not None and isinstance(exc, openai.APIConnectionError)


def _is_transport_error(error: BaseException) -> bool:
    cls = type(error)
    return cls.__module__.startswith("httpx") and any(base.__name__ == "TransportError" for base in cls.__mro__)


def read_json_body(http_response: Any) -> Any:
    """The JSON body an SDK raw response already holds, or None if it was not read (or is not JSON)."""
    try:
        content = http_response.content  # raises if the body was not read yet: we never read it ourselves
    except Exception:
        return None
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return None


# ---------------------------------------------------------------------- streams


class ChatStreamState:
    """What a Chat Completions (or legacy Completions) stream has shown so far: enough to finish its span.

    ``observe`` runs once per chunk, so it reads SDK chunk models by attribute
    directly; anything else (dicts, odd objects) goes through the generic reader.
    """

    __slots__ = ("response_id", "model", "service_tier", "finish_reasons", "usage_obj", "outputs")

    def __init__(self, capture: bool = False) -> None:
        self.response_id: str | None = None
        self.model: str | None = None
        self.service_tier: str | None = None
        self.finish_reasons: dict[int, str] = {}
        self.usage_obj: Any = None
        self.outputs: dict[int, dict[str, Any]] | None = {} if capture else None

    def observe(self, chunk: Any) -> bool:
        """Record one chunk; True if it is the usage-only chunk (no choices, only usage).

        Never raises: the stream proxy calls it on every chunk without a guard of its
        own (a guard there is one more call per chunk), and an unreadable chunk is
        the user's all the same.
        """
        try:
            if type(chunk) is dict:  # the usage event, read from its JSON: a failed attribute read costs more
                usage = chunk.get("usage")
                choices = chunk.get("choices")
                getter = _field_or_none
            else:
                try:
                    usage = chunk.usage
                    choices = chunk.choices
                    getter = getattr
                except AttributeError:
                    usage = field(chunk, "usage")
                    choices = field(chunk, "choices")
                    getter = _field_or_none
            if not (self.response_id and self.model):
                # Azure opens with a content-filter chunk whose id and model are "".
                self.response_id = getter(chunk, "id", None) or self.response_id
                self.model = getter(chunk, "model", None) or self.model
            if usage is not None:
                self.usage_obj = usage
                tier = getter(chunk, "service_tier", None)
                if isinstance(tier, str):
                    self.service_tier = tier
            if not choices:
                return usage is not None
            outputs = self.outputs
            for choice in choices:
                reason = getter(choice, "finish_reason", None)
                if reason is not None or outputs is not None:
                    index = getter(choice, "index", None)
                    if type(index) is not int:
                        index = 0
                    if reason is not None:
                        self.finish_reasons[index] = reason
                    if outputs is not None:
                        self._accumulate(index, choice)
            return False
        except Exception:
            _log.debug("wflo-otel: unreadable stream chunk", exc_info=True)
            return False

    def _accumulate(self, index: int, choice: Any) -> None:
        out = self.outputs.setdefault(index, {"text": [], "tools": {}})
        delta = field(choice, "delta")
        text = field(delta, "content") if delta is not None else field(choice, "text")
        if isinstance(text, str):
            out["text"].append(text)
        tool_calls = field(delta, "tool_calls") if delta is not None else None
        for call in tool_calls or ():
            slot = out["tools"].setdefault(field(call, "index"), {"id": None, "name": None, "arguments": []})
            if field(call, "id"):
                slot["id"] = field(call, "id")
            function = field(call, "function")
            if field(function, "name"):
                slot["name"] = field(function, "name")
            arguments = field(function, "arguments")
            if isinstance(arguments, str):
                slot["arguments"].append(arguments)

    def attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if self.response_id and isinstance(self.response_id, str):
            attrs[A.GEN_AI_RESPONSE_ID] = self.response_id
        if self.model and isinstance(self.model, str):
            attrs[A.GEN_AI_RESPONSE_MODEL] = self.model
        if self.service_tier:
            attrs[A.GEN_AI_OPENAI_RESPONSE_SERVICE_TIER] = self.service_tier
        if self.finish_reasons:
            attrs[A.GEN_AI_RESPONSE_FINISH_REASONS] = [self.finish_reasons[i] for i in sorted(self.finish_reasons)]
        return attrs

    def result(self) -> Outcome:
        attrs = self.attributes()
        if self.outputs:
            messages = []
            for index in sorted(self.outputs):
                out = self.outputs[index]
                parts: list[dict[str, Any]] = []
                if out["text"]:
                    parts.append({"type": "text", "content": "".join(out["text"])})
                for key in sorted(out["tools"], key=lambda k: k if isinstance(k, int) else 0):
                    tool = out["tools"][key]
                    parts.append(_tool_call_part(tool["id"], tool["name"], "".join(tool["arguments"])))
                messages.append(_message("assistant", parts, self.finish_reasons.get(index)))
            _set_json(attrs, GEN_AI_OUTPUT_MESSAGES, messages)
        return usage_from(self.usage_obj), attrs, None


_RESPONSES_FINAL_EVENTS = frozenset(("response.completed", "response.incomplete", "response.failed"))
_RESPONSES_START_EVENTS = frozenset(("response.created", "response.in_progress", "response.queued"))


class ResponsesStreamState:
    """What a Responses API event stream has shown: the response as created, then as completed."""

    __slots__ = ("started", "final", "error_type", "capture")

    def __init__(self, capture: bool = False) -> None:
        self.started: Any = None
        self.final: Any = None
        self.error_type: str | None = None
        self.capture = capture

    def observe(self, event: Any) -> bool:
        """Record one event; never hides one (the Responses API reports usage on its own), never raises."""
        try:
            try:
                kind = event.type  # SDK event models; per event, so no generic reader
            except AttributeError:
                kind = field(event, "type")
            if kind in _RESPONSES_FINAL_EVENTS:
                self.final = field(event, "response")
            elif kind in _RESPONSES_START_EVENTS:
                if self.started is None:
                    self.started = field(event, "response")
            elif kind == "error":
                code = field(event, "code")
                self.error_type = code if isinstance(code, str) and code else "error"
        except Exception:
            _log.debug("wflo-otel: unreadable stream event", exc_info=True)
        return False

    def result(self) -> Outcome:
        if self.final is not None:
            usage, attrs, error_type = read_responses(self.final, self.capture)
            return usage, attrs, error_type or self.error_type
        attrs: dict[str, Any] = {}
        if self.started is not None:
            response_id = field(self.started, "id")
            if isinstance(response_id, str):
                attrs[A.GEN_AI_RESPONSE_ID] = response_id
            model = field(self.started, "model")
            if isinstance(model, str):
                attrs[A.GEN_AI_RESPONSE_MODEL] = model
        return None, attrs, self.error_type


# ---------------------------------------------------------------------- content capture (opt-in)


def _set_json(attrs: dict[str, Any], key: str, value: Any) -> None:
    if value:
        try:
            attrs[key] = json.dumps(value, ensure_ascii=False, default=str)
        except Exception:
            pass


def _message(role: Any, parts: list, finish_reason: Any = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": role if isinstance(role, str) else "user", "parts": parts}
    if isinstance(finish_reason, str):
        message["finish_reason"] = finish_reason
    return message


def _tool_call_part(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    return {"type": "tool_call", "id": call_id, "name": name, "arguments": arguments}


def _content_parts(content: Any) -> list[dict[str, Any]]:
    """Text parts of a message content; other parts (images, audio, files) by type only, never their data."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "content": content}]
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append({"type": "text", "content": part})
                continue
            kind = field(part, "type")
            if kind in _TEXT_PART_TYPES:
                parts.append({"type": "text", "content": field(part, "text")})
            elif kind == "refusal":
                parts.append({"type": "text", "content": field(part, "refusal")})
            elif isinstance(kind, str):
                parts.append({"type": kind})
        return parts
    return []


def _chat_input(messages: Any) -> list[dict[str, Any]]:
    out = []
    for message in messages if isinstance(messages, (list, tuple)) else ():
        role = field(message, "role")
        if role == "tool":
            response = field(message, "content")
            if not isinstance(response, str):
                response = "".join(p.get("content") or "" for p in _content_parts(response))
            out.append(_message("tool", [{"type": "tool_call_response", "id": field(message, "tool_call_id"), "response": response}]))
            continue
        parts = _content_parts(field(message, "content"))
        for call in field(message, "tool_calls") or ():
            function = field(call, "function")
            parts.append(_tool_call_part(field(call, "id"), field(function, "name"), field(function, "arguments")))
        out.append(_message(role, parts))
    return out


def _choices_output(choices: Any) -> list[dict[str, Any]]:
    out = []
    for choice in choices if isinstance(choices, list) else ():
        message = field(choice, "message")
        if message is None:  # legacy completions
            text = field(choice, "text")
            parts = [{"type": "text", "content": text}] if isinstance(text, str) else []
        else:
            parts = _content_parts(field(message, "content"))
            refusal = field(message, "refusal")
            if isinstance(refusal, str):
                parts.append({"type": "text", "content": refusal})
            for call in field(message, "tool_calls") or ():
                function = field(call, "function")
                parts.append(_tool_call_part(field(call, "id"), field(function, "name"), field(function, "arguments")))
        out.append(_message("assistant", parts, field(choice, "finish_reason")))
    return out


def _responses_input(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [_message("user", [{"type": "text", "content": value}])]
    out = []
    for item in value if isinstance(value, (list, tuple)) else ():
        kind = field(item, "type")
        role = field(item, "role")
        if kind == "function_call_output":
            out.append(_message("tool", [{"type": "tool_call_response", "id": field(item, "call_id"), "response": field(item, "output")}]))
        elif kind == "function_call":
            out.append(_message("assistant", [_tool_call_part(field(item, "call_id"), field(item, "name"), field(item, "arguments"))]))
        elif role is not None:
            out.append(_message(role, _content_parts(field(item, "content"))))
        elif isinstance(kind, str):
            out.append(_message("user", [{"type": kind}]))
    return out


def _responses_output(output: Any, finish_reason: str | None) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for item in output if isinstance(output, list) else ():
        kind = field(item, "type")
        if kind == "message":
            parts.extend(_content_parts(field(item, "content")))
        elif kind == "function_call":
            parts.append(_tool_call_part(field(item, "call_id"), field(item, "name"), field(item, "arguments")))
    return [_message("assistant", parts, finish_reason)] if parts else []


def chat_input_attributes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    _set_json(attrs, GEN_AI_INPUT_MESSAGES, _chat_input(kwargs.get("messages")))
    return attrs


def responses_input_attributes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    instructions = kwargs.get("instructions")
    if isinstance(instructions, str) and instructions:
        _set_json(attrs, GEN_AI_SYSTEM_INSTRUCTIONS, [{"type": "text", "content": instructions}])
    _set_json(attrs, GEN_AI_INPUT_MESSAGES, _responses_input(kwargs.get("input")))
    return attrs


def completion_input_attributes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    prompt = kwargs.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, (list, tuple)) else ()
    parts = [{"type": "text", "content": p} for p in prompts if isinstance(p, str)]
    attrs: dict[str, Any] = {}
    _set_json(attrs, GEN_AI_INPUT_MESSAGES, [_message("user", parts)] if parts else [])
    return attrs


def no_attributes(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    return {}


# ---------------------------------------------------------------------- the APIs


@dataclass(frozen=True, slots=True)
class Shape:
    """How to read one OpenAI API: everything the generic wrappers need to know about it."""

    operation: str
    read: Callable[[Any, bool], Outcome]  # complete response (SDK model or JSON dict) -> outcome
    stream_state: Callable[[bool], Any] | None  # new state object following a stream, given capture
    include_usage: bool  # streams need ``stream_options.include_usage`` to report usage
    has_output: bool  # False: nothing to reserve for output tokens (embeddings)
    request_attributes: Callable[[Mapping[str, Any]], dict[str, Any]] | None  # extra, API-specific
    input_attributes: Callable[[Mapping[str, Any]], dict[str, Any]]  # content capture only


CHAT = Shape(OPERATION_CHAT, read_chat, ChatStreamState, True, True, None, chat_input_attributes)
# The GenAI conventions name Responses API calls "chat" too (as the official instrumentation does).
RESPONSES = Shape(OPERATION_CHAT, read_responses, ResponsesStreamState, False, True, None, responses_input_attributes)
EMBEDDINGS = Shape(OPERATION_EMBEDDINGS, read_embeddings, None, False, False, embeddings_request_attributes, no_attributes)
COMPLETIONS = Shape(OPERATION_TEXT_COMPLETION, read_chat, ChatStreamState, True, True, None, completion_input_attributes)


# ---------------------------------------------------------------------- budget estimate


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
    for key in ("tools", "functions", "response_format", "text", "text_format"):
        value = kwargs.get(key)
        if value is not None and is_given(value):  # most requests set none: no call for them
            total += _schema_bound(value)
    return total


def _schema_bound(value: Any) -> int:
    """Bytes of a tool list / output format, a ``.parse()`` model class counted by its JSON schema."""
    if isinstance(value, type):
        schema = getattr(value, "model_json_schema", None)
        if schema is not None:
            try:
                return len(json.dumps(schema()).encode())
            except Exception:
                pass
    return len(repr(value).encode())


_OPAQUE_PARTS = frozenset(("image_url", "input_image", "image", "input_file", "file", "input_audio"))


def _text_bound(value: Any) -> int:
    # Runs before every budgeted call: plain loops and exact type checks first, since
    # messages are almost always lists of dicts of strings.
    if type(value) is str:
        return len(value) if value.isascii() else _utf8_length(value)
    # A list is no Mapping, and the ABC's isinstance costs more than a whole message.
    if type(value) is dict or (type(value) is not list and isinstance(value, Mapping)):
        part_type = value.get("type")
        if part_type in _OPAQUE_PARTS:
            return _IMAGE_PART_TOKENS
        total = _MESSAGE_OVERHEAD_TOKENS
        for item in value.values():
            if type(item) is str:
                total += len(item) if item.isascii() else _utf8_length(item)
            else:
                total += _text_bound(item)
        return total
    if isinstance(value, (list, tuple)):
        total = 0
        for item in value:
            total += _text_bound(item)
        return total
    if isinstance(value, str):  # a str subclass
        return _utf8_length(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return 1
    return len(repr(value).encode())


def _utf8_length(text: str) -> int:
    # surrogatepass: a lone surrogate (from JSON "\\ud83d") must not fail the estimate;
    # the request then fails in the SDK exactly as it would without us.
    return len(text.encode("utf-8", "surrogatepass"))
