"""DoT and DoH to real clients (kdig, dig, curl, dnspython) with a test CA: answers, tokens, errors, bounds, renewal."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.edns
import dns.message
import dns.rcode
from prometheus_client.parser import text_string_to_metric_families

from resolver.operations import tokens
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import Running, running_resolver, until, write_site
from tests.support.served import ROOT, SCHOOLDNS, serve
from tests.support.testca import SERVER_NAME, CertificateAuthority, make_ca

TLS_FILES = "cert_file: tls/server.pem, key_file: tls/server.key"
ENCRYPTED = f'dot: {{listen: ["127.0.0.1:0"], {TLS_FILES}}}\ndoh: {{listen: ["127.0.0.1:0"], {TLS_FILES}}}\n'


@contextlib.asynccontextmanager
async def encrypted(
    tmp_path: Path, config_extra: str = ""
) -> AsyncIterator[tuple[Running, CertificateAuthority, FakeUpstream]]:
    """A resolver serving DoT and DoH with a certificate of a CA made for the test."""
    ca = make_ca(tmp_path / "tls")
    ca.issue()
    async with FakeUpstream() as upstream:
        upstream.answer("www.example.com", "A", "127.0.0.1", ttl=120)
        upstream.answer("games.example.com", "A", "127.0.0.1", ttl=300)
        async with running_resolver(tmp_path, [upstream.address], ENCRYPTED + config_extra) as resolver:
            yield resolver, ca, upstream


def dot_port(resolver: Running) -> int:
    return resolver.worker.tls_addresses["dot"][0][1]


def doh_port(resolver: Running) -> int:
    return resolver.worker.tls_addresses["doh"][0][1]


async def run(*argv: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


def tls_client(ca: CertificateAuthority, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.ca_file))
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def wire_query(name: str, rdtype: str = "A", query_id: int = 0, **kwargs: object) -> bytes:
    query = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    query.id = query_id
    return query.to_wire()


async def curl(
    ca: CertificateAuthority, url: str, *extra: str, source: str = "127.0.0.1"
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request made by curl."""
    process = await asyncio.create_subprocess_exec(
        "curl", "-s", "--cacert", str(ca.ca_file), "--interface", source, "-D", "-", "-o", "-", *extra, url,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), 20)
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_real_clients_get_answers_and_blocks_over_dot_and_doh(tmp_path):
    async with encrypted(tmp_path) as (resolver, ca, _):
        tls = [f"+tls-ca={ca.ca_file}", f"+tls-hostname={SERVER_NAME}"]
        dot, doh = str(dot_port(resolver)), str(doh_port(resolver))
        for argv in (
            ["kdig", "@127.0.0.1", "-p", dot, "+tls", *tls],
            ["kdig", "@127.0.0.1", "-p", doh, "+https", *tls],  # POST
            ["kdig", "@127.0.0.1", "-p", doh, "+https-get", *tls],
            ["dig", "@127.0.0.1", "-p", doh, "+https", *tls],
            ["dig", "@127.0.0.1", "-p", doh, "+https-get", *tls],
            ["dig", "@127.0.0.1", "-p", dot, "+tls", *tls],
        ):
            status, out = await run(*argv, "www.example.com", "A")
            assert status == 0 and "127.0.0.1" in out and "NOERROR" in out, (argv, out)
            status, out = await run(*argv, "games.example.com", "A")  # school-a (primary) blocks games
            assert status == 0 and "NXDOMAIN" in out and "17 (Filtered)" in out.replace("EDE: ", ""), (argv, out)

        # curl resolves over DoH (HTTP/2) before it connects: to 127.0.0.1, where nothing listens on port 9.
        _, out = await run(
            "curl", "-sv", "--cacert", str(ca.ca_file), "--doh-url", f"https://127.0.0.1:{doh}/dns-query",
            "http://www.example.com:9/",
        )  # fmt: skip
        assert "DoH A: 127.0.0.1" in out and "Trying 127.0.0.1:9" in out, out

        # dnspython's DoT client, with EDNS: the answer is padded to a multiple of 468 bytes (RFC 8467).
        query = dns.message.make_query("www.example.com", "A", use_edns=0)
        answer = await dns.asyncquery.tls(
            query, "127.0.0.1", port=int(dot), ssl_context=tls_client(ca), server_hostname=SERVER_NAME, timeout=3
        )
        assert answer.rcode() == dns.rcode.NOERROR and answer.answer[0][0].address == "127.0.0.1"
        assert len(answer.to_wire()) % 468 == 0 and any(o.otype == dns.edns.PADDING for o in answer.options)

        counted = resolver.worker.counters.queries
        assert {transport for (_, transport, _) in counted} == {"dot", "doh"}
        assert not resolver.worker.counters.rejected


async def test_doh_get_and_post_over_http2_and_http1(tmp_path):
    async with encrypted(tmp_path) as (resolver, ca, _):
        url = f"https://127.0.0.1:{doh_port(resolver)}/dns-query"
        get = url + "?dns=" + base64.urlsafe_b64encode(wire_query("www.example.com")).rstrip(b"=").decode()
        for version in ("--http2", "--http1.1"):
            status, headers, body = await curl(ca, get, version)
            assert status == 200 and headers["content-type"] == "application/dns-message"
            assert headers["cache-control"] == "max-age=120"  # the answer's TTL
            assert dns.message.from_wire(body).answer[0][0].address == "127.0.0.1"
            status, _, _ = await curl(
                ca, url, version, "-H", "content-type: application/dns-message", "--data-binary", "not DNS"
            )
            assert status == 400
            process = await asyncio.create_subprocess_exec(
                "curl", "-s", version, "--cacert", str(ca.ca_file), "-H", "content-type: application/dns-message",
                "--data-binary", "@-", "-o", "-", url, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            body, _ = await process.communicate(wire_query("games.example.com", use_edns=0))
            blocked = dns.message.from_wire(body)
            assert blocked.rcode() == dns.rcode.NXDOMAIN and len(body) % 468 == 0
            assert any(o.otype == dns.edns.EDE for o in blocked.options)


async def test_bad_doh_requests_get_their_status_and_are_counted(tmp_path):
    async with encrypted(tmp_path) as (resolver, ca, _):
        base = f"https://127.0.0.1:{doh_port(resolver)}"
        binary = ("-H", "content-type: application/dns-message")
        too_long = tmp_path / "long.bin"
        too_long.write_bytes(bytes(70_000))
        for expected, path, extra in (
            (404, "/", ()),
            (404, "/dns-query-not", ()),
            (405, "/dns-query", ("-X", "PUT")),
            (400, "/dns-query", ()),  # no dns parameter
            (400, "/dns-query?dns=%%%", ()),
            (415, "/dns-query", ("-H", "content-type: text/plain", "--data-binary", "x" * 20)),
            (413, "/dns-query", (*binary, "--data-binary", f"@{too_long}")),
            (403, "/dns-query/sdns_not-a-token?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB", ()),
        ):
            for version in ("--http2", "--http1.1"):
                status, _, _ = await curl(ca, base + path, version, *extra)
                assert status == expected, (path, version, extra)
        rejected = {reason: n for (transport, reason), n in resolver.worker.counters.rejected.items()}
        assert rejected == {
            "http_not_found": 4,
            "http_method": 2,
            "http_bad_request": 4,
            "http_media_type": 2,
            "http_too_large": 2,
            "http_forbidden": 2,
        }
        # Still answering.
        status, _, body = await curl(ca, base + "/dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB")
        assert status == 200 and dns.message.from_wire(body).rcode() == dns.rcode.NOERROR


async def test_a_doh_token_answers_for_its_school_and_only_while_it_exists(tmp_path):
    async with encrypted(tmp_path, "default_school: school-a\n") as (resolver, ca, _):
        token, secret = tokens.add(resolver.config.admin.tokens_file, tokens.Role.parse("doh:school-b"))
        _, orphan = tokens.add(resolver.config.admin.tokens_file, tokens.Role.parse("doh:school-gone"))
        _, admin = tokens.add(resolver.config.admin.tokens_file, tokens.Role.parse("province"))
        games = "?dns=" + base64.urlsafe_b64encode(wire_query("games.example.com")).rstrip(b"=").decode()
        base = f"https://127.0.0.1:{doh_port(resolver)}/dns-query"

        # From school A's address: by address, school A blocks games; by school B's token, B does not.
        _, _, body = await curl(ca, base + games)
        assert dns.message.from_wire(body).rcode() == dns.rcode.NXDOMAIN
        status, _, body = await curl(ca, f"{base}/{secret}{games}")
        assert status == 200 and dns.message.from_wire(body).rcode() == dns.rcode.NOERROR
        assert resolver.worker.counters.queries[("school-b", "doh", "forwarded")] == 1

        # Never answered for another school (nor the default one): an admin token, one whose school
        # is gone, a made-up one.
        for other in (admin, orphan, secret[:-2] + "xx"):
            assert (await curl(ca, f"{base}/{other}{games}"))[0] == 403

        tokens.revoke(resolver.config.admin.tokens_file, token.name)

        async def revoked() -> bool:
            return (await curl(ca, f"{base}/{secret}{games}"))[0] == 403

        async with asyncio.timeout(5):
            while not await revoked():
                await asyncio.sleep(0.2)


async def test_a_renewed_certificate_is_served_without_a_restart(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="resolver.dataplane.tls")
    async with encrypted(tmp_path) as (resolver, ca, _):
        port = dot_port(resolver)

        async def serial() -> int:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=tls_client(ca), server_hostname=SERVER_NAME
            )
            certificate = writer.get_extra_info("ssl_object").getpeercert()
            writer.close()
            return int(certificate["serialNumber"], 16)

        first = await serial()
        ca.issue(serial=first + 1)  # written in place, as certbot or a Kubernetes Secret does
        async with asyncio.timeout(5):
            while await serial() != first + 1:
                await asyncio.sleep(0.1)

        # A broken pair (another certificate's key) is refused in one line; the good one keeps serving.
        cert_file, key_file = tmp_path / "tls" / "server.pem", tmp_path / "tls" / "server.key"
        ca.issue("other")
        key_file.write_bytes((tmp_path / "tls" / "other.key").read_bytes())
        async with asyncio.timeout(5):  # the files are looked at when a connection comes
            while "does not belong to the certificate" not in caplog.text:
                assert await serial() == first + 1
                await asyncio.sleep(0.1)
        [line] = [r.getMessage() for r in caplog.records if "does not belong" in r.getMessage()]
        assert str(key_file) in line and str(cert_file) in line and "\n" not in line

        # SIGHUP's path (Worker.reload) loads the files at once.
        ca.issue(serial=first + 2)
        assert await resolver.worker.reload()
        assert await serial() == first + 2


async def test_broken_handshakes_and_http_are_counted_and_the_server_answers_on(tmp_path):
    async with encrypted(tmp_path) as (resolver, ca, _):
        rejected = resolver.worker.counters.rejected
        for port in (dot_port(resolver), doh_port(resolver)):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not TLS
            await writer.drain()
            writer.close()
        # A client that does not trust the certificate gives up during the handshake.
        status, _ = await run(
            "kdig", "@127.0.0.1", "-p", str(dot_port(resolver)), "+tls-ca", "+tls-hostname=x.test", "a.test"
        )
        assert status != 0
        await until(lambda: rejected[("dot", "tls_handshake")] == 2 and rejected[("doh", "tls_handshake")] == 1, 5)

        # HTTP/2 that is not HTTP/2, and an HTTP/1.1 request line that is not one.
        for alpn, garbage in (
            (["h2"], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(30)),
            (["http/1.1"], b"HELLO\r\n\r\n"),
        ):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", doh_port(resolver), ssl=tls_client(ca, alpn), server_hostname=SERVER_NAME
            )
            writer.write(garbage)
            await writer.drain()
            assert not (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")  # read to the close
            writer.close()
        assert rejected[("doh", "http_malformed")] == 2

        status, out = await run(
            "kdig", "@127.0.0.1", "-p", str(dot_port(resolver)), "+tls", f"+tls-ca={ca.ca_file}",
            f"+tls-hostname={SERVER_NAME}", "www.example.com",
        )  # fmt: skip
        assert status == 0 and "NOERROR" in out


async def test_connections_beyond_the_cap_are_turned_away_and_idle_ones_closed(tmp_path):
    limits = "limits: {tcp_max_connections: 2, tcp_idle_timeout_seconds: 0.5}\n"
    async with encrypted(tmp_path, limits) as (resolver, ca, _):
        port = dot_port(resolver)
        held = [
            await asyncio.open_connection("127.0.0.1", port, ssl=tls_client(ca), server_hostname=SERVER_NAME)
            for _ in range(2)
        ]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        await until(lambda: resolver.worker.counters.rejected[("dot", "connection_limit")] == 1, 5)
        writer.close()
        # RFC 7766 6.2.3: an idle connection is closed, which frees its place.
        for reader, _ in held:
            assert await asyncio.wait_for(reader.read(), 5) == b""
        query = dns.message.make_query("www.example.com", "A")
        answer = await dns.asyncquery.tls(
            query, "127.0.0.1", port=port, ssl_context=tls_client(ca), server_hostname=SERVER_NAME, timeout=3
        )
        assert answer.rcode() == dns.rcode.NOERROR


def test_a_certificate_that_does_not_load_stops_the_start_in_one_line(tmp_path):
    ca = make_ca(tmp_path / "tls")
    ca.issue()
    (tmp_path / "tls" / "server.key").write_text("not a key\n")
    config = write_site(tmp_path, ["127.0.0.1:53"], ENCRYPTED)
    result = subprocess.run(
        [*SCHOOLDNS, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 1
    line = (
        config.read_text().splitlines().index(next(x for x in config.read_text().splitlines() if x.startswith("dot:")))
    )
    key = tmp_path / "tls" / "server.key"
    assert result.stderr.splitlines() == [
        f"{config}:{line + 1}: dot.key_file: {key} holds no PEM private key",
        f"{config}:{line + 2}: doh.key_file: {key} holds no PEM private key",
    ]


async def test_every_worker_of_a_supervisor_serves_dot_and_doh_on_one_port(tmp_path):
    make_ca(tmp_path / "tls").issue()
    async with FakeUpstream() as upstream:
        upstream.answer("www.example.com", "A", "127.0.0.1")
        async with serve(tmp_path, upstream, workers=2, more_config=ENCRYPTED) as served:
            ports = {
                kind: {
                    int(m[1]) for line in served.log if (m := re.search(rf"serving {kind} on 127\.0\.0\.1:(\d+)", line))
                }
                for kind in ("DNS over TLS", "DNS over HTTPS")
            }
            assert [len(found) for found in ports.values()] == [1, 1], served.log  # both workers, the same port
            [dot], [doh] = ports.values()
            tls = [f"+tls-ca={tmp_path / 'tls' / 'ca.pem'}", f"+tls-hostname={SERVER_NAME}"]
            for _ in range(4):
                for argv in (["-p", str(dot), "+tls"], ["-p", str(doh), "+https"]):
                    status, out = await run("kdig", "@127.0.0.1", *argv, *tls, "www.example.com")
                    assert status == 0 and "NOERROR" in out, out

            async def answered() -> dict[str, float]:
                """Queries answered per transport, from /metrics (each worker reports every second)."""
                totals: dict[str, float] = {}
                for family in text_string_to_metric_families(await served.metrics()):
                    if family.name == "schooldns_queries":
                        for sample in family.samples:
                            transport = sample.labels["transport"]
                            totals[transport] = totals.get(transport, 0) + sample.value
                return totals

            async with asyncio.timeout(10):
                while await answered() != {"dot": 4, "doh": 4}:
                    await asyncio.sleep(0.2)


async def test_a_doh_query_over_its_schools_rate_cap_gets_429_and_is_counted(tmp_path):
    async with encrypted(tmp_path, "limits: {queries_per_second_per_school: 1}\n") as (resolver, ca, _):
        url = f"https://127.0.0.1:{doh_port(resolver)}/dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB"
        # Ten requests on one connection, far faster than a token a second comes back: a burst of 2.
        code, out = await run(
            "curl", "-s", "--cacert", str(ca.ca_file), "-w", "%{http_code}\n", *["-o", "/dev/null", url] * 10
        )
        statuses = out.split()
        assert code == 0 and set(statuses) == {"200", "429"} and statuses.count("200") >= 2, out
        assert resolver.worker.counters.dropped["school_rate_limit"] == statuses.count("429")


class RawTls:
    """A DoT client that makes its own TLS records (ssl.SSLObject over a plain connection)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ca: CertificateAuthority):
        self.reader, self.writer = reader, writer
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = tls_client(ca).wrap_bio(self.incoming, self.outgoing, server_hostname=SERVER_NAME)

    async def start(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.send()
                assert await self.receive()
        self.send()

    def send(self, *records: bytes) -> None:
        """Each piece a TLS record of its own, all in one write."""
        for record in records:
            self.tls.write(record)
        self.writer.write(self.outgoing.read())

    async def receive(self) -> bool:
        data = await asyncio.wait_for(self.reader.read(65536), 5)
        self.incoming.write(data) if data else self.incoming.write_eof()
        return bool(data)

    async def answers(self, count: int) -> list[dns.message.Message]:
        stream = b""
        while True:
            with contextlib.suppress(ssl.SSLWantReadError):
                while chunk := self.tls.read(65536):
                    stream += chunk
            messages, rest = [], stream
            while len(rest) >= 2 and len(rest) >= 2 + int.from_bytes(rest[:2]):
                messages.append(dns.message.from_wire(rest[2 : 2 + int.from_bytes(rest[:2])]))
                rest = rest[2 + int.from_bytes(rest[:2]) :]
            if len(messages) >= count:
                return messages
            assert await self.receive()


async def test_queries_in_records_of_any_shape_are_answered_and_both_ends_close_cleanly(tmp_path):
    async with encrypted(tmp_path, "limits: {tcp_idle_timeout_seconds: 0.5}\n") as (resolver, ca, _):
        client = RawTls(*await asyncio.open_connection("127.0.0.1", dot_port(resolver)), ca)
        await client.start()
        framed = [
            len(q).to_bytes(2) + q
            for q in (wire_query("www.example.com", query_id=n) for n in range(1, 5))  # 4 queries
        ]
        # Two records of a query each; then one cut across two records; then half of one, the rest later.
        client.send(framed[0], framed[1], framed[2][:1], framed[2][1:], framed[3][:7])
        await asyncio.sleep(0)
        client.send(framed[3][7:])
        answers = await client.answers(4)
        assert sorted(a.id for a in answers) == [1, 2, 3, 4]
        assert all(a.rcode() == dns.rcode.NOERROR and a.answer for a in answers)

        # The client's close_notify gets the server's, and the connection closes.
        with contextlib.suppress(ssl.SSLWantReadError):
            client.tls.unwrap()
        client.send()
        while await client.receive():
            pass
        client.tls.unwrap()  # the server's close_notify came: no error
        client.writer.close()

        # An idle connection is closed with a close_notify, not cut off.
        idle = RawTls(*await asyncio.open_connection("127.0.0.1", dot_port(resolver)), ca)
        await idle.start()
        while await idle.receive():
            pass
        assert idle.tls.read(1) == b""  # a close_notify (a TCP end without one raises SSLEOFError)
        idle.writer.close()
