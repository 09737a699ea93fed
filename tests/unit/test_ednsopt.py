"""EDNS options on literal messages: a query's Client Subnet address, an answer's padding to 468-byte blocks."""

from __future__ import annotations

import socket
import struct

import dns.edns
import dns.message
import dns.rrset
import pytest

from resolver.dataplane import ednsopt


def query_with(*options: dns.edns.Option) -> bytes:
    return dns.message.make_query("www.example.com", "A", use_edns=0, options=list(options)).to_wire()


@pytest.mark.parametrize(
    "address, prefix, packed",
    [
        ("192.0.2.7", 32, socket.inet_aton("192.0.2.7")),
        ("192.0.2.0", 24, socket.inet_aton("192.0.2.0")),
        ("2001:db8::", 56, socket.inet_pton(socket.AF_INET6, "2001:db8::")),
    ],
)
def test_a_client_subnet_gives_its_address_padded_to_its_family(address, prefix, packed):
    assert ednsopt.client_subnet(query_with(dns.edns.ECSOption(address, prefix))) == packed


def test_no_address_without_a_usable_client_subnet():
    assert ednsopt.client_subnet(query_with()) is None
    assert ednsopt.client_subnet(dns.message.make_query("a.example", "A").to_wire()) is None
    assert ednsopt.client_subnet(query_with(dns.edns.ECSOption("0.0.0.0", 0))) is None  # the client opted out
    assert ednsopt.client_subnet(b"\x00" * 11) is None
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, bytes(8))
    assert ednsopt.client_subnet(query_with(cookie)) is None
    # An address longer than its prefix says, an unknown family, a truncated option.
    for body in (b"\x00\x01\x08\x00\xc0\x00", b"\x00\x03\x08\x00\xc0", b"\x00\x01"):
        bad = dns.edns.GenericOption(dns.edns.OptionType.ECS, body)
        assert ednsopt.client_subnet(query_with(bad)) is None


def answer(edns: bool = True, records: int = 1) -> bytes:
    query = dns.message.make_query("www.example.com", "A", use_edns=0 if edns else False)
    query.id = 4321
    response = dns.message.make_response(query)
    for n in range(records):
        response.answer.append(dns.rrset.from_text("www.example.com.", 60, "IN", "A", f"192.0.2.{n}"))
    return response.to_wire()


@pytest.mark.parametrize("records", [0, 1, 40])
def test_an_answer_is_padded_to_a_multiple_of_468_bytes_and_reads_the_same(records):
    plain = answer(records=records)
    padded = ednsopt.pad(plain)
    assert len(padded) % 468 == 0 and len(padded) >= len(plain)
    message = dns.message.from_wire(padded)
    assert message.answer == dns.message.from_wire(plain).answer and message.id == dns.message.from_wire(plain).id
    assert [o.otype for o in message.options] == [dns.edns.PADDING]
    assert ednsopt.pad(padded) == padded  # padded once


def test_no_padding_without_edns_or_with_the_opt_record_elsewhere():
    plain = answer(edns=False)
    assert ednsopt.pad(plain) == plain
    assert ednsopt.pad(b"\x00" * 5) == b"\x00" * 5
    # A record after the OPT record: padding it would move that record, so it is left alone.
    with_edns = answer()
    record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + bytes(4)
    arcount = struct.unpack_from("!H", with_edns, 10)[0] + 1
    opt_not_last = with_edns[:10] + struct.pack("!H", arcount) + with_edns[12:] + record
    assert dns.message.from_wire(opt_not_last).additional
    assert ednsopt.pad(opt_not_last) == opt_not_last


def test_queries_pad_to_128():
    padded = ednsopt.pad(query_with(), 128)
    assert len(padded) == 128 and dns.message.from_wire(padded).question[0].name.to_text() == "www.example.com."
