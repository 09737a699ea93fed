"""Daily rollups: growth read off counters (resets included), the SQLite store, the writer's days and failures."""

from __future__ import annotations

import asyncio
import datetime
import sqlite3
import zoneinfo

import pytest

from resolver.dataplane import metrics
from resolver.errors import ResolverError
from resolver.operations import rollups
from tests.support.states import state

ZONE = zoneinfo.ZoneInfo("Asia/Ho_Chi_Minh")  # UTC+7, no summer time
# 2026-03-02 23:59:00 in Hanoi, and a minute later the next day.
BEFORE_MIDNIGHT = datetime.datetime(2026, 3, 2, 23, 59, tzinfo=ZONE).timestamp()
MONDAY, TUESDAY = datetime.date(2026, 3, 2), datetime.date(2026, 3, 3)


def counters(*asked: tuple[str, str, str], blocks: tuple[tuple[str, str, str], ...] = ()) -> metrics.Counters:
    made = metrics.Counters()
    for key in asked:
        made.count(*key)
    for school, category, authority in blocks:
        made.count_block(school, "udp", category, authority)
    return made


def test_growth_is_what_each_counter_gained_and_all_of_one_that_started_again():
    first = counters(("school-a", "udp", "forwarded"), ("school-a", "tcp", "cached"), ("school-b", "udp", "forwarded"))
    growth, after = rollups.Baseline().growth(first)
    assert growth.queries == {"school-a": 2, "school-b": 1} and growth.blocked == {}
    later = counters(
        ("school-a", "udp", "forwarded"),
        ("school-a", "udp", "forwarded"),
        ("school-a", "tcp", "cached"),
        blocks=(("school-b", "adult", "school"), ("school-b", "malware", "province")),
    )
    # school-b's forwarded counter went from 1 to 0: a worker started again; its blocks are new.
    growth, after = after.growth(later)
    assert growth.queries == {"school-a": 1, "school-b": 2}
    assert growth.blocked == {("school-b", "adult", "school"): 1, ("school-b", "malware", "province"): 1}
    # A counter that went down (2 to 1) gained its new value, not a negative number.
    restarted = counters(("school-a", "udp", "forwarded"))
    growth, _ = after.growth(restarted)
    assert growth.queries == {"school-a": 1}


def test_the_store_adds_up_days_keeps_silent_schools_and_deletes_old_days(tmp_path):
    store = rollups.RollupStore(tmp_path / "var")
    # No file yet: nothing, not an error.
    assert store.totals(MONDAY, TUESDAY) == rollups.EMPTY_TOTALS and store.daily(MONDAY, TUESDAY) == rollups.EMPTY_DAILY
    one = rollups.Growth(
        {"school-a": 3, "unknown": 1}, {("school-a", "games", "school"): 2, ("school-a", "adult", "school"): 1}
    )
    store.add(MONDAY, one, ["school-a", "school-b"])
    store.add(MONDAY, one, ["school-a", "school-b"])
    store.add(TUESDAY, rollups.Growth({}, {("school-a", "games", "school"): 5}), ["school-a"])
    assert store.totals(MONDAY, TUESDAY) == rollups.Totals(
        recorded_days=(MONDAY, TUESDAY),
        schools={
            "school-a": rollups.SchoolTotal(6, (MONDAY,)),
            "school-b": rollups.SchoolTotal(0, ()),  # configured, and silent
            "unknown": rollups.SchoolTotal(2, (MONDAY,)),
        },
        blocked={("school-a", "games", "school"): 9, ("school-a", "adult", "school"): 2},
    )
    daily = store.daily(MONDAY, TUESDAY)
    assert daily.queries == {
        ("school-a", MONDAY): 6,
        ("school-b", MONDAY): 0,
        ("unknown", MONDAY): 2,
        ("school-a", TUESDAY): 0,
    }
    assert daily.blocked == {("school-a", MONDAY): 6, ("school-a", TUESDAY): 5}
    assert daily.categories == {"school-a": {"games": 9, "adult": 2}}
    assert daily.recorded_days == {MONDAY, TUESDAY}
    assert store.daily(TUESDAY, TUESDAY, "school-b") == rollups.EMPTY_DAILY
    assert store.daily(MONDAY, MONDAY, "school-b").queries == {("school-b", MONDAY): 0}
    assert (store.path.stat().st_mode & 0o777) == 0o600
    assert store.prune(TUESDAY) == 5  # three schools and two categories of Monday
    assert store.daily(MONDAY, TUESDAY).queries == {("school-a", TUESDAY): 0}


def test_a_store_of_a_newer_format_or_a_damaged_one_is_refused_in_one_line(tmp_path):
    store = rollups.RollupStore(tmp_path)
    store.add(MONDAY, rollups.Growth({}, {}), ["school-a"])
    with sqlite3.connect(store.path) as db:
        db.execute("PRAGMA user_version = 9")
    with pytest.raises(rollups.RollupError, match=r"rollups.sqlite: written by a newer schooldns \(format 9"):
        store.totals(MONDAY, MONDAY)
    store.path.write_bytes(b"not a database, " * 512)
    with pytest.raises(rollups.RollupError, match="cannot write the rollups: file is not a database"):
        store.add(MONDAY, rollups.Growth({}, {}), ["school-a"])


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def recorder(store: rollups.RollupStore, live: dict[str, object], clock: Clock) -> rollups.Recorder:
    async def zone() -> datetime.tzinfo:
        return ZONE

    return rollups.Recorder(store, lambda: live["state"], zone, 60.0, 400, clock)  # type: ignore[arg-type,return-value]


async def test_the_growth_of_an_interval_goes_to_the_day_it_began_and_a_restart_adds_to_it(tmp_path):
    store = rollups.RollupStore(tmp_path)
    clock = Clock(BEFORE_MIDNIGHT)
    live: dict[str, object] = {"state": state(answered=2, schools=("school-a", "school-b"))}
    writer = recorder(store, live, clock)
    clock.now += 61  # the next day: the minute began on Monday
    assert await writer.flush()
    live["state"] = state(answered=5, schools=("school-a", "school-b"))
    clock.now += 60
    assert await writer.flush()
    # Killed; a new process counts from 0 again, and its writer from its start.
    live["state"] = state(answered=1, schools=("school-a", "school-b"))
    again = recorder(store, live, clock)
    clock.now += 30
    assert await again.flush()
    assert store.daily(MONDAY, TUESDAY).queries == {
        ("school-a", MONDAY): 2,
        ("school-b", MONDAY): 0,
        ("school-a", TUESDAY): 4,
        ("school-b", TUESDAY): 0,
    }
    assert rollups.next_midnight(BEFORE_MIDNIGHT, ZONE) == BEFORE_MIDNIGHT + 60


async def test_a_write_that_fails_keeps_its_growth_for_the_next(tmp_path, caplog):
    blocked_dir = tmp_path / "state"
    blocked_dir.write_text("a file where the state directory should be")
    store = rollups.RollupStore(blocked_dir)
    clock = Clock(BEFORE_MIDNIGHT - 3600)
    live: dict[str, object] = {"state": state(answered=3)}
    writer = recorder(store, live, clock)
    assert not await writer.flush()
    assert not await writer.flush()
    assert len([r for r in caplog.records if "cannot write the rollups" in r.getMessage()]) == 1  # said once
    blocked_dir.unlink()
    assert await writer.flush()
    assert store.daily(MONDAY, MONDAY).queries == {("school-a", MONDAY): 3}


async def test_days_older_than_the_retention_are_deleted_once_a_day(tmp_path):
    store = rollups.RollupStore(tmp_path)
    old = MONDAY - datetime.timedelta(days=400)
    store.add(old, rollups.Growth({"school-a": 1}, {("school-a", "adult", "school"): 1}), ["school-a"])
    store.add(old + datetime.timedelta(days=1), rollups.Growth({"school-a": 1}, {}), ["school-a"])
    writer = recorder(store, {"state": state()}, Clock(BEFORE_MIDNIGHT))
    assert await writer.flush()
    kept = store.daily(old, MONDAY)
    assert kept.recorded_days == {old + datetime.timedelta(days=1), MONDAY} and kept.blocked == {}


async def test_the_days_follow_the_last_zone_known_while_the_policies_do_not_build(tmp_path):
    async def broken() -> datetime.tzinfo:
        raise ResolverError("policies/province.yaml:3: timezone: ...")

    store = rollups.RollupStore(tmp_path)
    writer = rollups.Recorder(store, lambda: state(answered=1), broken, 60.0, 400, Clock(BEFORE_MIDNIGHT))
    assert await writer.flush()  # the default zone, the province's usual one
    assert store.daily(MONDAY, MONDAY).queries == {("school-a", MONDAY): 1}


async def test_a_write_whose_caller_is_cancelled_still_ends_and_is_not_written_twice(tmp_path):
    store = rollups.RollupStore(tmp_path)
    writer = recorder(store, {"state": state(answered=3)}, Clock(BEFORE_MIDNIGHT - 3600))
    stopped = asyncio.create_task(writer.flush())
    await asyncio.sleep(0)  # the write has begun
    stopped.cancel()  # as a stop cancels the writer's task
    assert await writer.flush()  # the stop's last write: after the first, which went on
    with pytest.raises(asyncio.CancelledError):
        await stopped
    assert store.daily(MONDAY, MONDAY).queries == {("school-a", MONDAY): 3}
