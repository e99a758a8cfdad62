# llmos developer tasks (GNU make).
#   make run    set up, copy the embedded model into place, run a one-prompt demo
#   make test   set up, run the CPU test suite
#   make lint   ruff (lint and format check) and mypy
#   make floor-check  the engine tests against the oldest transformers pyproject admits
#   make proto  regenerate llmos/wire/llmos_pb2.py{,i} from proto/llmos/v1/llmos.proto
#   (.ci/run runs lint, floor-check and test)

PYTHON ?= python3
VENV ?= .venv
# A CPU wheel of this version lies on the project's machines; set TORCH_SPEC=torch on others.
TORCH_SPEC ?= torch==2.13.0

BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PROTO_DIR := proto/llmos/v1
WIRE_DIR := llmos/wire

# the oldest transformers the `worker` extra admits (pyproject.toml: transformers>=...)
TRANSFORMERS_FLOOR := $(shell sed -n 's/.*"transformers>=\([0-9.]*\)".*/\1/p' pyproject.toml | head -1)
FLOOR_VENV ?= .venv-floor
# the tests that drive the engines, the mixed steps, the prefix cache and the CPU kernels on a real model
FLOOR_TESTS ?= tests/test_batched_engine.py tests/test_mixed_steps.py tests/test_prefix_cache.py tests/test_worker_engine.py \
	tests/test_paged_runner.py tests/test_paged_ops.py tests/test_paged_engine.py tests/test_small_linear.py \
	tests/test_direct_forward.py tests/test_kv_cache_dtype.py

.PHONY: setup model run test container-test lint floor-check proto clean

setup: $(STAMP)

# torch goes in first and on its own: pyproject only asks for torch>=2.4, and
# left to resolve that itself pip would fetch the default (multi-GB, CUDA) build.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "llmos needs Python >= 3.11, but $(PYTHON) is " + sys.version.split()[0] + "; run make PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e '.[test]'
	touch $@

model: setup
	$(BIN)/llmos model init

run: setup model
	$(BIN)/llmos up --demo "Hello! How can I help you today?"

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not gpu"

# The image built and the compose stack run with podman, a worker container killed
# mid-request (scripts/container_check.sh; root, minutes, downloads packages).
container-test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --containers --timeout 0 tests/test_containers.py

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# A venv of its own with transformers at the floor: the engine must import and run there.
floor-check:
	@test -n "$(TRANSFORMERS_FLOOR)" || { echo "no transformers>= bound in pyproject.toml"; exit 1; }
	test -x $(FLOOR_VENV)/bin/python || $(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(FLOOR_VENV)/bin/python -m pip install --quiet "transformers==$(TRANSFORMERS_FLOOR)" -e . pytest pytest-timeout
	$(FLOOR_VENV)/bin/python -c 'import transformers; print("transformers", transformers.__version__)'
	$(FLOOR_VENV)/bin/python -m pytest -q -p no:cacheprovider -m "not gpu" $(FLOOR_TESTS)

# Must match tests/test_proto_fresh.py: same protoc (pinned grpcio-tools), same -I root.
proto: setup
	$(BIN)/python -m grpc_tools.protoc -I$(PROTO_DIR) --python_out=$(WIRE_DIR) --pyi_out=$(WIRE_DIR) $(PROTO_DIR)/llmos.proto

# Build and test leftovers only; the venv stays (rm -rf $(VENV) to rebuild it).
clean:
	rm -rf build dist .pytest_cache *.egg-info .mypy_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
