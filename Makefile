# schooldns: `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench check clean tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/schooldns serve --config deploy/example/config.yaml

check: $(STAMP)
	$(VENV)/bin/schooldns check --config deploy/example/config.yaml

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) tests/perf/bench.py

clean:
	rm -rf $(VENV) build *.egg-info
