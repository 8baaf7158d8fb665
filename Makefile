# Two commands: `make repro` (set up + run the whole pipeline) and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# dvc runs stage commands with `python`: make it the venv's.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export GX_ANALYTICS_ENABLED := false
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export DVC_NO_ANALYTICS := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup repro test bench clean vega-template

setup: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install -q torch==2.13.0 2>&1 | grep -v "is ignored" || true
	$(BIN)/pip install -q -e . 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -c "import torch, prefect, dvc, great_expectations, datasets, transformers" 
	touch $(STAMP)

repro: setup
	$(BIN)/dvc repro
	@test -f reports/report.html || $(BIN)/python -m tasks.report   # not a DVC output (dvc.yaml)
	@echo "Report: $(CURDIR)/reports/report.html"

test: setup
	$(BIN)/python -m pytest

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
