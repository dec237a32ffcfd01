# Two commands a new user needs: `make demo` and `make test`. Both set up their
# virtual environments from this repository's pyproject.toml on first use.
PYTHON ?= python3
# The second leg runs the oldest supported Python where the machine has it (pyenv).
PYTHON_OLD ?= $(or $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3)),$(PYTHON))
VENV   ?= .venv
VENV2  ?= .venv-openai2
BIN     = $(VENV)/bin
BIN2    = $(VENV2)/bin
PIP_FLAGS ?= -q --disable-pip-version-check

.PHONY: demo test test-openai2 bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/pip install $(PIP_FLAGS) -e '.[test]'
	touch $@

# The openai 2.x line (httpx) next to the 3.x line (httpx2) of the main venv.
$(BIN2)/.installed: pyproject.toml
	$(PYTHON_OLD) -m venv $(VENV2)
	$(BIN2)/pip install $(PIP_FLAGS) --upgrade pip
	$(BIN2)/pip install $(PIP_FLAGS) -e '.[test]' 'openai>=2,<3'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/wflo-otel demo

# Both legs: Python 3.10 + openai 2.x (+ genai-prices 0.1.x), which skips the openai-independent
# modules and tests (tests/conftest.py, ONE_LEG_MODULES and `one_leg`), then the whole suite in the main venv.
test: $(BIN)/.installed $(BIN2)/.installed
	WFLO_TEST_LEG=openai2 $(BIN2)/python -m pytest -q -p no:cacheprovider
	$(BIN)/python -m pytest -q

bench: $(BIN)/.installed
	$(BIN)/python bench/pricing.py
	$(BIN)/python bench/overhead.py

clean:
	rm -rf $(VENV) $(VENV2) wflo.db wflo.db-wal wflo.db-shm
