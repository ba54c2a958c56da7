# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The main job on the embedded default: the kernel/decoding benchmark on a tiny model (see README).
run: setup
	$(PY) bench/bench_attention.py --quick

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check ofa tests bench
	$(VENV)/bin/ruff format --check ofa tests bench

bench: setup
	$(PY) bench/bench_attention.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs
