# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup browser run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP) browser

# The demo's browser test drives Debian's chromium (never a downloaded browser), plus a CJK font for the
# Chinese examples; installed when missing and root or passwordless sudo is available, else the test skips.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "note: no $(CHROMIUM) and no root: the browser test will skip"; exit 0; fi; \
	  { $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq chromium fonts-wqy-microhei; } >/dev/null 2>&1 \
	    || echo "note: could not install chromium: the browser test will skip"; }

# The main job: the shipped checkpoint on 8 held-out world scenes -> a table and outputs/report.html.
run: setup
	$(PY) -m ofa.cli report

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check ofa tests bench
	$(VENV)/bin/ruff format --check ofa tests bench

bench: setup
	$(PY) bench/bench_attention.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache outputs
