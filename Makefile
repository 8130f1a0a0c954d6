# Two-command quickstart: `make demo` (main job) and `make test` (test suite).
# The demo runs one torch thread: on 2 shared cores, 2 threads that compete with other jobs ran
# training steps up to 10x slower, and one thread is as fast on an idle machine for these small models.
# Both create .venv and install what they need, torch pinned to the CPU wheel by constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP_RUN := $(VENV)/.installed-run
STAMP_DEV := $(VENV)/.installed-dev

.PHONY: install install-dev demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP_RUN): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e .
	touch $@

$(STAMP_DEV): $(STAMP_RUN)
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	# nnU-Net's dataset-integrity check, without its dependency pins (they would pull a CUDA torch)
	$(PIP) install -q -c constraints.txt --no-deps nnunetv2==2.8.1 batchgenerators==0.25.5 acvl-utils==0.2.6
	touch $@

install: $(STAMP_RUN)

install-dev: $(STAMP_DEV)

demo: $(STAMP_RUN)
	$(BIN)/brainseg --threads 1 demo -o demo_output

test: $(STAMP_DEV)
	bash scripts/ensure_chromium.sh
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

lint: $(STAMP_DEV)
	$(BIN)/ruff check .

test-fast: $(STAMP_DEV)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP_DEV)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) demo_output .pytest_cache
