"""`schooldns serve` that cannot listen says so in one line naming the address and what to do (exit
status 1); on a host without IPv6 it serves the addresses it can, as `make run` with the example config."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest

from tests.support.harness import write_site
from tests.support.served import ROOT, SCHOOLDNS

UPSTREAM = "192.0.2.53:53"  # never asked: these servers stop before answering, or answer blocked names only


async def serve_until_exit(config: Path, timeout: float = 60.0) -> tuple[int | None, str]:
    """Run `schooldns serve` until it exits by itself; its exit status and everything it wrote to stderr."""
    process = await asyncio.create_subprocess_exec(
        *SCHOOLDNS, "serve", "--config", str(config), stderr=asyncio.subprocess.PIPE, cwd=ROOT, start_new_session=True
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it served instead (the failure of this test)
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
    return process.returncode, err.decode()


@contextlib.contextmanager
def held(kind: str, host: str = "127.0.0.1") -> Iterator[int]:
    """A port on `host` held by another program's socket: "udp", "tcp" (listening), or "reuseport",
    a UDP socket with SO_REUSEPORT as another schooldns of `workers: N` binds it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM) as sock:
        if kind == "reuseport":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
        if kind == "tcp":
            sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", ["udp", "tcp", "reuseport"])
async def test_a_dns_port_in_use_stops_the_start_with_one_line(tmp_path, workers, kind):
    with held(kind) as port:
        listen = ("127.0.0.1:0", f"127.0.0.1:{port}")
        config = write_site(
            tmp_path, [UPSTREAM], f'workers: {workers}\nadmin: {{listen: "127.0.0.1:0"}}\n', listen=listen
        )
        status, err = await serve_until_exit(config)
    transport = "tcp" if kind == "tcp" else "udp"
    assert (status, err) == (
        1,
        f"schooldns: cannot listen on 127.0.0.1:{port} ({transport}): address already in use; "
        f"stop the other server or change listen in {config}\n",
    )


@pytest.mark.parametrize("workers", [1, 2])
async def test_an_admin_port_in_use_stops_the_start_before_dns_serves(tmp_path, workers):
    with held("tcp") as port:
        config = write_site(tmp_path, [UPSTREAM], f'workers: {workers}\nadmin: {{listen: "127.0.0.1:{port}"}}\n')
        status, err = await serve_until_exit(config)
    assert (status, err) == (
        1,
        f"schooldns: cannot listen on 127.0.0.1:{port} (tcp): address already in use; "
        f"stop the other server or change admin.listen in {config}\n",
    )


async def test_an_ipv6_loopback_port_in_use_is_not_passed_over(tmp_path):
    # Only "no IPv6 on this host" is passed over; this host has IPv6, and the port is taken.
    with held("udp", "::1") as port:
        listen = ("127.0.0.1:0", f"[::1]:{port}")
        config = write_site(tmp_path, [UPSTREAM], 'admin: {listen: "127.0.0.1:0"}\n', listen=listen)
        status, err = await serve_until_exit(config)
    assert (status, err) == (
        1,
        f"schooldns: cannot listen on [::1]:{port} (udp): address already in use; "
        f"stop the other server or change listen in {config}\n",
    )


async def without_ipv6(config: Path, name: str, port: int) -> dict:
    """tests.support.without_ipv6 in a new network namespace: a host whose only device is a
    loopback without IPv6."""
    process = await asyncio.create_subprocess_exec(
        "unshare",
        "--map-root-user",
        "--net",
        sys.executable,
        "-m",
        "tests.support.without_ipv6",
        str(config),
        name,
        str(port),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 0, err.decode()
    return json.loads(out)


def example_config(root: Path, workers: int) -> Path:
    """deploy/example/config.yaml (what `make run` serves) with its paths made absolute and its
    state_dir under root."""
    text = (ROOT / "deploy/example/config.yaml").read_text()
    for old, new in (
        ("../../policies/", f"{ROOT}/policies/"),
        ("../../blocklists/", f"{ROOT}/blocklists/"),
        ("../../var/", f"{root}/var/"),
        ("\nworkers: 1\n", f"\nworkers: {workers}\n"),
    ):
        assert old in text
        text = text.replace(old, new)
    assert 'listen: ["127.0.0.1:5353", "[::1]:5353"]' in text
    config = root / "config.yaml"
    config.write_text(text)
    return config


@pytest.mark.parametrize("workers", [1, 2])
async def test_make_run_serves_ipv4_on_a_host_without_ipv6(tmp_path, workers):
    # The example config listens on 127.0.0.1:5353 and [::1]:5353 (a fresh network namespace has both ports free).
    result = await without_ipv6(example_config(tmp_path, workers), "game.example.com", 5353)
    log = "".join(result["log"])
    assert result["exit"] == 0 and "Traceback" not in log, log
    assert result["rcode"] == dns.rcode.NXDOMAIN  # demo-local's deny, from 127.0.0.1
    warnings = [line for line in result["log"] if " WARNING " in line or " ERROR " in line]
    assert len(warnings) == 1 and warnings[0].rstrip().endswith(
        "WARNING resolver.processes.worker: not listening on [::1]:5353: this host has no IPv6"
    ), log
    served = "serving DNS on 127.0.0.1:5353 (udp+tcp)" if workers == 1 else "2 workers serving DNS on ports (5353,)"
    assert served in log


async def test_a_start_without_any_address_it_can_bind_fails_with_one_line(tmp_path):
    config = write_site(tmp_path, [UPSTREAM], 'admin: {listen: "127.0.0.1:0"}\n', listen=("[::1]:5353",))
    result = await without_ipv6(config, "game.example.com", 5353)
    assert result == {
        "log": [
            "schooldns: cannot listen on [::1]:5353 (udp): this host has no IPv6; "
            f"enable IPv6 or remove the address from listen in {config}\n"
        ],
        "rcode": None,
        "exit": 1,
    }
