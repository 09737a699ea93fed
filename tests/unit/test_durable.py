"""durable: synced writes and one-rename replaces on real files, what a failed replace leaves, the stale-file sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from resolver import durable
from resolver.filtering import lists


def test_write_synced_creates_and_truncates(tmp_path):
    path = tmp_path / "saved.json"
    durable.write_synced(path, b"a much longer first text")
    durable.write_synced(path, b"short")
    assert path.read_bytes() == b"short"


def test_replace_synced_swaps_the_inode_and_an_open_reader_keeps_the_old_text(tmp_path):
    path = tmp_path / "index.bin"
    durable.replace_synced(path, b"old image")
    before = os.stat(path).st_ino
    with open(path, "rb") as reader:
        durable.replace_synced(path, b"new image")
        assert reader.read() == b"old image"
    assert path.read_bytes() == b"new image"
    assert os.stat(path).st_ino != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.bin"]  # no temporary file left


def test_a_failed_replace_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "index.json"
    path.write_bytes(b"old manifest")
    with pytest.raises(TypeError):
        durable.replace_synced(path, "not bytes")  # fails after the temporary file was made
    assert path.read_bytes() == b"old manifest"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json"]


def test_a_replace_into_a_missing_directory_is_an_oserror_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        durable.replace_synced(tmp_path / "missing" / "index.bin", b"x")


def test_sync_directory_refuses_a_file(tmp_path):
    path = tmp_path / "file"
    path.write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        durable.sync_directory(path)


def dead_pid() -> int:
    """The pid of a child that has exited and been reaped (no process has it, barring a quick reuse)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    target = tmp_path / "index.bin"
    dead = tmp_path / f".index.bin.{dead_pid()}.tmp"
    live = durable.temporary_path(target, os.getpid())
    others = [tmp_path / ".index.json.1.tmp", tmp_path / ".index.bin.editor.tmp", target]
    for path in [dead, live, *others]:
        path.write_bytes(b"x")

    assert durable.remove_stale_temporaries(target) == [dead]

    assert sorted(tmp_path.iterdir()) == sorted([live, *others])


def test_compile_writes_index_and_manifest_and_sweeps_stale_temporary_files(tmp_path):
    blocklists = tmp_path / "blocklists"
    blocklists.mkdir()
    (blocklists / "games.txt").write_text("game.example\n")
    (blocklists / "sources.yaml").write_text(
        "categories:\n  games:\n    description: Online games.\n"
        "    sources:\n      - {file: games.txt, format: domains}\n"
    )
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    killed = dead_pid()
    for name in (lists.INDEX_FILE, lists.MANIFEST_FILE):  # what a compile killed mid-write leaves
        durable.temporary_path(state_dir / name, killed).write_bytes(b"half")

    manifest, image = lists.compile_to_state_dir(blocklists, state_dir, "fingerprint-1")

    assert image is None  # written, not kept in memory
    assert json.loads((state_dir / lists.MANIFEST_FILE).read_text()) == manifest
    assert manifest["entry_counts"] == {"games": 1}
    assert sorted(p.name for p in state_dir.iterdir()) == sorted([lists.INDEX_FILE, lists.MANIFEST_FILE])


def test_stale_temporaries_of_any_file_in_a_directory_are_removed(tmp_path):
    pid = dead_pid()
    dead = [tmp_path / f".school-a.yaml.{pid}.tmp", tmp_path / f".1-20260101T000000Z-abc.yaml.{pid}.tmp"]
    kept = [
        durable.temporary_path(tmp_path / "school-b.yaml", os.getpid()),
        tmp_path / ".notes.tmp",
        tmp_path / "a.yaml",
    ]
    for path in [*dead, *kept]:
        path.write_bytes(b"x")

    assert sorted(durable.remove_stale_temporaries_in(tmp_path)) == sorted(dead)

    assert sorted(tmp_path.iterdir()) == sorted(kept)
    assert durable.remove_stale_temporaries_in(tmp_path / "missing") == []
