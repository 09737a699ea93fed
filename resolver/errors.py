"""The root of every exception schooldns raises on purpose."""


class ResolverError(Exception):
    """Base class; each room defines its own subclasses where they are raised."""


class UsageError(ResolverError):
    """A command was given something it cannot use (an unknown school, a URL for a name): exit status 2."""


class ListenError(ResolverError):
    """An address `schooldns serve` cannot listen on: printed as `schooldns: <message>`, exit status 1."""

    def __init__(self, message: str, address: str, ipv6_unavailable: bool):
        super().__init__(message)
        self.address = address
        # An IPv6 loopback or any address on a host without IPv6 (EAFNOSUPPORT, EADDRNOTAVAIL): the
        # one failure a start passes over while other addresses can be served (worker.bind_all).
        self.ipv6_unavailable = ipv6_unavailable
