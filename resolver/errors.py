"""The root of every exception schooldns raises on purpose."""


class ResolverError(Exception):
    """Base class; each room defines its own subclasses where they are raised."""


class UsageError(ResolverError):
    """A command was given something it cannot use (an unknown school, a URL for a name): exit status 2."""
