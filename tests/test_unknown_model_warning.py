"""An unknown model is said once per name, not passed with no cost and no word.

Its calls cost $0 as far as any budget knows, so a typo in a model name or a model
newer than the price snapshot would pass every budget silently. The warning is
once per model name and process, and the names remembered are bounded (a proxy
inventing model names must not grow memory forever).
"""

from __future__ import annotations

import logging

import pytest

from wflo_otel import pricing
from wflo_otel.pricing import PriceBook

from zero_code_runs import run_instrumented


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(pricing, "_warned_models", set())


def unknown_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "no price for model" in r.getMessage()]


def test_an_unknown_model_is_warned_about_once_per_name_across_costs_bounds_and_books(caplog):
    caplog.set_level(logging.WARNING, logger="wflo_otel.pricing")
    for book in (PriceBook(), PriceBook()):
        assert book.cost("house-model-7b", 10, 5).usd is None
        assert book.max_cost("house-model-7b", 10, 5) is None
        book.cost("house-model-7b", 1, 1, service_tier="flex")
    book.cost("house-model-7b-2025-01-01", 1, 1)  # the response names the dated snapshot: the same model
    book.cost("house-model-8b", 1, 1)
    (first, second) = unknown_warnings(caplog)
    assert "'house-model-7b'" in first and "WFLO_PRICES_FILE" in first
    assert "'house-model-8b'" in second


def test_known_models_and_calls_without_a_model_are_not_warned_about(caplog):
    caplog.set_level(logging.WARNING, logger="wflo_otel.pricing")
    book = PriceBook()
    assert book.cost("gpt-4o-mini", 10, 5).usd > 0
    book.cost(None, 10, 5)
    book.cost("", 10, 5)
    assert unknown_warnings(caplog) == []


def test_the_names_remembered_are_bounded_and_the_last_line_says_so(caplog, monkeypatch):
    monkeypatch.setattr(pricing, "_MAX_WARNED_MODELS", 3)
    caplog.set_level(logging.WARNING, logger="wflo_otel.pricing")
    book = PriceBook()
    for i in range(10):
        book.cost(f"proxy-model-{i}-" + "x" * 1000, 1, 1)
    assert len(unknown_warnings(caplog)) == 3
    assert any("3 models without a price named; further ones are not" in r.getMessage() for r in caplog.records)
    assert len(pricing._warned_models) == 3
    assert all(len(name) <= pricing._WARNED_NAME_CHARS for name in pricing._warned_models)


UNKNOWN_MODEL_APP = """
import os
import openai

client = openai.OpenAI(base_url=os.environ["FAKE_OPENAI_URL"], api_key="test-key", max_retries=0)
for i in range(3):
    client.chat.completions.create(model="house-model-7b", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
print("sent 3")
"""


def test_a_zero_code_run_says_once_that_a_model_has_no_price(tmp_path, openai_server):
    result = run_instrumented(
        tmp_path, UNKNOWN_MODEL_APP, openai_server, OTEL_TRACES_EXPORTER="wflo", WFLO_DEFAULT_BUDGET_USD="0.01"
    )
    assert "sent 3" in result.stdout  # an unknown model never breaks a call (policy: allow)
    lines = [line for line in result.stderr.splitlines() if "no price for model" in line]
    assert len(lines) == 1 and "'house-model-7b'" in lines[0]
