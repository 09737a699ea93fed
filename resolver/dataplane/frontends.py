"""Trusted front-ends (`proxy_protocol.trusted`): whom a PROXY v2 header or a Client Subnet option names.

A query from a trusted front-end, over UDP, TCP, DoT or DoH alike, is answered for the client it
names: the address in a PROXY v2 header before it (dnsdist, HAProxy; on DoT and DoH before the
TLS handshake or first inside TLS), else the address of its EDNS Client Subnet option (a
resolver forwarding for its clients, dnsdist re-encrypting to DoT or DoH), else the front-end's
own. Nobody else is believed: from any other address a PROXY header is just bytes that are not
DNS (a malformed query, answered as such), and a Client Subnet option is ignored. Once a PROXY
header has named the client, a Client Subnet option is the client's own and is ignored too. A
trusted front-end's malformed header is dropped and counted
(`schooldns_transport_rejected_total{reason="proxy_malformed"}`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from resolver.dataplane import ednsopt, metrics, pipeline, proxyv2
from resolver.filtering import schools

Handle = Callable[[bytes, "str | bytes", str], "bytes | pipeline.Pending | pipeline.Stream | pipeline.Shed | None"]


class FrontEnds:
    """The networks whose PROXY headers and Client Subnet options are believed."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network], counters: metrics.Counters):
        # A school directory with one "school", True: the same longest-prefix lookup and memo.
        self._directory: schools.SchoolDirectory[bool] = schools.SchoolDirectory.build(
            (network, True) for network in networks
        )
        self.counters = counters

    def trusted(self, peer: str | bytes) -> bool:
        return self._directory.lookup(peer) is not None

    def datagrams(self, handle: Handle) -> Handle:
        """`handle` (Pipeline.handle) for a UDP listener: a trusted front-end's datagram is
        answered for the client it names, every other one as it is."""
        lookup = self._directory.lookup
        rejected = self.counters.rejected

        def handle_datagram(
            data: bytes, client: str | bytes, transport: str
        ) -> bytes | pipeline.Pending | pipeline.Stream | pipeline.Shed | None:
            if lookup(client) is None:
                return handle(data, client, transport)
            if data[:12] == proxyv2.SIGNATURE:
                try:
                    header = proxyv2.parse(data)
                except proxyv2.ProxyError:  # a whole datagram: an Incomplete one is malformed too
                    rejected[(transport, "proxy_malformed")] += 1
                    return None
                return handle(data[header.length :], header.client or client, transport)
            return handle(data, ednsopt.client_subnet(data) or client, transport)

        return handle_datagram

    def stream_header(self, start: bytes, transport: str) -> proxyv2.Header | None:
        """The PROXY header at the `start` of a trusted front-end's TCP stream, None when the stream
        does not begin with one; Incomplete while it has not all arrived, ProxyError (counted)
        when it is malformed."""
        if not proxyv2.starts_header(start[:12]):
            return None
        try:
            return proxyv2.parse(start)
        except proxyv2.Incomplete:
            raise
        except proxyv2.ProxyError:
            self.counters.rejected[(transport, "proxy_malformed")] += 1
            raise

    @staticmethod
    def client_of(message: bytes, peer: str | bytes) -> str | bytes:
        """Whom a trusted front-end's query is for, when no PROXY header said: its Client Subnet, else the peer."""
        return ednsopt.client_subnet(message) or peer
