"""Repeats against a real server on traffic that is not byte-identical: loadgen's qps with and without repeats.

    .venv/bin/python tests/perf/repeat_mixes.py [--names 20000] [--variants 12] [--seconds 5] [--runs 2]

Starts tests/perf/authoritative.py as the upstream and two `schooldns serve` processes (workers: 1,
the test site of tests/support/harness.py, where 127.0.0.1 is school A): one as shipped, one whose
pipeline keeps no repeats (Pipeline(keep_repeats=False), patched in by this script: it is not a
setting). The servers run on core 0, the load generator and the upstream on core 1. Each server is
warmed with every name first, so every query of the runs is answered from the cache or a repeat.
Then for each mix, `--runs` max-rate runs of tests/perf/loadgen.py (its run(): 16 sockets, 8
queries outstanding on each) alternate between the two servers. A mix is `--names` names times
`--variants` lines each, sent round and round:

- identical: the lines of a name are the same bytes (the first line's);
- 0x20: every line is its name in a random letter case of its own (DNS 0x20);
- cookies: 30% of the lines carry a DNS COOKIE option with a client cookie of their own, the
  others are the first line of their name (bench_pipeline.MIX_COOKIES).

With the lines that differ from every other (all of 0x20's, 30% of the cookies') above
repeats.REPEAT_MAX, such a line comes round again only after the repeats were dropped at their
bound, as if every query were new: the defaults make 240,000 lines, 72,000 of them with cookies. Prints, per
mix and server, the median qps and the server's CPU time per answer (utime + stime of
/proc/<pid>/stat over the runs). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import bench_pipeline  # noqa: E402
import loadgen  # noqa: E402
from bench import LOAD_CORE, SERVER_CORE, free_port, process_cpu_seconds  # noqa: E402

from tests.support import harness  # noqa: E402


def wait_for_answer(port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            dns.query.udp(dns.message.make_query("www.example.com", "A"), "127.0.0.1", port=port, timeout=0.2)
            return
        except (TimeoutError, OSError, dns.exception.Timeout):
            time.sleep(0.05)
    raise SystemExit(f"no answer on port {port} within {seconds:.0f} s")


def mixes(names: int, variants: int, rng: random.Random) -> dict[str, list[bytes]]:
    hosts = [f"host{number}.example-{number % 997}.com" for number in range(names)]
    first = [bench_pipeline.query_bytes(name, rng) for name in hosts]
    return {
        "identical": [data for _ in range(variants) for data in first],
        "0x20": [
            bench_pipeline.query_bytes(bench_pipeline.random_case(name, rng), rng)
            for _ in range(variants)
            for name in hosts
        ],
        "cookies": [
            bench_pipeline.query_bytes(name, rng, rng.randbytes(8))
            if rng.random() < bench_pipeline.MIX_COOKIES
            else data
            for _ in range(variants)
            for name, data in zip(hosts, first, strict=True)
        ],
    }


def serve(config: str, keep_repeats: bool) -> int:
    """`schooldns serve`, its pipeline keeping repeats or not (this process is the server)."""
    from resolver.dataplane import pipeline
    from resolver.processes import cli

    if not keep_repeats:
        shipped = pipeline.Pipeline

        def without_repeats(*args, **kwargs) -> pipeline.Pipeline:
            return shipped(*args, **{**kwargs, "keep_repeats": False})

        # The worker makes its pipeline with pipeline.Pipeline(...); the class itself cannot be
        # changed where it is compiled (make compiled).
        pipeline.Pipeline = without_repeats  # type: ignore[misc, assignment]
    return cli.main(["--log-level", "warning", "serve", "--config", config])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=20_000)
    parser.add_argument("--variants", type=int, default=12, help="lines per name in each mix (default 12)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each loadgen run")
    parser.add_argument("--runs", type=int, default=2, help="runs per mix and server (default 2)")
    parser.add_argument("--serve", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--without-repeats", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        sys.exit(serve(args.serve, not args.without_repeats))

    rng = random.Random(1)
    queries = mixes(args.names, args.variants, rng)
    processes: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory(prefix="repeat-mixes-") as work:
        try:
            upstream_port = free_port()
            processes.append(
                subprocess.Popen(
                    [
                        "taskset",
                        "-c",
                        LOAD_CORE,
                        sys.executable,
                        str(HERE / "authoritative.py"),
                        "--port",
                        str(upstream_port),
                    ],
                    stdout=subprocess.DEVNULL,
                )
            )
            servers: dict[str, tuple[int, int]] = {}  # label -> (port, pid)
            for label, extra in (("repeats", []), ("no repeats", ["--without-repeats"])):
                root = Path(work) / label.replace(" ", "-")
                port = free_port()
                config = harness.write_site(root, [f"127.0.0.1:{upstream_port}"], "cache: {max_entries: 200000}\n")
                config.write_text(config.read_text().replace('"127.0.0.1:0"', f'"127.0.0.1:{port}"'))
                command = ["taskset", "-c", SERVER_CORE, sys.executable, __file__, "--serve", str(config), *extra]
                processes.append(subprocess.Popen(command))
                servers[label] = (port, processes[-1].pid)
            for port, _ in servers.values():
                wait_for_answer(port)
                loadgen.run("127.0.0.1", port, queries["identical"][: args.names], 3.0, 16, 8)  # warm the cache

            results: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for mix, lines in queries.items():
                for _ in range(args.runs):
                    for label, (port, pid) in servers.items():
                        before = process_cpu_seconds(pid)
                        run = loadgen.run("127.0.0.1", port, lines, args.seconds, 16, 8)
                        used = process_cpu_seconds(pid) - before
                        results.setdefault((mix, label), []).append((run["qps"], used / max(1, run["answered"])))
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(10)

    print(
        f"{args.names:,} names x {args.variants} lines per mix, {args.runs} runs of {args.seconds:.0f} s per mix and "
        f"server (median qps; server CPU per answer)"
    )
    print(f"{'mix':10}{'repeats':>24}{'no repeats':>24}{'ratio':>8}")
    for mix in queries:
        cells = []
        qps = {}
        for label in servers:
            figures = results[(mix, label)]
            qps[label] = statistics.median(q for q, _ in figures)
            cpu = statistics.median(c for _, c in figures)
            cells.append(f"{qps[label]:>12,.0f} {cpu * 1e6:7.1f} us")
        print(f"{mix:10}" + "".join(f"{cell:>24}" for cell in cells) + f"{qps['repeats'] / qps['no repeats']:7.2f}x")


if __name__ == "__main__":
    main()
