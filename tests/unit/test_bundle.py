"""The hub's TUF repository: init, publish (only on change), re-signing before expiry, pruning, keys, rotation."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import stat
import time

import pytest
from tuf.api.metadata import Metadata

from resolver.control import bundle, config
from resolver.errors import UsageError
from resolver.yamlfile import ConfigError
from tests.support.harness import until
from tests.support.hubs import SCHOOL_A_DENYING_NEW, Hub, make_hub

DAY = bundle.DAY


@pytest.fixture
def hub(tmp_path) -> Hub:
    return make_hub(tmp_path)


def metadata(hub: Hub) -> list[str]:
    return sorted(os.listdir(hub.repo / "metadata"))


def signed(hub: Hub, name: str):
    return Metadata.from_bytes((hub.repo / "metadata" / name).read_bytes()).signed


def manifest(hub: Hub) -> dict:
    targets = signed(hub, f"{max_version(hub, 'targets')}.targets.json").targets
    stored = bundle._stored_name(targets["bundle.json"])
    return json.loads((hub.repo / "targets" / stored).read_bytes())


def max_version(hub: Hub, role: str) -> int:
    return max(int(name.split(".")[0]) for name in metadata(hub) if name.endswith(f".{role}.json"))


def test_init_makes_the_repository_and_owner_only_keys(tmp_path):
    root = bundle.init(tmp_path / "repo", tmp_path / "keys")

    assert root == tmp_path / "repo" / "metadata" / "1.root.json"
    assert sorted(os.listdir(tmp_path / "keys")) == ["root.pem", "snapshot.pem", "targets.pem", "timestamp.pem"]
    assert stat.S_IMODE(os.stat(tmp_path / "keys").st_mode) == 0o700
    for name in os.listdir(tmp_path / "keys"):
        assert stat.S_IMODE(os.stat(tmp_path / "keys" / name).st_mode) == 0o600
    root_md = Metadata.from_bytes(root.read_bytes())
    assert root_md.signed.consistent_snapshot and root_md.signed.version == 1
    assert {role: len(r.keyids) for role, r in root_md.signed.roles.items()} == dict.fromkeys(bundle.ROLES, 1)
    assert len(set(root_md.signed.keys)) == 4  # a key of its own for each role
    root_md.signed.verify_delegate("root", root_md.signed_bytes, root_md.signatures)

    with pytest.raises(bundle.BundleError, match="already a repository"):
        bundle.init(tmp_path / "repo", tmp_path / "other-keys")
    with pytest.raises(bundle.BundleError, match="a key is already there"):
        bundle.init(tmp_path / "other-repo", tmp_path / "keys")


def test_a_publish_names_every_list_and_policy_file_and_a_manifest(hub):
    targets = signed(hub, "1.targets.json").targets
    assert sorted(targets) == [
        "bundle.json",
        "lists/adult.txt",
        "lists/games.txt",
        "lists/malware.txt",
        "lists/sources.yaml",
        "policies/province.yaml",
        "policies/school-a.yaml",
        "policies/school-b.yaml",
    ]
    for target in targets.values():  # stored under their hash, as consistent snapshots want
        data = (hub.repo / "targets" / bundle._stored_name(target)).read_bytes()
        target.verify_length_and_hashes(data)
    first = manifest(hub)
    assert first["version"] == 1 and first["format"] == 1 and first["shrink_intended"] == {}
    assert first["categories"] == ["adult", "games", "malware", "bypass"]
    assert set(first["files"]) == set(targets) - {"bundle.json"}
    assert metadata(hub) == ["1.root.json", "1.snapshot.json", "1.targets.json", "timestamp.json"]


def test_unchanged_files_make_no_new_version_and_a_change_one(hub):
    before = metadata(hub)
    done = hub.publish()
    assert (done.version, done.changed, done.signed) == (1, False, ())
    assert metadata(hub) == before

    published_at = manifest(hub)["files"]
    hub.write("policies/school-a.yaml", SCHOOL_A_DENYING_NEW)
    done = hub.publish()

    assert (done.version, done.changed, done.signed) == (2, True, ("targets", "snapshot", "timestamp"))
    second = manifest(hub)
    assert second["files"]["policies/school-a.yaml"] > published_at["policies/school-a.yaml"]
    assert second["files"]["lists/adult.txt"] == published_at["lists/adult.txt"]  # unchanged: its first time
    assert signed(hub, "timestamp.json").snapshot_meta.version == 2


def test_metadata_is_re_signed_when_half_its_period_is_left(hub):
    expiries = bundle.Expiries()
    timestamp = signed(hub, "timestamp.json")

    soon = time.time() + expiries.timestamp * 0.6  # under half of a day left on timestamp.json
    done = bundle.publish(hub.repo, hub.keys, hub.config, now=soon)
    assert (done.changed, done.signed) == (False, ("timestamp",))
    assert signed(hub, "timestamp.json").version == timestamp.version + 1
    assert bundle.publish(hub.repo, hub.keys, hub.config, now=soon).signed == ()  # not due again

    later = time.time() + expiries.targets * 0.6  # targets due: snapshot and timestamp sign over it
    assert bundle.resign(hub.repo, hub.keys, now=later).signed == ("targets", "snapshot", "timestamp")
    assert max_version(hub, "targets") == 2 and signed(hub, "2.targets.json").targets.keys() == (
        signed(hub, "1.targets.json").targets.keys()
    )


def test_old_versions_and_their_files_are_pruned_and_every_root_kept(hub):
    bundle.rotate(hub.repo, hub.keys)  # a second root version
    for number in range(bundle.KEEP_VERSIONS + 3):
        hub.write("blocklists/adult.txt", f"adult.example.com\nadult{number}.example.com\n")
        hub.publish()

    names = metadata(hub)
    assert [n for n in names if n.endswith(".root.json")] == ["1.root.json", "2.root.json"]
    assert len([n for n in names if n.endswith(".targets.json")]) == bundle.KEEP_VERSIONS
    assert len([n for n in names if n.endswith(".snapshot.json")]) == bundle.KEEP_VERSIONS
    adult = os.listdir(hub.repo / "targets" / "lists")
    assert len([name for name in adult if name.endswith(".adult.txt")]) == bundle.KEEP_VERSIONS
    assert not [name for name in os.listdir(hub.repo / "targets") if name.startswith(".")]


def test_allow_shrink_makes_a_version_marking_it_and_later_versions_carry_the_mark(hub):
    assert hub.publish(allow_shrink=["games"]).version == 2  # the same files: a new version for the mark
    assert manifest(hub)["shrink_intended"] == {"games": 2}
    hub.write("policies/school-a.yaml", SCHOOL_A_DENYING_NEW)
    hub.publish()
    assert manifest(hub)["shrink_intended"] == {"games": 2}

    with pytest.raises(UsageError, match=r"--allow-shrink gamez: no such category \(published or in sources.yaml: "):
        hub.publish(allow_shrink=["gamez"])


def test_files_that_do_not_validate_are_not_published(hub):
    before = metadata(hub)
    hub.write("policies/school-a.yaml", SCHOOL_A_DENYING_NEW.replace("level: primary", "level: nursery"))
    with pytest.raises(ConfigError, match=r"school-a\.yaml"):
        hub.publish()
    assert metadata(hub) == before


def test_a_key_readable_by_others_or_not_named_by_the_root_is_refused(hub):
    os.chmod(hub.keys / "targets.pem", 0o644)
    with pytest.raises(bundle.BundleError) as loose:
        hub.publish(allow_shrink=["games"])
    assert str(loose.value) == (
        f"{hub.keys / 'targets.pem'}: mode 0644; a key must be readable by its owner only "
        f"(chmod 600 {hub.keys / 'targets.pem'})"
    )
    os.chmod(hub.keys / "targets.pem", 0o600)
    (hub.keys / "targets.pem").write_bytes((hub.keys / "snapshot.pem").read_bytes())
    with pytest.raises(bundle.BundleError, match=r"targets.pem is not a targets key of metadata/1.root.json"):
        hub.publish(allow_shrink=["games"])


def test_rotate_writes_a_root_signed_by_the_old_and_new_root_keys(hub):
    old_root = signed(hub, "1.root.json")
    assert bundle.rotate(hub.repo, hub.keys, ["root", "timestamp"]) == 2
    new = Metadata.from_bytes((hub.repo / "metadata" / "2.root.json").read_bytes())
    old_root.verify_delegate("root", new.signed_bytes, new.signatures)  # what an instance checks
    new.signed.verify_delegate("root", new.signed_bytes, new.signatures)
    assert new.signed.roles["timestamp"].keyids != old_root.roles["timestamp"].keyids
    assert new.signed.roles["targets"].keyids == old_root.roles["targets"].keyids
    # timestamp.json was signed again with the new key at once.
    timestamp = Metadata.from_bytes((hub.repo / "metadata" / "timestamp.json").read_bytes())
    new.signed.verify_delegate("timestamp", timestamp.signed_bytes, timestamp.signatures)
    assert not list(hub.keys.glob("*.new"))
    with pytest.raises(UsageError, match="--role mirror: expected one of root, targets, snapshot, timestamp"):
        bundle.rotate(hub.repo, hub.keys, ["mirror"])


async def test_a_hub_publishes_after_a_reload_and_re_signs_before_expiry_and_reports_failures(hub, caplog):
    cfg = dataclasses.replace(hub.config, publish=config.PublishConfig(hub.repo, hub.keys))
    expiries = bundle.Expiries(timestamp=2)
    hub.publish(allow_shrink=["games"], expiries=expiries)  # version 2, its timestamp.json valid for 2 s
    publisher = bundle.Publisher(cfg, expiries)
    assert publisher.check_seconds == 0.5
    task = asyncio.create_task(publisher.run())
    try:
        await until(lambda: publisher.status().version == 2, 5)
        first_expiry = publisher.status().metadata_expires
        # A timestamp of 2 s is re-signed with 1 s left, without any request.
        await until(lambda: (publisher.status().metadata_expires or 0) > first_expiry, 10)

        hub.write("policies/school-a.yaml", SCHOOL_A_DENYING_NEW)
        publisher.request()
        await until(lambda: publisher.status().version == 3, 5)
        assert publisher.status().last_publish is not None

        os.chmod(hub.keys / "timestamp.pem", 0o640)
        hub.write("policies/school-b.yaml", (hub.site / "policies/school-b.yaml").read_text() + "# edited\n")
        publisher.request()
        await until(lambda: publisher.status().consecutive_failures == 1, 5)
        publisher.request()
        await until(lambda: publisher.status().consecutive_failures == 2, 5)
        assert "timestamp.pem: mode 0640" in publisher.status().last_error
        errors = [r for r in caplog.records if r.name == "resolver.control.bundle" and r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "\n" not in errors[0].getMessage()

        os.chmod(hub.keys / "timestamp.pem", 0o600)
        publisher.request()
        await until(lambda: publisher.status().version == 4, 5)
        assert publisher.status().last_error is None and publisher.status().consecutive_failures == 0
    finally:
        task.cancel()
