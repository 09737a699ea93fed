"""Upstreams written tls://address#name: DNS over TLS to a real TLS server, verified, one connection reused."""

from __future__ import annotations

import asyncio
import logging
import ssl

import dns.message
import dns.rcode
import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import running_resolver
from tests.support.testca import SERVER_NAME, make_ca


@pytest.fixture
def ca(tmp_path, monkeypatch):
    authority = make_ca(tmp_path / "upstream-ca")
    monkeypatch.setenv("SSL_CERT_FILE", str(authority.ca_file))  # the trust store TlsUpstream reads
    return authority


def server_context(ca) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*ca.issue("upstream"))
    return context


async def test_queries_go_over_one_verified_tls_connection(tmp_path, ca):
    async with FakeUpstream(tls=server_context(ca)) as upstream:
        for n in range(5):
            upstream.answer(f"host{n}.example.com", "A", f"192.0.2.{n + 1}")
        address = f"tls://127.0.0.1:{upstream.port}#{SERVER_NAME}"
        async with running_resolver(tmp_path, [address]) as resolver:
            answers = await asyncio.gather(*(resolver.udp(f"host{n}.example.com") for n in range(5)))
            assert [a.answer[0][0].address for a in answers] == [f"192.0.2.{n + 1}" for n in range(5)]
            assert {call.transport for call in upstream.calls} == {"tcp"}
            assert len({call.peer for call in upstream.calls}) == 1  # one connection, reused
            assert all(len(call.raw) % 128 == 0 for call in upstream.calls)  # padded (RFC 8467)
            assert [u.address for u in resolver.worker.state().upstreams] == [address]

            # The server closes it (a restart, an idle timeout): the next query opens another.
            await upstream.stop()
            await upstream.start()
            assert (await resolver.udp("host0.example.com", "AAAA")).rcode() == dns.rcode.NOERROR
            assert len({call.peer for call in upstream.calls}) == 2


async def test_a_certificate_for_another_name_is_not_trusted(tmp_path, ca, caplog):
    caplog.set_level(logging.WARNING, logger="resolver.dataplane.upstreamtls")
    async with FakeUpstream(tls=server_context(ca)) as upstream:
        upstream.answer("www.example.com", "A", "192.0.2.1")
        async with running_resolver(tmp_path, [f"tls://127.0.0.1:{upstream.port}#other.example.net"]) as resolver:
            for _ in range(2):
                answer = await resolver.udp("www.example.com", use_edns=0)
                assert answer.rcode() == dns.rcode.SERVFAIL
            assert not upstream.calls
            [line] = [r.getMessage() for r in caplog.records]  # said once, not per query
            assert "other.example.net" in line and "certificate verify failed" in line
