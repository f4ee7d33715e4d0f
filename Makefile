# The two commands of the README: `make demo` and `make test`. Both set everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup lint test test-core demo bench

setup:
	VENV=$(VENV) bash scripts/setup.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: setup lint
	$(VENV)/bin/npe2 validate napari-attunet --imports
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m pytest -q -ra

# The core without a display (no Xvfb): every test not marked gui.
test-core: setup lint
	$(PY) -m pytest -q -ra -m "not gui"

demo: setup
	$(VENV)/bin/napari-attunet demo

bench: setup
	$(PY) bench/bench_predict.py
	xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) bench/bench_thresholds.py
