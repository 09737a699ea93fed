"""Run `schooldns serve` on a host without IPv6 (a network namespace) and ask it one question; print JSON.

Run as `unshare --map-root-user --net python -m tests.support.without_ipv6 CONFIG NAME PORT` from
the repository: the new namespace has only a loopback device, which this brings up with IPv6
disabled (127.0.0.1 and no ::1), as on a host booted without IPv6. The server runs until it has
announced its admin API (the last line of a start) or exited; then NAME is asked over UDP from
127.0.0.1 to 127.0.0.1:PORT, and the server is stopped with SIGTERM. Prints {"log": [...],
"rcode": ..., "exit": ...} (rcode null when the server did not start).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import dns.message
import dns.query


def main(config: str, name: str, port: int) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"], check=True)
    assert not Path("/proc/net/if_inet6").read_text().strip(), "IPv6 addresses left"
    server = subprocess.Popen(
        [sys.executable, "-m", "resolver", "serve", "--config", config], stderr=subprocess.PIPE, text=True
    )
    assert server.stderr is not None
    log = []
    started = False
    for line in server.stderr:
        log.append(line)
        if started := "admin API on" in line:
            break
    rcode = None
    if started:
        query = dns.message.make_query(name, "A")
        rcode = dns.query.udp(query, "127.0.0.1", port=port, timeout=5).rcode()
        server.send_signal(signal.SIGTERM)
    log.extend(server.stderr)
    print(json.dumps({"log": log, "rcode": rcode, "exit": server.wait(30)}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
