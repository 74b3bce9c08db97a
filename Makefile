# One task runner for the README, CI and developers.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# litellm fetches its price list over the network on import unless told not to.
export LITELLM_LOCAL_MODEL_COST_MAP := True
export OMP_NUM_THREADS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install servers models demo bench test test-fast test-unit test-integration test-litellm-oldest test-litellm-newest test-wheel lint import-graph format clean

# llama.cpp's default build is -march=native: it emits the newest instructions the CPU reports (AMX
# tiles on recent Xeons), which a VM may report yet not allow, and the model server then dies with
# SIGILL on its first request. We build it once for AVX2 (any x86-64 server since 2013) and keep the
# wheel here, keyed by version and flags, so a new venv does not compile again.
LLAMA_CPP := $(shell grep -i '^llama[-_]cpp[-_]python==' constraints.txt)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
WHEELS := $(HOME)/.cache/echolm-middleware/wheels/$(subst ==,-,$(LLAMA_CPP))-avx2

# No prerequisites: the folder's name holds the version and the flags, so a fresh clone (whose files are
# all newer than the wheel) does not compile again.
$(WHEELS)/.built:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# About 10 minutes on 2 cores, once per machine.
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip wheel -q --no-deps --no-cache-dir -w $(WHEELS) "$(LLAMA_CPP)"
	touch $@

$(STAMP): pyproject.toml constraints.txt $(WHEELS)/.built
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: this pin takes the local CPU build; a plain `torch` would pull GBs of CUDA packages.
	$(BIN)/pip install -q torch==2.13.0
	# Everything else in one resolve against the pinned set, llama-cpp-python from the wheel built above.
	$(BIN)/pip install -q -c constraints.txt --find-links $(WHEELS) -e ".[all,dev]"
	$(BIN)/pip check
	touch $(STAMP)

install: $(STAMP) servers

# The Redis server that several proxy workers share (coordination.redis_url) and the tests start on
# loopback: Debian's package, installed once per machine when we are root; otherwise say what to do.
servers:
	@command -v redis-server >/dev/null || command -v valkey-server >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends redis-server >/dev/null; } || \
	  { echo "redis-server is missing: install Debian's redis-server package (or Valkey)"; exit 1; }

models: install
	$(BIN)/echolm tiers fetch qwen2.5-0.5b qwen2.5-1.5b

demo: models
	$(BIN)/echolm demo $(DEMO_ARGS)

bench: models
	$(BIN)/echolm bench $(BENCH_ARGS)

test: install models
	$(BIN)/python -m pytest tests -q

# The edit-test loop: pure logic and every port's contract against its real backends, no model servers.
# The proxy and Router doors on the oldest LiteLLM pyproject allows (`make test` runs everything on the
# newest that resolves here, constraints.txt): a venv of its own from constraints-litellm-oldest.txt.
OLDEST := .venv-litellm-oldest
OLDEST_TESTS := tests/unit/test_proxy_handler.py tests/unit/test_reuse_doors.py tests/unit/test_litellm_logging.py \
	tests/unit/test_request_life.py tests/integration/test_router_door.py tests/integration/test_reuse_proxy.py \
	tests/integration/test_proxy_routing.py tests/integration/test_proxy_fail_open.py \
	tests/unit/test_proxy_feedback_route.py tests/integration/test_safe_to_share.py tests/unit/test_litellm_stream_finalizer.py

$(OLDEST)/.installed: pyproject.toml constraints-litellm-oldest.txt $(WHEELS)/.built
	$(PYTHON) -m venv $(OLDEST)
	$(OLDEST)/bin/pip install -q --upgrade pip
	$(OLDEST)/bin/pip install -q torch==2.13.0
	$(OLDEST)/bin/pip install -q -c constraints-litellm-oldest.txt --find-links $(WHEELS) -e ".[all,dev]"
	$(OLDEST)/bin/pip check
	touch $@

test-litellm-oldest: $(OLDEST)/.installed servers models
	$(OLDEST)/bin/python -m pytest $(OLDEST_TESTS) -q

# The Router and LangChain doors on the newest LiteLLM release (1.110 registers a routing strategy as a
# plugin), without the proxy extra, whose newer releases need packages the registry here does not serve.
NEWEST := .venv-litellm-newest
NEWEST_TESTS := tests/unit/test_litellm_stream_finalizer.py tests/unit/test_proxy_handler.py tests/unit/test_reuse_doors.py tests/unit/test_litellm_logging.py tests/unit/test_request_life.py \
	tests/unit/test_langchain_door.py tests/unit/test_langchain_standard.py tests/integration/test_router_door.py \
	tests/integration/test_langchain_door.py tests/integration/test_langchain_standard.py

$(NEWEST)/.installed: pyproject.toml constraints-litellm-newest.txt $(WHEELS)/.built
	$(PYTHON) -m venv $(NEWEST)
	$(NEWEST)/bin/pip install -q --upgrade pip
	$(NEWEST)/bin/pip install -q torch==2.13.0
	$(NEWEST)/bin/pip install -q -c constraints-litellm-newest.txt --find-links $(WHEELS) \
		-e ".[embeddings,chroma,langchain,scheduler,coordination,metrics,local,bench,dev]"
	$(NEWEST)/bin/pip check
	touch $@

test-litellm-newest: $(NEWEST)/.installed servers models
	$(NEWEST)/bin/python -m pytest $(NEWEST_TESTS) -q

# The wheel on its own, as a user installs it: built from this checkout, installed with the two doors'
# extras (not editable) into a venv of its own, and the proxy and LangChain doors run from it with the
# checkout on no path (tests/integration/test_wheel_venv.py). Against constraints.txt, so the run is the
# same each time; torch's CPU build first, as above.
WHEEL_VENV := .venv-wheel
WHEEL_DIR := build/wheel

test-wheel: install
	rm -rf $(WHEEL_VENV) $(WHEEL_DIR)
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w $(WHEEL_DIR) .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/pip install -q --upgrade pip
	$(WHEEL_VENV)/bin/pip install -q torch==2.13.0
	$(WHEEL_VENV)/bin/pip install -q -c constraints.txt "$$(ls $(WHEEL_DIR)/echolm_middleware-*.whl)[litellm,langchain]"
	$(WHEEL_VENV)/bin/pip check
	ECHOLM_WHEEL_VENV=$(WHEEL_VENV) $(BIN)/python -m pytest tests/integration/test_wheel_venv.py -q

test-fast: install
	$(BIN)/python -m pytest tests/unit tests/contract -q

test-unit: test-fast

test-integration: install models
	$(BIN)/python -m pytest tests/integration -q

lint: install
	$(BIN)/ruff check echolm_middleware echolm_lab integrations tests examples benchmarks
	$(BIN)/ruff format --check echolm_middleware echolm_lab integrations tests examples benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

# The package-level import graph the lint-imports contracts constrain, and any cycle in it (pyproject.toml).
import-graph: install
	$(BIN)/python benchmarks/import_graph.py

format: install
	$(BIN)/ruff format echolm_middleware echolm_lab integrations tests examples benchmarks
	$(BIN)/ruff check --fix echolm_middleware echolm_lab integrations tests examples benchmarks

clean:
	rm -rf .echolm build dist *.egg-info
