"""What the admin side of a process dropped at its bounds (audit, block page requests, logins), for /metrics."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(slots=True)
class Sheds:
    """Counters of one serving process's admin API and block page, from 0 at its start; /metrics reads them.

    One object is shared by the admin API and the block page of a process (app.serve makes it), so
    the requests either of them deletes add up. Nothing per client or per name.
    """

    audit_entries_dropped: int = 0  # entries of the oldest rotated audit file, removed with it
    requests_deleted_decided: int = 0  # block page requests deleted to stay under blockpage.max_requests ...
    requests_deleted_waiting: int = 0  # ... of them still waiting for a decision (decided ones go first)
    admin_auth_rate_limited: int = 0  # admin API requests answered 429: their source failed to authenticate too often
