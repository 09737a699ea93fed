"""stubby as a long-lived DoT client: one verified connection for many queries, a new one after an idle close."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import Running, running_resolver, until
from tests.support.reference import free_port
from tests.support.testca import SERVER_NAME, CertificateAuthority, make_ca

IDLE_SECONDS = 1.0  # schooldns' limits.tcp_idle_timeout_seconds; stubby's own is 10 s
DOT = 'dot: {listen: ["127.0.0.1:0"], cert_file: tls/server.pem, key_file: tls/server.key}\n'
ALLOWED = [f"n{n}.example.com" for n in range(10)]
BLOCKED = [f"n{n}.games.example.com" for n in range(10)]  # school A (127.0.0.1) blocks games


def stubby_config(listen_port: int, dot_port: int, ca: CertificateAuthority, appdata: Path) -> str:
    """The client set-up of docs/encrypted.md, pointed at the test's ports and CA."""
    return f"""\
resolution_type: GETDNS_RESOLUTION_STUB
dns_transport_list:
  - GETDNS_TRANSPORT_TLS
tls_authentication: GETDNS_AUTHENTICATION_REQUIRED
tls_ca_file: "{ca.ca_file}"
tls_query_padding_blocksize: 128
idle_timeout: 10000
round_robin_upstreams: 0
appdata_dir: "{appdata}"
listen_addresses:
  - 127.0.0.1@{listen_port}
upstream_recursive_servers:
  - address_data: 127.0.0.1
    tls_port: {dot_port}
    tls_auth_name: "{SERVER_NAME}"
"""


@contextlib.asynccontextmanager
async def running_stubby(directory: Path, dot_port: int, ca: CertificateAuthority) -> AsyncIterator[int]:
    """stubby on a free port of 127.0.0.1 with schooldns' DoT listener as its one upstream; its port once it answers."""
    binary = shutil.which("stubby") or shutil.which("stubby", path="/usr/sbin:/usr/bin")
    assert binary, "stubby is missing: `make test-tools` installs it"
    port = free_port()
    appdata = directory / "stubby"
    appdata.mkdir()
    config = directory / "stubby.yml"  # stubby reads YAML from a file whose name ends in .yml
    config.write_text(stubby_config(port, dot_port, ca, appdata))
    log = directory / "stubby.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(binary, "-C", str(config), stdout=out, stderr=out)
    try:
        async with asyncio.timeout(10):  # until it answers (its first answer opens the connection)
            while True:
                with contextlib.suppress(dns.exception.Timeout, OSError):
                    await ask(port, ALLOWED[0], timeout=0.5)
                    break
                assert process.returncode is None, "stubby exited:\n" + log.read_text()
                await asyncio.sleep(0.05)
        yield port
    finally:
        process.terminate()
        await process.wait()


async def ask(port: int, name: str, timeout: float = 3.0) -> dns.message.Message:
    return await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=timeout)


async def accepted_dot(resolver: Running) -> float:
    """schooldns_connections_accepted_total{transport="dot"} from /metrics."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{resolver.admin_port}/metrics") as response,
    ):
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "schooldns_connections_accepted_total" and sample.labels == {"transport": "dot"}:
                return sample.value
    return 0.0


async def ask_all(port: int) -> None:
    """Every name, ten at a time: allowed ones answered by the fake upstream, blocked ones NXDOMAIN."""
    names = [name for pair in zip(ALLOWED, BLOCKED, strict=True) for name in pair]
    for start in range(0, len(names), 10):
        batch = names[start : start + 10]
        for name, answer in zip(batch, await asyncio.gather(*(ask(port, name) for name in batch)), strict=True):
            if name in BLOCKED:
                assert answer.rcode() == dns.rcode.NXDOMAIN, (name, answer)
            else:
                assert answer.rcode() == dns.rcode.NOERROR and answer.answer[0][0].address == "192.0.2.7", name


async def test_stubby_keeps_one_dot_connection_and_reconnects_after_an_idle_close(tmp_path):
    ca = make_ca(tmp_path / "tls")
    ca.issue()
    limits = f"limits: {{tcp_idle_timeout_seconds: {IDLE_SECONDS}}}\n"
    async with FakeUpstream() as upstream:
        for name in ALLOWED:
            upstream.answer(name, "A", "192.0.2.7", ttl=300)
        async with (
            running_resolver(tmp_path, [upstream.address], DOT + limits, with_admin=True) as resolver,
            running_stubby(tmp_path, resolver.worker.tls_addresses["dot"][0][1], ca) as port,
        ):
            assert resolver.worker.dot is not None
            for _ in range(3):  # 60 queries (and the first one) over the connection stubby opened
                await ask_all(port)
            # One connection, kept open (a second one only if this machine stalled stubby past the idle timeout).
            assert len(resolver.worker.dot.open) == 1
            kept = await accepted_dot(resolver)
            assert kept in (1, 2)
            counted = resolver.worker.counters.queries
            assert counted[("school-a", "dot", "blocked")] == 3 * len(BLOCKED)
            assert {transport for (_, transport, _) in counted} == {"dot"}

            # Idle for longer than schooldns' timeout: schooldns closes it, and stubby opens a new one
            # for the next queries, which are all answered.
            await until(lambda: not resolver.worker.dot.open, 5 * IDLE_SECONDS)
            await ask_all(port)
            assert await accepted_dot(resolver) in (kept + 1, kept + 2)
            assert len(resolver.worker.dot.open) == 1
            assert counted[("school-a", "dot", "blocked")] == 4 * len(BLOCKED)
            assert not resolver.worker.counters.rejected
