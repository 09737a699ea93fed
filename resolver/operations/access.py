"""Who calls the admin API: the bearer token looked up in the tokens file; failed attempts limited per source."""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Collection

from resolver.operations import shedding, tokens
from resolver.operations.refusals import Failure, Refused

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: the token's name (for the audit log) and role."""

    name: str
    role: tokens.Role


class PerSourceLimit:
    """Events per source (failed authentications, the block page's form posts), in a table of at most
    `max_sources` (the oldest forgotten first).

    A source is an IPv4 address or an IPv6 /64 (one host holds a whole /64). After `allowed`
    events within `window_seconds` of its first, a source is refused until that window ends.
    Addresses are kept only here, in memory, never logged.
    """

    def __init__(
        self,
        allowed: int,
        window_seconds: float,
        max_sources: int,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.allowed = allowed
        self.window_seconds = window_seconds
        self.max_sources = max_sources
        self.clock = clock
        self._seen: collections.OrderedDict[str, tuple[float, int]] = collections.OrderedDict()  # (window start, n)

    def retry_after(self, source: str) -> float | None:
        """Seconds until `source` may try again; None if it may now."""
        key = _source_key(source)
        seen = self._seen.get(key)
        if seen is None:
            return None
        started, events = seen
        left = started + self.window_seconds - self.clock()
        if left <= 0:
            del self._seen[key]
            return None
        return left if events >= self.allowed else None

    def count(self, source: str) -> None:
        key = _source_key(source)
        now = self.clock()
        started, events = self._seen.pop(key, (now, 0))
        if now - started >= self.window_seconds:
            started, events = now, 0
        self._seen[key] = (started, events + 1)
        while len(self._seen) > self.max_sources:
            self._seen.popitem(last=False)


def _source_key(source: str) -> str:
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return source  # not an IP address (a Unix socket): one source
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Gate:
    """Authenticates requests against the tokens file (read again when it changes) and checks roles."""

    def __init__(self, token_file: tokens.TokenFile, attempts: PerSourceLimit, sheds: shedding.Sheds | None = None):
        self.token_file = token_file
        self.attempts = attempts
        self.sheds = sheds  # where the requests refused for their source's failed attempts are counted
        self._problem_logged: str | None = None

    def caller(self, authorization: str | None, source: str, kinds: Collection[tokens.RoleKind]) -> Caller:
        """The caller of a request with this Authorization header, from `source`, if its role is one of `kinds`."""
        wait = self.attempts.retry_after(source)
        if wait is not None:
            if self.sheds is not None:
                self.sheds.admin_auth_rate_limited += 1
            raise Refused(
                Failure.RATE_LIMITED,
                "too many failed authentications from this address; try again later",
                retry_after_seconds=math.ceil(wait),
            )
        if not authorization:
            raise Refused(Failure.UNAUTHENTICATED, "send a token: Authorization: Bearer <token>")
        scheme, _, secret = authorization.partition(" ")
        known = self.token_file.current()
        if self.token_file.problem != self._problem_logged:
            self._problem_logged = self.token_file.problem
            if self.token_file.problem is not None:
                log.error("no admin API token is accepted: %s", self.token_file.problem)
        token = known.find(secret.strip()) if scheme.lower() == "bearer" else None
        if token is None:
            self.attempts.count(source)
            raise Refused(Failure.UNAUTHENTICATED, "unknown token")
        if not token.role.is_admin:  # a DoH token sits on a pupil's device: DNS only, never the admin API
            raise Refused(Failure.FORBIDDEN, f"a {token.role.kind.value} token is for DNS over HTTPS only")
        if token.role.kind not in kinds:
            allowed = " or ".join(kind.value for kind in tokens.RoleKind if kind in kinds)
            raise Refused(Failure.FORBIDDEN, f"a {token.role.kind.value} token may not do this (needs {allowed})")
        return Caller(token.name, token.role)
