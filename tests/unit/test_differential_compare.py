"""The differential test's comparator reports what no allowance covers, and counts the allowances it applies."""

from __future__ import annotations

from collections import Counter

import dns.flags
import dns.message
import dns.rrset

from tests.support.differential import Allowance, Edns, Query, compare

QUERY = Query("a.conformance.example.", "A", Edns.PLAIN)


def answer(ttl: int = 300, address: str = "192.0.2.1", owner: str = "a.conformance.example.") -> dns.message.Message:
    response = dns.message.make_response(QUERY.message())
    response.flags |= dns.flags.RA
    response.answer.append(dns.rrset.from_text(owner, ttl, "IN", "A", address))
    return response


def test_equal_answers_differ_in_nothing():
    allowed: Counter[Allowance] = Counter()
    assert compare(QUERY, "udp", answer(), answer(), allowed) == [] and not allowed


def test_a_flag_a_record_or_a_ttl_above_the_zones_is_a_difference():
    authoritative = answer()
    authoritative.flags |= dns.flags.AA
    allowed: Counter[Allowance] = Counter()
    assert [d.what for d in compare(QUERY, "udp", authoritative, answer(), allowed)] == ["flags"]
    assert [d.what for d in compare(QUERY, "udp", answer(address="192.0.2.2"), answer(), allowed)] == ["answer"]
    assert [d.what for d in compare(QUERY, "udp", answer(ttl=301), answer(), allowed)] == ["answer TTLs"]
    assert not allowed


def test_aged_ttls_and_another_letter_case_are_allowances():
    allowed: Counter[Allowance] = Counter()
    assert compare(QUERY, "udp", answer(ttl=300), answer(ttl=250), allowed) == []
    assert compare(QUERY, "udp", answer(owner="A.conformance.example."), answer(), allowed) == []
    assert allowed == Counter({Allowance.TTL_AGING: 1, Allowance.NAME_CASE: 1})
