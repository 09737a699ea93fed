"""Readiness that tells the truth: with every upstream failing, /readyz, /status, /metrics and the log say so, once."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import dns.asyncquery
import dns.edns
import dns.message
import dns.rcode
import pytest

from resolver.dataplane import upstream as forwarding
from resolver.dataplane import wire
from tests.support.fake_upstream import FakeUpstream
from tests.support.served import Served, serve

FAILING = "every upstream is failing"
AGAIN = "upstreams answer again"


async def readyz(served: Served) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{served.admin_port}/readyz") as response,
    ):
        return response.status, await response.text()


async def ask(served: Served, name: str) -> dns.message.Message:
    query = dns.message.make_query(name, "A", use_edns=0)
    return await dns.asyncquery.udp(query, "127.0.0.1", port=served.dns_port, timeout=3)


@pytest.mark.parametrize("workers", [1, 2])
async def test_an_outage_of_every_upstream_is_degraded_said_once_and_over_when_they_answer(tmp_path, workers):
    async with FakeUpstream() as upstream, serve(tmp_path, upstream, workers) as served:
        upstream.answer("www.example.com", "A", "192.0.2.10")
        assert (await ask(served, "www.example.com")).rcode() == dns.rcode.NOERROR
        assert await readyz(served) == (200, "ready\n")

        await upstream.stop()  # nothing listens on its port: every query fails at once
        for number in range(forwarding.DOWN_AFTER_FAILURES + 3):
            answer = await ask(served, f"q{number}.example.com")
            assert answer.rcode() == dns.rcode.SERVFAIL
            [ede] = [option for option in answer.options if option.otype == dns.edns.EDE]
            # The upstream and how it failed, nothing of the machine's own errors.
            assert (ede.code, ede.text) == (
                wire.EDE_NETWORK_ERROR,
                f"no upstream answered: {upstream.address} unreachable",
            )

        # With workers: 2 the supervisor sees it once the worker has published (every second).
        async with asyncio.timeout(5):
            while await readyz(served) != (503, f"degraded: every upstream is failing ({upstream.address})\n"):
                await asyncio.sleep(0.05)
        status = json.loads(await served.admin("/status"))
        assert status["degraded"] is True
        assert [(row["up"], row["failing"]) for row in status["upstreams"]] == [(False, True)]
        assert "\nschooldns_degraded 1.0\n" in await served.metrics()
        await served.read_until(FAILING)

        await upstream.start()  # the same port: probes find it answering, with no client asking
        await served.read_until(AGAIN, timeout=10)
        assert await readyz(served) == (200, "ready\n")
        assert json.loads(await served.admin("/status"))["degraded"] is False
        assert (await ask(served, "www.example.com")).rcode() == dns.rcode.NOERROR
        # One warning when it began and one when it ended, not one per query.
        said = [line for line in served.log if FAILING in line or AGAIN in line]
        assert len(said) == 2 and FAILING in said[0] and AGAIN in said[1] and all("WARNING" in line for line in said)
