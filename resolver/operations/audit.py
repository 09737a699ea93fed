"""The audit log of admin changes: who, what, when, old and new sha256, result; append-only JSON lines in state_dir."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import enum
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from resolver import durable
from resolver.operations import shedding

log = logging.getLogger(__name__)

AUDIT_FILE = "audit.jsonl"  # in state_dir; rotated ones are audit.jsonl.1 (newest) to .KEEP_ROTATED
MAX_FILE_BYTES = 1 << 20  # a file is rotated before it grows past this: about 3,000 entries
KEEP_ROTATED = 4  # so the log takes at most 5 MiB, the last 15,000 changes or so
MAX_READ = 1_000  # entries one read returns at most


class Action(enum.Enum):
    """What was changed (a closed set: each is a write through the API or the command line)."""

    POLICY_WRITE = "policy.write"
    RELOAD = "reload"
    SYNC = "sync"
    TOKEN_ADD = "token.add"
    TOKEN_REVOKE = "token.revoke"
    REQUEST_DECISION = "request.decision"  # a block page request allowed, denied, rejected or forwarded


class Result(enum.Enum):
    OK = "ok"
    INVALID = "invalid"  # refused: the new content does not pass the checks of `schooldns check`
    REFUSED = "refused"  # refused: it changes what the caller's role may not change
    FAILED = "failed"  # not applied: the reload or sync it needed failed (the server's log says why)


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """One change. Never a client address, a token's secret or a policy's content: only their hashes."""

    action: Action
    result: Result
    who: str  # the token's name; for the command line, "cli:<user>"
    role: str  # the token's role; "local" for the command line
    time: float  # time.time()
    school: str | None = None  # the school whose policy it is
    old_sha256: str | None = None  # of the file before (None: there was none)
    new_sha256: str | None = None  # of the file written, or offered when refused
    token: str | None = None  # token.add / token.revoke: the token's name and role, e.g. "it-a (school:a)"
    request: int | None = None  # request.decision: the request's id ...
    decision: str | None = None  # ... the decision (allow, deny, reject, forward) ...
    name: str | None = None  # ... and the name it is about

    def to_json(self) -> dict[str, Any]:
        moment = datetime.datetime.fromtimestamp(self.time, datetime.UTC)
        return {
            "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "who": self.who,
            "role": self.role,
            "action": self.action.value,
            "result": self.result.value,
            "school": self.school,
            "old_sha256": self.old_sha256,
            "new_sha256": self.new_sha256,
            "token": self.token,
            "request": self.request,
            "decision": self.decision,
            "name": self.name,
        }

    @classmethod
    def from_json(cls, data: Any) -> Entry | None:
        """The entry a line holds; None for one that is not (cut short by a crash, or of a later version)."""
        try:
            return cls(
                action=Action(data["action"]),
                result=Result(data["result"]),
                who=str(data["who"]),
                role=str(data["role"]),
                time=datetime.datetime.fromisoformat(data["time"].replace("Z", "+00:00")).timestamp(),
                school=data.get("school"),
                old_sha256=data.get("old_sha256"),
                new_sha256=data.get("new_sha256"),
                token=data.get("token"),
                request=data.get("request"),
                decision=data.get("decision"),
                name=data.get("name"),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


class AuditLog:
    """The audit log in one state_dir. Several processes may append at once (the server, `schooldns token`):
    an appended entry is one write to a file opened for appending, under a lock that rotation takes too."""

    def __init__(
        self,
        state_dir: Path,
        max_file_bytes: int = MAX_FILE_BYTES,
        keep_rotated: int = KEEP_ROTATED,
        sheds: shedding.Sheds | None = None,  # where the entries dropped with the oldest file are counted
    ):
        self.path = state_dir / AUDIT_FILE
        self.max_file_bytes = max_file_bytes
        self.keep_rotated = keep_rotated
        self.sheds = sheds

    def append(self, entry: Entry) -> None:
        """Add `entry`, on disk (fsync) when this returns; rotate first if the file would grow past its bound."""
        line = (json.dumps(entry.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        with self._locked(fcntl.LOCK_EX):
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self.max_file_bytes:
                self._rotate()
                size = 0
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(descriptor, line)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            if size == 0:  # a new file: its name must be on disk too
                durable.sync_directory(self.path.parent)

    def read(self, limit: int, school: str | None = None) -> list[Entry]:
        """The last `limit` entries (at most MAX_READ), newest first; with `school`, only that school's."""
        limit = max(0, min(limit, MAX_READ))
        out: list[Entry] = []
        if limit == 0:
            return out
        with self._locked(fcntl.LOCK_SH):
            for path in self._files():
                try:
                    lines = path.read_bytes().splitlines()
                except FileNotFoundError:
                    continue
                for line in reversed(lines):
                    try:
                        entry = Entry.from_json(json.loads(line))
                    except ValueError:
                        entry = None
                    if entry is not None and (school is None or entry.school == school):
                        out.append(entry)
                        if len(out) == limit:
                            return out
        return out

    def _files(self) -> list[Path]:
        """Newest first: the current file, then the rotated ones."""
        return [self.path, *(self._rotated(n) for n in range(1, self.keep_rotated + 1))]

    def _rotated(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def _rotate(self) -> None:
        """audit.jsonl.N-1 -> .N (the oldest dropped, its entries counted), ..., audit.jsonl -> .1."""
        if self.sheds is not None:
            with contextlib.suppress(FileNotFoundError):
                self.sheds.audit_entries_dropped += self._rotated(self.keep_rotated).read_bytes().count(b"\n")
        for n in range(self.keep_rotated, 0, -1):
            source = self.path if n == 1 else self._rotated(n - 1)
            with contextlib.suppress(FileNotFoundError):
                os.replace(source, self._rotated(n))
        durable.sync_directory(self.path.parent)

    @contextlib.contextmanager
    def _locked(self, operation: int) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        with open(os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)) as lock:
            fcntl.flock(lock, operation)
            yield
