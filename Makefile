# schooldns: `make run` and `make test` work from a fresh clone (as root they install what they need).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PACKAGES := scripts/debian-packages

.PHONY: run test test-wheel lint format bench bench-smoke bench-tools test-tools bytecode check clean venv conformance fuzz \
	compiled pure stale-compiled test-compiled soak

# Debian's python3 lacks ensurepip until python3-venv is installed.
$(STAMP): pyproject.toml
	@$(PYTHON) -c "import ensurepip" 2>/dev/null || $(PACKAGES) =python3-venv
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	touch $(STAMP)

venv: $(STAMP)

# Bytecode for schooldns' own modules: an editable install has none, and where
# PYTHONDONTWRITEBYTECODE is set every process compiled them again at start (0.15-0.2 s each, and a
# cold start runs two). Only changed files are compiled; a read-only checkout just goes without.
bytecode: $(STAMP)
	-@$(PY) -m compileall -q resolver

run: $(STAMP) stale-compiled bytecode
	$(VENV)/bin/schooldns serve --config deploy/example/config.yaml

check: $(STAMP)
	$(VENV)/bin/schooldns check --config deploy/example/config.yaml

# The independent clients the integration tests drive (dig, kdig, drill, and curl also over DoT and
# DoH; stubby as a long-lived DoT client; dnsdist as a load balancer in front of schooldns; unbound
# as a secondary of the RPZ feed);
# the tools that check deploy/ (tests/integration/test_deploy.py): shellcheck, systemd-analyze
# verify, nft -c; Prometheus (promtool checks the shipped rules; a real Prometheus scrapes real
# instances); a headless Chromium that uses the block page and the /ui/ pages; knotd serves a signed
# zone to schooldns and to unbound, whose answers are compared (tests/integration/test_differential.py;
# both in /usr/sbin, which a user's PATH may lack).
test-tools:
	@PATH="$$PATH:/usr/sbin:/sbin" $(PACKAGES) dig=bind9-dnsutils kdig=knot-dnsutils drill=ldnsutils curl=curl dnsdist=dnsdist \
		unbound=unbound shellcheck=shellcheck systemd-analyze=systemd nft=nftables promtool=prometheus \
		chromium=chromium knotd=knot stubby=stubby

# TEST_JOBS pytest processes (pytest-xdist); TEST_JOBS=0 runs the suite in this one process.
TEST_JOBS ?= auto
test: $(STAMP) test-tools stale-compiled
	$(PY) -m pytest -n $(TEST_JOBS)

# Compiled modules (opt-in; docs/performance.md, "Compiled modules"): the per-query modules
# (resolver.COMPILABLE) compiled with mypyc into extension modules beside their sources, which
# Python imports instead of them; `make run` and the tests then run them. `make pure` removes them.
# (setuptools 77 reads this pyproject.toml; a venv starts with an older one.)
compiled: $(STAMP)
	@$(PACKAGES) gcc=gcc
	@$(PY) -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" \
		|| $(PACKAGES) =python3-dev
	$(PY) -m pip install --quiet 'setuptools>=77'
	SCHOOLDNS_COMPILE=1 $(PY) setup.py --quiet build_ext --inplace
	@find resolver -name '*.so' -exec touch {} +
	@$(VENV)/bin/schooldns --version

pure:
	find resolver -name '*.so' -delete

# A compiled module older than its source would run instead of the edited source: all of them are
# removed (they call each other natively), so the sources run until `make compiled` again.
stale-compiled:
	@for so in $$(find resolver -name '*.so' ! -name '*__mypyc.*'); do \
		if [ "$${so%%.cpython*}.py" -nt "$$so" ]; then \
			echo "$$so is older than its source: compiled modules removed (make compiled builds them again)"; \
			find resolver -name '*.so' -delete; break; \
		fi; \
	done

# The unit tests against the compiled modules (not part of `make test`); they stay in place afterwards.
test-compiled: compiled
	$(PY) -m pytest -n $(TEST_JOBS) tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check resolver tests
	$(VENV)/bin/ruff format --check resolver tests
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format resolver tests
	$(VENV)/bin/ruff check --fix resolver tests

# The differential test at full size (not part of `make test`): some 26,000 questions to schooldns and
# to unbound, TXT answers across every size where they cross 512 and 1232 bytes (about 2 minutes).
# CONFORMANCE_TXT_STEP=1 asks every TXT size up to 12 KB too (much longer).
# The wheel built from the repository, installed in a fresh venv and run outside the checkout
# (tests/integration/test_wheel.py, about 25 s); CI runs it after `make test`.
test-wheel: $(STAMP) test-tools
	$(PY) -m pytest -m wheel tests/integration/test_wheel.py

conformance: $(STAMP) test-tools
	$(PY) -m pytest -m conformance -s tests/integration/test_differential.py

# Benchmarks (not part of `make test`): writes the results into docs/performance.md.
# BENCH_ARGS passes options, e.g. `make bench BENCH_ARGS="--skip-baselines --entries 100000"`.
bench: $(STAMP) bytecode
	$(PY) tests/perf/bench.py $(BENCH_ARGS)
	$(PY) tests/perf/bench_encrypted.py --output docs/performance.md

# The benchmark harness end to end on a 10k list with 3 s runs (about 100 s); asserts no speed.
bench-smoke: $(STAMP) bytecode
	@$(PACKAGES) dnsperf=dnsperf
	$(PY) -m pytest -m bench tests/perf/test_bench_harness.py

# Installs dnsperf, unbound, pdns-recursor and dnsmasq-base with apt-get (root), starting no daemon.
bench-tools:
	$(PYTHON) tests/perf/bench.py --tools-only

# Fuzzing (not part of `make test`): atheris over every parser of untrusted input, FUZZ_SECONDS each
# (tests/fuzz/run.py); a crash is saved in tests/data/fuzz/<target>/, which `make test` replays.
# FUZZ_TARGETS names some targets only (e.g. `make fuzz FUZZ_TARGETS="proxy_v2 doh_http1"`).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS ?=
fuzz: $(STAMP)
	$(PY) -m pip install --quiet -e '.[fuzz]'
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) -m tests.fuzz.run $(FUZZ_TARGETS)

# The soak test (not part of `make test`): the real server (a hub and an instance syncing from it,
# `workers: 2`) at half its measured capacity for SOAK_SECONDS (default 600), with a list change, a
# policy write and a sync every minute and the upstream silent for 30 s in the middle; fails on a
# lost or wrong answer or 5% RSS growth in the steady state: the cache full, a round past the outage
# (tests/perf/soak.py, docs/reliability.md).
SOAK_SECONDS ?= 600
soak: $(STAMP) bytecode
	$(PY) tests/perf/soak.py --seconds $(SOAK_SECONDS) --output tests/perf/out/soak.json

clean: pure
	rm -rf $(VENV) build *.egg-info
