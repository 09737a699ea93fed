"""The one line for an address that cannot be bound, and which failures a start may pass over."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from resolver.control import config
from resolver.dataplane import server
from resolver.dataplane.upstream import parse_address
from resolver.errors import ListenError
from resolver.yamlfile import ConfigError
from tests.support.harness import write_site

SETTING = "listen in /etc/schooldns/config.yaml"


def error(code: int, address: str, kind: socket.SocketKind = socket.SOCK_DGRAM) -> ListenError:
    return server.listen_error(OSError(code, os.strerror(code)), parse_address(address), kind, SETTING)


@pytest.mark.parametrize(
    ("code", "address", "kind", "line"),
    [
        (
            errno.EADDRINUSE,
            "127.0.0.1:5353",
            socket.SOCK_DGRAM,
            "cannot listen on 127.0.0.1:5353 (udp): address already in use; stop the other server or change " + SETTING,
        ),
        (
            errno.EADDRINUSE,
            "[::1]:53",
            socket.SOCK_STREAM,
            "cannot listen on [::1]:53 (tcp): address already in use; stop the other server or change " + SETTING,
        ),
        (
            errno.EACCES,
            "0.0.0.0:53",
            socket.SOCK_DGRAM,
            "cannot listen on 0.0.0.0:53 (udp): permission denied; ports below 1024 need CAP_NET_BIND_SERVICE, "
            "or change " + SETTING,
        ),
        (
            errno.EADDRNOTAVAIL,
            "192.0.2.1:53",
            socket.SOCK_DGRAM,
            "cannot listen on 192.0.2.1:53 (udp): no such address on this host; change " + SETTING,
        ),
        (
            errno.EADDRNOTAVAIL,
            "[2001:db8::1]:53",
            socket.SOCK_DGRAM,
            "cannot listen on [2001:db8::1]:53 (udp): no such address on this host; change " + SETTING,
        ),
        (
            errno.EAFNOSUPPORT,
            "[2001:db8::1]:53",
            socket.SOCK_DGRAM,
            "cannot listen on [2001:db8::1]:53 (udp): this host has no IPv6; change " + SETTING,
        ),
        (
            errno.EADDRNOTAVAIL,
            "[::1]:5353",
            socket.SOCK_DGRAM,
            "cannot listen on [::1]:5353 (udp): this host has no IPv6; enable IPv6 or remove the address from "
            + SETTING,
        ),
        (
            errno.EMFILE,
            "127.0.0.1:53",
            socket.SOCK_STREAM,
            "cannot listen on 127.0.0.1:53 (tcp): too many open files; change " + SETTING,
        ),
    ],
)
def test_each_failure_is_one_line_naming_the_address_and_what_to_do(code, address, kind, line):
    assert str(error(code, address, kind)) == line


@pytest.mark.parametrize(
    ("code", "address", "passable"),
    [
        (errno.EADDRNOTAVAIL, "[::1]:53", True),  # IPv6 disabled: no ::1
        (errno.EAFNOSUPPORT, "[::1]:53", True),  # no IPv6 in the kernel at all
        (errno.EAFNOSUPPORT, "[::]:53", True),
        (errno.EADDRNOTAVAIL, "[::]:53", True),
        (errno.EADDRINUSE, "[::1]:53", False),  # a port in use is never passed over
        (errno.EACCES, "[::1]:53", False),
        (errno.EADDRNOTAVAIL, "[2001:db8::1]:53", False),  # a wrong address is a mistake to fix
        (errno.EAFNOSUPPORT, "[2001:db8::1]:53", False),
        (errno.EADDRNOTAVAIL, "127.0.0.2:53", False),
    ],
)
def test_only_an_ipv6_loopback_or_any_address_on_a_host_without_ipv6_may_be_passed_over(code, address, passable):
    failure = error(code, address)
    assert failure.ipv6_unavailable is passable
    assert failure.address == address


def test_a_config_without_listen_addresses_is_refused_before_any_start(tmp_path):
    with pytest.raises(ConfigError) as failure:
        config.load_config(write_site(tmp_path, ["192.0.2.53:53"], listen=()))
    assert str(failure.value).endswith(":1: listen: at least one address is needed")
