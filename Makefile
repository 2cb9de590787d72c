# The two commands of the README. Both install what they need first.
PYTHON ?= python3
export HF_HUB_DISABLE_TELEMETRY = 1

.PHONY: run test test-fast lint deps deps-test

run: deps
	$(PYTHON) app.py

test: deps-test lint
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PYTHON) -m pytest

# House style (ruff.toml): lint, and code formatted as `ruff format` writes it.
lint: deps-test
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

test-fast: deps-test
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(PYTHON) -m pytest -m "not slow"

deps:
	$(PYTHON) -m pip install -q -r requirements.txt

# Debian's chromium drives the browser tests (no browser download); apt needs root, as on CI and Spaces.
deps-test:
	command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; }
	$(PYTHON) -m pip install -q -r requirements-dev.txt
