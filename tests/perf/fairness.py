"""One school floods, another is served: school B's cache misses while school A floods a dead authority at full rate.

    .venv/bin/python tests/perf/fairness.py [--seconds 10] [--rate-cap 1000]

The flood is the one a compromised lab PC or an open resolver's abuse sends: random names under a
domain whose authority never answers (tests/perf/authoritative.py --silent), so each of school A's
queries is a cache miss that holds an in-flight place until the forwarding timeout. School B asks
one new name at a time (each a miss answered by the upstream) from its own address and times each
answer. Run once with `limits.max_queries_in_flight_per_school` at the worker's whole bound (no
per-school share: one school may take every place) and once at its default; with `--rate-cap N`,
a third time with the default share and `limits.queries_per_second_per_school: N`. One worker process,
the load generator (tests/perf/loadgen.py) and the upstream each a process of their own. Prints
one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rcode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support import harness  # noqa: E402 (after the path: run as a script)

FLOOD_DOMAIN = "flood.example"
SCHOOL_B_ADDRESS = "127.0.0.2"
# Each flood query holds its place this long. On a small machine the worker takes in a few thousand
# flood queries a second: with the test site's 1 s (the default is 2 s) they would hold fewer places than the worker's
# 10,000, which a larger machine's worker (or a longer timeout) fills. 10 s fills them here.
TIMEOUT = 10.0
WARM_UP = 6.0  # seconds of flood before school B is timed: the places fill


def _wait_for(path: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float = 60) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := re.search(pattern, path.read_text(errors="replace")):
            return match
        if process.poll() is not None:
            raise SystemExit(f"exited: {path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.05)
    raise SystemExit(f"no {pattern!r} in {path}")


def _probe(port: int, seconds: float) -> dict[str, float]:
    """School B: one new name at a time for `seconds`; answered, lost (no answer in 2 s), p50 and p99 in ms."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((SCHOOL_B_ADDRESS, 0))
    sock.settimeout(2.0)
    times: list[float] = []
    lost = errors = 0
    end = time.monotonic() + seconds
    number = 0
    while time.monotonic() < end:
        number += 1
        query = dns.message.make_query(f"b{number}-{time.time_ns()}.example.com", "A")
        started = time.perf_counter()
        sock.sendto(query.to_wire(), ("127.0.0.1", port))
        try:
            while True:
                reply = dns.message.from_wire(sock.recv(4096))
                if reply.id == query.id:
                    break
        except TimeoutError:
            lost += 1
            continue
        if reply.rcode() != dns.rcode.NOERROR:
            errors += 1
            continue
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(0.02)
    sock.close()
    times.sort()

    def pct(p: float) -> float:
        return round(times[min(len(times) - 1, int(len(times) * p))], 1) if times else float("nan")

    return {
        "asked": number,
        "answered": len(times),
        "lost": lost,
        "not_noerror": errors,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
    }


def _dropped(admin_port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r'schooldns_queries_dropped_total\{reason="([^"]+)"\} (\S+)', text)}


def run(
    work: Path, upstream_port: int, queries: Path, per_school: int, seconds: float, rate_cap: int = 0
) -> dict[str, object]:
    root = work / f"per-school-{per_school}-rate-{rate_cap}"
    limits = f"max_queries_in_flight_per_school: {per_school}, queries_per_second_per_school: {rate_cap}"
    config = harness.write_site(
        root,
        [f"127.0.0.1:{upstream_port}"],
        f"workers: 1\nlimits: {{{limits}}}\nadmin: {{listen: '127.0.0.1:0'}}\nreload: {{watch_interval_seconds: 0}}\n",
    )
    config.write_text(config.read_text().replace("timeout_seconds: 1.0", f"timeout_seconds: {TIMEOUT}"))
    log = root / "serve.log"
    with open(log, "wb") as err:
        server = subprocess.Popen(
            [sys.executable, "-m", "resolver", "serve", "--config", str(config)], stderr=err, cwd=ROOT
        )
    try:
        port = int(_wait_for(log, r"serving DNS on 127\.0\.0\.1:(\d+)", server)[1])
        admin_port = int(_wait_for(log, r"admin API on http://127\.0\.0\.1:(\d+)/", server)[1])
        quiet = _probe(port, 2)
        flood = subprocess.Popen(
            [
                *(sys.executable, str(ROOT / "tests/perf/loadgen.py"), "--port", str(port), "--queries", str(queries)),
                *("--seconds", str(seconds + WARM_UP), "--sockets", "32", "--window", "64"),
            ],
            stdout=subprocess.PIPE,
        )
        time.sleep(WARM_UP)  # not a wait for a condition: the flood's misses fill the in-flight places
        flooded = _probe(port, seconds)
        out, _ = flood.communicate(timeout=seconds + 30)
        return {
            "max_queries_in_flight_per_school": per_school,
            "queries_per_second_per_school": rate_cap,
            "school_b_quiet": quiet,
            "school_b_during_flood": flooded,
            "flood": json.loads(out),
            "dropped": _dropped(admin_port),
        }
    finally:
        server.terminate()
        server.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="school B's probe during the flood")
    parser.add_argument("--rate-cap", type=int, default=0, help="also run with this per-school query rate cap")
    parser.add_argument("--only-rate-cap", action="store_true", help="run only the run with the rate cap")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="schooldns-fairness-"))
    queries = work / "flood.txt"
    queries.write_text("".join(f"r{i}.{FLOOD_DOMAIN} A\n" for i in range(200_000)))
    for _ in range(5):  # port 0 picks a free UDP port, whose TCP twin may be taken: pick again
        upstream = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/perf/authoritative.py"), "--port", "0", "--silent", FLOOD_DOMAIN],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert upstream.stdout is not None
        if line := upstream.stdout.readline():
            break
        upstream.wait()
    try:
        upstream_port = int(line.split()[-1])
        runs = [(10_000, 0), (2_500, 0)] if not args.only_rate_cap else []
        if args.rate_cap:
            runs.append((2_500, args.rate_cap))
        for per_school, rate_cap in runs:
            print(json.dumps(run(work, upstream_port, queries, per_school, args.seconds, rate_cap)), flush=True)
    finally:
        upstream.terminate()
        upstream.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
