"""A hub and two instances as real `schooldns serve` processes: a hub change reaches both; a restart without the hub."""

from __future__ import annotations

import asyncio
import signal

import aiohttp
import dns.rcode
import pytest

from resolver.operations import tokens
from tests.support.fake_upstream import FakeUpstream
from tests.support.harness import write_site
from tests.support.hubs import SCHOOL_A_DENYING_NEW, make_hub, sync_config
from tests.support.served import SCHOOLDNS, Served, serve
from tests.support.static_http import StaticServer

INTERVAL = 1.0  # seconds between an instance's syncs


@pytest.fixture
async def upstream():
    async with FakeUpstream() as up:
        up.answer("new.example.org", "A", "192.0.2.20", ttl=300)
        yield up


async def until_rcode(served: Served, name: str, rcode: int, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while (await served.query(name)).rcode() != rcode:
            await asyncio.sleep(0.05)


async def stop(served: Served) -> None:
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), 20) == 0


async def test_a_change_at_the_hub_is_served_by_both_instances_and_survives_a_restart_without_the_hub(
    tmp_path, upstream
):
    hub_repo = make_hub(tmp_path / "hub")  # the repository and keys; the serving hub publishes into it
    publish = f"publish: {{repository: '{hub_repo.repo}', keys: '{hub_repo.keys}'}}\n"
    async with (
        StaticServer(hub_repo.repo) as server,
        serve(hub_repo.site, upstream, 1, more_config=publish) as hub,
        serve(tmp_path / "a", upstream, 1, more_config=sync_config(server.url, hub_repo.trusted_root, INTERVAL)) as a,
        serve(tmp_path / "b", upstream, 2, more_config=sync_config(server.url, hub_repo.trusted_root, INTERVAL)) as b,
    ):
        for served in (hub, a, b):
            assert (await served.query("new.example.org")).rcode() == dns.rcode.NOERROR

        hub_repo.write("policies/school-a.yaml", SCHOOL_A_DENYING_NEW)
        hub.process.send_signal(signal.SIGHUP)  # the hub's reload, then its publish
        await hub.read_until(r"published version 2 of the lists and policies")
        await asyncio.gather(*(until_rcode(s, "new.example.org", dns.rcode.NXDOMAIN) for s in (a, b)))
        await a.read_until(r"installed version 2 from http://127\.0\.0\.1:\d+")
        # The admin API and the metrics of an instance say what it serves.
        secret = tokens.add(tmp_path / "a" / "var" / "tokens.yaml", tokens.Role.parse("viewer"), "ops")[1]
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{a.admin_port}/v1/sync", headers={"Authorization": f"Bearer {secret}"}
            ) as response,
        ):
            assert response.status == 200
            status = await response.json()
        assert (status["version"], status["consecutive_failures"], status["repository"]) == (2, 0, server.url)
        metrics = await a.admin("/metrics")
        assert "schooldns_sync_version 2.0" in metrics
        assert "schooldns_sync_metadata_expired 0.0" in metrics
        await stop(a)

        await server.stop()  # the hub is down: a start serves the verified version on disk at once
        async with serve(
            tmp_path / "a", upstream, 1, more_config=sync_config(server.url, hub_repo.trusted_root)
        ) as again:
            assert (await again.query("new.example.org")).rcode() == dns.rcode.NXDOMAIN
            await again.read_until(
                r"sync from http://127\.0\.0\.1:\d+ failed: cannot download from the hub .*"
                r"Connection refused \(still serving version 2\)"
            )
            await stop(again)
        await stop(b)
        await stop(hub)


async def test_a_first_start_with_the_hub_down_fails_in_one_line(tmp_path, upstream):
    hub_repo = make_hub(tmp_path / "hub")
    config = write_site(
        tmp_path / "instance", [upstream.address], sync_config("http://127.0.0.1:9", hub_repo.trusted_root)
    )
    process = await asyncio.create_subprocess_exec(
        *SCHOOLDNS, "serve", "--config", str(config), stderr=asyncio.subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert err.decode().splitlines()[-1] == (
        "sync: no verified lists and policies yet, and none from the hub at http://127.0.0.1:9: "
        "cannot download from the hub http://127.0.0.1:9: Connection refused"
    )
    assert "Traceback" not in err.decode()
