"""A light closed-loop UDP load generator: queries built once, sent and counted 64 per system call.

    .venv/bin/python tests/perf/loadgen.py --port 5353 --queries queries.txt --seconds 10

Why, beside dnsperf. On a 2-core machine the two-worker runs of tests/perf/bench.py have no core
left for the load generator: it shares the cores with the workers, and what it costs per query is
CPU the workers do not get. dnsperf times and matches every query in two threads; this keeps
`--window` queries outstanding on each of `--sockets` connected sockets and only counts answers.
Every query of the file is built once before the run, in one buffer with a message header each,
so sending the next k queries is one sendmmsg and reading k answers one recvmmsg (through
ctypes, with the structures of resolver/dataplane/udpcalls.py): no Python work per datagram. Its own CPU per
answer is in the output, so a report can say how much of the machine it took. One source port
per socket spreads the queries over SO_REUSEPORT listeners as many clients do.

A socket that has had no answer for SILENCE seconds is taken to have lost what it had outstanding
(the server dropped it) and gets a full window again; `refills` counts those. Answers are counted,
not checked: bench.py checks answers with dnsperf.

Prints one JSON line: answered, sent, seconds, qps, cpu_seconds, user_seconds, cpu_us_per_answer,
refills.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import resource
import select
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from resolver.dataplane import udpbatch, udpcalls

BATCH = udpbatch.BATCH  # datagrams per system call
SLOT = 512  # bytes per query in the send buffer and per answer in the receive buffer
SILENCE = 0.05
QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "HTTPS": 65}


def build_queries(path: Path, seed: int) -> list[bytes]:
    """The file's `name TYPE` lines (dnsperf's format) as DNS queries: RD set, no EDNS, IDs from `seed`."""
    rng = random.Random(seed)
    queries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith(";"):
            continue
        qtype = QTYPES.get(fields[1].upper() if len(fields) > 1 else "A")
        if qtype is None:
            raise SystemExit(f"{path}:{number}: unknown query type {fields[1]!r}")
        labels = [label.encode("ascii") for label in fields[0].rstrip(".").split(".")]
        if any(not 0 < len(label) < 64 for label in labels):
            raise SystemExit(f"{path}:{number}: not a domain name: {fields[0]!r}")
        name = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
        query = struct.pack("!HHHHHH", rng.getrandbits(16), 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", qtype, 1)
        if len(query) > SLOT:
            raise SystemExit(f"{path}:{number}: query longer than {SLOT} bytes")
        queries.append(query)
    if not queries:
        raise SystemExit(f"{path}: no queries")
    return queries


class _Messages:
    """`count` message headers, each with one SLOT-sized buffer; no addresses (connected sockets)."""

    def __init__(self, count: int, lengths: list[int] | None = None):
        self.count = count
        self.buffer = ctypes.create_string_buffer(count * SLOT)
        self._iovecs = (udpcalls.IoVec * count)()
        self._headers = (udpcalls.MMsgHdr * count)()
        base = ctypes.addressof(self.buffer)
        for i in range(count):
            self._iovecs[i].base = base + i * SLOT
            self._iovecs[i].length = lengths[i] if lengths else SLOT
            self._headers[i].header.iov = ctypes.pointer(self._iovecs[i])
            self._headers[i].header.iovlen = 1
        self.pointer = ctypes.addressof(self._headers)

    def at(self, index: int) -> int:
        return self.pointer + index * ctypes.sizeof(udpcalls.MMsgHdr)


def run(host: str, port: int, queries: list[bytes], seconds: float, sockets: int, window: int) -> dict:
    recvmmsg, sendmmsg = udpcalls.SYSTEM_CALLS
    outgoing = _Messages(len(queries), [len(query) for query in queries])
    for i, query in enumerate(queries):
        ctypes.memmove(ctypes.addressof(outgoing.buffer) + i * SLOT, query, len(query))
    incoming = _Messages(BATCH)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(sockets)]
    poller = select.epoll()
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.connect((host, port))
        sock.setblocking(False)
        poller.register(sock.fileno(), select.EPOLLIN)
    last_answer: dict[int, float] = {}  # socket -> when it last had an answer
    position = sent = answered = refills = 0

    def send(fd: int, wanted: int) -> int:
        """Send the next `wanted` queries of the file (round and round); how many went out."""
        nonlocal position, sent
        done = 0
        while done < wanted:
            got = sendmmsg(
                fd, outgoing.at(position), min(wanted - done, outgoing.count - position, BATCH), socket.MSG_DONTWAIT
            )
            if got <= 0:
                break  # the socket's send buffer is full: the rest waits for a silence
            done += got
            position = (position + got) % outgoing.count
        sent += done
        return done

    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = now = time.monotonic()
    for sock in socks:
        send(sock.fileno(), window)
        last_answer[sock.fileno()] = started
    end, next_check = started + seconds, started + SILENCE
    while now < end:
        for fd, _ in poller.poll(SILENCE):
            got = recvmmsg(fd, incoming.pointer, BATCH, socket.MSG_DONTWAIT, None)
            if got > 0:
                answered += got
                send(fd, got)  # one new query for each answer: the window stays full
                last_answer[fd] = now
        now = time.monotonic()
        if now >= next_check:
            next_check = now + SILENCE
            for fd in last_answer:
                if now - last_answer[fd] >= SILENCE:
                    refills += 1
                    send(fd, window)
                    last_answer[fd] = now
    elapsed = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    poller.close()
    for sock in socks:
        sock.close()
    return {
        "answered": answered,
        "sent": sent,
        "seconds": round(elapsed, 3),
        "qps": round(answered / elapsed, 1),
        "cpu_seconds": round(cpu, 3),
        "user_seconds": round(after.ru_utime - usage.ru_utime, 3),
        "cpu_us_per_answer": round(cpu / max(1, answered) * 1e6, 3),
        "refills": refills,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1", help="IPv4 or IPv6 address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--queries", type=Path, required=True, help="dnsperf's format: `name TYPE` per line")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--sockets", type=int, default=16, help="connected sockets, one source port each")
    parser.add_argument("--window", type=int, default=8, help="queries outstanding per socket")
    parser.add_argument("--seed", type=int, default=1, help="seeds the query IDs")
    args = parser.parse_args(argv)
    if udpcalls.SYSTEM_CALLS is None:
        parser.error("needs recvmmsg and sendmmsg (Linux)")
    if args.sockets < 1 or args.window < 1 or args.seconds <= 0:
        parser.error("--sockets, --window and --seconds must be positive")
    queries = build_queries(args.queries, args.seed)
    print(json.dumps(run(args.server, args.port, queries, args.seconds, args.sockets, args.window)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
