"""Admin API callers: failed authentications limited per source (IPv4 address, IPv6 /64) in a bounded table."""

from __future__ import annotations

import pytest

from resolver.operations import access, tokens
from resolver.operations.refusals import Failure, Refused


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_source_is_refused_after_its_failures_until_the_window_ends():
    clock = Clock()
    attempts = access.PerSourceLimit(allowed=3, window_seconds=60, max_sources=100, clock=clock)
    for _ in range(2):
        attempts.count("192.0.2.1")
    assert attempts.retry_after("192.0.2.1") is None
    clock.now += 10
    attempts.count("192.0.2.1")
    assert attempts.retry_after("192.0.2.1") == 50  # the window runs from the first failure
    assert attempts.retry_after("192.0.2.2") is None
    clock.now += 50
    assert attempts.retry_after("192.0.2.1") is None
    attempts.count("192.0.2.1")  # a new window
    assert attempts.retry_after("192.0.2.1") is None


def test_an_ipv6_64_is_one_source_and_a_mapped_address_is_its_ipv4():
    attempts = access.PerSourceLimit(allowed=2, window_seconds=60, max_sources=100)
    attempts.count("2001:db8:1:2::1")
    attempts.count("2001:db8:1:2:ffff::9")
    assert attempts.retry_after("2001:db8:1:2::77") is not None
    assert attempts.retry_after("2001:db8:1:3::1") is None
    attempts.count("::ffff:192.0.2.7")
    attempts.count("192.0.2.7")
    assert attempts.retry_after("192.0.2.7") is not None


def test_the_table_forgets_the_oldest_sources_first():
    attempts = access.PerSourceLimit(allowed=1, window_seconds=60, max_sources=3)
    for n in range(5):
        attempts.count(f"192.0.2.{n}")
    assert [attempts.retry_after(f"192.0.2.{n}") is not None for n in range(5)] == [False, False, True, True, True]


def test_the_gate_checks_the_token_then_the_role(tmp_path):
    path = tmp_path / "tokens.yaml"
    _, secret = tokens.add(path, tokens.Role.parse("viewer"), "v")
    gate = access.Gate(tokens.TokenFile(path), access.PerSourceLimit(2, 60, 10))
    viewer = gate.caller(f"Bearer {secret}", "192.0.2.1", {tokens.RoleKind.VIEWER})
    assert viewer == access.Caller("v", tokens.Role.parse("viewer"))
    assert gate.caller(f"bearer  {secret}", "192.0.2.1", {tokens.RoleKind.VIEWER}) == viewer
    with pytest.raises(Refused) as refused:
        gate.caller(f"Bearer {secret}", "192.0.2.1", {tokens.RoleKind.PROVINCE})
    assert refused.value.failure is Failure.FORBIDDEN
    assert refused.value.message == "a viewer token may not do this (needs province)"
    for header in (None, "", f"Basic {secret}", "Bearer nope"):
        with pytest.raises(Refused) as refused:
            gate.caller(header, "192.0.2.9", {tokens.RoleKind.VIEWER})
        assert refused.value.failure is Failure.UNAUTHENTICATED
    with pytest.raises(Refused) as refused:  # two failed (Basic, nope): refused now, with a valid token too
        gate.caller(f"Bearer {secret}", "192.0.2.9", {tokens.RoleKind.VIEWER})
    assert refused.value.failure is Failure.RATE_LIMITED and refused.value.retry_after_seconds == 60
