"""What a Prometheus scrape every second costs the DNS path: max-rate runs with and without a scraper, alternated.

    .venv/bin/python tests/perf/scrape_cost.py                  # 10k list, 200 schools, 3 x 2 runs of 5 s
    .venv/bin/python tests/perf/scrape_cost.py --schools 1000 --runs 5

schooldns (one worker, `workers: 1`, so /metrics is rendered on the DNS process's event loop) is
pinned to one core, dnsperf and the scraper to the other, as in tests/perf/bench.py. Extra school
files make the per-school series that a real province has. Runs alternate (unscraped, scraped, ...)
so that each pair compares the same stretch of a noisy machine; medians and their ratio are printed.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench


def scraper(url: str, stop: threading.Event, scrapes: list[float]) -> None:
    """GET `url` once a second until `stop`, keeping each scrape's duration."""
    while not stop.is_set():
        started = time.monotonic()
        with urllib.request.urlopen(url, timeout=10) as answer:
            answer.read()
        scrapes.append(time.monotonic() - started)
        stop.wait(max(0.0, 1.0 - (time.monotonic() - started)))


def add_schools(directory: Path, count: int) -> None:
    """`count` more schools (each its own /32 in 10.0.0.0/8; they send no queries, but every one is a series)."""
    for number in range(count):
        address = f"10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}"
        (directory / "policies" / f"school-{number}.yaml").write_text(
            f'id: school-{number}\nname: "School {number}"\nlevel: bench\nnetworks: [{address}/32]\nblock: [adult]\n'
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--schools", type=int, default=200, help="schools besides the one that asks")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3, help="pairs of runs (unscraped, scraped)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    tools = bench.ensure_tools(["dnsperf"])
    work = Path(tempfile.mkdtemp(prefix="schooldns-scrape-"))
    procs: list[bench.Proc] = []
    try:
        data = bench.generate(work, args.entries, 5_000, 1_000, 1, args.seed)
        upstream_port = bench.free_port()
        upstream = bench.Proc(
            "upstream",
            [
                "taskset",
                "-c",
                bench.LOAD_CORE,
                sys.executable,
                str(bench.HERE / "authoritative.py"),
                "--port",
                str(upstream_port),
            ],
            work / "upstream.log",
        )
        procs.append(upstream)
        bench.wait_answer(upstream_port, upstream, time.monotonic(), 30)
        directory = work / "schooldns"
        directory.mkdir()
        port = bench.free_port()
        argv = bench.prepare_schooldns(directory, data, port, upstream_port)
        add_schools(directory, args.schools)
        server = bench.Proc("schooldns", argv, directory / "server.log", cwd=directory)
        procs.append(server)
        bench.wait_answer(port, server, time.monotonic(), 120)
        bench.wait_admin(directory, server, 60)
        bench.dnsperf(tools, port, data.queries, seconds=None, clients=args.clients, once=True)  # warm the cache
        url = f"http://127.0.0.1:{bench.admin_port(directory)}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            lines = answer.read().count(b"\n")
        qps: dict[bool, list[float]] = {False: [], True: []}
        scrapes: list[float] = []
        for run in range(args.runs):
            for scraped in (False, True):
                stop = threading.Event()
                thread = threading.Thread(target=scraper, args=(url, stop, scrapes)) if scraped else None
                if thread is not None:
                    thread.start()
                perf = bench.dnsperf(tools, port, data.queries, seconds=args.seconds, clients=args.clients)
                stop.set()
                if thread is not None:
                    thread.join()
                qps[scraped].append(perf.qps)
                print(f"run {run + 1} {'scraped  ' if scraped else 'unscraped'}: {perf.qps:,.0f} qps", flush=True)
        plain, scraped_median = statistics.median(qps[False]), statistics.median(qps[True])
        scrape_ms = statistics.median(scrapes) * 1000
        print(f"/metrics: {lines:,} lines, {args.schools + 1} schools; scrape median {scrape_ms:.1f} ms")
        print(
            f"median qps unscraped {plain:,.0f}, scraped every second {scraped_median:,.0f}: "
            f"ratio {scraped_median / plain:.3f}"
        )
    finally:
        for proc in reversed(procs):
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
