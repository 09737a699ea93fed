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


async def _until_negatives_expired(
    questions: list[differential.Query], ports: tuple[int, ...], knot_port: int, serial: int
) -> None:
    """Poll until every server answers each of the questions as knotd now does (rcode, answer RRsets,
    no SOA older than serial): every negative answer kept from before the change has expired (each
    within its SOA's TTL, or the deadline fails)."""

    async def ask(question: differential.Query, port: int) -> dns.message.Message:
        return await dns.asyncquery.udp(question.message(), "127.0.0.1", port=port, timeout=2)

    def shape(answer: dns.message.Message) -> tuple[int, int]:
        return answer.rcode(), len(answer.answer)

    truth = {question: shape(await ask(question, knot_port)) for question in questions}
    pending = [(question, port) for question in questions for port in ports]
    async with asyncio.timeout(DEADLINE_SECONDS):
        while pending:
            still = []
            for question, port in pending:
                answer = await ask(question, port)
                old = differential.soa_serial(answer)
                if shape(answer) != truth[question] or (old is not None and old < serial):
                    still.append((question, port))
            pending = still
            if pending:
                await asyncio.sleep(0.1)


async def differential_run(tmp_path, txt_step: int, sample: int | None) -> list[differential.Outcome]:
    """Both passes (before and after the zone changes) over the same reference servers and resolver."""
    sizes = differential.txt_sizes(txt_step, dense=sample is None)
    rng = random.Random(20)
    first_zone = differential.zone_text(sizes, changed=False)
    async with (
        reference_servers(tmp_path / "reference", differential.ZONE, first_zone) as ref,
        running_resolver(tmp_path / "site", [ref.upstream], CACHE, files=LISTS) as resolver,
    ):
        before = await differential.run(differential.queries(sizes, rng, sample), resolver.port, ref.unbound_port)
        serial = await ref.change_zone(differential.zone_text(sizes, changed=True))
        await _until_negatives_expired(before.negative, (ref.unbound_port, resolver.port), ref.knot_port, serial)
        after = await differential.run(differential.queries(sizes, rng, sample), resolver.port, ref.unbound_port)
    return [before, after]


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
        print(f"compared {outcome.compared}, allowances { ({a.name: n for a, n in outcome.allowed.items()}) }")
    _report(outcomes)
