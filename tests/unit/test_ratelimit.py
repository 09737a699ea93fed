"""ratelimit: answers per second per /24 (IPv4, also mapped into IPv6) or /56 (IPv6), and the bound on networks kept."""

import socket

import pytest

from resolver.dataplane import ratelimit


def test_a_network_gets_its_budget_each_second():
    limit = ratelimit.PerNetworkLimit(3)
    assert [limit.allow("192.0.2.1", 100.0) for _ in range(4)] == [True, True, True, False]
    assert not limit.allow("192.0.2.200", 100.9)  # the same /24
    assert limit.allow("192.0.3.1", 100.9)  # another /24
    assert limit.allow("192.0.2.1", 101.0)  # the next second


@pytest.mark.parametrize(
    "one, other, same",
    [
        ("192.0.2.1", "192.0.2.254", True),
        ("192.0.2.1", "192.0.3.1", False),
        ("2001:db8:0:1::1", "2001:db8:0:ff::2", True),  # the same /56
        ("2001:db8:0:1::1", "2001:db8:0:100::1", False),
        ("::ffff:192.0.2.7", "192.0.2.9", True),  # a dual-stack socket's IPv4 client is an IPv4 client
        ("fe80::1%eth0", "fe80::2", True),
    ],
)
def test_networks_are_a_24_or_a_56(one, other, same):
    assert (ratelimit.network_of(one) == ratelimit.network_of(other)) is same


def test_packed_and_text_addresses_are_the_same_client():
    limit = ratelimit.PerNetworkLimit(1)
    assert limit.allow(socket.inet_pton(socket.AF_INET, "198.51.100.4"), 5.0)
    assert not limit.allow("198.51.100.4", 5.0)
    assert limit.allow(socket.inet_pton(socket.AF_INET6, "2001:db8::1"), 5.0)
    assert not limit.allow("2001:db8::1", 5.0)


def test_zero_answers_none_and_a_non_address_is_never_answered():
    assert not ratelimit.PerNetworkLimit(0).allow("192.0.2.1", 0.0)
    limit = ratelimit.PerNetworkLimit(5)
    assert not limit.allow("not an address", 0.0) and not limit.allow(b"\x01\x02", 0.0)


def test_networks_beyond_the_bound_are_not_answered_until_the_next_second():
    limit = ratelimit.PerNetworkLimit(2)
    for index in range(ratelimit.MAX_NETWORKS):
        assert limit.allow(bytes((10, index >> 8, index & 255, 1)), 7.0)
    assert not limit.allow("198.51.100.1", 7.0)  # a new network: the table is full for this second
    assert limit.allow(bytes((10, 0, 0, 2)), 7.0)  # a network already counted keeps its budget
    assert limit.allow("198.51.100.1", 8.0)


def test_a_school_gets_its_burst_then_its_rate_and_other_schools_their_own():
    rates = ratelimit.SchoolRates(4)  # a burst of 8
    assert [rates.allow("a", 100.0) for _ in range(9)] == [True] * 8 + [False]
    assert rates.allow("b", 100.0)  # its own bucket
    assert not rates.allow("a", 100.125)  # half a token back
    assert rates.allow("a", 100.25)  # one
    assert not rates.allow("a", 100.25)
    assert sum(rates.allow("a", 110.0) for _ in range(30)) == 8  # refilled up to the burst, no more


def test_a_school_dropped_all_along_gets_its_rate_back():
    rates = ratelimit.SchoolRates(2)
    assert sum(rates.allow("a", 0.0) for _ in range(10)) == 4
    allowed = sum(rates.allow("a", step / 100) for step in range(1, 1001))  # 100 queries a second for 10 s
    assert allowed == pytest.approx(20, abs=1)  # 2 a second: the dropped ones spend nothing


def test_forget_fills_every_bucket_again():
    rates = ratelimit.SchoolRates(1)
    assert [rates.allow("a", 5.0) for _ in range(3)] == [True, True, False]
    rates.forget()
    assert rates.allow("a", 5.0)
