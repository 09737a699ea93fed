"""Memory per cache miss waiting upstream: a server whose upstream never answers, sent N new names.

    .venv/bin/python tests/perf/waiting_memory.py [--misses 9000]

Prints the worker's resident memory before and after, and the bytes each waiting miss holds.
This is what an upstream outage costs while queries pile up to limits.max_queries_in_flight
(docs/performance-history.md, "Cache misses without tasks"). The upstream is a bound UDP socket that
reads nothing; the server is `schooldns serve` with one worker and a 30 s upstream timeout.
"""

from __future__ import annotations

import argparse
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.support import harness  # noqa: E402


def resident_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--misses", type=int, default=9000, help="new names sent (default 9,000)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="schooldns-waiting-") as work,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        silent.bind(("127.0.0.1", 0))  # the upstream: reads nothing, answers nothing
        client.bind(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]  # free a moment ago; the server binds it next
        config = harness.write_site(Path(work), [f"127.0.0.1:{silent.getsockname()[1]}"])
        text = config.read_text().replace('listen: ["127.0.0.1:0"]', f'listen: ["127.0.0.1:{port}"]')
        config.write_text(text.replace("timeout_seconds: 1.0", "timeout_seconds: 30"))
        server = subprocess.Popen(
            [sys.executable, "-m", "resolver", "serve", "--config", str(config)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            client.settimeout(0.2)
            for _ in range(300):  # until it answers (a blocked name needs no upstream)
                client.sendto(dns.message.make_query("adult.example.com", "A").to_wire(), ("127.0.0.1", port))
                try:
                    client.recv(4096)
                    break
                except TimeoutError:
                    continue
            else:
                raise SystemExit("the server did not answer")
            time.sleep(0.5)
            before = resident_kb(server.pid)
            rng = random.Random(1)
            for i in range(args.misses):
                name = f"w{rng.getrandbits(40):x}.n{i}.example"
                client.sendto(dns.message.make_query(name, "A").to_wire(), ("127.0.0.1", port))
                if i % 500 == 499:
                    time.sleep(0.01)  # within the socket buffers
            time.sleep(1.0)  # all read and forwarded, none answered
            after = resident_kb(server.pid)
        finally:
            server.terminate()
            server.wait()
    print(
        f"RSS {before / 1024:.1f} MB -> {after / 1024:.1f} MB with {args.misses:,} misses waiting upstream: "
        f"{(after - before) * 1024 / args.misses:,.0f} bytes each"
    )


if __name__ == "__main__":
    main()
