"""Local names over real sockets: a school's forward zones reach its own DNS server, locally served zones reach none."""

import dns.flags
import dns.rcode
import dns.rdatatype
import pytest

from tests.integration.test_conformance import ask, flags_of, status_of, well_formed
from tests.support import harness
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import running_resolver


@pytest.fixture
async def public():
    async with FakeUpstream() as up:
        up.answer("www.example.com", "A", "192.0.2.10")
        up.answer("dc1.truong.local", "A", "203.0.113.66")  # what the internet would say: never school A's answer
        yield up


@pytest.fixture
async def intranet():
    """School A's own DNS server (its Active Directory, say)."""
    async with FakeUpstream() as up:
        up.answer("dc1.truong.local", "A", "10.1.2.10")
        up.answer("games.truong.local", "A", "10.1.2.11")
        up.answer("10.2.1.10.in-addr.arpa", "PTR", "dc1.truong.local.")
        yield up


@pytest.fixture
async def resolver(tmp_path, public, intranet):
    school_a = (
        harness.SCHOOL_A.replace("denied.example.org", "games.truong.local")
        + f'forward_zones:\n  truong.local: ["{intranet.address}"]\n  2.1.10.in-addr.arpa: ["{intranet.address}"]\n'
    )
    async with running_resolver(tmp_path, [public.address], files={"policies/school-a.yaml": school_a}) as running:
        yield running


async def test_a_schools_forward_zone_reaches_its_server_and_no_other_schools(resolver, public, intranet):
    for _ in range(2):  # the second from school A's cache
        answer = await resolver.udp("dc1.truong.local")
        assert [rd.to_text() for rd in answer.answer[0]] == ["10.1.2.10"]
    assert intranet.count("dc1.truong.local") == 1 and public.count() == 0
    other = await resolver.udp("dc1.truong.local", source="127.0.0.2")  # school B
    assert [rd.to_text() for rd in other.answer[0]] == ["203.0.113.66"]  # not school A's cached answer
    assert intranet.count() == 1 and public.count("dc1.truong.local") == 1
    over_tcp = await resolver.tcp("10.2.1.10.in-addr.arpa", "PTR")
    assert [rd.to_text() for rd in over_tcp.answer[0]] == ["dc1.truong.local."]
    assert intranet.count("10.2.1.10.in-addr.arpa") == 1


async def test_a_name_blocked_under_a_forward_zone_stays_blocked(resolver, intranet):
    answer = await resolver.udp("games.truong.local")
    assert answer.rcode() == dns.rcode.NXDOMAIN and intranet.count() == 0


async def test_a_forward_zones_server_that_does_not_answer_is_a_servfail_not_the_upstreams_answer(
    tmp_path, public, intranet
):
    intranet.drop()
    school_a = harness.SCHOOL_A + f'forward_zones: {{truong.local: ["{intranet.address}"]}}\n'
    async with running_resolver(tmp_path, [public.address], files={"policies/school-a.yaml": school_a}) as running:
        answer = await running.udp("dc1.truong.local")
    assert answer.rcode() == dns.rcode.SERVFAIL and public.count() == 0 and intranet.count() >= 1


@pytest.mark.parametrize(
    ("name", "qtype", "rcode", "answer"),
    [
        ("localhost", "A", dns.rcode.NOERROR, ["127.0.0.1"]),
        ("localhost", "AAAA", dns.rcode.NOERROR, ["::1"]),
        ("1.0.0.127.in-addr.arpa", "PTR", dns.rcode.NOERROR, ["localhost."]),
        ("10.in-addr.arpa", "PTR", dns.rcode.NOERROR, []),
        ("9.8.7.10.in-addr.arpa", "PTR", dns.rcode.NXDOMAIN, []),
        ("printer.invalid", "A", dns.rcode.NXDOMAIN, []),
    ],
)
async def test_locally_served_zones_never_reach_the_upstream(resolver, public, intranet, name, qtype, rcode, answer):
    for ask_over in (resolver.udp, resolver.tcp):
        for source in ("127.0.0.1", "127.0.0.2"):
            reply = await ask_over(name, qtype, source=source)
            assert reply.rcode() == rcode and reply.flags & dns.flags.AA
            assert [rd.to_text() for rrset in reply.answer for rd in rrset] == answer
            if not answer:
                assert reply.authority[0].rdtype == dns.rdatatype.SOA
    assert public.count() == 0 and intranet.count() == 0


@pytest.mark.parametrize("tool", ["dig", "kdig"])
async def test_dig_and_kdig_see_local_answers_without_the_upstream(resolver, public, intranet, tool):
    type_args = ("-t", "PTR") if tool == "kdig" else ("PTR",)
    output = await ask(tool, resolver.port, "1.0.0.127.in-addr.arpa", *type_args)
    well_formed(output)
    assert status_of(output) == "NOERROR" and "aa" in flags_of(output) and "localhost." in output
    output = await ask(tool, resolver.port, "10.in-addr.arpa", *type_args)
    well_formed(output)
    assert status_of(output) == "NOERROR" and "10.in-addr.arpa." in output and "SOA" in output
    output = await ask(tool, resolver.port, "localhost")
    assert status_of(output) == "NOERROR" and "127.0.0.1" in output
    output = await ask(tool, resolver.port, "dc1.truong.local")
    assert status_of(output) == "NOERROR" and "10.1.2.10" in output
    assert public.count() == 0 and intranet.count("dc1.truong.local") == 1
