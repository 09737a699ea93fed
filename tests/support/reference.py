"""knotd serving a signed test zone and unbound forwarding to it, as our own processes on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype

DEADLINE_SECONDS = 20.0


def free_port() -> int:
    """A loopback port free for both UDP and TCP at the time of asking (knotd and unbound take a number)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def _command(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        raise RuntimeError(f"{name} is not installed (`make test` installs it when run as root)")
    return path


@contextlib.contextmanager
def _process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _serving(port: int, name: str, proc: subprocess.Popen[bytes], log: Path, serial: int | None = None) -> None:
    """Poll until the server on port answers name's SOA (with at least serial, if given)."""
    query = dns.message.make_query(name, dns.rdatatype.SOA)
    async with asyncio.timeout(DEADLINE_SECONDS):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited: {log.read_text(errors='replace')}")
            with contextlib.suppress(dns.exception.Timeout, OSError):
                answer = await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=0.2)
                soa = [r for rrset in answer.answer if rrset.rdtype == dns.rdatatype.SOA for r in rrset]
                if soa and (serial is None or soa[0].serial >= serial):  # type: ignore[attr-defined]
                    return
            await asyncio.sleep(0.05)


KNOT_CONF = """\
server:
  listen: 127.0.0.1@{port}
  rundir: "{dir}"
control:
  listen: "{dir}/knot.sock"
database:
  storage: "{dir}/db"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "{dir}"
    file: "%s.zone"
    dnssec-signing: on
    zonefile-sync: -1
    zonefile-load: difference-no-serial
    journal-content: all
zone:
  - domain: {zone}
"""

# No validator (the comparison is of forwarding, and schooldns validates nothing); room for the
# test's TCP connections (10 by default, and idle ones closed early past half of them); answers as
# a stock install gives them otherwise.
UNBOUND_CONF = """\
server:
  interface: 127.0.0.1
  port: {port}
  do-daemonize: no
  use-syslog: no
  logfile: ""
  username: ""
  chroot: ""
  directory: "{dir}"
  pidfile: ""
  access-control: 127.0.0.0/8 allow
  do-not-query-localhost: no
  module-config: "iterator"
  num-threads: 1
  incoming-num-tcp: 100
  rrset-roundrobin: no
remote-control:
  control-enable: no
forward-zone:
  name: "."
  forward-addr: 127.0.0.1@{upstream}
"""


@dataclass
class Reference:
    """The authoritative server (knotd) and the reference resolver (unbound) forwarding to it."""

    directory: Path
    zone: str
    knot_port: int
    unbound_port: int
    knot: subprocess.Popen[bytes]

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.knot_port}"

    async def change_zone(self, text: str) -> int:
        """Serve new zone data: knotd signs the difference and bumps the serial; returns the serial it serves."""
        old = await self._serial()
        (self.directory / f"{self.zone}zone").write_text(text)
        proc = await asyncio.create_subprocess_exec(
            _command("knotc"), "-s", str(self.directory / "knot.sock"), "zone-reload", self.zone,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"knotc zone-reload: {out.decode(errors='replace')}")
        await _serving(self.knot_port, self.zone, self.knot, self.directory / "knot.log", old + 1)
        return await self._serial()

    async def _serial(self) -> int:
        query = dns.message.make_query(self.zone, dns.rdatatype.SOA)
        answer = await dns.asyncquery.udp(query, "127.0.0.1", port=self.knot_port, timeout=2)
        return int(answer.answer[0][0].serial)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def reference_servers(directory: Path, zone: str, zone_text: str) -> AsyncIterator[Reference]:
    """Start knotd on zone_text (signed by knotd with keys it makes) and unbound forwarding to it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "db").mkdir(exist_ok=True)
    (directory / f"{zone}zone").write_text(zone_text)
    knot_port, unbound_port = free_port(), free_port()
    knot_conf = directory / "knot.conf"
    knot_conf.write_text(KNOT_CONF.format(port=knot_port, dir=directory, zone=zone))
    unbound_conf = directory / "unbound.conf"
    unbound_conf.write_text(UNBOUND_CONF.format(port=unbound_port, dir=directory, upstream=knot_port))
    with _process([_command("knotd"), "-c", str(knot_conf)], directory / "knot.log") as knot:
        await _serving(knot_port, zone, knot, directory / "knot.log")
        unbound_argv = [_command("unbound"), "-d", "-c", str(unbound_conf)]
        with _process(unbound_argv, directory / "unbound.log") as unbound:
            await _serving(unbound_port, zone, unbound, directory / "unbound.log")
            yield Reference(directory, zone, knot_port, unbound_port, knot)
