"""RPZ zones of a snapshot: their names, serial (the list version), records and zone text.

Zone `<category>.<zone_suffix>` holds a category; `province.<zone_suffix>` the mandatory ones
together. The zones are made from the installed snapshot's index and the list files
(resolver.filtering.rpzexport), streamed, never held whole.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Generator, Iterator, Mapping
from pathlib import Path

from resolver import durable
from resolver.dataplane import pipeline
from resolver.filtering import lists, rpzexport

log = logging.getLogger(__name__)

PROVINCE_ZONE = "province"  # the label of the mandatory categories' zone under the suffix
SERIAL_FILE = "rpz-serial.json"  # in state_dir: the serial of the zones' content, shared by the workers
# SOA timers. Secondaries check the serial every 5 minutes besides NOTIFY; a secondary that cannot
# reach the feed keeps filtering with what it has for two weeks before it drops the zones.
SOA_REFRESH_SECONDS = 300
SOA_RETRY_SECONDS = 60
SOA_EXPIRE_SECONDS = 14 * 86_400
SOA_MNAME = "localhost"
SOA_RNAME = "hostmaster.localhost"


@dataclasses.dataclass(frozen=True, slots=True)
class Zone:
    """One zone of the feed: its name and the categories it holds, with their list files."""

    name: str  # "malware.rpz.schooldns": lower case, no trailing dot
    mask: int  # categories, as index bits
    sources: tuple[lists.Source, ...]  # the block and allow files of those categories


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Version:
    """The zones of one installed snapshot: their serial, and the state of the list files they are read from."""

    snapshot: pipeline.Snapshot
    serial: int
    ttl: int  # of every record, and the SOA's negative TTL: the province's blocked TTL
    zones: Mapping[str, Zone]
    files: tuple[tuple[str, int, int], ...]  # (path, size, mtime) of every list file when the version was made
    problem: str | None  # why its zones cannot be served now (None: they can)

    def current(self) -> str | None:
        """Why the zones cannot be written now; None when the list files are still those of this version."""
        if self.problem is None and file_state([Path(path) for path, _, _ in self.files]) != self.files:
            return "the list files changed since the lists were installed; a reload follows"
        return self.problem

    def records(self, zone: Zone) -> Iterator[rpzexport.Record]:
        """The zone's records, read from the list files; StreamBroken when the files change under them.

        A record whose owner would not fit under the zone (255 octets in all) is left out.
        """
        problem = self.current()
        if problem is not None:
            raise pipeline.StreamBroken(f"{zone.name}: {problem}")
        room = 255 - len(zone.name) - 3  # the owner's text, with the zone's labels and the root
        too_long = 0
        try:
            for record in rpzexport.zone_records(self.snapshot.index, zone.sources, zone.mask):
                if len(record[0]) <= room:
                    yield record
                else:
                    too_long += 1
        except rpzexport.StaleLists as exc:
            raise pipeline.StreamBroken(f"{zone.name}: {exc}") from None
        if too_long:
            log.warning("rpz: %d names too long to be written under %s were left out of it", too_long, zone.name)
        problem = self.current()  # a file may have changed after it was read
        if problem is not None:
            raise pipeline.StreamBroken(f"{zone.name}: {problem}")


def list_version(snapshot: pipeline.Snapshot, state_dir: Path) -> int:
    """The SOA serial of the zones: the version of the lists and policies that `snapshot` serves.

    Until signed bundles from the hub number their versions, the version is that of what the
    zones are made of (the compiled index, the categories, which are mandatory, the blocked
    TTL): the same content keeps its serial, other content gets a larger one, and every worker
    process gets the same, kept in `state_dir` (a restart keeps it too). The serial is at least
    the time in seconds, so it grows even where that file was lost.
    """
    index = snapshot.index
    content = json.dumps(
        [
            index.checksum,
            index.entry_count,
            index.node_count,
            list(snapshot.categories),
            snapshot.province.mandatory_mask,
            int(snapshot.province.blocked_ttl_seconds),
        ]
    )
    fingerprint = hashlib.sha256(content.encode()).hexdigest()
    path = state_dir / SERIAL_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with _locked(state_dir / f".{SERIAL_FILE}.lock"):
            try:
                saved = json.loads(path.read_text())
            except FileNotFoundError:
                saved = {}
            except ValueError:
                log.warning("rpz: %s is not JSON; the zones' serial starts again from the time", path)
                saved = {}
            previous = saved.get("serial") if isinstance(saved, dict) else None
            if not isinstance(previous, int):
                previous = 0
            elif saved.get("fingerprint") == fingerprint:
                return previous
            serial = max(previous + 1, int(time.time())) % 2**32
            durable.replace_synced(path, json.dumps({"fingerprint": fingerprint, "serial": serial}).encode())
            return serial
    except OSError as exc:
        log.warning(
            "rpz: cannot keep the zones' serial in %s (%s); using the time, which workers may not share", path, exc
        )
        return int(time.time()) % 2**32


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def file_state(paths: list[Path]) -> tuple[tuple[str, int, int], ...]:
    """(path, size, mtime) of each file: changes when one is written."""
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((str(path), -1, -1))
    return tuple(out)


def zone_text(version: Version, zone: Zone) -> Generator[str, None, None]:
    """The zone in zone-file text (`GET /v1/rpz/{zone}`), in pieces of about 64 KB; StreamBroken if the lists change."""
    lines = [
        f"; {zone.name}: schooldns RPZ feed, serial {version.serial}",
        f"$ORIGIN {zone.name}.",
        f"$TTL {version.ttl}",
        f"@ SOA {SOA_MNAME}. {SOA_RNAME}. {version.serial} {SOA_REFRESH_SECONDS} {SOA_RETRY_SECONDS} "
        f"{SOA_EXPIRE_SECONDS} {version.ttl}",
        f"@ NS {SOA_MNAME}.",
    ]
    size = 0
    for owner, blocked in version.records(zone):
        line = f"{owner} CNAME {'.' if blocked else 'rpz-passthru.'}"
        lines.append(line)
        size += len(line)
        if size >= 65536:
            yield "\n".join(lines) + "\n"
            lines, size = [], 0
    yield "\n".join(lines) + "\n" if lines else ""
