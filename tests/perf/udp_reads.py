"""The ceiling of a Python UDP server on this machine: an answer-nothing echo, read three ways.

    .venv/bin/python tests/perf/udp_reads.py MODE PORT     (MODE: transport | batched | uvloop)
    taskset -c 1 dnsperf -s 127.0.0.1 -p PORT -d QUERIES -c 4 -q 200 -l 6

Each mode answers every datagram with its own bytes and the QR bit set, so dnsperf counts an
answer and nothing else is measured:

  transport  asyncio's DatagramProtocol: one datagram per event-loop iteration
  batched    loop.add_reader + recvfrom until the socket is empty (up to 64), as server.UdpServer
  uvloop     asyncio's DatagramProtocol on uvloop (needs `pip install uvloop`, not a dependency)

This is the experiment behind wire.UDP_READ_BATCH (docs/performance-history.md, "UDP reads").
"""

from __future__ import annotations

import asyncio
import socket
import sys


def echo(data: bytes) -> bytes:
    return data[:2] + bytes([data[2] | 0x80]) + data[3:]


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(echo(data), addr)  # type: ignore[attr-defined]


async def serve(mode: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", port))
    sock.setblocking(False)
    if mode == "batched":

        def read_ready() -> None:
            for _ in range(64):
                try:
                    data, addr = sock.recvfrom(65535)
                except BlockingIOError:
                    return
                try:
                    sock.sendto(echo(data), addr)
                except BlockingIOError:
                    pass

        loop.add_reader(sock.fileno(), read_ready)
    else:
        await loop.create_datagram_endpoint(Echo, sock=sock)
    print(f"{mode}: echoing on 127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("transport", "batched", "uvloop"):
        raise SystemExit(__doc__)
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "uvloop":
        import uvloop

        uvloop.install()
    try:
        asyncio.run(serve(mode, port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
