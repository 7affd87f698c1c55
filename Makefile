# bvit-interp: `make demo` runs the analyses on the bundled default; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch/torchvision pinned to the builds available offline on the project machines.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv install test lint demo demo-quick bench clean

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

# small image counts and short schedules, no server (CI, a first look); its own root so a
# later full `make demo` does not keep the quick runs
demo-quick: $(VENV)/.installed
	$(VENV)/bin/bvit-interp demo --quick --out runs/demo-quick

demo: $(VENV)/.installed
	$(VENV)/bin/bvit-interp demo --out runs/demo
	$(VENV)/bin/streamlit run app/main.py --server.address 127.0.0.1 -- --runs runs/demo

bench: $(VENV)/.installed
	$(VENV)/bin/bvit-interp bench hooks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
