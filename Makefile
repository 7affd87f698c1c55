# bvit-interp: `make demo` serves the results browser and fills it live with every analysis on the
# bundled default (laptop profile); `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch/torchvision pinned to the builds available offline on the project machines.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv install test lint demo demo-full demo-quick bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[dev]'
	touch $@

venv install: $(VENV)/.installed

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# the browser first, then every analysis behind it, cheapest first (laptop profile: minutes on
# 2 cores); Ctrl-C stops everything, a rerun keeps finished runs and resumes the rest
demo: $(VENV)/.installed
	$(VENV)/bin/bvit-interp demo --serve --profile laptop --out runs/demo

# the README's sizes (about two hours on 2 cores), served the same way
demo-full: $(VENV)/.installed
	$(VENV)/bin/bvit-interp demo --serve --profile full --out runs/demo-full

# the laptop profile without a server (CI, scripts)
demo-quick: $(VENV)/.installed
	$(VENV)/bin/bvit-interp demo --profile laptop --out runs/demo-quick

bench: $(VENV)/.installed
	$(VENV)/bin/bvit-interp bench hooks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
