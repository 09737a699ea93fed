"""sdnotify: the readiness datagram over a real Unix datagram socket, at a path or in the abstract namespace."""

from __future__ import annotations

import logging
import os
import socket
import tempfile

import pytest

from resolver.processes import sdnotify


@pytest.fixture
def short_dir():
    # A socket's path is limited to 107 bytes: pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:
        yield directory


def test_ready_reaches_a_socket_at_a_path(monkeypatch, short_dir):
    path = os.path.join(short_dir, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.notify("READY=1") is True
        assert manager.recv(4096) == b"READY=1"


def test_ready_reaches_a_socket_in_the_abstract_namespace(monkeypatch):
    name = f"schooldns-unit-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("STOPPING=1") is True
        assert manager.recv(4096) == b"STOPPING=1"


def test_without_a_service_manager_nothing_is_sent(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize(
    ("where", "said"),
    [
        ("missing", "could not tell the service manager 'READY=1' through "),
        ("vsock:2:1234", "neither a path nor @name"),
    ],
)
def test_a_manager_that_cannot_be_reached_is_logged_not_raised(monkeypatch, short_dir, caplog, where, said):
    monkeypatch.setenv("NOTIFY_SOCKET", os.path.join(short_dir, where) if where == "missing" else where)
    with caplog.at_level(logging.WARNING, logger="resolver.processes.sdnotify"):
        assert sdnotify.notify("READY=1") is False
    [record] = caplog.records
    assert said in record.getMessage()
