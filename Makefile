# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv if needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.embedlib-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-unit test-slow bench lint typecheck clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: an unpinned torch resolves to a multi-GB GPU build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Debian's chromium, for the search page's browser test (Playwright drives it; nothing
# is downloaded from a browser vendor)
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
$(CHROMIUM):
	$(SUDO) apt-get update -q
	$(SUDO) apt-get install -y -q --no-install-recommends chromium

demo: setup
	$(VENV)/bin/embedlib demo

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy embedlib jobs

test: lint typecheck $(CHROMIUM)  # the unit tier (seconds), then the rest of the fast tier
	$(PY) -m pytest -m unit
	$(PY) -m pytest -m "not slow and not unit"

test-unit: setup  # fakes only: no model, no Ray, no server
	$(PY) -m pytest -m unit

test-slow: setup  # multi-node scenarios, benchmarks, fine-tuning, the lean install
	$(PY) -m pytest -m slow

bench: setup  # one Markdown table, side-by-side ratios; see docs/benchmarks.md
	$(PY) -m benchmarks

clean:
	rm -rf embedlib-demo .pytest_cache .ruff_cache .mypy_cache
