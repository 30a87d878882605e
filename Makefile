# Two commands for a fresh machine: `make repro` (set up + run the pipeline) and
# `make test` (set up + run the tests). Set-up is `uv sync --frozen` from uv.lock; if uv is
# missing it is installed (pinned) into .uv/ with the system Python's pip.
# --compile-bytecode: every stage is a new process importing TensorFlow + MLflow; from
# precompiled .pyc files that takes ~12 s instead of ~28 s on 2 cores (a machine or CI image with
# PYTHONDONTWRITEBYTECODE=1 never caches them itself). It costs ~45 s once at set-up.
#
#   make repro GPU=1      # tensorflow[and-cuda] instead of tensorflow-cpu
#   make setup EXTRAS=s3  # also the DVC S3 remote plugin (dvc-s3)
#   make setup EXTRAS=openvino  # also OpenVINO, for export.formats: openvino (docs/exports.md)
#   make setup EXTRAS="s3 openvino"  # several extras
#   make ui               # MLflow UI on http://127.0.0.1:5000 against ./mlruns

SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.uv/bin/uv)
TF_EXTRA := $(if $(GPU),gpu,cpu)
EXTRAS ?=
EXTRA_FLAGS := --extra $(TF_EXTRA) $(foreach e,$(EXTRAS),--extra $(e))
STAMP := .venv/.synced-$(TF_EXTRA)$(foreach e,$(EXTRAS),-$(e))
RUN := $(UV) run --frozen $(EXTRA_FLAGS)
UI_PORT ?= 5000
PYTEST_ARGS ?=
# TensorFlow's C++ info and warning lines (CPU features, oneDNN) off in every process make
# starts, unless you set it: TensorFlow reads it once, at its import, which a stage script
# does before reprotrain's own process set-up runs (cli.PROCESS_ENV sets it only for the
# processes a stage starts).
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Two pytest-xdist workers (one per core on the 2-core CI machine); one module per worker at
# a time, so module fixtures are built once (tests/conftest.py groups them).
TEST_WORKERS ?= 2
PYTEST_XDIST := -n $(TEST_WORKERS) --dist loadgroup

.PHONY: setup repro test test-fast lint schema ui screenshot benchmarks clean

$(CURDIR)/.uv/bin/uv:
	$(PYTHON) -m venv $(CURDIR)/.uv
	$(CURDIR)/.uv/bin/pip install --quiet "uv==$(UV_VERSION)"

$(STAMP): uv.lock pyproject.toml | $(UV)
	$(UV) sync --frozen --compile-bytecode $(EXTRA_FLAGS)
	rm -f .venv/.synced-*
	touch $@

setup: $(STAMP)

# dvc.yaml is written for the data.kind in params.yaml first (scripts/write_dvc_yaml.py).
repro: setup
	$(RUN) python scripts/write_dvc_yaml.py
	$(RUN) dvc repro

test: setup
	$(RUN) pytest $(PYTEST_XDIST) $(PYTEST_ARGS)

# The edit–test loop: unit tests only (no subprocess pipelines, training runs or servers).
test-fast: setup
	$(RUN) pytest $(PYTEST_XDIST) -m "not slow and not e2e" $(PYTEST_ARGS)

# docs/params.schema.json: the JSON Schema editors use to complete params.yaml.
schema: setup
	$(RUN) python -c "from reprotrain.config import write_json_schema as w; w('docs/params.schema.json')"

lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

ui: setup
	$(RUN) python -m reprotrain ui --port $(UI_PORT)

screenshot: setup
	bash scripts/ui_screenshot.sh

benchmarks: setup
	$(RUN) python benchmarks/input_pipeline.py
	$(RUN) python benchmarks/training.py
	$(RUN) python benchmarks/pipeline.py

clean:
	rm -rf .venv .uv .pytest_cache .ruff_cache
