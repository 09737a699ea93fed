"""The control plane's builds and tools: files_signature, build_snapshot's checks, and `check` / `explain` output."""

from __future__ import annotations

import datetime
import os
import zoneinfo
from pathlib import Path

import pytest

from resolver.control import checks, config, snapshots
from resolver.errors import UsageError
from resolver.filtering import lists
from resolver.yamlfile import ConfigError
from tests.support.harness import write_site

# A Wednesday morning in the province's time zone (no schedule in the test site depends on it).
WEDNESDAY_MORNING = datetime.datetime(2026, 11, 25, 10, 0, tzinfo=zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")).timestamp()


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    return config.load_config(write_site(tmp_path, ["127.0.0.1:53"]))


def _touch_later(path: Path) -> None:
    """Same content, a later mtime: what an editor that saves unchanged text does."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))


def test_files_signature_changes_when_a_policy_or_list_file_changes(cfg):
    first = snapshots.files_signature(cfg)
    assert snapshots.files_signature(cfg) == first

    school_b = cfg.policies_dir / "school-b.yaml"
    school_b.write_text(school_b.read_text().replace("safe_search: true", "safe_search: false"))
    edited = snapshots.files_signature(cfg)
    assert edited != first

    _touch_later(cfg.blocklists_dir / "games.txt")
    touched = snapshots.files_signature(cfg)
    assert touched != edited

    (cfg.policies_dir / "school-c.yaml").write_text("id: school-c\nnetworks: [127.0.0.3/32]\n")
    assert snapshots.files_signature(cfg) != touched
    (cfg.policies_dir / "school-c.yaml").unlink()
    assert snapshots.files_signature(cfg) == touched


def test_files_signature_ignores_dot_files_and_dot_directories(cfg):
    first = snapshots.files_signature(cfg)
    (cfg.policies_dir / ".school-a.yaml.swp").write_text("an editor's swap file")
    (cfg.blocklists_dir / ".games.txt.1234.tmp").write_text("a temporary file")
    git = cfg.blocklists_dir / ".git" / "objects"  # a list directory kept in git
    git.mkdir(parents=True)
    (git / "pack").write_text("packed objects")

    assert snapshots.files_signature(cfg) == first


def test_the_lists_are_as_old_as_their_newest_file_not_the_build(cfg):
    files = [cfg.blocklists_dir / name for name in ("sources.yaml", "adult.txt", "games.txt", "malware.txt")]
    for age_days, path in enumerate(files, start=3):
        os.utime(path, (WEDNESDAY_MORNING - age_days * 86400,) * 2)
    assert snapshots.build_snapshot(cfg, 1).lists_updated_at == WEDNESDAY_MORNING - 3 * 86400
    os.utime(files[2], (WEDNESDAY_MORNING,) * 2)  # one list updated
    assert snapshots.build_snapshot(cfg, 2).lists_updated_at == WEDNESDAY_MORNING


def test_a_default_school_that_names_no_school_fails_the_build_before_any_compile(tmp_path):
    cfg = config.load_config(write_site(tmp_path, ["127.0.0.1:53"], "default_school: school-z\n"))

    with pytest.raises(ConfigError) as built:
        snapshots.build_snapshot(cfg, 1)

    [problem] = built.value.problems
    assert (problem.file, problem.key_path) == (cfg.file, "default_school")
    assert problem.message == f"no school 'school-z' in {cfg.policies_dir}"
    assert not (cfg.state_dir / lists.INDEX_FILE).exists()  # the lists were not compiled for nothing
    with pytest.raises(ConfigError) as checked:  # `schooldns check` says the same
        checks.check(cfg)
    assert checked.value.problems == built.value.problems


def test_a_default_school_that_exists_is_the_snapshots_default(tmp_path):
    cfg = config.load_config(write_site(tmp_path, ["127.0.0.1:53"], "default_school: school-b\n"))
    snapshot = snapshots.build_snapshot(cfg, 7)
    assert snapshot.default_school is not None and snapshot.default_school.id == "school-b"
    assert snapshot.generation == 7 and not snapshot.from_last_good


def test_check_summarises_schools_categories_and_each_list_file(cfg):
    assert checks.check(cfg) == [
        "2 schools, 4 categories, 4 list entries",
        "  adult.txt: 1 entries, 0 skipped, 0 invalid",
        "  games.txt: 2 entries, 0 skipped, 0 invalid",
        "  malware.txt: 1 entries, 0 skipped, 0 invalid",
    ]


def test_check_counts_skipped_and_invalid_lines(cfg):
    (cfg.blocklists_dir / "games.txt").write_text("# games\ngames.example.com\n\nnot a name!\n")
    lines = checks.check(cfg)
    assert lines[0] == "2 schools, 4 categories, 3 list entries"
    assert "  games.txt: 1 entries, 1 skipped, 1 invalid"  # the comment skipped; blank lines are not counted in lines


def test_check_reports_a_broken_policy_by_file_line_and_key(cfg):
    (cfg.policies_dir / "school-b.yaml").write_text("id: school-b\nnetworks: [127.0.0.2/32]\nblock: [gamez]\n")
    with pytest.raises(ConfigError) as caught:
        checks.check(cfg)
    assert f"{cfg.policies_dir / 'school-b.yaml'}:3: block[0]: unknown category 'gamez'" in str(caught.value)


def test_explain_a_blocked_name_gives_the_rule_and_the_list_line(cfg):
    snapshot = snapshots.build_snapshot(cfg, 1)
    assert checks.explain(snapshot, "school-a", "Games.Example.com.", WEDNESDAY_MORNING, cfg.blocklists_dir) == [
        "school: school-a",
        "name: games.example.com",
        "time: 2026-11-25 10:00 wed (Asia/Ho_Chi_Minh)",
        "decision: block (nxdomain, category games, authority school)",
        "rule: category 'games' is blocked by profile 'primary'",
        "listed in: games",
        "blocked now: adult, games, malware, bypass",
        "active schedules: -",
        "allow/deny entry: -",
        "listed: games.example.com (block, subtree) in games",
        "  from games.txt:1 (block)",
    ]


def test_explain_an_allowed_name_names_the_entry_and_what_it_overrides(cfg):
    snapshot = snapshots.build_snapshot(cfg, 1)
    lines = checks.explain(snapshot, "school-a", "allowed.example.com", WEDNESDAY_MORNING)
    assert lines[3:5] == ["decision: allow", "rule: allow entry 'allowed.example.com' (overrides games)"]
    assert "allow/deny entry: allowed.example.com" in lines
    assert lines[-1] == "listed: allowed.example.com (block, subtree) in games"  # no blocklists_dir: no file lines


def test_explain_a_unicode_name_shows_its_a_label_and_the_input(cfg):
    snapshot = snapshots.build_snapshot(cfg, 1)
    lines = checks.explain(snapshot, "school-b", "bóng-đá.vn", WEDNESDAY_MORNING)
    assert lines[:3] == ["school: school-b", "name: xn--bng--8na8hpj.vn", "input: bóng-đá.vn"]
    assert "rule: no rule matched" in lines


def test_explain_refuses_an_unknown_school_and_a_url_in_one_line(cfg):
    snapshot = snapshots.build_snapshot(cfg, 1)
    with pytest.raises(UsageError, match=r"^no school 'x' in the policies \(known: school-a, school-b\)$"):
        checks.explain(snapshot, "x", "example.com", WEDNESDAY_MORNING)
    with pytest.raises(UsageError, match=r"^'http://x\.com/a' is a URL; write only the domain name"):
        checks.explain(snapshot, "school-a", "http://x.com/a", WEDNESDAY_MORNING)
