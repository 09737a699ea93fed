"""schools: client address -> school by longest prefix, IPv4, IPv6 and IPv4-mapped IPv6."""

import ipaddress

import pytest

from resolver.filtering import schools
from resolver.filtering.schools import DirectoryError, SchoolDirectory

DIRECTORY = SchoolDirectory.build(
    [
        ("203.0.113.0/28", "nguyen-du"),
        (ipaddress.ip_network("2001:db8:12::/48"), "nguyen-du"),
        ("10.0.0.0/8", "district"),
        ("10.1.0.0/16", "le-loi"),
        ("10.1.2.0/24", "kim-dong"),
        ("10.1.2.7/32", "lab-pc"),
        ("2001:db8::/32", "province-v6"),
        ("2001:db8:20::/48", "le-loi"),
        ("2001:db8:20:1::/64", "kim-dong"),
        ("2001:db8:20:1::9/128", "lab-pc"),
    ]
)


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        # IPv4
        ("203.0.113.0", "nguyen-du"),
        ("203.0.113.5", "nguyen-du"),
        ("203.0.113.15", "nguyen-du"),
        ("203.0.113.16", None),
        ("203.0.112.255", None),
        # longest prefix wins
        ("10.9.9.9", "district"),
        ("10.1.9.9", "le-loi"),
        ("10.1.2.9", "kim-dong"),
        ("10.1.2.7", "lab-pc"),
        ("10.1.2.6", "kim-dong"),
        ("11.0.0.0", None),
        # IPv6
        ("2001:db8:12::1", "nguyen-du"),
        ("2001:db8:12:ffff:ffff:ffff:ffff:ffff", "nguyen-du"),
        ("2001:db8:13::1", "province-v6"),
        ("2001:db8:20:2::1", "le-loi"),
        ("2001:db8:20:1::1", "kim-dong"),
        ("2001:db8:20:1::9", "lab-pc"),
        ("2001:DB8:20:1:0:0:0:9", "lab-pc"),
        ("2001:db9::1", None),
        ("fe80::1%eth0", None),
        ("2001:db8:12::1%eth0", "nguyen-du"),
        # IPv4-mapped IPv6 (a dual-stack socket's view of an IPv4 client) matches the IPv4 networks
        ("::ffff:203.0.113.5", "nguyen-du"),
        ("::FFFF:203.0.113.5", "nguyen-du"),
        ("::ffff:cb00:7105", "nguyen-du"),
        ("::ffff:10.1.2.7", "lab-pc"),
        ("::ffff:10.1.2.8", "kim-dong"),
        ("::ffff:203.0.113.16", None),
        # IPv4-compatible (deprecated, not mapped) and NAT64 addresses are IPv6
        ("::203.0.113.5", None),
        ("64:ff9b::203.0.113.5", None),
        # not an address
        ("", None),
        ("localhost", None),
        ("203.0.113", None),
        ("203.0.113.5.1", None),
        ("::ffff:203.0.113.300", None),
    ],
)
def test_lookup(ip, expected):
    assert DIRECTORY.lookup(ip) == expected
    assert DIRECTORY.lookup(ip) == expected  # again, from the memo
    try:
        packed = ipaddress.ip_address(ip.partition("%")[0]).packed
    except ValueError:
        return
    # the batched UDP reader gives the address packed: the same school (or none)
    assert DIRECTORY.lookup(packed) == expected
    assert DIRECTORY.lookup(packed) == expected


@pytest.mark.parametrize("packed", [b"", b"\x7f\x00\x00", b"\x7f\x00\x00\x01\x00", bytes(15), bytes(17)])
def test_packed_addresses_of_other_lengths_are_nobodys(packed):
    assert DIRECTORY.lookup(packed) is None


def test_empty_directory():
    directory = SchoolDirectory.build([])
    assert len(directory) == 0
    assert directory.lookup("203.0.113.5") is None
    assert directory.lookup("2001:db8::1") is None


@pytest.mark.parametrize(
    ("network", "inside", "outside"),
    [
        ("0.0.0.0/0", ["1.2.3.4", "::ffff:1.2.3.4", "255.255.255.255"], ["2001:db8::1"]),
        ("::/0", ["2001:db8::1", "::1"], ["1.2.3.4", "::ffff:1.2.3.4"]),
        ("127.0.0.0/8", ["127.0.0.1", "::ffff:127.0.0.1"], ["::1"]),
        ("::1/128", ["::1"], ["127.0.0.1", "::2"]),
        # a mapped network in the directory is stored as its IPv4 network
        ("::ffff:203.0.113.0/120", ["203.0.113.9", "::ffff:203.0.113.9"], ["203.0.114.1"]),
    ],
)
def test_edges(network, inside, outside):
    directory = SchoolDirectory.build([(network, "s")])
    assert [directory.lookup(ip) for ip in inside] == ["s"] * len(inside)
    assert [directory.lookup(ip) for ip in outside] == [None] * len(outside)


def test_same_network_for_two_schools_is_rejected():
    with pytest.raises(DirectoryError, match=r"network 10\.0\.0\.0/24 is given for two schools: 'a' and 'b'"):
        SchoolDirectory.build([("10.0.0.0/24", "a"), ("10.0.0.0/24", "b")])


def test_mapped_and_plain_forms_of_one_network_are_the_same_network():
    with pytest.raises(DirectoryError):
        SchoolDirectory.build([("203.0.113.0/24", "a"), ("::ffff:203.0.113.0/120", "b")])


def test_same_network_twice_for_one_school_is_fine():
    school = object()
    directory = SchoolDirectory.build([("10.0.0.0/24", school), ("10.0.0.0/24", school)])
    assert directory.lookup("10.0.0.1") is school


def test_nested_networks_are_accepted_by_the_directory():
    # A district's network around a school's is how addressing is done: the most specific network wins.
    directory = SchoolDirectory.build([("10.0.0.0/8", "a"), ("10.0.0.0/9", "b")])
    assert directory.lookup("10.0.0.1") == "b"
    assert directory.lookup("10.200.0.1") == "a"


@pytest.mark.parametrize("network", ["10.0.0.1/24", "10.0.0.0/33", "not-a-network", "2001:db8::1/32"])
def test_bad_networks(network):
    with pytest.raises(DirectoryError, match="bad network"):
        SchoolDirectory.build([(network, "a")])


def test_len_counts_networks():
    assert len(DIRECTORY) == 10


def test_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(schools, "MEMO_MAX_ENTRIES", 4)
    directory = SchoolDirectory.build([("10.0.0.0/8", "a")])
    for i in range(10):
        assert directory.lookup(f"10.0.0.{i}") == "a"
        assert len(directory._memo) <= 4
    assert directory.lookup("192.0.2.1") is None
