# tlexp — the front door. `make install` then `tlexp run` (or `make run`); `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is installed first, pinned, so that pip takes the CPU wheel instead of a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: install run test test-fast lint bench clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[dev]"
	@echo "installed: activate with '. $(BIN)/activate', then run 'tlexp run'"

run:
	$(BIN)/tlexp run

# two workers on 2 cores (files stay whole on one worker, so module fixtures are built once):
# 504-515 s for the whole suite on this 2-core machine (clean clone, CI=true .ci/run); tests/conftest.py
# gives each worker cores // workers OpenMP threads (2 x 2 threads on 2 cores ran several times slower)
test:
	$(BIN)/python -m pytest -q -n auto --dist loadfile --timeout=900 --durations=15

test-fast:  # unit tests only: nothing trains end to end (tests/integration is marked slow)
	$(BIN)/python -m pytest -q tests/unit -m "not slow" --timeout=600

lint:
	$(BIN)/ruff check tlexp tests scripts

bench:
	$(BIN)/python scripts/bench_train.py

clean:
	rm -rf outputs multirun .pytest_cache
