"""The block page's requests (unblock, report) in SQLite under state_dir: bounded, deduplicated, nothing personal."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resolver.control import config
from resolver.operations import shedding, sqlitetx

REQUESTS_FILE = "requests.sqlite"  # in state_dir
MAX_OPEN_PER_SCHOOL = 500  # open requests one school may have waiting; more are not taken
MAX_ASKED = 1_000_000  # a request asked again only counts up to this
MAX_READ = 1_000  # requests one read returns at most
BUSY_TIMEOUT_SECONDS = 5.0  # the block page and the admin API write the same file


class Kind(enum.StrEnum):
    UNBLOCK = "unblock"  # "this site is wrongly blocked": the blocked name
    REPORT = "report"  # "report a harmful site": a name the child typed


class UnblockReason(enum.StrEnum):
    SCHOOLWORK = "schoolwork"
    NOT_HARMFUL = "not_harmful"
    OTHER = "other"


class ReportReason(enum.StrEnum):
    ADULT = "adult"
    VIOLENCE = "violence"
    GAMBLING = "gambling"
    SCAM = "scam"
    BULLYING = "bullying"
    OTHER = "other"


class Status(enum.StrEnum):
    OPEN = "open"  # waiting for the school's administrators (or the province)
    FORWARDED = "forwarded"  # passed to the province
    ALLOWED = "allowed"  # the name is in the school's allow list
    DENIED = "denied"  # the reported name is in the school's deny list
    REJECTED = "rejected"


WAITING = (Status.OPEN, Status.FORWARDED)


class Decision(enum.StrEnum):
    ALLOW = "allow"  # an unblock request: add the name to the school's `allow`
    DENY = "deny"  # a report: add the name to the school's `deny`
    REJECT = "reject"
    FORWARD = "forward"  # to the province


DECIDED_AS: dict[Decision, Status] = {
    Decision.ALLOW: Status.ALLOWED,
    Decision.DENY: Status.DENIED,
    Decision.REJECT: Status.REJECTED,
    Decision.FORWARD: Status.FORWARDED,
}


class Taken(enum.Enum):
    NEW = "new"
    AGAIN = "again"  # the same request was waiting already: counted on it
    FULL = "full"  # the school has MAX_OPEN_PER_SCHOOL requests waiting


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """One request. No client address, device or person: the school is worked out from the address and
    only the school is kept; times are to the minute."""

    id: int
    kind: Kind
    school: str
    name: str
    category: str | None  # an unblock request: the category the name was blocked by
    authority: str | None  # an unblock request: province, school or deny (policy.Authority)
    reason: str  # UnblockReason or ReportReason
    created: float
    last_asked: float
    asked: int
    status: Status
    decided: float | None
    decided_by: str | None  # the token's name

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "school": self.school,
            "name": self.name,
            "category": self.category,
            "authority": self.authority,
            "reason": self.reason,
            "created": _iso(self.created),
            "last_asked": _iso(self.last_asked),
            "asked": self.asked,
            "status": self.status.value,
            "decided": None if self.decided is None else _iso(self.decided),
            "decided_by": self.decided_by,
        }


def _iso(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment, datetime.UTC).isoformat(timespec="minutes").replace("+00:00", "Z")


def minute(moment: float) -> float:
    """`moment` to the minute: when a child asked is kept no finer than that."""
    return float(int(moment) // 60 * 60)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a decision names the request it meant
    kind TEXT NOT NULL,
    school TEXT NOT NULL,
    name TEXT NOT NULL,
    category TEXT,
    authority TEXT,
    reason TEXT NOT NULL,
    created REAL NOT NULL,
    last_asked REAL NOT NULL,
    asked INTEGER NOT NULL,
    status TEXT NOT NULL,
    decided REAL,
    decided_by TEXT
);
CREATE INDEX IF NOT EXISTS requests_school ON requests (school, status);
"""
_COLUMNS = (
    "id, kind, school, name, category, authority, reason, created, last_asked, asked, status, decided, decided_by"
)


class RequestBox:
    """The requests file. Each call opens its own connection (calls run in threads, from two servers'
    handlers); a write is one immediate transaction, so two writers queue instead of interleaving."""

    def __init__(
        self,
        state_dir: Path,
        max_rows: int,
        retention_seconds: float,
        max_open_per_school: int = MAX_OPEN_PER_SCHOOL,
        sheds: shedding.Sheds | None = None,  # where the requests deleted to stay under max_rows are counted
    ):
        self.path = state_dir / REQUESTS_FILE
        self.max_rows = max_rows
        self.retention_seconds = retention_seconds
        self.max_open_per_school = max_open_per_school
        self.sheds = sheds

    @classmethod
    def of(cls, cfg: config.Config, sheds: shedding.Sheds | None = None) -> RequestBox:
        """The requests file of a config (its `blockpage:` bounds, or the defaults without one)."""
        page = cfg.blockpage or config.BlockpageConfig()
        return cls(cfg.state_dir, page.max_requests, page.retention_days * 86_400.0, sheds=sheds)

    def submit(
        self,
        kind: Kind,
        school: str,
        name: str,
        reason: str,
        now: float,
        category: str | None = None,
        authority: str | None = None,
    ) -> Taken:
        """Keep a request, or count it on the same one waiting; then drop what is past retention or max_rows."""
        when = minute(now)
        with self._writing() as db:
            waiting = db.execute(
                "SELECT id FROM requests WHERE kind = ? AND school = ? AND name = ? AND status IN (?, ?)",
                (kind.value, school, name, *WAITING),
            ).fetchone()
            if waiting is not None:
                db.execute(
                    "UPDATE requests SET asked = MIN(asked + 1, ?), last_asked = ? WHERE id = ?",
                    (MAX_ASKED, when, waiting[0]),
                )
                return Taken.AGAIN
            (open_now,) = db.execute(
                "SELECT COUNT(*) FROM requests WHERE school = ? AND status = ?", (school, Status.OPEN.value)
            ).fetchone()
            if open_now >= self.max_open_per_school:
                return Taken.FULL
            db.execute(
                f"INSERT INTO requests ({_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, NULL, NULL)",
                (kind.value, school, name, category, authority, reason, when, when, Status.OPEN.value),
            )
            self._prune(db, now)
            return Taken.NEW

    def read(self, limit: int, school: str | None = None, status: Status | None = None) -> list[Request]:
        """Newest first, at most `limit` (and MAX_READ); with `school` or `status`, only those."""
        if not self.path.exists():
            return []
        clauses, values = [], []
        if school is not None:
            clauses.append("school = ?")
            values.append(school)
        if status is not None:
            clauses.append("status = ?")
            values.append(status.value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._reading() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM requests {where} ORDER BY id DESC LIMIT ?",
                (*values, max(0, min(limit, MAX_READ))),
            ).fetchall()
        return [_request(row) for row in rows]

    def get(self, request_id: int) -> Request | None:
        if not self.path.exists():
            return None
        with self._reading() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM requests WHERE id = ?", (request_id,)).fetchone()
        return None if row is None else _request(row)

    def decide(self, request_id: int, was: Status, now_status: Status, who: str, now: float) -> bool:
        """Move the request from `was` to `now_status`; False if it is no longer `was` (decided meanwhile) or kept."""
        with self._writing() as db:
            self._prune(db, now)  # first: a request past its retention is gone, not decided
            changed = db.execute(
                "UPDATE requests SET status = ?, decided = ?, decided_by = ? WHERE id = ? AND status = ?",
                (now_status.value, minute(now), who, request_id, was.value),
            ).rowcount
        return changed == 1

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        db.execute("DELETE FROM requests WHERE last_asked < ?", (now - self.retention_seconds,))
        (rows,) = db.execute("SELECT COUNT(*) FROM requests").fetchone()
        if rows > self.max_rows:
            # Decided requests go first, then the oldest waiting ones.
            doomed = "SELECT id, status IN (?, ?) FROM requests ORDER BY status IN (?, ?), id LIMIT ?"
            deleted = db.execute(doomed, (*WAITING, *WAITING, rows - self.max_rows)).fetchall()
            db.executemany("DELETE FROM requests WHERE id = ?", [(row_id,) for row_id, _ in deleted])
            if self.sheds is not None:
                waiting = sum(1 for _, is_waiting in deleted if is_waiting)
                self.sheds.requests_deleted_waiting += waiting
                self.sheds.requests_deleted_decided += len(deleted) - waiting

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as db, sqlitetx.immediate(db):
            yield db

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._connection() as db:
            yield db

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Readable by the server's user only, like the audit log and the tokens file.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous = FULL")
            db.executescript(_SCHEMA)
            yield db
        finally:
            db.close()


def _request(row: tuple[Any, ...]) -> Request:
    (request_id, kind, school, name, category, authority, reason, created, last_asked, asked, status, decided, by) = row
    return Request(
        request_id,
        Kind(kind),
        school,
        name,
        category,
        authority,
        reason,
        created,
        last_asked,
        asked,
        Status(status),
        decided,
        by,
    )
