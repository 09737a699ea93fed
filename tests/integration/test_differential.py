"""schooldns and unbound forwarding to the same knotd with a signed zone answer alike, but for named allowances."""

from __future__ import annotations

import asyncio
import os
import random

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from tests.support import differential
from tests.support.harness import FILES, running_resolver
from tests.support.reference import DEADLINE_SECONDS, reference_servers

LISTS = {"blocklists/adult.txt": FILES["blocklists/adult.txt"] + f"blocked.{differential.ZONE}\n"}
CACHE = "cache: {min_ttl_seconds: 0}\n"


async def _until_new_data(port: int) -> None:
    """Poll until the server answers the sentinel, the last negative answer of the first pass, anew."""
    query = dns.message.make_query(f"{differential.SENTINEL}.{differential.ZONE}", "A")
    async with asyncio.timeout(DEADLINE_SECONDS):
        while (await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=2)).rcode() != dns.rcode.NOERROR:
            await asyncio.sleep(0.1)


async def differential_run(tmp_path, txt_step: int, sample: int | None) -> list[differential.Outcome]:
    """Both passes (before and after the zone changes) over the same reference servers and resolver;
    the sentinel's comparison between them."""
    sizes = differential.txt_sizes(txt_step, dense=sample is None)
    rng = random.Random(20)
    first_zone = differential.zone_text(sizes, changed=False)
    sentinel = differential.Query(f"{differential.SENTINEL}.{differential.ZONE}", "A", differential.Edns.PLAIN)
    outcomes = []
    async with (
        reference_servers(tmp_path / "reference", differential.ZONE, first_zone) as ref,
        running_resolver(tmp_path / "site", [ref.upstream], CACHE, files=LISTS) as resolver,
    ):
        outcomes.append(
            await differential.run(differential.queries(sizes, rng, sample), resolver.port, ref.unbound_port)
        )
        # Asked after every other question, its negative answer is the last of both caches' to expire.
        outcomes.append(await differential.run([sentinel], resolver.port, ref.unbound_port))
        await ref.change_zone(differential.zone_text(sizes, changed=True))
        for port in (ref.unbound_port, resolver.port):
            await _until_new_data(port)
        outcomes.append(
            await differential.run(differential.queries(sizes, rng, sample), resolver.port, ref.unbound_port)
        )
    return outcomes


def _report(outcomes: list[differential.Outcome]) -> None:
    differences = [str(d) for outcome in outcomes for d in outcome.differences]
    assert not differences, f"{len(differences)} differences:\n" + "\n".join(differences[:40])


async def test_a_few_hundred_queries_answer_as_unbound_does_before_and_after_the_zone_changes(tmp_path):
    outcomes = await differential_run(tmp_path, txt_step=1024, sample=200)
    _report(outcomes)
    assert outcomes[0].compared >= 200 and outcomes[-1].compared >= 200


@pytest.mark.conformance
async def test_thousands_of_queries_answer_as_unbound_does_before_and_after_the_zone_changes(tmp_path):
    step = int(os.environ.get("CONFORMANCE_TXT_STEP", "61"))
    outcomes = await differential_run(tmp_path, txt_step=step, sample=None)
    for outcome in outcomes:
        print(f"compared {outcome.compared}, allowances {dict(outcome.allowed)}")
    _report(outcomes)
