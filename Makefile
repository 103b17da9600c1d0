# vitx — the two entry points of the README: `make run` (dashboard on the bundled sample data)
# and `make test` (the test suite). Both create or reuse the virtualenv in $(VENV).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint bench clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps re-run pip only when a requirements file changed.
$(VENV)/.stamp-runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.stamp-dev: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@ $(VENV)/.stamp-runtime

run: $(VENV)/.stamp-runtime
	$(BIN)/streamlit run streamlit_app.py --server.address 127.0.0.1 --browser.gatherUsageStats false

test: $(VENV)/.stamp-dev
	$(BIN)/python -m pytest

lint: $(VENV)/.stamp-dev
	$(BIN)/ruff check .

bench: $(VENV)/.stamp-dev
	$(BIN)/python benchmarks/bench_explain.py

clean-venv:
	rm -rf $(VENV)
