"""Daily per-school numbers in SQLite under state_dir: the counters' growth added once a minute, read back by day.

Nothing here runs per query. The serving process (the supervisor with `workers: N`) reads its
counters every `rollups.interval_seconds`, adds what they gained since the last write to each
school's row of the day (in the province's time zone), and commits. Counters restart from 0 when
a process or a worker starts again; the growth of a counter that went down is its new value, as
Prometheus reads a reset. A crash loses at most one interval; the rows hold counts per school,
category and authority, never a client or a name.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import functools
import logging
import os
import sqlite3
import time
import zoneinfo
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path

from resolver.dataplane import metrics, workerstate
from resolver.errors import ResolverError
from resolver.filtering import policyfile
from resolver.operations import sqlitetx

log = logging.getLogger(__name__)

FILE_NAME = "rollups.sqlite"
SCHEMA_VERSION = 1  # PRAGMA user_version of a store this code writes
BUSY_TIMEOUT_SECONDS = 5.0  # a reader (the report) holds the file for milliseconds
UNKNOWN = "unknown"  # the counters' school for clients in no school's network (policyfile.RESERVED_IDS)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS school_days (
    day TEXT NOT NULL,             -- YYYY-MM-DD in the province's time zone
    school TEXT NOT NULL,          -- a configured school's id, or 'unknown'
    queries INTEGER NOT NULL,      -- queries answered that day (0: configured, and silent)
    blocked INTEGER NOT NULL,      -- of them blocked, every category (school_blocks has each)
    PRIMARY KEY (day, school)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS school_blocks (
    day TEXT NOT NULL,
    school TEXT NOT NULL,
    category TEXT NOT NULL,
    authority TEXT NOT NULL,       -- province, school or deny (policy.Authority)
    blocked INTEGER NOT NULL,
    PRIMARY KEY (day, school, category, authority)
) WITHOUT ROWID;
"""


class RollupError(ResolverError):
    """The rollups file cannot be used (unreadable, damaged, or written by a newer schooldns)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Growth:
    """What the counters gained between two readings."""

    queries: Mapping[str, int]  # school -> queries answered
    blocked: Mapping[tuple[str, str, str], int]  # (school, category, authority) -> blocked queries


@dataclasses.dataclass(frozen=True, slots=True)
class Baseline:
    """The counters as last written; `growth` is what they gained since."""

    queries: Mapping[tuple[str, str, str], int] = dataclasses.field(default_factory=dict)
    blocked: Mapping[tuple[str, str, str], int] = dataclasses.field(default_factory=dict)

    def growth(self, counters: metrics.Counters) -> tuple[Growth, Baseline]:
        """The growth since this baseline and the baseline after it (to keep once the growth is written)."""
        queries_now = dict(counters.queries)
        blocked_now = {
            (school, category, str(authority)): n for (school, category, authority), n in counters.blocked.items()
        }
        per_school: collections.Counter[str] = collections.Counter()
        for key, gained in _gains(self.queries, queries_now):
            per_school[key[0]] += gained
        return Growth(dict(per_school), dict(_gains(self.blocked, blocked_now))), Baseline(queries_now, blocked_now)


def _gains(
    before: Mapping[tuple[str, str, str], int], now: Mapping[tuple[str, str, str], int]
) -> Iterator[tuple[tuple[str, str, str], int]]:
    for key, value in now.items():
        previous = before.get(key, 0)
        gained = value - previous if value >= previous else value  # went down: counting started again from 0
        if gained:
            yield key, gained


@dataclasses.dataclass(frozen=True, slots=True)
class SchoolTotal:
    """A school's numbers over a span of days."""

    queries: int
    active_days: tuple[datetime.date, ...]  # the days it had queries, in order


@dataclasses.dataclass(frozen=True, slots=True)
class Totals:
    """A span of days added up per school: what the annual report reads."""

    recorded_days: tuple[datetime.date, ...]  # days with rows: an instance ran and wrote them
    schools: Mapping[str, SchoolTotal]  # every school with a row, `unknown` too
    blocked: Mapping[tuple[str, str, str], int]  # (school, category, authority) -> blocked over the span


@dataclasses.dataclass(frozen=True, slots=True)
class Daily:
    """A span of days per school and day: what the dashboard's charts read."""

    queries: Mapping[tuple[str, datetime.date], int]  # (school, day) -> queries; no key: no row that day
    blocked: Mapping[tuple[str, datetime.date], int]  # (school, day) -> blocked, every category
    categories: Mapping[str, Mapping[str, int]]  # school -> category -> blocked over the span

    @property
    def recorded_days(self) -> frozenset[datetime.date]:
        return frozenset(day for _, day in self.queries)


EMPTY_TOTALS = Totals((), {}, {})
EMPTY_DAILY = Daily({}, {}, {})


class RollupStore:
    """The rollups file, `state_dir/rollups.sqlite`: written by the serving process, read by anyone."""

    def __init__(self, state_dir: Path):
        self.path = state_dir / FILE_NAME

    def add(self, day: datetime.date, growth: Growth, schools: Iterable[str]) -> None:
        """Add a growth to `day`, and a row for each configured school (a silent one's says 0), in one transaction."""
        text = day.isoformat()
        blocked: collections.Counter[str] = collections.Counter()
        for (school, _, _), count in growth.blocked.items():
            blocked[school] += count
        with self._writing() as db:
            db.executemany(
                "INSERT INTO school_days (day, school, queries, blocked) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (day, school) DO UPDATE SET "
                "queries = queries + excluded.queries, blocked = blocked + excluded.blocked",
                [
                    (text, school, growth.queries.get(school, 0), blocked[school])
                    for school in {*schools, *growth.queries, *blocked}
                ],
            )
            db.executemany(
                "INSERT INTO school_blocks (day, school, category, authority, blocked) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (day, school, category, authority) DO UPDATE SET blocked = blocked + excluded.blocked",
                [(text, *key, count) for key, count in growth.blocked.items()],
            )

    def prune(self, oldest_kept: datetime.date) -> int:
        """Delete the days before `oldest_kept`; how many rows went."""
        text = oldest_kept.isoformat()
        with self._writing() as db:
            gone = db.execute("DELETE FROM school_days WHERE day < ?", (text,)).rowcount
            gone += db.execute("DELETE FROM school_blocks WHERE day < ?", (text,)).rowcount
        return int(gone)

    def totals(self, first: datetime.date, last: datetime.date) -> Totals:
        """The days `first` to `last` added up per school (SQLite adds: a year of a thousand schools is
        millions of rows); nothing when there is no file yet."""
        span = (first.isoformat(), last.isoformat())
        with self._reading() as db:
            if db is None:
                return EMPTY_TOTALS
            recorded_days = [
                day
                for (day,) in db.execute(
                    "SELECT DISTINCT day FROM school_days WHERE day BETWEEN ? AND ? ORDER BY day", span
                )
            ]
            schools = db.execute(
                "SELECT school, sum(queries), group_concat(CASE WHEN queries > 0 THEN day END) "
                "FROM school_days WHERE day BETWEEN ? AND ? GROUP BY school",
                span,
            ).fetchall()
            blocked = db.execute(
                "SELECT school, category, authority, sum(blocked) FROM school_blocks "
                "WHERE day BETWEEN ? AND ? GROUP BY school, category, authority",
                span,
            ).fetchall()
        day_of = functools.cache(datetime.date.fromisoformat)
        return Totals(
            tuple(map(day_of, recorded_days)),
            {
                school: SchoolTotal(queries, tuple(sorted(map(day_of, days.split(",")))) if days else ())
                for school, queries, days in schools
            },
            {(school, category, authority): n for school, category, authority, n in blocked},
        )

    def daily(self, first: datetime.date, last: datetime.date, school: str | None = None) -> Daily:
        """The days `first` to `last` per school and day (one school's only, when given)."""
        span: tuple[str, ...] = (first.isoformat(), last.isoformat())
        where = "day BETWEEN ? AND ?"
        if school is not None:
            where, span = where + " AND school = ?", (*span, school)
        with self._reading() as db:
            if db is None:
                return EMPTY_DAILY
            days = db.execute(f"SELECT school, day, queries, blocked FROM school_days WHERE {where}", span).fetchall()
            categories = db.execute(
                f"SELECT school, category, sum(blocked) FROM school_blocks WHERE {where} GROUP BY school, category",
                span,
            ).fetchall()
        day_of = functools.cache(datetime.date.fromisoformat)
        per_school: dict[str, dict[str, int]] = {}
        for name, category, n in categories:
            per_school.setdefault(name, {})[category] = n
        return Daily(
            {(name, day_of(day)): queries for name, day, queries, _ in days},
            {(name, day_of(day)): blocked for name, day, _, blocked in days if blocked},
            per_school,
        )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        """A connection to read with (None: no file yet); RollupError when the file cannot be read."""
        if not self.path.exists():
            yield None
            return
        try:
            with contextlib.closing(self._connect(self.path.as_uri() + "?mode=rw", uri=True)) as db:
                self._check_version(db, writing=False)
                yield db
        except sqlite3.Error as exc:
            raise RollupError(f"{self.path}: cannot read the rollups: {exc}") from None

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed durably (synchronous=FULL: on disk before it returns)."""
        try:
            if not self.path.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))  # counts only, but nobody else's
            with contextlib.closing(self._connect(str(self.path))) as db:
                db.execute("PRAGMA synchronous = FULL")
                self._check_version(db, writing=True)
                with sqlitetx.immediate(db):
                    yield db
        except (sqlite3.Error, OSError) as exc:
            raise RollupError(f"{self.path}: cannot write the rollups: {exc}") from None

    @staticmethod
    def _connect(target: str, uri: bool = False) -> sqlite3.Connection:
        # isolation_level=None: transactions are begun and ended here, explicitly.
        return sqlite3.connect(target, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None, uri=uri)

    def _check_version(self, db: sqlite3.Connection, writing: bool) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RollupError(
                f"{self.path}: written by a newer schooldns (format {version}; this one reads {SCHEMA_VERSION})"
            )
        if version == 0 and writing:
            db.executescript(_SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")


def local_day(when: float, zone: datetime.tzinfo) -> datetime.date:
    return datetime.datetime.fromtimestamp(when, zone).date()


def next_midnight(when: float, zone: datetime.tzinfo) -> float:
    """The time.time() of the first local midnight after `when`."""
    day = local_day(when, zone) + datetime.timedelta(days=1)
    return datetime.datetime.combine(day, datetime.time(), zone).timestamp()


class Recorder:
    """Adds the counters' growth to the store every interval, at each local midnight and when asked (a stop).

    The growth is credited to the local day its interval began in; the write at midnight keeps
    each day's to within a moment. A write that fails is logged once and its growth kept for the
    next one: nothing of it is lost while the process lives.
    """

    def __init__(
        self,
        store: RollupStore,
        state: Callable[[], workerstate.WorkerState],
        zone: Callable[[], Awaitable[datetime.tzinfo]],
        interval_seconds: float,
        retention_days: int,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.state = state
        self.read_zone = zone  # the province's time zone (from the installed policies)
        self.interval_seconds = interval_seconds
        self.retention_days = retention_days
        self.clock = clock
        self.baseline = Baseline()
        self.since = clock()  # the start of the interval not yet written
        self.zone: datetime.tzinfo = zoneinfo.ZoneInfo(policyfile.DEFAULT_TIMEZONE)
        self._pruned_on: datetime.date | None = None
        self._problem: str | None = None
        self._lock = asyncio.Lock()

    async def flush(self) -> bool:
        """Write the growth since the last write now; False (logged) when it could not be written."""
        # Shielded: a write cancelled after its commit but before the baseline moved would be added
        # again by the next. Cancelled, the caller stops waiting; the write ends, and the next one
        # waits for it (the lock).
        return await asyncio.shield(self._flush())

    async def _flush(self) -> bool:
        async with self._lock:
            await self._read_zone()
            now = self.clock()
            state = self.state()
            growth, baseline = self.baseline.growth(state.counters)
            day = local_day(self.since, self.zone)
            try:
                await asyncio.to_thread(self.store.add, day, growth, state.schools)
                self.baseline, self.since = baseline, now  # written: the next growth counts from here
                today = local_day(now, self.zone)
                if self._pruned_on != today:
                    oldest_kept = today - datetime.timedelta(days=self.retention_days - 1)
                    gone = await asyncio.to_thread(self.store.prune, oldest_kept)
                    if gone:
                        log.info(
                            "rollups: deleted %d rows of days before %s (rollups.retention_days)", gone, oldest_kept
                        )
                    self._pruned_on = today
            except RollupError as exc:
                if str(exc) != self._problem:
                    log.error("%s; the numbers are kept in memory and written at the next try", exc)
                    self._problem = str(exc)
                return False
            if self._problem is not None:
                log.info("rollups: written again to %s", self.store.path)
                self._problem = None
            return True

    async def run(self) -> None:
        """Write every interval and at each local midnight. Never ends (cancel it, then flush once more)."""
        await self._read_zone()
        while True:
            now = self.clock()
            await asyncio.sleep(max(min(self.interval_seconds, next_midnight(now, self.zone) - now), 0.0) + 0.001)
            try:
                await self.flush()
            except Exception:  # a bug: said, and the next write tries again (DNS is not stopped for it)
                log.exception("rollups: the write failed")

    async def _read_zone(self) -> None:
        """The province's time zone now (the last one known while the policies do not build)."""
        try:
            self.zone = await self.read_zone()
        except ResolverError as exc:
            log.debug("rollups: no policies (%s); days in %s", exc, self.zone)
