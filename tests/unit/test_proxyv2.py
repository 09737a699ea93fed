"""PROXY v2 headers from literal bytes: addresses, LOCAL, TLVs, pieces of a stream, and every malformed kind."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from resolver.dataplane import proxyv2

SIG = proxyv2.SIGNATURE
V4 = socket.inet_aton("192.0.2.7") + socket.inet_aton("198.51.100.1") + struct.pack("!HH", 5300, 53)
V6 = socket.inet_pton(socket.AF_INET6, "2001:db8::7") + socket.inet_pton(socket.AF_INET6, "2001:db8::1")


def test_an_ipv4_header_names_the_client_and_its_length():
    data = SIG + b"\x21\x12" + struct.pack("!H", 12) + V4 + b"DNS"
    assert proxyv2.parse(data) == proxyv2.Header(socket.inet_aton("192.0.2.7"), 5300, 28)


def test_an_ipv6_header_with_tlvs_skips_them():
    tlvs = b"\x01\x00\x02h2" + b"\x05\x00\x00"  # ALPN, an empty unique ID
    body = V6 + struct.pack("!HH", 40000, 853) + tlvs
    data = SIG + b"\x21\x21" + struct.pack("!H", len(body)) + body
    header = proxyv2.parse(data)
    assert header.client == socket.inet_pton(socket.AF_INET6, "2001:db8::7") and header.port == 40000
    assert header.length == len(data)


@pytest.mark.parametrize(
    "version_command, family, body",
    [
        (0x20, 0x12, V4),  # LOCAL: a balancer's own health check
        (0x21, 0x00, b""),  # PROXY with no address family
        (0x21, 0x31, bytes(216)),  # a UNIX socket
    ],
)
def test_headers_without_a_client_address_leave_the_connections_own(version_command, family, body):
    data = SIG + bytes((version_command, family)) + struct.pack("!H", len(body)) + body
    assert proxyv2.parse(data) == proxyv2.Header(None, 0, len(data))


def test_make_builds_what_parse_reads():
    client = socket.inet_pton(socket.AF_INET6, "2001:db8::9")
    data = proxyv2.make(client, 1234, bytes(16), 53, stream=True)
    assert data[13] == 0x21 and proxyv2.parse(data) == proxyv2.Header(client, 1234, len(data))


def test_a_stream_is_told_to_wait_for_the_rest():
    whole = SIG + b"\x21\x11" + struct.pack("!H", 12) + V4
    for cut in (0, 1, 11, 12, 15, 16, 27):
        with pytest.raises(proxyv2.Incomplete):
            proxyv2.parse(whole[:cut])
    assert proxyv2.starts_header(whole[:5]) and proxyv2.starts_header(whole)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x16\x03\x01\x00", "no PROXY v2 signature"),  # a TLS ClientHello
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 5300 53\r\n", "no PROXY v2 signature"),  # version 1's text
        (SIG + b"\x11\x11\x00\x0c" + V4, "version 1"),
        (SIG + b"\x2f\x11\x00\x0c" + V4, "command 15"),
        (SIG + b"\x21\x41\x00\x0c" + V4, "address family 4"),
        (SIG + b"\x21\x13\x00\x0c" + V4, "protocol 3"),
        (SIG + b"\x21\x11\x00\x04" + V4[:4], "family 1 needs 12"),
        (SIG + b"\x21\x21\x00\x0c" + V4, "family 2 needs 36"),
        (SIG + b"\x21\x11\xff\xff", "at most 1024"),
        (SIG + b"\x21\x11\x00\x0e" + V4 + b"\x01\x00", "shorter than its type and length"),
        (SIG + b"\x21\x11\x00\x0f" + V4 + b"\x01\x00\x05", "runs past the end"),
    ],
)
def test_malformed_headers_say_why(data, message):
    with pytest.raises(proxyv2.ProxyError, match=message) as raised:
        proxyv2.parse(data)
    assert not isinstance(raised.value, proxyv2.Incomplete)


_TLV = st.tuples(st.integers(0, 255), st.binary(max_size=40)).map(
    lambda t: bytes([t[0]]) + struct.pack("!H", len(t[1])) + t[1]
)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([4, 16]),
    st.data(),
    st.integers(0, 0xFFFF),
    st.booleans(),
    st.lists(_TLV, max_size=4),
    st.binary(max_size=64),
)
def test_any_header_made_reads_back_and_any_part_of_it_waits(size, data, port, stream, tlvs, payload):
    client, server = (
        data.draw(st.binary(min_size=size, max_size=size)),
        data.draw(st.binary(min_size=size, max_size=size)),
    )
    made = proxyv2.make(client, port, server, 53, stream, b"".join(tlvs))
    assume(len(made) <= proxyv2.MAX_HEADER)
    assert proxyv2.parse(made + payload) == proxyv2.Header(client, port, len(made))
    cut = data.draw(st.integers(0, len(made) - 1))
    with pytest.raises(proxyv2.Incomplete):
        proxyv2.parse(made[:cut])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_after_the_signature_are_a_header_or_one_proxy_error(rest):
    try:
        header = proxyv2.parse(SIG + rest)
    except proxyv2.ProxyError:
        return
    assert proxyv2.FIXED <= header.length <= len(SIG) + len(rest)
