"""What a span of any GenAI instrumentation says about its call.

Whether a span *is* one model call, and its model, tokens, provider and service
tier, whichever instrumentation wrote it: ours and the OpenTelemetry GenAI
conventions first, then the names of others (OpenLLMetry's older ``gen_ai.*``,
OpenInference's ``llm.*``). The exporter's mapping (rows, pricing) and the budget
processor (charging spans of other instrumentations) both read spans through
here, so a call is one call to both.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from . import attributes as A

LLM_OPERATIONS = frozenset({"chat", "text_completion", "embeddings", "generate_content", "responses"})
# Operations that may carry usage summed over the calls inside them: never a call themselves.
NOT_CALLS = frozenset({"invoke_agent", "create_agent", "execute_tool", "invoke_workflow"})
_OPENINFERENCE_CALLS = frozenset({"LLM", "EMBEDDING"})

# Each value: the names to read, first found wins.
INPUT_TOKENS = (A.GEN_AI_USAGE_INPUT_TOKENS, A.LEGACY_USAGE_PROMPT_TOKENS, A.OPENINFERENCE_PROMPT_TOKENS)
OUTPUT_TOKENS = (A.GEN_AI_USAGE_OUTPUT_TOKENS, A.LEGACY_USAGE_COMPLETION_TOKENS, A.OPENINFERENCE_COMPLETION_TOKENS)
CACHE_READ_TOKENS = (
    A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS,
    A.LEGACY_USAGE_CACHE_READ_INPUT_TOKENS,
    A.OPENINFERENCE_CACHE_READ_TOKENS,
)
REASONING_TOKENS = (A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, A.OPENINFERENCE_REASONING_TOKENS)
REQUEST_MODEL = (A.GEN_AI_REQUEST_MODEL, A.OPENINFERENCE_MODEL_NAME, A.OPENINFERENCE_EMBEDDING_MODEL_NAME)
PROVIDER = (A.GEN_AI_PROVIDER_NAME, A.LEGACY_GEN_AI_SYSTEM, A.OPENINFERENCE_PROVIDER, A.OPENINFERENCE_SYSTEM)

BIGINT_LIMIT = 1 << 63  # token columns are BIGINT: a count beyond it is no count we could store


def is_llm_call(attrs: Mapping[str, Any]) -> bool:
    """One request to a model (chat, completion, embeddings), as opposed to a step around calls.

    An operation the conventions name decides; else OpenInference's span kind; else
    usage *and* a model: an agent or workflow span may carry the usage of the calls
    inside it (pydantic-ai's agent run does), which would count them twice.
    """
    operation = attrs.get(A.GEN_AI_OPERATION_NAME)
    if operation in LLM_OPERATIONS:
        return True
    if operation in NOT_CALLS:
        return False
    kind = attrs.get(A.OPENINFERENCE_SPAN_KIND)
    if kind is not None:
        return kind in _OPENINFERENCE_CALLS
    return (A.GEN_AI_USAGE_INPUT_TOKENS in attrs or A.LEGACY_USAGE_PROMPT_TOKENS in attrs) and (
        A.GEN_AI_REQUEST_MODEL in attrs or A.GEN_AI_RESPONSE_MODEL in attrs
    )


# What ``call_usage`` returns, by position (a plain tuple: it runs for every exported call).
CallUsage = tuple  # (request model, response model, input, output, cache read, reasoning)


def call_usage(attrs: Mapping[str, Any]) -> CallUsage:
    """Model, tokens and service tier of an LLM call span, under whichever names it has them.

    Runs for every exported call: the conventions' name is read inline, the others'
    only when it is missing.
    """
    get = attrs.get
    model = get(A.GEN_AI_REQUEST_MODEL)
    if model is None:
        model = first(get, REQUEST_MODEL)
    input_tokens = get(A.GEN_AI_USAGE_INPUT_TOKENS)
    if input_tokens is None:
        input_tokens = first(get, INPUT_TOKENS)
    output_tokens = get(A.GEN_AI_USAGE_OUTPUT_TOKENS)
    if output_tokens is None:
        output_tokens = first(get, OUTPUT_TOKENS)
    cache_read = get(A.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS)
    if cache_read is None:
        cache_read = first(get, CACHE_READ_TOKENS)
    reasoning = get(A.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS)
    if reasoning is None:
        reasoning = get(A.OPENINFERENCE_REASONING_TOKENS)
    return (
        model,
        get(A.GEN_AI_RESPONSE_MODEL),
        as_count(input_tokens),
        as_count(output_tokens),
        as_count(cache_read),
        as_count(reasoning),
    )


def service_tier(attrs: Mapping[str, Any]) -> str | None:
    """The tier that served the call (flex, priority...), which its price depends on."""
    tier = attrs.get(A.GEN_AI_OPENAI_RESPONSE_SERVICE_TIER)
    if tier is None:
        tier = attrs.get(A.LEGACY_OPENAI_RESPONSE_SERVICE_TIER)
    return tier if isinstance(tier, str) else None


def own_usage(attrs: Mapping[str, Any]) -> CallUsage:
    """``call_usage`` under the conventions' names only: for spans that are no call (a
    workflow, an agent), whose usage is shown on their row but never priced or counted."""
    get = attrs.get
    return (
        get(A.GEN_AI_REQUEST_MODEL),
        get(A.GEN_AI_RESPONSE_MODEL),
        as_count(get(A.GEN_AI_USAGE_INPUT_TOKENS)),
        as_count(get(A.GEN_AI_USAGE_OUTPUT_TOKENS)),
        None,
        None,
    )


def as_count(value: Any) -> int | None:
    """A token count: an int within BIGINT, else None (a string of digits is read)."""
    if value is None or (value.__class__ is int and -BIGINT_LIMIT <= value < BIGINT_LIMIT):
        return value
    try:
        value = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value if -BIGINT_LIMIT <= value < BIGINT_LIMIT else None


def first(get: Callable[[str], Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = get(name)
        if value is not None:
            return value
    return None
