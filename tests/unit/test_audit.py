"""The audit log: entries appended as JSON lines in state_dir, read newest first, filtered, bounded by rotation."""

from __future__ import annotations

import json
import stat

from resolver.operations import audit
from resolver.operations.audit import Action, AuditLog, Entry, Result


def entry(n: int, school: str | None = "school-a", action: Action = Action.POLICY_WRITE) -> Entry:
    return Entry(action, Result.OK, f"token-{n}", "province", 1_800_000_000.0 + n, school, "a" * 64, "b" * 64)


def test_entries_are_json_lines_read_back_newest_first(tmp_path):
    log = AuditLog(tmp_path / "state")
    for n in range(3):
        log.append(entry(n))
    log.append(Entry(Action.TOKEN_ADD, Result.OK, "cli:root", "local", 1_800_000_010.5, token="it-a (school:a)"))
    path = tmp_path / "state" / audit.AUDIT_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {
        "time": "2027-01-15T08:00:00.000Z",
        "who": "token-0",
        "role": "province",
        "action": "policy.write",
        "result": "ok",
        "school": "school-a",
        "old_sha256": "a" * 64,
        "new_sha256": "b" * 64,
        "token": None,
        "request": None,
        "decision": None,
        "name": None,
    }
    read = log.read(10)
    assert [e.who for e in read] == ["cli:root", "token-2", "token-1", "token-0"]
    assert read[0] == Entry(Action.TOKEN_ADD, Result.OK, "cli:root", "local", 1_800_000_010.5, token="it-a (school:a)")
    assert read[1] == entry(2)
    assert [e.who for e in log.read(2)] == ["cli:root", "token-2"]
    assert [e.who for e in log.read(10, school="school-a")] == ["token-2", "token-1", "token-0"]
    assert log.read(10, school="school-b") == []


def test_a_line_that_is_not_an_entry_is_passed_over(tmp_path):
    log = AuditLog(tmp_path)
    log.append(entry(1))
    with open(log.path, "a") as file:
        file.write('{"action": "policy.wri\n{"action": "later.action", "result": "ok"}\n')
    log.append(entry(2))
    assert [e.who for e in log.read(10)] == ["token-2", "token-1"]


def test_rotation_bounds_the_files_and_reads_go_on_across_them(tmp_path):
    log = AuditLog(tmp_path, max_file_bytes=1_000, keep_rotated=2)
    for n in range(40):
        log.append(entry(n))
    files = sorted(path.name for path in tmp_path.iterdir() if not path.name.startswith("."))
    assert files == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2"]
    assert all((tmp_path / name).stat().st_size <= 1_000 for name in files)
    read = log.read(1_000)
    assert [e.who for e in read] == [f"token-{n}" for n in range(39, 39 - len(read), -1)]  # the newest, in order
    assert 6 <= len(read) < 40  # entries of about 300 bytes: 3 files of 2 or 3
    assert len(log.read(audit.MAX_READ + 5)) == len(read)
