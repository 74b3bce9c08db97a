# One task runner for the README, CI and developers.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# litellm fetches its price list over the network on import unless told not to.
export LITELLM_LOCAL_MODEL_COST_MAP := True
export OMP_NUM_THREADS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install models demo bench test test-unit test-integration lint format clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: this pin takes the local CPU build; a plain `torch` would pull GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	# Everything else in one resolve against the pinned set. llama-cpp-python compiles from source
	# the first time (about 10 minutes on 2 cores); pip caches the wheel afterwards.
	$(BIN)/pip install -q -c constraints.txt -e ".[all,dev]"
	$(BIN)/pip check
	touch $(STAMP)

install: $(STAMP)

models: install
	$(BIN)/echolm tiers fetch qwen2.5-0.5b qwen2.5-1.5b

demo: models
	$(BIN)/echolm demo $(DEMO_ARGS)

bench: models
	$(BIN)/echolm bench $(BENCH_ARGS)

test: install models
	$(BIN)/python -m pytest tests -q

test-unit: install
	$(BIN)/python -m pytest tests/unit tests/contract -q

test-integration: install models
	$(BIN)/python -m pytest tests/integration -q

lint: install
	$(BIN)/ruff check echolm_middleware integrations tests examples benchmarks
	$(BIN)/ruff format --check echolm_middleware integrations tests examples benchmarks
	$(BIN)/mypy

format: install
	$(BIN)/ruff format echolm_middleware integrations tests examples benchmarks
	$(BIN)/ruff check --fix echolm_middleware integrations tests examples benchmarks

clean:
	rm -rf .echolm build dist *.egg-info
