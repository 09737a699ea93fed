"""The last good state in state_dir: saved after a build, used by a start whose files fail, never half-written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from resolver.control import config, lastgood, snapshots
from resolver.errors import ResolverError
from resolver.filtering import domains, lists
from resolver.yamlfile import ConfigError
from tests.support.harness import PROVINCE, write_lists_over_capacity, write_site

BROKEN_PROVINCE = PROVINCE + "colour: blue\n"  # an unknown key: line 7


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    return config.load_config(write_site(tmp_path, ["127.0.0.1:53"]))


def games_bit(snapshot) -> int:
    return 1 << snapshot.categories.index("games")


def copies(cfg: config.Config) -> list[str]:
    return sorted(path.name for path in cfg.state_dir.glob("last-good-*"))


def test_a_start_with_broken_files_serves_the_copy_saved_by_the_last_build(cfg):
    built = snapshots.build_serving_snapshot(cfg, 1)
    assert not built.from_last_good
    (cfg.policies_dir / "province.yaml").write_text(BROKEN_PROVINCE)
    (cfg.blocklists_dir / "games.txt").unlink()  # sources.yaml names it: the lists do not build either

    started = snapshots.start_snapshot(cfg, 1)

    assert started.from_last_good
    assert started.categories == built.categories and started.entry_counts == built.entry_counts
    # Its lists are at least as old as its index, compiled after they last changed.
    assert started.lists_updated_at == os.stat(cfg.state_dir / "last-good" / "index.bin").st_mtime
    assert started.index.lookup("games.example.com") == games_bit(built)
    assert [school.id for school in started.policies.schools] == ["school-a", "school-b"]
    assert started.directory.lookup("127.0.0.2").id == "school-b"
    saved = lastgood.locate(cfg.state_dir)
    assert started.province.file == str(saved.policies_dir / "province.yaml")


def test_a_start_whose_lists_do_not_compile_serves_the_last_good_and_says_why(cfg, caplog, capfd):
    snapshots.build_serving_snapshot(cfg, 1)
    # The policies' categories and 56 more, whose names overflow the index: the compile (in a child) fails.
    write_lists_over_capacity(
        cfg.blocklists_dir, ["adult", "games", "malware", "bypass"] + [f"c{i}" for i in range(56)]
    )

    started = snapshots.start_snapshot(cfg, 2)

    assert started.from_last_good and started.index.lookup("games.example.com") == games_bit(started)
    assert "the lists do not compile: over 32768 distinct combinations of categories" in caplog.text
    assert "Traceback" not in capfd.readouterr().err  # the compile child's output included


def test_the_copy_keeps_its_own_index_when_a_later_compile_replaces_index_bin(cfg):
    snapshots.build_serving_snapshot(cfg, 1)
    (cfg.blocklists_dir / "games.txt").write_text("")
    assert snapshots.build_snapshot(cfg, 2).index.lookup("games.example.com") == 0  # `explain` does this: no save
    (cfg.policies_dir / "province.yaml").write_text(BROKEN_PROVINCE)

    started = snapshots.start_snapshot(cfg, 3)

    assert started.from_last_good
    assert started.index.lookup("games.example.com") == games_bit(started)


def test_an_unchanged_build_keeps_the_copy_and_a_changed_one_replaces_it(cfg):
    snapshots.build_serving_snapshot(cfg, 1)
    first = copies(cfg)
    snapshots.build_serving_snapshot(cfg, 2)
    assert copies(cfg) == first and len(first) == 1

    (cfg.policies_dir / "school-b.yaml").write_text(
        (cfg.policies_dir / "school-b.yaml").read_text().replace("safe_search: true", "safe_search: false")
    )
    snapshots.build_serving_snapshot(cfg, 3)

    second = copies(cfg)
    assert len(second) == 1 and second != first
    saved = lastgood.locate(cfg.state_dir)
    assert saved.directory.name == second[0]
    assert "safe_search: false" in (saved.policies_dir / "school-b.yaml").read_text()
    assert not list(cfg.state_dir.glob(".last-good.*.tmp"))


def test_a_save_clears_the_links_of_saves_that_were_killed_before_their_swap(cfg):
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    left = cfg.state_dir / ".last-good.4242.tmp"  # what a process killed between symlink and rename leaves
    left.symlink_to("last-good-1-4242")

    snapshots.build_serving_snapshot(cfg, 1)

    assert not left.is_symlink()
    assert lastgood.locate(cfg.state_dir) is not None


def test_a_save_that_fails_at_the_swap_leaves_no_copy_and_no_link(cfg):
    snapshots.build_serving_snapshot(cfg, 1)
    before = copies(cfg)
    link = cfg.state_dir / lastgood.LINK
    link.unlink()
    link.mkdir()  # a directory where the link goes: the rename onto it fails, as a stop there would end it
    (cfg.policies_dir / "school-b.yaml").write_text(
        (cfg.policies_dir / "school-b.yaml").read_text().replace("safe_search: true", "safe_search: false")
    )

    snapshots.build_serving_snapshot(cfg, 2)  # serves; the save only logs its failure

    assert copies(cfg) == before and link.is_dir() and not list(cfg.state_dir.glob(".last-good.*.tmp"))


@pytest.mark.parametrize("change", ["edited", "removed"])
def test_a_policy_file_changed_during_the_build_is_not_saved(cfg, change):
    files_before = lastgood.policy_files(cfg.policies_dir)
    snapshot = snapshots.build_snapshot(cfg, 1)
    school_b = cfg.policies_dir / "school-b.yaml"  # changed after the build read it
    if change == "edited":
        school_b.write_text(school_b.read_text() + "# edited\n")
    else:
        school_b.unlink()

    assert not lastgood.save(
        cfg.state_dir, cfg.policies_dir, files_before, snapshot.index, snapshot.categories, snapshot.entry_counts
    )
    assert lastgood.locate(cfg.state_dir) is None and copies(cfg) == []


def test_an_index_held_in_memory_is_not_saved(cfg):
    snapshot = snapshots.build_snapshot(cfg, 1)
    in_memory = domains.DomainIndex.from_bytes(domains.build_index([("games.example.com", 0, "exact", "block")]))
    assert in_memory.file is None
    assert not lastgood.save(
        cfg.state_dir,
        cfg.policies_dir,
        lastgood.policy_files(cfg.policies_dir),
        in_memory,
        snapshot.categories,
        snapshot.entry_counts,
    )
    assert lastgood.locate(cfg.state_dir) is None


def test_without_a_copy_a_start_with_broken_files_fails_with_their_problems(cfg):
    (cfg.policies_dir / "province.yaml").write_text(BROKEN_PROVINCE)
    with pytest.raises(ConfigError) as caught:
        snapshots.start_snapshot(cfg, 1)
    assert f"{cfg.policies_dir / 'province.yaml'}:7: colour: unknown key 'colour'" in str(caught.value)


@pytest.mark.parametrize("damage", ["saved.json", "index.bin", "policies"])
def test_a_damaged_copy_fails_the_start_naming_both_problems(cfg, damage):
    snapshots.build_serving_snapshot(cfg, 1)
    saved = lastgood.locate(cfg.state_dir)
    if damage == "saved.json":
        (saved.directory / "saved.json").write_text('{"categories": ')
    elif damage == "index.bin":
        image = bytearray(saved.index_path.read_bytes())
        saved.index_path.unlink()  # a hard link to index.bin: write a new file, not through the link
        image[-1] ^= 1
        saved.index_path.write_bytes(bytes(image))
    else:
        (saved.policies_dir / "school-a.yaml").unlink()
        (saved.policies_dir / "school-b.yaml").write_text("id: school-b\nnetworks: [127.0.0.2/32]\n")
    (cfg.policies_dir / "province.yaml").write_text(BROKEN_PROVINCE)

    with pytest.raises(ResolverError) as caught:
        snapshots.start_snapshot(cfg, 1)

    message = str(caught.value)
    assert "colour: unknown key 'colour'" in message
    assert f"the last good copy in {cfg.state_dir / 'last-good'} cannot be used either" in message
    expected = {"saved.json": "saved.json: unreadable", "index.bin": "checksum mismatch", "policies": "school-b.yaml"}[
        damage
    ]
    assert expected in message


def test_saved_json_records_what_the_copy_holds(cfg):
    built = snapshots.build_serving_snapshot(cfg, 1)
    saved = lastgood.locate(cfg.state_dir)
    record = json.loads((saved.directory / "saved.json").read_text())
    assert record["categories"] == list(built.categories)
    assert record["entry_counts"] == built.entry_counts
    assert sorted(path.name for path in saved.policies_dir.iterdir()) == [
        "province.yaml",
        "school-a.yaml",
        "school-b.yaml",
    ]
    assert saved.index_path.stat().st_ino == (cfg.state_dir / lists.INDEX_FILE).stat().st_ino  # linked, not copied
