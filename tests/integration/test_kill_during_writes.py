"""Kill -9 in a loop during a policy write and during a sync: the next start serves the old state or the new, whole."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import dns.rcode
import pytest

from resolver.operations import tokens
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import SCHOOL_A, write_site
from tests.support.hubs import SCHOOL_A_DENYING_NEW, make_hub, sync_config
from tests.support.served import ROOT, SCHOOLDNS, Served
from tests.support.static_http import StaticServer

ITERATIONS = 3
SYNC_INTERVAL = 1.0  # seconds between an instance's syncs (the least allowed)
OLD, NEW = SCHOOL_A.encode(), SCHOOL_A_DENYING_NEW.encode()


@pytest.fixture
async def upstream():
    async with FakeUpstream() as up:
        up.answer("new.example.org", "A", "192.0.2.20", ttl=300)
        yield up


@contextlib.asynccontextmanager
async def started(config: Path) -> AsyncIterator[Served]:
    """`schooldns serve` over the files as they are (harness.serve would write the site again)."""
    process = await asyncio.create_subprocess_exec(
        *SCHOOLDNS, "serve", "--config", str(config), stderr=asyncio.subprocess.PIPE, cwd=ROOT, start_new_session=True
    )
    served = Served(process)
    try:
        served.dns_port = int((await served.read_until(r"serving DNS on 127\.0\.0\.1:(\d+)"))[1])
        served.admin_port = int((await served.read_until(r"admin API on http://127\.0\.0\.1:(\d+)/"))[1])
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


def temporaries(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob(".*.tmp"))


async def put(served: Served, secret: str, body: bytes) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"http://127.0.0.1:{served.admin_port}/v1/schools/school-a/policy",
            data=body,
            headers={"Authorization": f"Bearer {secret}", "If-Match": "*"},
        ) as response,
    ):
        await response.read()


async def test_a_policy_write_killed_at_any_moment_leaves_the_old_policy_or_the_new(tmp_path, upstream):
    config = write_site(
        tmp_path, [upstream.address], 'admin: {listen: "127.0.0.1:0"}\nreload: {watch_interval_seconds: 0}\n'
    )
    secret = tokens.add(tmp_path / "var" / "tokens.yaml", tokens.Role.parse("province"), "ops")[1]
    policy = tmp_path / "policies" / "school-a.yaml"
    writes_seen = set()
    loop = asyncio.get_running_loop()
    took = 0.0
    for iteration in range(ITERATIONS + 1):
        async with started(config) as served:
            # What this start serves is the file, whole: the old policy or the new, never a mix.
            held = policy.read_bytes()
            assert held in (OLD, NEW), held
            writes_seen.add(held)
            rcode = (await served.query("new.example.org")).rcode()
            assert rcode == (dns.rcode.NXDOMAIN if held == NEW else dns.rcode.NOERROR)
            assert temporaries(tmp_path) == []
            if iteration == ITERATIONS:
                break
            # The other version. The first write is let through and timed; each next one is killed a
            # step further into that time: before, during and after the write.
            writing = asyncio.create_task(put(served, secret, OLD if held == NEW else NEW))
            began = loop.time()
            await asyncio.wait({writing}, timeout=None if iteration == 0 else took * iteration / ITERATIONS)
            if iteration == 0:
                took = loop.time() - began
            os.killpg(served.process.pid, signal.SIGKILL)
            await served.process.wait()
            writing.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await writing
    assert writes_seen == {OLD, NEW}


def leftovers(state_dir: Path) -> list[Path]:
    """Temporary files and download directories in state_dir."""
    sync = state_dir / "sync"
    return [*temporaries(state_dir), *sorted(sync.glob(".staging-*")), *sorted(sync.glob("metadata/tmp*"))]


def served_version(state_dir: Path) -> bytes:
    """school-a's policy in the synced version that `current` names, checked whole."""
    current = (state_dir / "sync" / "current").resolve()
    assert (current / "bundle.json").is_file() and (current / "lists").is_dir()
    return (current / "policies" / "school-a.yaml").read_bytes()


async def test_a_sync_killed_at_any_moment_leaves_the_old_version_or_the_new(tmp_path, upstream):
    hub = make_hub(tmp_path / "hub")
    instance = tmp_path / "instance"
    state_dir = instance / "var"
    config = write_site(
        instance,
        [upstream.address],
        'admin: {listen: "127.0.0.1:0"}\n' + sync_config("URL", hub.trusted_root, SYNC_INTERVAL),
    )
    loop = asyncio.get_running_loop()
    versions_seen = set()
    left_by_the_killed: set[Path] = set()
    took = 0.0
    async with StaticServer(hub.repo) as server:
        config.write_text(config.read_text().replace("URL", server.url))
        for iteration in range(ITERATIONS + 1):
            async with started(config) as served:
                held = served_version(state_dir)
                assert held in (OLD, NEW), held
                versions_seen.add(held)
                rcode = (await served.query("new.example.org")).rcode()
                assert rcode == (dns.rcode.NXDOMAIN if held == NEW else dns.rcode.NOERROR)
                # What the killed process left is gone (the new one may be syncing: its own are not counted).
                assert not left_by_the_killed & set(leftovers(state_dir))
                if iteration == ITERATIONS:
                    break
                # The hub publishes the other version; the instance's next sync (within SYNC_INTERVAL)
                # takes it. The first is let through and timed; each next kill comes a step further in.
                hub.write("policies/school-a.yaml", (OLD if held == NEW else NEW).decode())
                began = loop.time()
                await asyncio.to_thread(hub.publish)
                if iteration == 0:
                    await served.read_until(r"installed version \d+ from")
                    took = loop.time() - began
                else:
                    await asyncio.sleep(took * iteration / ITERATIONS)  # the moment of the kill, not a wait
                os.killpg(served.process.pid, signal.SIGKILL)
                await served.process.wait()
                left_by_the_killed = set(leftovers(state_dir))
    assert versions_seen == {OLD, NEW}
