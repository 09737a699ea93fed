"""The instance's sync piece by piece: the shrink guard, bundle.json, target paths, failure lines, `current`."""

from __future__ import annotations

import json
import os

import pytest
import urllib3.exceptions
from tuf.api import exceptions as tuf_errors

from resolver.control import config, snapshots, sync, versions
from resolver.filtering import lists
from tests.support.harness import write_site

MANIFEST = {
    "format": 1,
    "version": 7,
    "published": 1700000000.5,
    "categories": ["adult", "games"],
    "files": {"lists/sources.yaml": 1700000000.5, "policies/province.yaml": 1690000000.0},
    "shrink_intended": {"games": 6},
}


@pytest.mark.parametrize(
    "served, candidate, intended, served_version, refused",
    [
        ({"adult": 100}, {"adult": 80}, {}, 1, []),  # 20% lost: at the limit, taken
        ({"adult": 100}, {"adult": 79}, {}, 1, ["adult 100 -> 79"]),
        ({"adult": 100}, {}, {}, 1, ["adult 100 -> 0"]),  # the category is gone
        ({"adult": 0}, {"adult": 0}, {}, 1, []),  # nothing to lose
        ({"adult": 100}, {"adult": 500}, {}, 1, []),  # growth is never refused
        ({"adult": 100}, {"adult": 10}, {"adult": 2}, 1, []),  # marked after the version served
        ({"adult": 100}, {"adult": 10}, {"adult": 2}, 2, ["adult 100 -> 10"]),  # the mark is that old already
        ({"adult": 100, "games": 10}, {"adult": 100, "games": 1}, {}, None, ["games 10 -> 1"]),
    ],
)
def test_the_shrink_guard(served, candidate, intended, served_version, refused):
    assert sync.shrinks(served, candidate, 20.0, intended, served_version) == refused


def test_bundle_json_is_read_strictly():
    manifest = sync.Manifest.parse(json.dumps(MANIFEST).encode())
    assert (manifest.version, manifest.published, manifest.categories) == (7, 1700000000.5, ("adult", "games"))
    assert manifest.files["policies/province.yaml"] == 1690000000.0 and manifest.shrink_intended == {"games": 6}

    for broken, message in [
        (b"{", "bundle.json from the hub is not readable (Expecting property name"),
        (json.dumps({**MANIFEST, "format": 2}).encode(), "format 2; this schooldns reads format 1"),
        (json.dumps({**MANIFEST, "version": "x"}).encode(), "invalid literal for int()"),
        (json.dumps({k: v for k, v in MANIFEST.items() if k != "files"}).encode(), "('files')"),
    ]:
        with pytest.raises(sync.Refused) as caught:
            sync.Manifest.parse(broken)
        assert message in str(caught.value)


@pytest.mark.parametrize(
    "path",
    [
        "lists",
        "lists/../x",
        "/lists/a.txt",
        "policies/.hidden.yaml",
        "other/a.txt",
        "lists/a\\b",
        "lists//a",
        "./lists/a",
    ],
)
def test_a_bundle_may_name_only_files_under_lists_and_policies(path):
    with pytest.raises(sync.Refused, match="not a path under lists/ or policies/"):
        sync.check_target_path(path)


def test_good_target_paths():
    for path in ["lists/sources.yaml", "lists/malware/urlhaus.txt", "policies/province.yaml"]:
        sync.check_target_path(path)


def test_failures_are_told_in_one_stable_line_without_object_ids():
    refused = ConnectionRefusedError(111, "Connection refused")
    connection = urllib3.exceptions.NewConnectionError(object(), "Failed to establish a new connection")
    connection.__cause__ = refused
    retried = urllib3.exceptions.MaxRetryError(None, "/metadata/timestamp.json", connection)
    wrapped = tuf_errors.DownloadError("Failed to download")
    wrapped.__cause__ = retried
    assert sync.describe(wrapped, "http://hub") == "cannot download from the hub http://hub: Connection refused"
    assert sync.describe(tuf_errors.DownloadHTTPError("x", 404), "") == "the hub answered HTTP 404"
    assert sync.describe(tuf_errors.ExpiredMetadataError("timestamp.json is expired"), "").startswith(
        "the hub's signed metadata has expired (timestamp.json is expired)"
    )
    assert "(a rollback)" in sync.describe(tuf_errors.BadVersionNumberError("New timestamp version 1 must be >= 2"), "")
    cut = urllib3.exceptions.ProtocolError("Connection broken", urllib3.exceptions.IncompleteRead(80, 80))
    assert sync.describe(cut, "") == (
        "cannot download from the hub: the connection closed before the whole file arrived "
        "(IncompleteRead(80 bytes read, 80 more expected))"
    )


def test_current_is_switched_in_one_rename_and_versions_pruned(tmp_path):
    state_dir = tmp_path / "var"
    first, second, third = (state_dir / "sync" / "versions" / name for name in ("1-a", "2-b", "3-c"))
    for directory in (first, second, third):
        directory.mkdir(parents=True)
    assert versions.current(state_dir) is None

    assert versions.switch(state_dir, first) is None
    assert versions.switch(state_dir, second) == first
    assert versions.current(state_dir) == second
    assert os.readlink(state_dir / "sync" / "current") == "versions/2-b"  # relative: the state_dir may move
    versions.prune(state_dir, (second, first))
    assert sorted(p.name for p in (state_dir / "sync" / "versions").iterdir()) == ["1-a", "2-b"]


def test_with_sync_a_build_reads_the_current_version(tmp_path):
    cfg = config.load_config(
        write_site(tmp_path, ["127.0.0.1:53"], "sync: {repository: 'http://hub', trusted_root: root.json}\n")
    )
    with pytest.raises(versions.NotSyncedError, match="no verified version of the lists and policies from http://hub"):
        versions.served_config(cfg)
    version = cfg.state_dir / "sync" / "versions" / "1-a"
    version.mkdir(parents=True)
    (version / "lists").symlink_to(cfg.blocklists_dir)
    (version / "policies").symlink_to(cfg.policies_dir)
    versions.switch(cfg.state_dir, version)

    served = versions.served_config(cfg)
    assert (served.policies_dir, served.blocklists_dir, served.sync) == (version / "policies", version / "lists", None)
    assert snapshots.build_snapshot(cfg, 1).policies.school("school-a") is not None


def test_the_same_lists_in_another_directory_have_the_same_fingerprint(tmp_path):
    # A synced version lives in a directory of its own: unchanged lists must not be compiled again.
    one = write_site(tmp_path / "one", ["127.0.0.1:53"]).parent / "blocklists"
    two = tmp_path / "two"
    two.mkdir()
    for path in one.iterdir():
        os.link(path, two / path.name)
    assert snapshots.sources_fingerprint(one, lists.load_sources(one)) == snapshots.sources_fingerprint(
        two, lists.load_sources(two)
    )
