"""DoT and DoH under dnsperf (-m dot, -m doh): schooldns beside unbound's own DoT and DoH listeners, on loopback.

    .venv/bin/python tests/perf/bench_encrypted.py                         # 10 s runs, medians of 3
    .venv/bin/python tests/perf/bench_encrypted.py --seconds 3 --runs 1    # a quick look
    .venv/bin/python tests/perf/bench_encrypted.py --output docs/performance.md

`make bench` runs it after tests/perf/bench.py. Both servers forward to tests/perf/authoritative.py
and answer the same --names allowed names, from their caches (a pass over UDP warms them first):
what is measured is the encrypted transport, TLS and HTTP/2 framing included, not the lists or
the upstream. Each server is pinned to core 0, dnsperf and the upstream to core 1, as in bench.py.
dnsperf opens --clients connections and keeps them (RFC 7766 reuse); DoH asks with GET unless
--doh-method POST. Beside the rates, each server's CPU time per query answered (from /proc), which
other work on the machine disturbs less than it does the rates. The report
goes between `<!-- bench-encrypted:begin -->` and `<!-- bench-encrypted:end -->` in --output, and to
stdout. Nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

from tests.support.testca import make_ca  # noqa: E402

SERVER_CORE, LOAD_CORE = "0", "1"
BEGIN, END = "<!-- bench-encrypted:begin -->", "<!-- bench-encrypted:end -->"
MODES = ("dot", "doh")


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp, contextlib.suppress(OSError):
                tcp.bind(("127.0.0.1", port))
                return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with {process.returncode}")
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.connect(("127.0.0.1", port))
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port} after {timeout:.0f}s")


@contextlib.contextmanager
def started(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def schooldns(work: Path, upstream: int, ports: dict[str, int], cert: Path, key: Path) -> list[str]:
    site = work / "schooldns"
    (site / "policies").mkdir(parents=True)
    (site / "blocklists").mkdir()
    (site / "blocklists" / "adult.txt").write_text("")
    (site / "blocklists" / "sources.yaml").write_text(
        "categories:\n  adult:\n    sources:\n      - {file: adult.txt, format: domains}\n"
    )
    (site / "policies" / "province.yaml").write_text(
        "mandatory: []\ntimezone: Asia/Ho_Chi_Minh\nbypass_prevention: false\nprofiles:\n  bench: {block: [adult]}\n"
    )
    (site / "policies" / "bench.yaml").write_text("id: bench\nname: Bench\nlevel: bench\nnetworks: [127.0.0.0/8]\n")
    tls = f"cert_file: {cert}, key_file: {key}"
    (site / "config.yaml").write_text(
        f'listen: ["127.0.0.1:{ports["udp"]}"]\nupstreams: ["127.0.0.1:{upstream}"]\nworkers: 1\n'
        f'dot: {{listen: ["127.0.0.1:{ports["dot"]}"], {tls}}}\n'
        f'doh: {{listen: ["127.0.0.1:{ports["doh"]}"], {tls}}}\n'
        "limits: {tcp_idle_timeout_seconds: 60}\nreload: {watch_interval_seconds: 0}\n"
        "policies_dir: policies\nblocklists_dir: blocklists\nstate_dir: state\n"
    )
    command = [str(Path(sys.executable).parent / "schooldns"), "serve", "--config", str(site / "config.yaml")]
    return ["taskset", "-c", SERVER_CORE, *command]


def unbound(work: Path, upstream: int, ports: dict[str, int], cert: Path, key: Path) -> list[str]:
    directory = work / "unbound"
    directory.mkdir()
    conf = [
        "server:",
        *(f"  interface: 127.0.0.1@{ports[mode]}" for mode in ("udp", "dot", "doh")),
        f"  port: {ports['udp']}",
        f"  tls-port: {ports['dot']}",
        f"  https-port: {ports['doh']}",
        f'  tls-service-key: "{key}"',
        f'  tls-service-pem: "{cert}"',
        "  do-ip6: no",
        "  num-threads: 1",
        "  so-reuseport: no",
        "  do-daemonize: no",
        '  username: ""',
        '  chroot: ""',
        f'  directory: "{directory}"',
        '  pidfile: ""',
        "  use-syslog: no",
        '  logfile: ""',
        "  verbosity: 0",
        '  module-config: "iterator"',
        "  do-not-query-localhost: no",
        "  qname-minimisation: no",
        "  access-control: 127.0.0.0/8 allow",
        "  incoming-num-tcp: 1000",
        "  tcp-idle-timeout: 60000",
        "forward-zone:",
        '  name: "."',
        f"  forward-addr: 127.0.0.1@{upstream}",
    ]
    (directory / "unbound.conf").write_text("\n".join(conf) + "\n")
    unbound_path = shutil.which("unbound") or "/usr/sbin/unbound"
    return ["taskset", "-c", SERVER_CORE, unbound_path, "-d", "-p", "-c", str(directory / "unbound.conf")]


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def dnsperf(
    mode: str, port: int, names: Path, seconds: float, clients: int, once: bool = False, method: str = "GET"
) -> tuple[float, int]:
    """Queries answered per second, and in all (all NOERROR, or SystemExit saying what went wrong)."""
    command = ["taskset", "-c", LOAD_CORE, "dnsperf", "-m", mode, "-s", "127.0.0.1", "-p", str(port)]
    command += ["-d", str(names), "-c", str(clients), "-T", "1", "-q", "100", "-t", "2"]
    command += ["-n", "1"] if once else ["-l", f"{seconds:g}"]
    if mode == "doh":
        command += ["-O", f"doh-uri=https://127.0.0.1:{port}/dns-query", "-O", f"doh-method={method}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120, check=False)
    completed = re.search(r"Queries completed:\s+(\d+)", done.stdout)
    qps = re.search(r"Queries per second:\s+([0-9.]+)", done.stdout)
    codes = re.search(r"Response codes:\s+(.*)", done.stdout)
    if done.returncode or not completed or not qps or not codes or not codes[1].startswith("NOERROR"):
        raise SystemExit(f"dnsperf failed: {' '.join(command)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    if "," in codes[1]:
        raise SystemExit(f"answers other than NOERROR: {codes[1]}")
    return float(qps[1]), int(completed[1])


def measure(args: argparse.Namespace) -> dict[str, dict[str, tuple[float, float]]]:
    """Per server and mode: the median queries per second and the median server CPU time per query (us)."""
    results: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-encrypted-") as temporary:
        work = Path(temporary)
        ca = make_ca(work / "tls")
        cert, key = ca.issue()
        names = work / "names.txt"
        names.write_text("".join(f"host{n}.bench-school.vn A\n" for n in range(args.names)))
        upstream = free_port()
        authoritative = [sys.executable, str(HERE / "authoritative.py"), "--port", str(upstream)]
        with started(["taskset", "-c", LOAD_CORE, *authoritative], work / "upstream.log"):
            for key_name, prepare in (("schooldns", schooldns), ("unbound", unbound)):
                ports = {mode: free_port() for mode in ("udp", *MODES)}
                with started(prepare(work, upstream, ports, cert, key), work / f"{key_name}.log") as process:
                    for mode in MODES:
                        wait_for_port(ports[mode], process)
                    dnsperf("udp", ports["udp"], names, 0, 1, once=True)  # warm the cache
                    results[key_name] = {}
                    for mode in MODES:
                        runs = []
                        for _ in range(args.runs):
                            before = cpu_seconds(process.pid)
                            qps, completed = dnsperf(
                                mode, ports[mode], names, args.seconds, args.clients, method=args.doh_method
                            )
                            runs.append((qps, (cpu_seconds(process.pid) - before) * 1e6 / max(completed, 1)))
                        results[key_name][mode] = (
                            statistics.median(qps for qps, _ in runs),
                            statistics.median(cpu for _, cpu in runs),
                        )
    return results


def report(results: dict[str, dict[str, tuple[float, float]]], args: argparse.Namespace) -> str:
    lines = [
        f"dnsperf -m dot / -m doh (HTTP/2, {args.doh_method}), {args.clients} connections kept open, "
        f"{args.names} names answered from the cache, {args.seconds:g} s runs, median of {args.runs}; "
        "each server on one core (`tests/perf/bench_encrypted.py`). CPU: the server's user and system "
        "time per query answered.",
        "",
        "| transport | schooldns (1 worker) qps | unbound 1 thread qps | schooldns / unbound "
        "| schooldns CPU per query | unbound CPU per query |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        (ours, our_cpu), (theirs, their_cpu) = results["schooldns"][mode], results["unbound"][mode]
        lines.append(
            f"| {mode.upper()} | {ours:,.0f} | {theirs:,.0f} | {ours / theirs:.2f} "
            f"| {our_cpu:.0f} us | {their_cpu:.0f} us |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--names", type=int, default=10_000)
    parser.add_argument("--doh-method", choices=["GET", "POST"], default="GET")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    for tool in ("dnsperf", "taskset"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing (make bench-tools installs it)")
    section = report(measure(args), args)
    print(section)
    if args.output is not None:
        text = args.output.read_text(encoding="utf-8")
        start, end = text.find(BEGIN), text.find(END)
        if start < 0 or end < start:
            raise SystemExit(f"{args.output} has no {BEGIN} ... {END} section")
        args.output.write_text(text[: start + len(BEGIN)] + "\n" + section + text[end:], encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
