"""tests/perf/soakload.py's check: a right address, a block, a stale answer (EDE 3) and each wrong answer told apart."""

import dns.edns
import dns.message
import dns.rcode
import dns.rrset
import pytest

from tests.perf import soakload

NAME = "a7.soak.example"
RIGHT = ".".join(map(str, soakload.address_of(NAME)))


def _answer(rcode=dns.rcode.NOERROR, address=RIGHT, ttl=20, ede=None, name=NAME) -> bytes:
    query = dns.message.make_query(name, "A", use_edns=0)
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if rcode == dns.rcode.NOERROR and address:
        response.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", "A", address))
    if ede is not None:
        response.use_edns(0, options=[dns.edns.EDEOption(ede, "upstreams did not answer in time")])
    return response.to_wire()


@pytest.mark.parametrize(
    "answer, address, verdict",
    [
        (_answer(), soakload.address_of(NAME), (0, True, False)),
        (_answer(ttl=30, ede=3), soakload.address_of(NAME), (0, True, True)),
        (_answer(ttl=30), soakload.address_of(NAME), (0, True, False)),  # TTL 30 without EDE 3: not stale
        (
            _answer(address="192.0.2.250" if RIGHT != "192.0.2.250" else "192.0.2.251"),
            soakload.address_of(NAME),
            (0, False, False),
        ),
        (_answer(rcode=dns.rcode.NXDOMAIN), soakload.address_of(NAME), (3, False, False)),
        (_answer(rcode=dns.rcode.NXDOMAIN), None, (3, True, False)),
        (_answer(), None, (0, False, False)),  # a blocked name answered
        (_answer(rcode=dns.rcode.SERVFAIL), soakload.address_of(NAME), (2, False, False)),
        (_answer(name="a8.soak.example"), soakload.address_of(NAME), (-1, False, False)),  # another question
    ],
    ids=[
        "right",
        "stale",
        "ttl-30",
        "wrong-address",
        "nxdomain-for-allowed",
        "blocked",
        "allowed-for-blocked",
        "servfail",
        "other-question",
    ],
)
def test_every_answer_is_told_right_wrong_or_stale(answer, address, verdict):
    assert soakload.check(answer, soakload.question(NAME), address) == verdict


def test_school_a_blocks_games_and_school_b_does_not():
    name = soakload.names(soakload.GAMES)[0]
    assert soakload.expected(soakload.GAMES, soakload.SCHOOL_A, name) is None
    assert soakload.expected(soakload.GAMES, soakload.SCHOOL_B, name) == soakload.address_of(name)
    assert soakload.expected(soakload.BLOCKED, soakload.SCHOOL_B, soakload.names(soakload.BLOCKED)[0]) is None
