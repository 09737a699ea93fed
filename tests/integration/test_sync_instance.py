"""An instance syncing from a hub's TUF repository over loopback HTTP: installs, refusals, shrink guard, rotation."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time

import dns.rcode
import pytest

from resolver.control import bundle, sync, versions
from tests.support.fake_upstream import FakeUpstream
from tests.support.hubs import SCHOOL_A_DENYING_NEW, Hub, Instance, make_hub, synced_instance
from tests.support.static_http import StaticServer


@pytest.fixture
async def upstream():
    async with FakeUpstream() as up:
        for name in ("new.example.org", "games.example.com", "www.example.com"):
            up.answer(name, "A", "192.0.2.20", ttl=300)
        yield up


@pytest.fixture
def hub(tmp_path) -> Hub:
    return make_hub(tmp_path)


@pytest.fixture
async def server(hub):
    async with StaticServer(hub.repo) as running:
        yield running


@pytest.fixture
async def instance(tmp_path, upstream, hub, server):
    async with synced_instance(tmp_path / "instance", upstream.address, server.url, hub.trusted_root) as running:
        yield running


async def rcode(instance: Instance, name: str) -> int:
    return (await instance.running.udp(name)).rcode()


def sync_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "resolver.control.sync" and r.levelno >= logging.ERROR]


async def assert_still_serving_version_1(instance: Instance, status: sync.SyncStatus, reason: str) -> None:
    assert status.version == 1 and status.consecutive_failures == 1
    assert status.last_error is not None and reason in status.last_error, status.last_error
    assert status.last_success is not None and status.last_attempt > status.last_success
    assert await rcode(instance, "new.example.org") == dns.rcode.NOERROR  # the hub's change is not served
    assert instance.running.worker.pipeline.snapshot.generation == 1


async def test_a_published_change_is_verified_and_served_and_the_version_before_kept(hub, instance, server, caplog):
    assert instance.syncer.status().version == 1
    assert await rcode(instance, "new.example.org") == dns.rcode.NOERROR

    hub.write("policies/school-a.yaml", SCHOOL_A_DENYING_NEW)
    assert hub.publish().version == 2
    server.requests.clear()
    caplog.set_level(logging.INFO, "resolver.control.snapshots")
    status = await instance.syncer.sync_now()
    # The lists did not change: neither the candidate's build nor the reload compiled them.
    assert not [r for r in caplog.records if r.getMessage().startswith("compiled ")], caplog.text

    assert (status.version, status.consecutive_failures, status.last_error) == (2, 0, None)
    assert status.last_success == status.last_attempt and status.metadata_expires > time.time()
    assert not status.metadata_expired and status.published is not None
    assert await rcode(instance, "new.example.org") == dns.rcode.NXDOMAIN
    # Only the changed policy file was downloaded; the lists were linked from the version before.
    targets = [path for path in server.requests if path.startswith("/targets/")]
    assert [p for p in targets if "/lists/" in p] == [] and len([p for p in targets if "school-a" in p]) == 1
    kept = sorted(p.name.split("-")[0] for p in (instance.config.state_dir / "sync" / "versions").iterdir())
    assert kept == ["1", "2"]

    assert (await instance.syncer.sync_now()).version == 2  # nothing new: nothing installed
    assert instance.running.worker.pipeline.snapshot.generation == 2


async def test_a_target_altered_on_the_server_is_refused(hub, instance):
    hub.write("policies/school-a.yaml", SCHOOL_A_DENYING_NEW)
    hub.publish()
    (stored,) = (hub.repo / "targets" / "policies").glob(f"{bundle._sha256(hub.site / 'policies/school-a.yaml')}.*")
    stored.write_text(stored.read_text().replace("new.example.org", "old.example.org"))

    status = await instance.syncer.sync_now()

    await assert_still_serving_version_1(instance, status, "policies/school-a.yaml: does not match its signed")


async def test_a_download_cut_short_is_refused(hub, instance, server):
    hub.write("policies/school-a.yaml", SCHOOL_A_DENYING_NEW)
    hub.publish()
    server.cut_short.add("school-a.yaml")

    status = await instance.syncer.sync_now()

    await assert_still_serving_version_1(instance, status, "policies/school-a.yaml: cannot download from the hub: ")
    assert "the connection closed before the whole file arrived" in status.last_error
    server.cut_short.clear()
    assert (await instance.syncer.sync_now()).version == 2


async def test_older_metadata_than_verified_is_refused_as_a_rollback(hub, instance):
    version_1 = (hub.repo / "metadata" / "timestamp.json").read_bytes()
    hub.write("policies/school-a.yaml", SCHOOL_A_DENYING_NEW)
    hub.publish()
    assert (await instance.syncer.sync_now()).version == 2
    (hub.repo / "metadata" / "timestamp.json").write_bytes(version_1)  # a mirror or attacker replays the old feed

    status = await instance.syncer.sync_now()

    assert status.version == 2 and status.consecutive_failures == 1
    assert "rollback" in status.last_error and "timestamp version 1 must be >= 2" in status.last_error
    assert await rcode(instance, "new.example.org") == dns.rcode.NXDOMAIN  # version 2 keeps serving


async def test_a_hub_that_stops_re_signing_is_refused_once_its_metadata_expires(hub, instance):
    hub.write("policies/school-a.yaml", SCHOOL_A_DENYING_NEW)
    hub.publish(expiries=bundle.Expiries(timestamp=2))
    status = await instance.syncer.sync_now()  # verified while valid (its build may outlast the 2 s)
    assert status.version == 2 and status.metadata_expires <= time.time() + 3

    async with asyncio.timeout(15):  # the hub signed the timestamp for 2 s and stopped
        while "expired" not in ((status := await instance.syncer.sync_now()).last_error or ""):
            await asyncio.sleep(0.2)
    assert status.metadata_expired and status.version == 2
    assert status.last_error.startswith("the hub's signed metadata has expired")
    assert await rcode(instance, "new.example.org") == dns.rcode.NXDOMAIN  # the last verified version serves

    hub.publish()  # the hub is back and re-signs what is due
    status = await instance.syncer.sync_now()
    assert not status.metadata_expired and status.consecutive_failures == 0 and status.version == 2


async def test_a_repository_signed_by_other_keys_is_refused(hub, instance, server, tmp_path):
    other = make_hub(tmp_path / "other")  # the same files, another root: an impostor at the hub's address
    other.write("policies/school-a.yaml", SCHOOL_A_DENYING_NEW)
    other.publish()
    server.root = other.repo

    status = await instance.syncer.sync_now()

    await assert_still_serving_version_1(instance, status, "do not verify with the trusted root")


async def test_a_hub_that_is_down_is_one_failure_streak_with_one_log_line(hub, instance, server, caplog):
    await server.stop()

    first = await instance.syncer.sync_now()
    second = await instance.syncer.sync_now()

    await assert_still_serving_version_1(instance, first, f"cannot download from the hub {server.url}")
    assert "Connection refused" in first.last_error
    assert second.consecutive_failures == 2 and second.last_error == first.last_error
    assert len(sync_errors(caplog)) == 1, sync_errors(caplog)

    await server.start()
    hub.write("policies/school-a.yaml", SCHOOL_A_DENYING_NEW)
    hub.publish()
    status = await instance.syncer.sync_now()
    assert (status.version, status.consecutive_failures, status.last_error) == (2, 0, None)
    assert await rcode(instance, "new.example.org") == dns.rcode.NXDOMAIN


async def test_the_shrink_guard_refuses_a_category_losing_entries_until_the_hub_marks_it(hub, instance, server, caplog):
    hub.write("blocklists/games.txt", "")  # games: 2 entries -> 0
    hub.publish()

    status = await instance.syncer.sync_now()
    assert status.version == 1 and "games 2 -> 0" in status.last_error and "--allow-shrink" in status.last_error
    assert await rcode(instance, "games.example.com") == dns.rcode.NXDOMAIN  # still blocked for school A
    # The same bundle is refused again without being fetched again, and logged once.
    server.requests.clear()
    assert (await instance.syncer.sync_now()).consecutive_failures == 2
    assert not [path for path in server.requests if path.startswith("/targets/")]
    assert len(sync_errors(caplog)) == 1

    assert hub.publish(allow_shrink=["games"]).version == 3  # the same files, the shrink marked intended
    status = await instance.syncer.sync_now()
    assert (status.version, status.last_error) == (3, None)
    assert await rcode(instance, "games.example.com") == dns.rcode.NOERROR


async def test_a_category_whose_entries_change_but_do_not_shrink_passes_the_guard(hub, instance):
    hub.write("blocklists/games.txt", "games.example.com\nother.example.com\n")  # 2 entries, one replaced
    hub.publish()
    assert (await instance.syncer.sync_now()).version == 2


async def test_instances_follow_rotated_online_keys_and_a_rotated_root(hub, instance):
    root_before = (hub.keys / "root.pem").read_bytes()
    assert bundle.rotate(hub.repo, hub.keys, ["timestamp", "targets"]) == 2
    assert bundle.rotate(hub.repo, hub.keys, ["root"]) == 3
    assert (hub.keys / "root.pem").read_bytes() != root_before
    hub.write("policies/school-a.yaml", SCHOOL_A_DENYING_NEW)
    hub.publish()

    status = await instance.syncer.sync_now()

    assert (status.version, status.last_error) == (2, None)
    history = instance.config.state_dir / "sync" / "metadata" / "root_history"
    assert sorted(os.listdir(history)) == ["1.root.json", "2.root.json", "3.root.json"]
    assert await rcode(instance, "new.example.org") == dns.rcode.NXDOMAIN


async def test_a_first_start_with_a_wrong_root_or_no_hub_fails_in_one_line(hub, server, tmp_path, upstream):
    other = make_hub(tmp_path / "other")
    with pytest.raises(versions.NotSyncedError) as wrong:
        async with synced_instance(tmp_path / "a", upstream.address, server.url, other.trusted_root):
            pass
    assert "do not verify with the trusted root" in str(wrong.value) and "\n" not in str(wrong.value)
    assert versions.current(tmp_path / "a" / "var") is None

    await server.stop()
    with pytest.raises(versions.NotSyncedError) as down:
        async with synced_instance(tmp_path / "b", upstream.address, server.url, hub.trusted_root):
            pass
    assert str(down.value) == (
        f"sync: no verified lists and policies yet, and none from the hub at {server.url}: "
        f"cannot download from the hub {server.url}: Connection refused"
    )


async def test_a_synced_version_that_no_longer_builds_at_start_serves_the_last_good(hub, server, tmp_path, upstream):
    root = tmp_path / "instance"
    async with synced_instance(root, upstream.address, server.url, hub.trusted_root) as first:
        assert not first.running.worker.pipeline.snapshot.from_last_good  # and saved as the last good state
    shutil.rmtree(versions.current(root / "var") / "lists")  # say a disk fault took the synced lists

    async with synced_instance(root, upstream.address, server.url, hub.trusted_root) as again:
        assert again.running.worker.pipeline.snapshot.from_last_good
        assert await rcode(again, "games.example.com") == dns.rcode.NXDOMAIN
