# schooldns: `make run` and `make test` work from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test bench bench-tools bytecode check clean tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Bytecode for schooldns' own modules: an editable install has none, and where
# PYTHONDONTWRITEBYTECODE is set every process compiled them again at start (0.15-0.2 s each, and a
# cold start runs two). Only changed files are compiled; a read-only checkout just goes without.
bytecode: $(STAMP)
	-@$(PY) -m compileall -q resolver

run: $(STAMP) bytecode
	$(VENV)/bin/schooldns serve --config deploy/example/config.yaml

check: $(STAMP)
	$(VENV)/bin/schooldns check --config deploy/example/config.yaml

test: $(STAMP)
	$(PY) -m pytest

# Benchmarks (not part of `make test`): writes the results into docs/performance.md.
# BENCH_ARGS passes options, e.g. `make bench BENCH_ARGS="--skip-baselines --entries 100000"`.
bench: $(STAMP) bytecode
	$(PY) tests/perf/bench.py $(BENCH_ARGS)

# Installs dnsperf, unbound and dnsmasq-base with apt-get (root), starting no daemon.
bench-tools:
	$(PYTHON) tests/perf/bench.py --tools-only

clean:
	rm -rf $(VENV) build *.egg-info
