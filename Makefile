# Two commands from nothing: `make run` (environment, install, whole pipeline)
# and `make test`. The install is stamped, so `make test` needs no network
# once `make install` has run (CI runs the tests in a loopback-only namespace).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.charlm-installed
RUN_ARGS ?=

.PHONY: install run test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m jobs.pipeline --storage-path runs --name demo $(RUN_ARGS)

# Two pytest-xdist workers: the multi-node cluster's tests in one, every other
# module whole in either, the longest groups handed out first, in the order
# tests/conftest.py gives (not xdist's default, by number of tests).
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q tests -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.throughput
	$(BIN)/python -m benchmarks.quality
	$(BIN)/python -m benchmarks.bigcorpus
	$(BIN)/python -m benchmarks.generate
	$(BIN)/python -m benchmarks.recipes --presets gpu,fast --steps 1980 --eval-every 66
	$(BIN)/python -m benchmarks.recipes --presets quality --steps 0 --eval-every 264 --seed-epochs 2 --json benchmarks/results/recipes-quality.json

clean:
	rm -rf runs out .pytest_cache
