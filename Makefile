# The two commands a newcomer needs:
#   make serve   start the server with the shipped weights (http://localhost:8000)
#   make test    lint, unit, integration (real gunicorn) and container tests (where an engine runs)
# Both create the virtual environment .venv on first use; PYTHON picks the interpreter (3.11+).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: serve test lint bench bench-peers stress train reproduce image lock clean screenshots

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed: make PYTHON=python3.12 ...")'
	$(PYTHON) -m venv $(VENV)

# uv installs the lock files: the same hash-checked packages as pip, in about half the time (CI's
# setup: 61 s with pip, 29 s with uv from a cold cache; docs/contributing.md). It is pinned and
# hash-checked too, and installed by the venv's own pip; it writes no bytecode (a module is compiled
# when first imported, not every file at install).
$(BIN)/uv: requirements-uv.lock | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --require-hashes -r requirements-uv.lock
	@touch $@
INSTALL = $(BIN)/uv pip install --quiet --python $(BIN)/python

# Runtime: exactly the pinned, hash-checked dependencies of the image, then the project itself.
$(VENV)/.runtime: requirements.lock pyproject.toml | $(BIN)/uv
	$(INSTALL) --require-hashes -r requirements.lock
	$(INSTALL) --no-deps -e .
	@touch $@

# Development: plus the train and test extras, hash-pinned too, so CI cannot change under us.
# KServe's generated API models (for the offline InferenceService check), without kserve's server
# dependencies: the hash-pinned wheel alone, in a folder of its own (update: pip download --no-deps
# kserve==X; pip hash the wheel into requirements-kserve.lock). Captum (the explanations' oracle)
# the same way, without its torch requirement: torch is the CPU wheel .ci/run installs from disk.
# The kserve folder also holds KServe's REST client (kserve.inference_client), which the protocol
# tests run with exactly the modules it imports (requirements-kserve-client.lock, hash-pinned too).
$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock requirements-kserve.lock requirements-captum.lock \
		requirements-kserve-client.lock
	$(INSTALL) --require-hashes -r requirements-dev.lock
	$(INSTALL) --no-deps --require-hashes --upgrade --target $(VENV)/kserve-models -r requirements-kserve.lock
	$(INSTALL) --no-deps --require-hashes -r requirements-captum.lock
	$(INSTALL) --require-hashes -r requirements-kserve-client.lock
	@touch $@

serve: $(VENV)/.runtime
	$(BIN)/python -m service

# ruff, then the architecture's contract (import-linter: the layers in pyproject.toml's [tool.importlinter])
lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# Every test, in two phases (docs/contributing.md): those that bear a neighbour's load in
# TEST_PROCESSES processes at once (pytest-xdist, each file whole in one), then those marked `serial`
# (they bound a latency or a time) by themselves. A phase that selects nothing (exit 5) is no failure,
# unless neither selects anything; an interrupted first phase (exit 2) ends the run.
# MARKS="not slow": a marker expression for both phases (PYTEST_ARGS must not hold a -m, which would
# replace the phase's own). TEST_PROCESSES=1: one process, one phase.
TEST_PROCESSES ?= 2
PYTEST_ARGS ?=
MARKS ?=
AND_MARKS = $(if $(MARKS), and ($(MARKS)))
test: lint
ifeq ($(TEST_PROCESSES),1)
	$(BIN)/python -m pytest $(if $(MARKS),-m "$(MARKS)") $(PYTEST_ARGS)
else
	@$(BIN)/python -m pytest -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder -m "not serial$(AND_MARKS)" \
	    $(PYTEST_ARGS); shared=$$?; \
	if [ $$shared -eq 2 ]; then exit 2; fi; \
	echo "== the serial tests, alone"; \
	$(BIN)/python -m pytest -m "serial$(AND_MARKS)" $(PYTEST_ARGS); alone=$$?; \
	echo "== exit $$shared (in $(TEST_PROCESSES) processes), $$alone (serial)"; \
	case "$$shared$$alone" in 00|05|50) exit 0;; *) exit 1;; esac
endif

bench: $(VENV)/.dev bench-peers
	$(BIN)/python -m bench.train_epoch
	$(BIN)/python -m bench.serve_load

# The serving benchmark's KServe peer (bench/kserve_peer.py): kserve's model server and its many dependencies
# (fastapi, uvicorn, grpcio, ...) in a venv of their own, hash-pinned; never a dependency of the service or CI.
KSERVE_VENV ?= .venv-kserve
$(KSERVE_VENV)/.installed: bench/kserve-peer.lock
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet --no-deps --require-hashes -r bench/kserve-peer.lock
	@touch $@

bench-peers: $(KSERVE_VENV)/.installed

# docs/benchmarks.md's tables, rendered from the benchmarks' results files (bench/results/*.json).
.PHONY: report
report: $(VENV)/.dev
	$(BIN)/python -m bench.report

# The stress suite (about 12 minutes): fuzzing at scale, a 5-minute soak, kill -9, SIGTERM, hostile input.
stress: $(VENV)/.dev
	$(BIN)/python -m bench.stress

train: $(VENV)/.dev
	$(BIN)/python -m training all

reproduce: $(VENV)/.dev
	$(BIN)/python -m training reproduce

# docs/page.png and docs/explain.png, from the shipped models served by the real server, in headless Chromium
# (Debian's chromium or $CHROMIUM, driven as the browser tests drive it): tests/screenshots.py.
screenshots: $(VENV)/.dev
	$(BIN)/python -m tests.screenshots --out docs

# Regenerate every lock file from pyproject.toml (after changing a dependency).
LOCK := $(BIN)/pip-compile --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	--no-emit-find-links
lock: | $(BIN)/python
	$(BIN)/pip install --quiet pip-tools
	$(LOCK) -o requirements.lock pyproject.toml
	$(LOCK) --extra train -o requirements-train.lock pyproject.toml
	$(LOCK) --extra tracing -o requirements-tracing.lock pyproject.toml
	$(LOCK) --extra train --extra test -o requirements-dev.lock pyproject.toml
	echo 'setuptools>=77' | $(LOCK) -o requirements-build.lock -
	echo 'uv' | $(LOCK) -o requirements-uv.lock -
	$(LOCK) -o requirements-kserve-client.lock requirements-kserve-client.in

image:
	$${CONTAINER_ENGINE:-docker} build $${CONTAINER_BUILD_FLAGS:-} -t numpy-nets .

clean:
	rm -rf $(VENV) $(KSERVE_VENV) .pytest_cache .ruff_cache
