"""Attribute names of the telemetry contract (DESIGN.md, "Telemetry contract").

One place for every name, so the instrumentation, the budget processor and the
span→row mapping cannot drift apart. GenAI names follow the OpenTelemetry
semantic conventions; ``wflo.*`` names are ours.
"""

from __future__ import annotations

# GenAI semantic conventions
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_OPENAI_RESPONSE_SERVICE_TIER = "openai.response.service_tier"
GEN_AI_WORKFLOW_NAME = "gen_ai.workflow.name"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"

# Older GenAI names still emitted by other instrumentations; read, never written.
LEGACY_GEN_AI_SYSTEM = "gen_ai.system"
LEGACY_USAGE_PROMPT_TOKENS = "gen_ai.usage.prompt_tokens"
LEGACY_USAGE_COMPLETION_TOKENS = "gen_ai.usage.completion_tokens"
LEGACY_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read_input_tokens"  # OpenLLMetry
LEGACY_OPENAI_RESPONSE_SERVICE_TIER = "gen_ai.openai.response.service_tier"  # openai-v2 before semconv 1.37

# OpenInference (Arize Phoenix) names; read, never written.
OPENINFERENCE_SPAN_KIND = "openinference.span.kind"
OPENINFERENCE_MODEL_NAME = "llm.model_name"
OPENINFERENCE_EMBEDDING_MODEL_NAME = "embedding.model_name"
OPENINFERENCE_PROVIDER = "llm.provider"
OPENINFERENCE_SYSTEM = "llm.system"
OPENINFERENCE_PROMPT_TOKENS = "llm.token_count.prompt"
OPENINFERENCE_COMPLETION_TOKENS = "llm.token_count.completion"
OPENINFERENCE_CACHE_READ_TOKENS = "llm.token_count.prompt_details.cache_read"
OPENINFERENCE_REASONING_TOKENS = "llm.token_count.completion_details.reasoning"

OPERATION_CHAT = "chat"
OPERATION_INVOKE_WORKFLOW = "invoke_workflow"
PROVIDER_OPENAI = "openai"

# wflo-otel
WFLO_COST_USD = "wflo.cost.usd"
WFLO_COST_SOURCE = "wflo.cost.source"
WFLO_BUDGET_USD = "wflo.budget.usd"
WFLO_BUDGET_ON_EXCEED = "wflo.budget.on_exceed"
WFLO_BUDGET_UNKNOWN_MODEL = "wflo.budget.unknown_model"
WFLO_BUDGET_REFUSED = "wflo.budget.refused"
WFLO_EXECUTION_ID = "wflo.execution.id"
WFLO_EXECUTION_STATUS = "wflo.execution.status"
WFLO_EXECUTION_COST_USD = "wflo.execution.cost_usd"
WFLO_CORRELATION_ID = "wflo.correlation_id"
WFLO_WORKFLOW_NAME = "wflo.workflow.name"
WFLO_EXECUTION_ROOT = "wflo.execution.root"
WFLO_WORKFLOW_INPUTS = "wflo.workflow.inputs"
WFLO_STEP_KIND = "wflo.step.kind"
WFLO_HTTP_ATTEMPTS = "wflo.http.attempts"

STATUS_COMPLETED = "COMPLETED"
STATUS_FAILED = "FAILED"
STATUS_BUDGET_EXCEEDED = "BUDGET_EXCEEDED"
STATUS_RUNNING = "RUNNING"
