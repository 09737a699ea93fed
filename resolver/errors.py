"""The root of every exception schooldns raises on purpose."""


class ResolverError(Exception):
    """Base class; each room defines its own subclasses where they are raised."""
