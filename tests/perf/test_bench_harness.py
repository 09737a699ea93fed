"""The benchmark harness (tests/perf/bench.py) runs end to end and reports a throughput for schooldns.

This checks that `make bench` works, not how fast anything is: --quick uses a 10k-entry list and
3 s dnsperf runs against a real `schooldns serve` process. It needs dnsperf (Debian package
`dnsperf`, installed by .ci/run) and 2 cores; no timing is asserted.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "tests" / "perf" / "bench.py"


@pytest.mark.bench
def test_quick_bench_reports_schooldns_qps(tmp_path):
    if shutil.which("dnsperf") is None:
        pytest.fail(
            "dnsperf is not installed: the benchmark harness test needs it "
            "(`apt-get install dnsperf`, or `make bench-tools` as root; .ci/run installs it)"
        )
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail(
            "the benchmark harness pins the server and dnsperf to two different CPUs; this process may use only one"
        )
    report = tmp_path / "performance.md"
    report.write_text(
        "# Performance\n\nText before.\n\n<!-- bench:begin -->\nSTALE RESULTS\n<!-- bench:end -->\n\nText after.\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, str(BENCH), "--quick", "--skip-baselines", "--runs", "1", "--output", str(report)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"bench.py --quick did not finish within 180 s:\n{exc.stdout}\n{exc.stderr}")
    assert done.returncode == 0, f"bench.py failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"

    text = report.read_text()
    assert text.startswith("# Performance\n\nText before.\n") and text.endswith("\n\nText after.\n")
    assert "STALE RESULTS" not in text  # the section between the markers was replaced
    section = text.split("<!-- bench:begin -->", 1)[1].split("<!-- bench:end -->", 1)[0]
    match = re.search(r"^\| qps, warm cache, max rate[^|]*\| \*\*([\d,]+)\*\*", section, re.MULTILINE)
    assert match, f"no schooldns qps row in the report:\n{section}"
    assert int(match.group(1).replace(",", "")) > 0
    assert re.search(r"^\| answers checked [^|]*\| [\d,]+ / 0 \|", section, re.MULTILINE), section
    assert re.search(r"^\| start to first answer, s \(cold[^|]*\| \d+\.\d\d \|", section, re.MULTILINE), section
    assert re.search(r"^\| start to first answer, s \(warm[^|]*\| \d+\.\d\d \|", section, re.MULTILINE), section
    # The targets table: every workload's figure for schooldns (the baselines were skipped)
    for label in (
        "warm, byte-identical repeats",
        "warm, 0x20 mixed case",
        "warm, 30% of queries with a DNS cookie",
        "100% cache misses",
        "p99 at 20,000 qps, 0x20 workload",
        "memory with the 10,000-name list after the runs",
        "two workers vs one",
    ):
        assert re.search(rf"^\| {re.escape(label)}[^|]*\| [\d,.]+x? \| (–|n/a) \| (–|n/a) \|", section, re.MULTILINE), (
            label
        )
    assert re.search(r"^\| max-rate runs whose NXDOMAIN count [^|]*\| 3 / 0 \|", section, re.MULTILINE), section
    assert "Domain index benchmark" in section  # bench_domains.py ran and its table was included
    # One worker on one core against two on two, measured with loadgen.py sharing the cores ...
    assert re.search(
        r"schooldns worker processes, .*: [\d,]+ qps with `workers: 1`, [\d,]+ qps with "
        r"`workers: 2`: \*\*[\d.]+x\*\*\. loadgen itself took [\d.]+ us",
        section,
    ), section
    # ... with each process's CPU share and memory: the supervisor, the spawner and the two workers
    per_process = re.search(r"With 2 workers, per process .*?: (.*)\.$", section, re.MULTILINE)
    assert per_process and re.findall(r"(\S+) [\d.]+ s CPU, Pss \d+ MB \(anon \d+\)", per_process.group(1)) == [
        "schooldns",
        "schooldns-spawn",
        "schooldns-w0",
        "schooldns-w1",
    ], section
    # ... and the estimate for dedicated cores from CPU time per answer and the workers' split
    assert re.search(
        r"CPU time of the server's processes per answer in those runs: [\d.]+ us with one worker, "
        r"[\d.]+ us with two\. .* = \*\*[\d.]+x\*\* one worker with this split",
        section,
    ), section
    # ... and the same for two workers with `worker_spread: random`
    assert re.search(
        r"With `worker_spread: random` .*: [\d,]+ qps, [\d.]+x one worker; .* \*\*[\d.]+x\*\* one worker "
        r"on dedicated cores",
        section,
    ), section
    # ... and one worker against two, each held to half a core of its own (where a cgroup can be made)
    held = re.search(
        r"Held to 0.5 of a core each: .* [\d,]+ qps with one worker, [\d,]+ qps with two: "
        r"\*\*[\d.]+x\*\*\. Each worker used \d+% or more of what its quota allowed",
        section,
    )
    skipped = re.search(r"The runs with workers held to half a core each were skipped: \S.*\.$", section, re.MULTILINE)
    assert held or skipped, section
    # ... and what the second worker adds to the memory after start
    assert re.search(r"Memory after start, .*: the second worker adds \d+ MB\.", section), section
