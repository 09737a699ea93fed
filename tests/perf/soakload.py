"""The soak's load: UDP queries at a fixed rate from two schools, every answer checked against what it must be.

    .venv/bin/python tests/perf/soakload.py --port 5353 --rate 5000 --seconds 600

Open loop, unlike tests/perf/loadgen.py: queries go out at `--rate` a second whatever the server
does, each with an ID of its own per socket, and each is followed until its answer or until
LOST_AFTER seconds have passed (then it is lost: a stub resolver has given up). The names are
chosen so that the right answer is known exactly while the lists and policies change around them
(tests/perf/soak.py changes only names this load never asks):

  allowed  a<i>.soak.example         NOERROR, A 192.0.2.x (tests/perf/authoritative.py's address for the name)
  blocked  b<i>.soak.example         NXDOMAIN for both schools (listed in `adult`)
  games    g<i>.soak.example         NXDOMAIN for school A (its profile blocks `games`), the address for school B
  fresh    f<n>.fresh.soak.example   never asked before: the address, or SERVFAIL while the upstream is down

Queries carry EDNS, so a stale answer (served while the upstream is silent) shows its EDE 3 and
is counted as stale; its address must still be right. SERVFAIL is counted apart, by kind: for a
fixed name (cached since the first seconds) it means serve-stale did not answer.

Prints one JSON line a second (progress) and, at the end, one with the totals and per-second
counts by the second each query was sent (time.monotonic() of the start is in both).
"""

from __future__ import annotations

import argparse
import collections
import json
import select
import socket
import struct
import sys
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

ALLOWED, BLOCKED, GAMES, FRESH = "allowed", "blocked", "games", "fresh"
KINDS = (ALLOWED, BLOCKED, GAMES, FRESH)
ALLOWED_NAMES, BLOCKED_NAMES, GAMES_NAMES = 3000, 500, 500
# Of every 100 queries: the mix (fresh names at 3% keep the cache evicting once it is full).
MIX = (ALLOWED,) * 72 + (BLOCKED,) * 10 + (GAMES,) * 15 + (FRESH,) * 3
SCHOOL_A, SCHOOL_B = "127.0.0.1", "127.0.0.2"  # tests/support/harness.py's schools
SOCKETS_PER_SCHOOL = 8
LOST_AFTER = 5.0  # glibc's resolver gives up on a server after 5 s
TICK = 0.005  # seconds between two sends of what is due
OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)
NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3
EDE = 15  # the EDNS option code of Extended DNS Errors
EDE_STALE = 3
STALE_TTL = struct.pack("!I", 30)  # RFC 8767: a stale answer's TTL (tests/perf/soak.py's upstream gives less)


def wire_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.split(".")) + b"\0"


def address_of(name: str) -> bytes:
    """The address tests/perf/authoritative.py answers for `name` (lower case)."""
    return bytes((192, 0, 2, zlib.crc32(wire_name(name)) % 254 + 1))


def names(kind: str) -> list[str]:
    """The fixed names of a kind (the soak lists `blocked` in adult and `games` in games)."""
    count = {ALLOWED: ALLOWED_NAMES, BLOCKED: BLOCKED_NAMES, GAMES: GAMES_NAMES}[kind]
    return [f"{kind[0]}{i}.soak.example" for i in range(count)]


def expected(kind: str, school: str, name: str) -> bytes | None:
    """The A record's address the answer must hold, or None for NXDOMAIN (blocked)."""
    if kind == BLOCKED or (kind == GAMES and school == SCHOOL_A):
        return None
    return address_of(name)


def question(name: str) -> bytes:
    return wire_name(name) + b"\x00\x01\x00\x01"


def check(answer: bytes, asked: bytes, address: bytes | None) -> tuple[int, bool, bool]:
    """(rcode, right, stale): the answer to the question `asked` (wire form, type and class)."""
    end = 12 + len(asked)
    if answer[12:end] != asked:
        return -1, False, False
    rcode = answer[3] & 0xF
    ancount = answer[6] << 8 | answer[7]
    if rcode == SERVFAIL:
        return rcode, False, False
    if address is None:
        return rcode, rcode == NXDOMAIN and ancount == 0, False
    if rcode != NOERROR or ancount != 1:
        return rcode, False, False
    # One A record after the question, its name a pointer to it (as schooldns replays the upstream's).
    if answer[end : end + 4] != b"\xc0\x0c\x00\x01" or answer[end + 10 : end + 16] != b"\x00\x04" + address:
        return rcode, False, False
    if answer[end + 6 : end + 10] != STALE_TTL:  # not stale (whose EDE is read only then: rare)
        return rcode, True, False
    return rcode, True, _has_stale_ede(answer, end + 16)


def _has_stale_ede(answer: bytes, pos: int) -> bool:
    """Whether the records from `pos` on hold an OPT record with EDE 3 (Stale Answer)."""
    nscount, arcount = struct.unpack_from("!HH", answer, 8)
    for _ in range(nscount + arcount):
        pos = _skip_name(answer, pos)
        rtype, _, _, length = struct.unpack_from("!HHIH", answer, pos)
        pos += 10
        if rtype == 41:
            options, stop = pos, pos + length
            while options + 4 <= stop:
                code, size = struct.unpack_from("!HH", answer, options)
                if code == EDE and size >= 2 and struct.unpack_from("!H", answer, options + 4)[0] == EDE_STALE:
                    return True
                options += 4 + size
        pos += length
    return False


def _skip_name(message: bytes, pos: int) -> int:
    while True:
        length = message[pos]
        if length & 0xC0:
            return pos + 2
        pos += 1 + length
        if length == 0:
            return pos


class Load:
    """The sockets, what each has outstanding, and the counts."""

    def __init__(self, server: str, port: int, rate: float, seconds: float, window: int = 0):
        self.rate, self.seconds, self.window = rate, seconds, window
        self.sockets: list[tuple[socket.socket, str]] = []
        for school in (SCHOOL_A, SCHOOL_B):
            for _ in range(SOCKETS_PER_SCHOOL):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.bind((school, 0))
                sock.connect((server, port))
                sock.setblocking(False)
                self.sockets.append((sock, school))
        self.fixed = {kind: [(name, question(name)) for name in names(kind)] for kind in (ALLOWED, BLOCKED, GAMES)}
        # socket index -> query ID -> (sent at, second, kind, question, address wanted or None), oldest first
        self.outstanding: list[dict[int, tuple[float, int, str, bytes, bytes | None]]] = [{} for _ in self.sockets]
        self.next_id = [0] * len(self.sockets)
        self.sent = 0
        self.fresh = 0
        self.totals: collections.Counter[str] = collections.Counter()
        self.per_second: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.wrong_examples: list[dict[str, object]] = []
        self.worst_wait = 0.0

    def count(self, second: int, what: str) -> None:
        self.totals[what] += 1
        self.per_second[second][what] += 1

    def send(self, index: int, now: float, second: int) -> None:
        """One query on socket `index`: the next of the mix on that socket."""
        sock, school = self.sockets[index]
        query_id = self.next_id[index]
        self.next_id[index] = (query_id + 1) & 0xFFFF
        kind = MIX[query_id % len(MIX)]
        if kind == FRESH:
            self.fresh += 1
            name = f"f{self.fresh}.fresh.soak.example"
            asked = question(name)
        else:
            fixed = self.fixed[kind]
            name, asked = fixed[(self.sent * 7919) % len(fixed)]
        self.sent += 1
        try:
            sock.send(struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 1) + asked + OPT)
        except BlockingIOError:
            self.count(second, "send_failed")
            return
        self.outstanding[index][query_id] = (now, second, kind, asked, expected(kind, school, name))
        self.count(second, "sent")

    def receive(self, index: int, now: float, second: int) -> int:
        """Every answer waiting on socket `index`, checked; how many."""
        sock = self.sockets[index][0]
        outstanding = self.outstanding[index]
        got = 0
        while True:
            try:
                answer = sock.recv(4096)
            except BlockingIOError:
                return got
            if len(answer) < 12:
                continue
            entry = outstanding.pop(struct.unpack_from("!H", answer)[0], None)
            if entry is None:
                self.totals["late_or_unasked"] += 1
                continue
            got += 1
            sent_at, sent_second, kind, asked, address = entry
            self.worst_wait = max(self.worst_wait, now - sent_at)
            rcode, right, stale = check(answer, asked, address)
            self.count(sent_second, "answered")
            if rcode == SERVFAIL:
                self.count(sent_second, f"servfail_{'fresh' if kind == FRESH else 'fixed'}")
            elif right:
                self.count(sent_second, "stale" if stale else "right")
            else:
                self.count(sent_second, "wrong")
                if len(self.wrong_examples) < 20:
                    self.wrong_examples.append(
                        {
                            "name": ".".join(_labels(asked)),
                            "kind": kind,
                            "rcode": rcode,
                            "want": address and ".".join(map(str, address)),
                        }
                    )

    def expire(self, now: float) -> list[int]:
        """Queries unanswered for LOST_AFTER seconds are lost; how many on each socket."""
        expired = []
        for outstanding in self.outstanding:
            old = []
            for query_id, entry in outstanding.items():  # oldest first: stop at the first one still waiting
                if now - entry[0] < LOST_AFTER:
                    break
                old.append(query_id)
            for query_id in old:
                self.count(outstanding.pop(query_id)[1], "lost")
            expired.append(len(old))
        return expired

    def run(self) -> dict[str, object]:
        poller = select.epoll()
        by_fd = {sock.fileno(): index for index, (sock, _) in enumerate(self.sockets)}
        for sock, _ in self.sockets:
            poller.register(sock.fileno(), select.EPOLLIN)
        started = now = time.monotonic()
        print(json.dumps({"started": started}), flush=True)
        end = started + self.seconds
        next_report = started + 1
        next_expire = started + 0.5
        if self.window:  # closed loop: each socket keeps `window` queries outstanding
            for index in range(len(self.sockets)):
                for _ in range(self.window):
                    self.send(index, now, 0)
        while True:
            second = int(now - started)
            if now < end and not self.window:
                due = int((now - started) * self.rate) - self.sent
                for _ in range(max(0, due)):
                    self.send(self.sent % len(self.sockets), now, second)
            elif now >= end and not any(self.outstanding):
                break
            for fd, _ in poller.poll(TICK):
                index = by_fd[fd]
                got = self.receive(index, now, second)
                if self.window and now < end:
                    for _ in range(got):
                        self.send(index, now, second)
            now = time.monotonic()
            if now >= next_expire:
                next_expire = now + 0.5
                for index, lost in enumerate(self.expire(now)):
                    if self.window and now < end:
                        for _ in range(lost):
                            self.send(index, now, second)
            if now >= next_report:
                next_report += 1
                print(json.dumps({"t": round(now - started, 1), **self.totals}), flush=True)
        poller.close()
        for sock, _ in self.sockets:
            sock.close()
        elapsed = time.monotonic() - started
        return {
            "started": started,
            "seconds": round(elapsed, 1),
            "rate": self.rate,
            "qps": round(self.totals["answered"] / self.seconds, 1),
            "worst_wait_seconds": round(self.worst_wait, 3),
            "totals": dict(self.totals),
            "per_second": {second: dict(counts) for second, counts in sorted(self.per_second.items())},
            "wrong_examples": self.wrong_examples,
        }


def _labels(asked: bytes) -> list[str]:
    labels, pos = [], 0
    while asked[pos]:
        labels.append(asked[pos + 1 : pos + 1 + asked[pos]].decode())
        pos += 1 + asked[pos]
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=0.0, help="queries a second (open loop)")
    parser.add_argument("--window", type=int, default=0, help="instead: keep this many outstanding per socket")
    parser.add_argument("--seconds", type=float, required=True)
    args = parser.parse_args(argv)
    if (args.rate > 0) == (args.window > 0):
        parser.error("one of --rate and --window")
    print(json.dumps(Load(args.server, args.port, args.rate, args.seconds, args.window).run()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
