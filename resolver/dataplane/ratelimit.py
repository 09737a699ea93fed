"""Rates per second: answers per client network (the bound on what unknown clients are sent), queries per school.

A client outside every school network gets REFUSED, and its source address may be forged: without
a bound, a flood of queries forged from one victim's addresses would have schooldns reflect an
answer to the victim for each. The bound is per network rather than per address because a
forger can vary the last bits at will, and an operator's /24 or /56 is what a victim holds.
"""

from __future__ import annotations

from resolver.filtering import schools

# Networks kept per second. Beyond it, queries from networks not seen yet in that second are not
# answered: a flood forged from everywhere cannot grow the table (each entry costs ~100 bytes).
MAX_NETWORKS = 16_384


class PerNetworkLimit:
    """At most `per_second` answers per client network in each second of the clock (0: none at all)."""

    __slots__ = ("_counts", "_second", "per_second")

    def __init__(self, per_second: int):
        self.per_second = per_second
        self._second = -1
        self._counts: dict[bytes, int] = {}  # network -> answers in the current second

    def allow(self, client: str | bytes, now: float) -> bool:
        """Whether an answer to `client` (its address as text or packed, 4 or 16 bytes) fits this second's budget.

        Counts the answer when it does. `now` is any clock in seconds; only counts in its current
        whole second are kept, so the table never holds more than one second's networks.
        """
        second = int(now)
        if second != self._second:
            self._second = second
            self._counts = {}
        network = network_of(client)
        if network is None:
            return False  # not an address: nobody to answer
        counts = self._counts
        count = counts.get(network, 0)
        if count >= self.per_second or (not count and len(counts) >= MAX_NETWORKS):
            return False
        counts[network] = count + 1
        return True


# A school may send this many seconds' worth of its rate at once (a token bucket this deep): a
# lesson's start, when every device opens pages together, is not cut.
BURST_SECONDS = 2.0


class SchoolRates:
    """At most `per_second` queries per school on average, `BURST_SECONDS` of them at once: a token bucket per school.

    Schools come from the configuration, so the table holds at most one bucket per configured
    school (and the default school); `forget` empties it when a snapshot is installed.
    """

    __slots__ = ("_buckets", "burst", "per_second")

    def __init__(self, per_second: float):
        self.per_second = per_second
        self.burst = max(per_second * BURST_SECONDS, 1.0)
        self._buckets: dict[str, list[float]] = {}  # school id -> [tokens left, when last counted]

    def allow(self, school: str, now: float) -> bool:
        """Whether one more query of `school` at `now` (seconds, any monotonic clock) fits its rate; counts it if so."""
        bucket = self._buckets.get(school)
        if bucket is None:
            self._buckets[school] = [self.burst - 1.0, now]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self.per_second
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def forget(self) -> None:
        """Start every school's bucket full again (a new snapshot may name other schools)."""
        self._buckets = {}


def network_of(client: str | bytes) -> bytes | None:
    """The /24 (IPv4, also when mapped into IPv6) or /56 (IPv6) that holds a client address; None if not one."""
    try:
        packed = client if isinstance(client, bytes) else schools.pack_address(client)
    except (OSError, ValueError):
        return None
    if len(packed) == 4:
        return packed[:3]
    if len(packed) == 16:
        return packed[12:15] if packed[:12] == schools.MAPPED_PREFIX else packed[:7]
    return None
