# Two commands: `make repro` (set up + run the whole pipeline) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEV    := $(VENV)/.installed-dev
PIP    := $(BIN)/pip install -q --progress-bar off

# dvc runs stage commands with `python`: make it the venv's.
export PATH := $(CURDIR)/$(BIN):$(PATH)
# No telemetry/tokenizer variables here: every Python entry point (stages, flows, tests,
# benchmarks) sets them in tasks/env.py, and DVC's own analytics are off in .dvc/config.

.PHONY: setup setup-dev repro test lint bench clean vega-template ui

setup: $(STAMP)
setup-dev: $(DEV)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# torch first, alone: the pinned CPU wheel (a resolver pass with everything else could pick CUDA).
$(STAMP): pyproject.toml | $(BIN)/python
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e .
	$(BIN)/python -c "import torch, prefect, dvc, great_expectations, datasets, transformers"
	touch $(STAMP)

$(DEV): $(STAMP)
	$(PIP) -e ".[dev]"
	touch $(DEV)

repro: setup
	@$(BIN)/python -c "from tasks.report import write_compare_placeholder as w; w()"  # a report dep
	$(BIN)/dvc repro
	@echo "Report: $(CURDIR)/reports/report.html"

# A local Prefect server with its UI on PORT (make ui PORT=4271): the UI calls this port's API
# (PREFECT_SERVER_API_PORT / PREFECT_UI_API_URL; `--port` alone leaves it calling 4200),
# telemetry off. No `setup` prerequisite: it never reinstalls anything (run `make setup` once).
PORT ?= 4200
ui:
	@echo "Prefect UI: http://127.0.0.1:$(PORT)   (flows: export PREFECT_API_URL=http://127.0.0.1:$(PORT)/api)"
	@PREFECT_SERVER_API_HOST=127.0.0.1 PREFECT_SERVER_API_PORT=$(PORT) \
	  PREFECT_API_URL=http://127.0.0.1:$(PORT)/api PREFECT_UI_API_URL=http://127.0.0.1:$(PORT)/api \
	  PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
	  exec $(BIN)/prefect server start --host 127.0.0.1 --port $(PORT) --analytics-off

test: setup-dev
	$(BIN)/python -m pytest

# ruff (lint + format) on everything, mypy on cvfp/, tasks/, flows/ (pyproject.toml); .ci/run runs it before the tests.
lint: setup-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m benchmarks.speed
	$(BIN)/python -m benchmarks.phase1
	$(BIN)/python -m benchmarks.phase2
	$(BIN)/python -m benchmarks.memory
	$(BIN)/python -m benchmarks.throughput

# Regenerate .dvc/plots/index.html (dvc plots show's offline page) from the npm registry.
vega-template: setup
	rm -rf $(VENV)/vega && mkdir -p $(VENV)/vega
	cd $(VENV)/vega && npm pack -q vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 \
	  && for f in *.tgz; do tar xzf $$f --strip-components=2 package/build/$$(echo $$f | sed 's/-[0-9.]*tgz$$//').min.js; done
	$(BIN)/python tools/vega_html_template.py $(VENV)/vega/vega.min.js $(VENV)/vega/vega-lite.min.js $(VENV)/vega/vega-embed.min.js

clean:
	rm -rf $(VENV)
