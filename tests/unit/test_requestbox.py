"""The block page's requests file: kept to the minute, deduplicated, bounded by rows, retention and per school."""

from __future__ import annotations

import stat

from resolver.control import config
from resolver.operations import requestbox
from resolver.operations.requestbox import Kind, RequestBox, Status, Taken
from tests.support.harness import write_site

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
DAY = 86_400.0


def box(tmp_path, max_rows=100, retention_seconds=30 * DAY, max_open_per_school=50) -> RequestBox:
    return RequestBox(tmp_path / "state", max_rows, retention_seconds, max_open_per_school)


def test_a_request_is_kept_to_the_minute_and_asked_again_counts_on_it(tmp_path):
    requests = box(tmp_path)
    assert requests.read(10) == []  # no file yet: nothing, and no file made by reading
    assert not requests.path.exists()
    assert requests.submit(Kind.UNBLOCK, "school-a", "games.example.com", "schoolwork", T0 + 59, "games", "school") is (
        Taken.NEW
    )
    assert stat.S_IMODE(requests.path.stat().st_mode) == 0o600
    assert requests.submit(Kind.UNBLOCK, "school-a", "games.example.com", "other", T0 + 200) is Taken.AGAIN
    assert requests.submit(Kind.REPORT, "school-a", "games.example.com", "scam", T0 + 300) is Taken.NEW  # other kind
    assert (
        requests.submit(Kind.UNBLOCK, "school-b", "games.example.com", "other", T0 + 400) is Taken.NEW
    )  # other school
    [unblock] = requests.read(10, school="school-a", status=Status.OPEN)[1:]
    assert unblock.to_json() == {
        "id": 1,
        "kind": "unblock",
        "school": "school-a",
        "name": "games.example.com",
        "category": "games",
        "authority": "school",
        "reason": "schoolwork",  # the first asker's
        "created": "2027-01-15T08:00Z",
        "last_asked": "2027-01-15T08:03Z",
        "asked": 2,
        "status": "open",
        "decided": None,
        "decided_by": None,
    }
    assert [r.id for r in requests.read(10)] == [3, 2, 1]  # newest first
    assert [r.id for r in requests.read(2)] == [3, 2]
    assert [r.id for r in requests.read(10, school="school-b")] == [3]


def test_a_decision_moves_a_request_once_and_a_decided_one_is_asked_anew(tmp_path):
    requests = box(tmp_path)
    requests.submit(Kind.UNBLOCK, "school-a", "games.example.com", "schoolwork", T0)
    assert requests.decide(1, Status.OPEN, Status.FORWARDED, "it-a", T0 + 61)
    assert not requests.decide(1, Status.OPEN, Status.REJECTED, "it-a", T0 + 62)  # not open any more
    assert requests.submit(Kind.UNBLOCK, "school-a", "games.example.com", "other", T0 + 63) is Taken.AGAIN
    assert requests.decide(1, Status.FORWARDED, Status.REJECTED, "prov", T0 + 120)
    decided = requests.get(1)
    assert decided is not None and (decided.status, decided.decided_by, decided.decided) == (
        Status.REJECTED,
        "prov",
        T0 + 120,
    )
    assert requests.submit(Kind.UNBLOCK, "school-a", "games.example.com", "other", T0 + 180) is Taken.NEW
    assert requests.get(2) is not None and requests.get(3) is None


def test_a_school_has_at_most_so_many_open_requests(tmp_path):
    requests = box(tmp_path, max_open_per_school=2)
    for n in range(2):
        assert requests.submit(Kind.REPORT, "school-a", f"n{n}.example", "scam", T0) is Taken.NEW
    assert requests.submit(Kind.REPORT, "school-a", "n2.example", "scam", T0) is Taken.FULL
    assert requests.submit(Kind.REPORT, "school-a", "n0.example", "scam", T0) is Taken.AGAIN  # still counted
    assert requests.submit(Kind.REPORT, "school-b", "n2.example", "scam", T0) is Taken.NEW
    requests.decide(1, Status.OPEN, Status.REJECTED, "it-a", T0)
    assert requests.submit(Kind.REPORT, "school-a", "n2.example", "scam", T0) is Taken.NEW


def test_past_max_rows_decided_requests_go_first_then_the_oldest(tmp_path):
    requests = box(tmp_path, max_rows=3)
    for n in range(3):
        requests.submit(Kind.REPORT, "school-a", f"n{n}.example", "scam", T0 + n)
    requests.decide(2, Status.OPEN, Status.DENIED, "it-a", T0)
    requests.submit(Kind.REPORT, "school-a", "n3.example", "scam", T0 + 3)
    assert [r.id for r in requests.read(10)] == [4, 3, 1]  # the decided one went
    requests.submit(Kind.REPORT, "school-a", "n4.example", "scam", T0 + 4)
    assert [r.id for r in requests.read(10)] == [5, 4, 3]  # then the oldest waiting one


def test_requests_not_asked_within_the_retention_go(tmp_path):
    requests = box(tmp_path, retention_seconds=DAY)
    requests.submit(Kind.REPORT, "school-a", "old.example", "scam", T0)
    requests.submit(Kind.REPORT, "school-a", "asked-again.example", "scam", T0)
    requests.submit(Kind.REPORT, "school-a", "asked-again.example", "scam", T0 + DAY / 2)
    requests.submit(Kind.REPORT, "school-a", "new.example", "scam", T0 + DAY + 120)
    assert [r.name for r in requests.read(10)] == ["new.example", "asked-again.example"]
    requests.submit(Kind.REPORT, "school-a", "newer.example", "scam", T0 + 2 * DAY)
    assert [r.name for r in requests.read(10)] == ["newer.example", "new.example"]
    assert not requests.decide(3, Status.OPEN, Status.REJECTED, "it-a", T0 + 4 * DAY)  # gone, not decided
    assert requests.read(10) == []


def test_the_bounds_of_a_config(tmp_path):
    path = write_site(tmp_path, ["192.0.2.1:53"], "blockpage: {max_requests: 10, retention_days: 2}\n")
    requests = requestbox.RequestBox.of(config.load_config(path))
    assert (requests.max_rows, requests.retention_seconds) == (10, 2 * DAY)
    assert requests.path == tmp_path / "var" / requestbox.REQUESTS_FILE
