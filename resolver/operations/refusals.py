"""Why the admin API refuses a request: a closed set of reasons, which the API's one middleware turns into statuses."""

from __future__ import annotations

import enum
from collections.abc import Sequence

from resolver.errors import ResolverError
from resolver.yamlfile import Problem


class Failure(enum.Enum):
    BAD_REQUEST = "bad request"  # a parameter or id that is not what the endpoint takes
    UNAUTHENTICATED = "unauthenticated"  # no token, or one the tokens file does not hold
    FORBIDDEN = "forbidden"  # a token whose role does not reach this
    NOT_FOUND = "not found"
    TIMEOUT = "timeout"  # the request's body did not arrive in time
    CONFLICT = "conflict"  # not done on this instance (its policies come from the hub)
    STALE = "stale"  # If-Match / If-None-Match do not hold: the file changed since it was read
    TOO_LARGE = "too large"
    INVALID = "invalid"  # the content does not pass the checks; `problems` says where
    PRECONDITION_REQUIRED = "precondition required"  # a write without If-Match
    RATE_LIMITED = "rate limited"  # too many failed authentications from this source
    NOT_APPLIED = "not applied"  # valid, but the server could not install it (its log says why)
    UNAVAILABLE = "unavailable"  # the server cannot answer this now (its files do not build)


class Refused(ResolverError):
    """An admin API request refused: its reason, one line for the caller and, for INVALID, the problems."""

    def __init__(
        self,
        failure: Failure,
        message: str,
        problems: Sequence[Problem] = (),
        retry_after_seconds: int | None = None,
    ):
        super().__init__(message)
        self.failure = failure
        self.message = message
        self.problems = tuple(problems)
        self.retry_after_seconds = retry_after_seconds
