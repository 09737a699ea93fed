"""schooldns: a DNS-level harmful-content filter for school networks."""

__version__ = "0.1.0"
