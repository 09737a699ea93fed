"""What an instance's sync reports (SyncStatus) and what the admin API asks of it (Syncing): no TUF import."""

from __future__ import annotations

import dataclasses
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class SyncStatus:
    """Where an instance's sync stands (all times are time.time(); None: not yet)."""

    repository: str  # the base URL of the hub's repository
    version: int | None  # the published bundle version being served; None: nothing verified yet
    last_attempt: float | None
    last_success: float | None
    consecutive_failures: int
    last_error: str | None  # one line: why the last sync failed (None after a success)
    metadata_expires: float | None  # the earliest expiry of the verified metadata
    metadata_expired: bool  # the hub's feed is frozen: serving the last good version
    published: float | None = None  # when the hub published the version being served


class Syncing(Protocol):
    """What the admin API needs of an instance's sync (the real one runs in the serving process)."""

    def status(self) -> SyncStatus: ...

    async def sync_now(self) -> SyncStatus: ...
