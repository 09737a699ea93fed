"""A real dnsdist in front of schooldns (UDP, TCP, DoT, DoH; PROXY v2 or Client Subnet): each school keeps its policy.

dnsdist listens on 127.0.0.1 and asks the instances from 127.0.0.10, the one address they trust.
School A's device is 127.0.0.1 and school B's 127.0.0.2 (tests/support/harness.py): A blocks
games.example.com, B does not, whichever instance answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode

from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import running_resolver
from tests.support.testca import SERVER_NAME, make_ca

ROOT = Path(__file__).resolve().parents[2]
DNSDIST_SOURCE = "127.0.0.10"


def dnsdist() -> str:
    found = shutil.which("dnsdist") or shutil.which("dnsdist", path="/usr/sbin:/usr/bin")
    assert found, "dnsdist is missing: `make test-tools` installs it"
    return found


def free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 (dnsdist binds both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket() as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def proxied(backends: list[int]) -> str:
    """dnsdist's backends over UDP and TCP, with PROXY v2."""
    return "\n".join(
        f'newServer({{address="127.0.0.1:{backend}", name="schooldns-{n}", useProxyProtocol=true, '
        f'source="{DNSDIST_SOURCE}", checkName="health.schooldns.invalid.", checkInterval=1, maxCheckFailures=1}})'
        for n, backend in enumerate(backends)
    )


@contextlib.asynccontextmanager
async def running_dnsdist(directory: Path, servers: str) -> AsyncIterator[int]:
    """dnsdist on a free port of 127.0.0.1, balancing over the backends of `servers` (its Lua lines)."""
    port = free_port()
    conf = directory / "dnsdist.conf"
    conf.write_text(
        f'setLocal("127.0.0.1:{port}")\nsetACL({{"127.0.0.0/8"}})\nsetSecurityPollSuffix("")\n'
        f"{servers}\nsetServerPolicy(roundrobin)\n"
    )
    process = await asyncio.create_subprocess_exec(
        dnsdist(), "--supervised", "--disable-syslog", "-C", str(conf),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with asyncio.timeout(10):  # until it answers
            while True:
                with contextlib.suppress(dns.exception.Timeout, OSError):
                    await ask(port, "127.0.0.1", "www.example.com", timeout=0.2)
                    break
                assert process.returncode is None, "dnsdist exited"
                await asyncio.sleep(0.05)
        yield port
    finally:
        process.terminate()
        await process.wait()


async def ask(port: int, source: str, name: str, tcp: bool = False, timeout: float = 2.0) -> dns.message.Message:
    query = dns.message.make_query(name, "A")
    send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    return await send(query, "127.0.0.1", port=port, source=source, timeout=timeout)


async def test_two_schools_behind_dnsdist_keep_their_own_policies(tmp_path):
    trusted = f'proxy_protocol: {{trusted: ["{DNSDIST_SOURCE}/32"]}}\n'
    async with FakeUpstream() as upstream:
        upstream.answer("games.example.com", "A", "127.0.0.1").answer("www.example.com", "A", "127.0.0.1")
        async with (
            running_resolver(tmp_path / "one", [upstream.address], trusted) as one,
            running_resolver(tmp_path / "two", [upstream.address], trusted) as two,
            running_dnsdist(tmp_path, proxied([one.port, two.port])) as port,
        ):
            for tcp in (False, True):
                for source, rcode in (("127.0.0.1", dns.rcode.NXDOMAIN), ("127.0.0.2", dns.rcode.NOERROR)):
                    for _ in range(3):  # in a row, so that round robin takes each school to both instances
                        assert (await ask(port, source, "games.example.com", tcp)).rcode() == rcode
            for instance in (one, two):
                counted = instance.worker.counters.queries
                assert counted[("school-a", "udp", "blocked")] >= 1 and counted[("school-a", "tcp", "blocked")] >= 1
                assert not [key for key in counted if key[0] == "school-b" and key[2] == "blocked"]
                assert not instance.worker.counters.rejected and not instance.worker.counters.malformed

            # An instance that stops fails its health check; dnsdist sends everything to the other.
            await two.worker.stop()
            async with asyncio.timeout(10):
                answered = 0
                while answered < 6:
                    try:
                        answer = await ask(port, "127.0.0.2", "games.example.com", timeout=0.3)
                        assert answer.rcode() == dns.rcode.NOERROR
                        answered += 1
                    except dns.exception.Timeout:
                        answered = 0


async def test_dnsdist_re_encrypting_to_dot_and_doh_names_each_device_by_client_subnet_or_proxy_header(tmp_path):
    """dnsdist takes plain DNS and asks schooldns over DoT or DoH, verifying its certificate, with the
    device's address in a Client Subnet option or in a PROXY v2 header (which dnsdist sends inside TLS)."""
    ca = make_ca(tmp_path / "schooldns" / "tls")
    ca.issue()
    trusted = f'proxy_protocol: {{trusted: ["{DNSDIST_SOURCE}/32"]}}\n'
    tls = "cert_file: tls/server.pem, key_file: tls/server.key"
    listeners = f'dot: {{listen: ["127.0.0.1:0"], {tls}}}\ndoh: {{listen: ["127.0.0.1:0"], {tls}}}\n'
    verified = (
        f'tls="openssl", subjectName="{SERVER_NAME}", caStore="{ca.ca_file}", validateCertificates=true, '
        f'source="{DNSDIST_SOURCE}", checkName="health.schooldns.invalid.", checkInterval=1'
    )
    # The whole address in a Client Subnet (dnsdist sends a /24 unless told).
    subnet = "useClientSubnet=true})\nsetECSSourcePrefixV4(32)\nsetECSSourcePrefixV6(128)"
    async with FakeUpstream() as upstream:
        upstream.answer("games.example.com", "A", "127.0.0.1").answer("www.example.com", "A", "127.0.0.1")
        async with running_resolver(tmp_path / "schooldns", [upstream.address], trusted + listeners) as resolver:
            counted = resolver.worker.counters.queries
            for transport, how in itertools.product(("dot", "doh"), (subnet, "useProxyProtocol=true})")):
                port = resolver.worker.tls_addresses[transport][0][1]
                path = 'dohPath="/dns-query", ' if transport == "doh" else ""
                directory = tmp_path / f"{transport}-{how[:8]}"
                directory.mkdir()
                before = dict(counted)
                async with running_dnsdist(
                    directory, f'newServer({{address="127.0.0.1:{port}", {path}{verified}, {how}'
                ) as front:
                    for tcp in (False, True):
                        for source, rcode in (("127.0.0.1", dns.rcode.NXDOMAIN), ("127.0.0.2", dns.rcode.NOERROR)):
                            assert (await ask(front, source, "games.example.com", tcp)).rcode() == rcode, (
                                transport,
                                how,
                            )
                grown = {key: counted[key] - before.get(key, 0) for key in counted}
                assert grown[("school-a", transport, "blocked")] == 2, (transport, how, grown)
                b = ("school-b", transport)
                assert grown.get((*b, "cached"), 0) + grown.get((*b, "forwarded"), 0) == 2, (transport, how, grown)
                assert not grown.get((*b, "blocked")), (transport, how, grown)
        assert not resolver.worker.counters.rejected and not resolver.worker.counters.malformed
        assert all(not dns.message.from_wire(call.raw).options for call in upstream.calls)


def test_the_shipped_dnsdist_conf_is_valid():
    result = subprocess.run(
        [dnsdist(), "--check-config", "-C", str(ROOT / "deploy" / "dnsdist" / "dnsdist.conf")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    text = (ROOT / "deploy" / "dnsdist" / "dnsdist.conf").read_text()
    assert text.count("useProxyProtocol = true") == text.count("newServer(") >= 2
    assert "setCache" not in text  # a packet cache would hand one school's answer to every school
