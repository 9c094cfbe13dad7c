# The README's two commands: `make demo` and `make test`. Both start with `make install`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# These machines (and CI) have no network: use the shared MovieLens copy when it is there.
SHARED_DATA := $(wildcard $(CURDIR)/../shared/movielens)
export RBMREC_DATA ?= $(if $(SHARED_DATA),$(abspath $(SHARED_DATA)),$(CURDIR)/data)
# make demo keeps to a Redis database of its own (1) unless REDIS_URL is given (read here,
# before the default below is set); make test keeps database 0.
DEMO_REDIS_URL := $(if $(filter environment% command% override,$(origin REDIS_URL)),$(REDIS_URL),redis://127.0.0.1:6379/1)
export REDIS_URL ?= redis://127.0.0.1:6379/0

.PHONY: install proto demo test lint typecheck unit soak clean

install: $(VENV)/.installed

# torch first, pinned: the CPU wheel is on disk here; any other spec pulls a CUDA build.
# The client library (client/, its own distribution rbmrec-client) installs beside rbmrec:
# rbm-client is built on it.
$(VENV)/.installed: pyproject.toml client/pyproject.toml client/setup.py \
		proto/rbmrec/v1/recommender.proto scripts/gen_proto.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check 'grpcio-tools>=1.70'
	PYTHON=$(BIN)/python ./scripts/gen_proto.sh
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ./client -e '.[dev]'
	touch $@

# Regenerate the gRPC stubs in rbmrec/ and client/ from proto/ (never edit them by hand).
proto: install
	PYTHON=$(BIN)/python ./scripts/gen_proto.sh

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" REDIS_URL="$(DEMO_REDIS_URL)" ./scripts/demo.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

unit: install
	$(BIN)/pytest -q

test: lint typecheck unit

# Ten minutes of mixed load at concurrency 128 (SOAK_SECONDS, SOAK_CONCURRENCY to change).
soak: install
	$(BIN)/pytest -q -s -m soak tests/soak

clean:
	rm -rf $(VENV) rbmrec .demo .mypy_cache .ruff_cache .pytest_cache
