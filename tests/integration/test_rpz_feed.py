"""The RPZ feed to real secondaries: unbound transfers the zones and decides as schooldns; TSIG; REFUSED; NOTIFY."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.zone

from resolver.operations import tokens
from tests.perf.bench import free_port
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import running_resolver, until
from tests.support.served import serve

SECRET = "c2Nob29sZG5zIHRlc3Qga2V5OiAzMiBieXRlcyBsb25nIQ=="  # a key for these tests only

# School A (127.0.0.1) blocks the mandatory categories (malware, phishing) and adult: what
# unbound blocks with the province and adult zones. Lists in every format and match: subtrees,
# exact names, RPZ wildcards (below only), exceptions inside blocks and allow lists.
FILES = {
    "policies/province.yaml": textwrap.dedent(
        """\
        mandatory: [malware, phishing]
        timezone: Asia/Ho_Chi_Minh
        safe_search: false
        profiles:
          plain: {block: [adult]}
        """
    ),
    "policies/school-a.yaml": "id: school-a\nlevel: plain\nnetworks: [127.0.0.1/32]\n",
    "policies/school-b.yaml": "id: school-b\nlevel: plain\nnetworks: [127.0.0.2/32]\n",
    "blocklists/sources.yaml": textwrap.dedent(
        """\
        categories:
          adult:
            sources:
              - {file: adult.txt, format: domains}
              - {file: adult-exact.txt, format: domains, match: exact}
              - {file: adult.rpz, format: rpz}
            allow:
              - {file: adult-allow.txt, format: domains, match: exact}
          malware:
            sources:
              - {file: malware.rpz, format: rpz}
              - {file: malware.hosts, format: hosts}
          phishing:
            sources:
              - {file: phishing.txt, format: domains, match: exact}
            allow:
              - {file: phishing-allow.txt, format: domains}
          games:
            sources:
              - {file: games.txt, format: domains}
        """
    ),
    "blocklists/adult.txt": "adult.example\nwww.adult.example\nvideos.example\n",
    "blocklists/adult-exact.txt": "only.example\n",
    "blocklists/adult.rpz": textwrap.dedent(
        """\
        $ORIGIN adult.rpz.example.
        @ SOA ns admin 1 3600 600 86400 60
        *.wild.example CNAME .
        *.tube.example CNAME .
        ok.tube.example CNAME rpz-passthru.
        deep.ok.tube.example CNAME .
        """
    ),
    "blocklists/adult-allow.txt": "clean.videos.example\n",
    "blocklists/malware.rpz": "evil.example CNAME .\n*.evil.example CNAME .\n*.c2.example CNAME .\n",
    "blocklists/malware.hosts": "0.0.0.0 dropper.example\n",
    "blocklists/phishing.txt": "login.bank.example\nphish.example\n",
    "blocklists/phishing-allow.txt": "bank.example\n",
    "blocklists/games.txt": "games.example\n",
}
LISTED = [
    "adult.example",
    "www.adult.example",
    "videos.example",
    "clean.videos.example",
    "only.example",
    "wild.example",
    "tube.example",
    "ok.tube.example",
    "deep.ok.tube.example",
    "evil.example",
    "c2.example",
    "dropper.example",
    "login.bank.example",
    "phish.example",
    "games.example",
]


def corpus() -> list[str]:
    """Listed names, names under them, wildcard apexes, parents, siblings and near misses."""
    names = set()
    for name in LISTED:
        parent = name.partition(".")[2]
        names.update({name, f"x.{name}", f"a.b.{name}", f"not{name}", parent, f"sibling.{parent}"})
    return sorted(names - {"example"})


def rpz_config(clients: str = "[127.0.0.1/32]", extra: str = "") -> str:
    return f"rpz:\n  zone_suffix: rpz.schooldns.\n  transfer_clients: {clients}\n{extra}"


def keys_file(root: Path) -> Path:
    path = root / "rpz-keys.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(f"keys:\n  - {{name: isp-one, algorithm: hmac-sha256, secret: '{SECRET}'}}\n")
    path.chmod(0o600)
    return path


def blocked(answer: dns.message.Message) -> bool:
    assert answer.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN), answer
    return answer.rcode() == dns.rcode.NXDOMAIN


@contextlib.asynccontextmanager
async def unbound(root: Path, port: int, primary: int, upstream: str, zones: list[str]) -> AsyncIterator[int]:
    """unbound on 127.0.0.1:`port`, forwarding to `upstream`, with `zones` as RPZ secondaries of `primary`."""
    binary = shutil.which("unbound") or "/usr/sbin/unbound"
    root.mkdir(parents=True, exist_ok=True)
    host, upstream_port = upstream.rsplit(":", 1)
    rpz = "".join(
        f"rpz:\n  name: {zone}\n  primary: 127.0.0.1@{primary}\n  allow-notify: 127.0.0.1\n" for zone in zones
    )
    (root / "unbound.conf").write_text(
        textwrap.dedent(
            f"""\
            server:
              interface: 127.0.0.1@{port}
              port: {port}
              do-ip6: no
              username: ""
              chroot: ""
              directory: "{root}"
              pidfile: ""
              use-syslog: no
              logfile: ""
              do-daemonize: no
              num-threads: 1
              module-config: "respip iterator"
              access-control: 127.0.0.0/8 allow
              do-not-query-localhost: no
              verbosity: 4
            forward-zone:
              name: "."
              forward-addr: {host}@{upstream_port}
            """
        )
        + rpz
    )
    with open(root / "unbound.log", "wb") as log:
        process = await asyncio.create_subprocess_exec(
            binary, "-d", "-c", str(root / "unbound.conf"), stdout=log, stderr=subprocess.STDOUT
        )
    try:
        yield port
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def ask(port: int, name: str, rdtype: str = "A", source: str = "127.0.0.1") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    return await dns.asyncquery.udp(query, "127.0.0.1", port=port, source=source, timeout=3)


async def poll(port: int, name: str, want_blocked: bool, timeout_seconds: float = 20.0) -> None:
    """Ask `name` until the answer is (or is not) NXDOMAIN: a secondary's transfers take their time."""
    async with asyncio.timeout(timeout_seconds):
        while True:
            with contextlib.suppress(dns.exception.Timeout):
                if blocked(await ask(port, name)) == want_blocked:
                    return
            await asyncio.sleep(0.05)


async def test_unbound_as_secondary_decides_as_schooldns_and_follows_a_notify(tmp_path):
    names = corpus()
    unbound_port = free_port()
    async with FakeUpstream() as upstream:
        for name in [*names, "fresh.example"]:
            upstream.answer(name, "A", "192.0.2.1", ttl=1)
        config = rpz_config(extra=f"  notify: ['127.0.0.1:{unbound_port}']\nreload: {{watch_interval_seconds: 0}}\n")
        async with (
            running_resolver(tmp_path / "site", [upstream.address], config, FILES) as served,
            unbound(
                tmp_path / "unbound",
                unbound_port,
                served.port,
                upstream.address,
                ["province.rpz.schooldns.", "adult.rpz.schooldns."],
            ),
        ):
            await poll(unbound_port, "evil.example", True)  # the province zone is in
            await poll(unbound_port, "x.tube.example", True)  # and the adult zone
            ours = await asyncio.gather(*(ask(served.port, name) for name in names))
            theirs = await asyncio.gather(*(ask(unbound_port, name) for name in names))
            decisions = {name: (blocked(a), blocked(b)) for name, a, b in zip(names, ours, theirs, strict=True)}
            differ = {name: decision for name, decision in decisions.items() if decision[0] != decision[1]}
            assert not differ, f"schooldns, unbound: {differ}"
            # The corpus has both sides of every rule.
            assert decisions["wild.example"] == (False, False) and decisions["x.wild.example"] == (True, True)
            assert decisions["ok.tube.example"] == (False, False) and decisions["x.ok.tube.example"] == (True, True)
            assert decisions["clean.videos.example"] == (False, False)
            assert decisions["login.bank.example"] == (False, False) and decisions["phish.example"] == (True, True)
            assert decisions["games.example"] == (False, False) and decisions["only.example"] == (True, True)

            # A new version: NOTIFY, and unbound transfers it well before its 300 s refresh.
            assert not blocked(await ask(served.port, "fresh.example"))
            (served.root / "blocklists" / "adult.txt").write_text(FILES["blocklists/adult.txt"] + "fresh.example\n")
            assert await served.worker.reload()
            assert blocked(await ask(served.port, "fresh.example"))
            await poll(unbound_port, "fresh.example", True)


async def test_transfers_are_refused_to_other_addresses_and_answered_to_clients(tmp_path):
    async with (
        FakeUpstream() as upstream,
        running_resolver(tmp_path, [upstream.address], rpz_config(), FILES) as served,
    ):
        axfr = dns.message.make_query("adult.rpz.schooldns", "AXFR")
        for source in ("127.0.0.2", "127.0.0.3"):  # a school, and nobody
            refused = await dns.asyncquery.tcp(axfr, "127.0.0.1", port=served.port, source=source, timeout=3)
            assert refused.rcode() == dns.rcode.REFUSED and not refused.answer
            soa = await ask(served.port, "province.rpz.schooldns", "SOA", source=source)
            assert soa.rcode() == dns.rcode.REFUSED
        soa = await ask(served.port, "province.rpz.schooldns", "SOA")
        assert soa.rcode() == dns.rcode.NOERROR and soa.flags & dns.flags.AA
        serial = soa.answer[0][0].serial

        zone = dns.zone.Zone("adult.rpz.schooldns.")
        await dns.asyncquery.inbound_xfr("127.0.0.1", zone, port=served.port, timeout=3)
        assert zone.get_soa().serial == serial
        assert records_of(zone) == {
            "adult.example": ".",
            "*.adult.example": ".",
            "videos.example": ".",
            "*.videos.example": ".",
            "clean.videos.example": "rpz-passthru.",
            "*.clean.videos.example": ".",
            "only.example": ".",
            "*.wild.example": ".",
            "*.tube.example": ".",
            "ok.tube.example": "rpz-passthru.",
            "*.ok.tube.example": ".",
        }

        # IXFR: the whole zone for an older serial, the SOA alone for the current one.
        older = dns.zone.Zone("province.rpz.schooldns.")
        await dns.asyncquery.inbound_xfr("127.0.0.1", older, port=served.port, timeout=3)
        assert records_of(older) == {
            "evil.example": ".",
            "*.evil.example": ".",
            "*.c2.example": ".",
            "dropper.example": ".",
            "*.dropper.example": ".",
            "phish.example": ".",
        }
        for client_serial, records in ((serial - 1, 9), (serial, 1)):  # SOA, NS, 6 records, SOA; or the SOA
            ixfr = dns.message.make_query("province.rpz.schooldns", "IXFR")
            ixfr.authority.append(
                dns.rrset.from_text(
                    "province.rpz.schooldns.",
                    60,
                    "IN",
                    "SOA",
                    f"localhost. hostmaster.localhost. {client_serial} 1 1 1 1",
                )
            )
            reply = await dns.asyncquery.tcp(ixfr, "127.0.0.1", port=served.port, timeout=3, one_rr_per_rrset=True)
            assert len(reply.answer) == records


def records_of(zone: dns.zone.Zone) -> dict[str, str]:
    """owner -> CNAME target of a transferred zone's policy records (not its SOA and NS)."""
    return {
        name.to_text(): rdataset[0].target.to_text() for name, rdataset in zone.iterate_rdatasets(dns.rdatatype.CNAME)
    }


async def test_tsig_transfers_with_kdig_and_dnspython(tmp_path):
    # Enough names for many messages, each signed over the one before (RFC 8945 5.3.1).
    many = "".join(f"host{i}.spread{i % 97}.example\n" for i in range(3000))
    files = {**FILES, "blocklists/games.txt": many}
    config = rpz_config(extra=f"  tsig_keys_file: {keys_file(tmp_path)}\n")
    async with (
        FakeUpstream() as upstream,
        running_resolver(tmp_path / "site", [upstream.address], config, files) as served,
    ):

        def kdig(secret: str) -> subprocess.CompletedProcess[str]:
            command = ["kdig", "@127.0.0.1", "-p", str(served.port), "-y", f"hmac-sha256:isp-one:{secret}"]
            return subprocess.run([*command, "games.rpz.schooldns", "AXFR"], capture_output=True, text=True)

        signed = await asyncio.to_thread(kdig, SECRET)
        assert signed.returncode == 0, signed.stderr
        assert "host2999.spread89.example.games.rpz.schooldns." in signed.stdout
        assert "6003 records" in signed.stdout and "messages" in signed.stdout  # SOA, NS, 3000 x 2, SOA
        wrong = await asyncio.to_thread(kdig, "A" * 43 + "=")
        assert "server replied with error 'BADSIG'" in wrong.stderr and wrong.returncode != 0  # RFC 8945 5.3.2

        unsigned = await dns.asyncquery.tcp(
            dns.message.make_query("games.rpz.schooldns", "AXFR"), "127.0.0.1", port=served.port, timeout=3
        )
        assert unsigned.rcode() == dns.rcode.REFUSED

        key = dns.tsig.Key("isp-one.", SECRET, "hmac-sha256")
        zone = dns.zone.Zone("games.rpz.schooldns.")
        query = dns.message.make_query("games.rpz.schooldns.", "AXFR")
        query.use_tsig(key)
        await dns.asyncquery.inbound_xfr("127.0.0.1", zone, query, port=served.port, timeout=5)
        assert len(records_of(zone)) == 6000

        soa = dns.message.make_query("games.rpz.schooldns.", "SOA")
        soa.use_tsig(key)
        reply = await dns.asyncquery.udp(soa, "127.0.0.1", port=served.port, timeout=3)
        assert reply.rcode() == dns.rcode.NOERROR and reply.had_tsig


class NotifyListener(asyncio.DatagramProtocol):
    """A secondary's NOTIFY port: keeps the zone and serial of each NOTIFY and answers it."""

    def __init__(self) -> None:
        self.received: list[tuple[str, int]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        message = dns.message.from_wire(data)
        assert message.opcode() == dns.opcode.NOTIFY and message.flags & dns.flags.AA
        assert not message.flags & dns.flags.RD and message.question[0].rdtype == dns.rdatatype.SOA
        self.received.append((message.question[0].name.to_text(), message.answer[0][0].serial))
        assert self.transport is not None
        self.transport.sendto(dns.message.make_response(message).to_wire(), addr)


async def test_secondaries_are_notified_of_every_new_version(tmp_path):
    loop = asyncio.get_running_loop()
    transport, listener = await loop.create_datagram_endpoint(NotifyListener, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    zones = {f"{zone}.rpz.schooldns." for zone in ("adult", "malware", "phishing", "games", "province")}
    try:
        config = rpz_config(extra=f"  notify: ['127.0.0.1:{port}']\nreload: {{watch_interval_seconds: 0}}\n")
        async with (
            FakeUpstream() as upstream,
            running_resolver(tmp_path, [upstream.address], config, FILES) as served,
        ):
            await until(lambda: len(listener.received) == len(zones), 10)
            first = await serials(served.port, zones)
            assert set(listener.received) == set(first.items()) and len(set(first.values())) == 1

            assert await served.worker.reload()  # the same lists: the same serial, no NOTIFY
            assert await serials(served.port, zones) == first
            (tmp_path / "blocklists" / "games.txt").write_text("games.example\nmore.games.example\n")
            assert await served.worker.reload()
            await until(lambda: len(listener.received) == 2 * len(zones), 10)
            later = await serials(served.port, zones)
            assert set(listener.received[len(zones) :]) == set(later.items())
            assert len(set(later.values())) == 1 and later["adult.rpz.schooldns."] > first["adult.rpz.schooldns."]
    finally:
        transport.close()


async def serials(port: int, zones: set[str]) -> dict[str, int]:
    answers = await asyncio.gather(*(ask(port, zone, "SOA") for zone in zones))
    return {zone: answer.answer[0][0].serial for zone, answer in zip(zones, answers, strict=True)}


async def test_the_zone_as_text_over_the_admin_api(tmp_path):
    async with (
        FakeUpstream() as upstream,
        running_resolver(tmp_path, [upstream.address], rpz_config(), FILES, with_admin=True) as served,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{served.admin_port}/v1/rpz"
        path = served.config.admin.tokens_file
        viewer = {"Authorization": f"Bearer {tokens.add(path, tokens.Role.parse('viewer'), 'isp')[1]}"}
        school = {"Authorization": f"Bearer {tokens.add(path, tokens.Role.parse('school:school-a'), 'a')[1]}"}
        for headers, status in (({}, 401), (school, 403)):  # the province's lists, for its staff only
            async with session.get(f"{base}/province.rpz.schooldns.", headers=headers) as response:
                assert response.status == status
        async with session.get(f"{base}/province.rpz.schooldns.", headers=viewer) as response:
            assert response.status == 200
            text = await response.text()
        zone = dns.zone.from_text(text, relativize=False)
        assert zone.origin == dns.name.from_text("province.rpz.schooldns.")
        assert records_of(zone) == {
            "evil.example.province.rpz.schooldns.": ".",
            "*.evil.example.province.rpz.schooldns.": ".",
            "*.c2.example.province.rpz.schooldns.": ".",
            "dropper.example.province.rpz.schooldns.": ".",
            "*.dropper.example.province.rpz.schooldns.": ".",
            "phish.example.province.rpz.schooldns.": ".",
        }
        async with session.get(f"{base}/unknown.rpz.schooldns", headers=viewer) as response:
            assert response.status == 404
            assert "zones: adult.rpz.schooldns, games.rpz.schooldns" in await response.text()


async def test_a_transfer_waits_for_the_reload_once_the_list_files_changed(tmp_path):
    async with (
        FakeUpstream() as upstream,
        running_resolver(
            tmp_path, [upstream.address], rpz_config() + "reload: {watch_interval_seconds: 0}\n", FILES
        ) as served,
    ):
        (tmp_path / "blocklists" / "phishing.txt").write_text("phish.example\nnew.example\n")
        reply = await dns.asyncquery.tcp(
            dns.message.make_query("phishing.rpz.schooldns", "AXFR"), "127.0.0.1", port=served.port, timeout=3
        )
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert await served.worker.reload()
        zone = dns.zone.Zone("phishing.rpz.schooldns.")
        await dns.asyncquery.inbound_xfr("127.0.0.1", zone, port=served.port, timeout=3)
        assert records_of(zone) == {"phish.example": ".", "new.example": "."}


async def test_a_transfer_to_a_slow_reader_waits_for_it_while_dns_answers(tmp_path):
    count = 20_000
    many = "".join(f"host{i}.slow{i % 89}.example\n" for i in range(count))
    files = {**FILES, "blocklists/games.txt": many}
    async with (
        FakeUpstream() as upstream,
        running_resolver(tmp_path, [upstream.address], rpz_config(), files) as served,
    ):
        upstream.answer("elsewhere.example", "A", "192.0.2.7")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the client reads nothing for now
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", served.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        # As over a slow path: the server's kernel buffer (4 MB on loopback) would take the whole zone.
        await until(lambda: len(served.worker.tcp.open) == 1, 10)
        (connection,) = served.worker.tcp.open
        connection.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        query = dns.message.make_query("games.rpz.schooldns", "AXFR").to_wire()
        writer.write(len(query).to_bytes(2, "big") + query)
        await until(lambda: connection.write_paused, 10)
        answer = await ask(served.port, "elsewhere.example")  # a query meanwhile: answered
        assert answer.rcode() == dns.rcode.NOERROR and answer.answer
        records = messages = 0
        while records < 2 * count + 3:  # SOA, NS, a name and its wildcard each, SOA
            length = int.from_bytes(await reader.readexactly(2), "big")
            message = await reader.readexactly(length)
            records += int.from_bytes(message[6:8], "big")
            messages += 1
        assert records == 2 * count + 3 and messages > 20
        last = dns.message.from_wire(message, one_rr_per_rrset=True)
        assert last.answer[-1].rdtype == dns.rdatatype.SOA
        writer.close()


async def test_with_workers_each_serves_the_one_serial_and_the_supervisor_the_text(tmp_path):
    async with (
        FakeUpstream() as upstream,
        serve(tmp_path, upstream, workers=2, files=FILES, more_config=rpz_config()) as served,
    ):
        # Each question from its own socket: the kernel's hash spreads them over both workers.
        answers = await asyncio.gather(*(ask(served.dns_port, "province.rpz.schooldns", "SOA") for _ in range(8)))
        serials = {answer.answer[0][0].serial for answer in answers}
        assert len(serials) == 1
        zone = dns.zone.Zone("province.rpz.schooldns.")
        await dns.asyncquery.inbound_xfr("127.0.0.1", zone, port=served.dns_port, timeout=3)
        assert zone.get_soa().serial in serials and "phish.example" in records_of(zone)
        secret = tokens.add(tmp_path / "var" / "tokens.yaml", tokens.Role.parse("province"), "isp")[1]
        text = await served.admin("/v1/rpz/province.rpz.schooldns", secret)
        assert f"serial {zone.get_soa().serial}" in text and "phish.example CNAME ." in text
