"""DoH's pieces without sockets: the doh:<school> tokens it reads (again after a change), an answer's max-age."""

from __future__ import annotations

import os

import dns.message
import dns.rrset
from hypothesis import given, settings
from hypothesis import strategies as st

from resolver.dataplane import doh
from resolver.operations import tokens


def test_the_doh_listener_knows_only_doh_tokens_and_sees_them_change(tmp_path, monkeypatch):
    path = tmp_path / "tokens.yaml"
    _, school_b = tokens.add(path, tokens.Role.parse("doh:school-b"))
    _, province = tokens.add(path, tokens.Role.parse("province"))
    _, school_a = tokens.add(path, tokens.Role.parse("school:school-a"))
    schools = doh.TokenSchools(path)
    assert schools.school(school_b) == "school-b"
    assert schools.school(province) is None and schools.school(school_a) is None and schools.school("sdns_x") is None

    later = tokens.add(path, tokens.Role.parse("doh:school-c"))[1]
    assert schools.school(later) is None  # looked at again only after TOKENS_CHECK_SECONDS
    monkeypatch.setattr(doh, "TOKENS_CHECK_SECONDS", 0.0)
    assert schools.school(later) == "school-c"

    os.chmod(path, 0o644)  # readable by others: no token is trusted until it is fixed
    tokens_file_seen = schools.file
    os.utime(path, ns=(1, 1))
    assert schools.school(school_b) is None and "chmod 600" in (tokens_file_seen.problem or "")


def answer(ttl: int | None = None, soa_ttl: int | None = None) -> bytes:
    response = dns.message.make_response(dns.message.make_query("www.example.com", "A"))
    if ttl is not None:
        response.answer.append(dns.rrset.from_text("www.example.com.", ttl, "IN", "A", "192.0.2.1"))
    if soa_ttl is not None:
        response.authority.append(dns.rrset.from_text("example.com.", soa_ttl, "IN", "SOA", "a. b. 1 2 3 4 5"))
    return response.to_wire()


def test_the_max_age_of_a_doh_answer_is_its_smallest_ttl():
    assert doh.min_ttl(answer(300)) == 300
    response = dns.message.make_response(dns.message.make_query("www.example.com", "A"))
    response.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "CNAME", "cdn.example.net."))
    response.answer.append(dns.rrset.from_text("cdn.example.net.", 20, "IN", "A", "192.0.2.1"))
    assert doh.min_ttl(response.to_wire()) == 20
    assert doh.min_ttl(answer(soa_ttl=60)) == 60  # a negative answer: its SOA
    assert doh.min_ttl(answer()) == 0  # nothing to keep (SERVFAIL, REFUSED)
    assert doh.min_ttl(b"\x00" * 7) == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=20)), max_size=5), st.binary(max_size=80))
def test_the_dns_parameter_is_found_among_any_others_undecoded(others, value):
    others = [(name, v) for name, v in others if b"&" not in name + v and b"=" not in name and name != b"dns"]
    value = value.replace(b"&", b"")
    parts = [name + b"=" + v for name, v in others]
    assert doh._dns_parameter(b"&".join(parts)) is None
    parts.insert(len(parts) // 2, b"dns=" + value)
    assert doh._dns_parameter(b"&".join(parts)) == value


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_the_max_age_of_any_bytes_is_a_ttl_or_0(answer):
    assert 0 <= doh.min_ttl(answer) <= 0xFFFFFFFF
