"""The bench's query files beside the byte-identical one: each name in a letter case of its own (0x20); a cookie mix.

Both are made from the lines of bench.py's query file (`name TYPE`, dnsperf's text format), in
the same order, pass after pass, so that line j of either file asks what line j mod Q of the
query file asks (Q lines): the same names, the same share of blocked ones, a cache warmed with the
query file answers every line. Each file has whole passes, at least `lines` lines.

- `write_case_file`: the text file with every name in a random letter case. The occurrences of a
  name go through its 2**letters cases in a seeded order of their own (a bijection of the
  occurrence number), so the same bytes come back only after all its other cases were sent: a
  name of 11 letters or more never repeats within two million lines. A name with few letters
  (`dep.com.vn`, asked 17 times a pass) cannot avoid it; the returned figures count the lines
  sent within `window` lines after an identical one.
- `write_cookie_file`: dnsperf's binary input (`dnsperf -B`: each message after its 2-byte
  length; dnsperf puts its own ID in). COOKIE_SHARE of the lines carry an OPT record (payload
  1232) with a COOKIE option (RFC 7873) holding the 8-byte client cookie of one of COOKIE_CLIENTS
  clients, each with a random cookie of its own that it sends with all its queries, as a client
  does with one server; the other lines are the bytes dnsperf sends for the query file's line
  (RD set, no EDNS). Why a file and not dnsperf's `-E`: `-E` adds one option to every query.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from pathlib import Path

COOKIE_SHARE = 0.3
COOKIE_CLIENTS = 1_000
OPTION_COOKIE = 10
QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "HTTPS": 65}
_LOWER = frozenset(b"abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class Written:
    """What a workload file holds: its lines (whole passes over the query file) and how alike they are."""

    lines: int
    passes: int
    twins: int  # lines sent within `window` lines after the same bytes (the cookie file: its cookie lines only)
    cookies: int = 0  # lines with a COOKIE option


def read_queries(path: Path) -> list[tuple[str, str]]:
    """(name, type) of each `name TYPE` line of a dnsperf text file."""
    out = []
    for line in path.read_text(encoding="ascii").splitlines():
        fields = line.split()
        if fields and not fields[0].startswith(";"):
            out.append((fields[0].rstrip("."), fields[1].upper() if len(fields) > 1 else "A"))
    return out


def passes_for(queries: int, lines: int) -> int:
    """Whole passes over `queries` lines that make at least `lines` lines (at least one)."""
    return max(1, -(-lines // queries))


def _mix(occurrence: int, bits: int, keys: tuple[int, int, int]) -> int:
    """A bijection of the numbers below 2**bits (odd multipliers and xor-shifts), seeded by `keys`."""
    if bits == 0:
        return 0
    mask = (1 << bits) - 1
    shift = (bits + 1) // 2
    x = (occurrence * keys[0] + keys[1]) & mask
    x ^= x >> shift
    x = (x * keys[2]) & mask
    return x ^ (x >> shift)


class CaseVariants:
    """The next occurrence of a name in a letter case of its own (module docstring), and the twins so far."""

    def __init__(self, occurrences: dict[str, int], seed: int, window: int):
        self._rng = random.Random(f"{seed}:0x20")
        self._occurrences = occurrences  # name -> how many times it will be asked
        self._window = window
        self._letters: dict[str, tuple[int, ...]] = {}
        self._keys: dict[str, tuple[int, int, int]] = {}
        self._seen: dict[str, int] = {}
        self._positions: dict[str, list[int]] = {}  # names with fewer cases than occurrences -> where each went
        self.twins = 0  # occurrences within `window` positions after the same bytes

    def cased(self, name: str, position: int) -> str:
        letters = self._letters.get(name)
        if letters is None:
            letters = self._letters[name] = tuple(i for i, byte in enumerate(name.encode("ascii")) if byte in _LOWER)
            rng = self._rng
            self._keys[name] = (rng.getrandbits(64) | 1, rng.getrandbits(64), rng.getrandbits(64) | 1)
            if self._occurrences[name] > 1 << len(letters):
                self._positions[name] = []
        occurrence = self._seen.get(name, 0)
        self._seen[name] = occurrence + 1
        pattern = _mix(occurrence, len(letters), self._keys[name])
        cased = bytearray(name.encode("ascii"))
        for bit, index in enumerate(letters):
            if pattern >> bit & 1:
                cased[index] ^= 0x20
        positions = self._positions.get(name)
        if positions is not None:
            cycle = 1 << len(letters)
            if occurrence >= cycle and position - positions[occurrence - cycle] <= self._window:
                self.twins += 1
            positions.append(position)
        return cased.decode("ascii")


def write_case_file(path: Path, queries: list[tuple[str, str]], lines: int, seed: int, window: int) -> Written:
    """Write the 0x20 file (module docstring); `window`: how many lines after a line its twin counts."""
    passes = passes_for(len(queries), lines)
    occurrences: dict[str, int] = {}
    for name, _ in queries:
        occurrences[name] = occurrences.get(name, 0) + passes
    variants = CaseVariants(occurrences, seed, window)
    position = 0
    with open(path, "w", encoding="ascii") as file:
        for _ in range(passes):
            chunk = []
            for name, qtype in queries:
                chunk.append(f"{variants.cased(name, position)} {qtype}\n")
                position += 1
            file.write("".join(chunk))
    return Written(position, passes, variants.twins)


def qname_wire(name: str) -> bytes:
    """A domain name in wire form (no compression)."""
    labels = [label.encode("ascii") for label in name.rstrip(".").split(".")]
    if any(not 0 < len(label) < 64 for label in labels):
        raise ValueError(f"not a domain name: {name!r}")
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\0"


def query_message(name: str, qtype: str = "A", cookie: bytes | None = None) -> bytes:
    """A query as dnsperf sends a text line (ID 0, RD set, no EDNS), or with EDNS and a COOKIE option."""
    question = qname_wire(name) + struct.pack("!HH", QTYPES[qtype], 1)
    if cookie is None:
        return struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 0) + question
    option = struct.pack("!HH", OPTION_COOKIE, len(cookie)) + cookie
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(option)) + option
    return struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 1) + question + opt


def write_cookie_file(path: Path, queries: list[tuple[str, str]], lines: int, seed: int, window: int) -> Written:
    """Write the cookie mix in dnsperf's binary input format (module docstring)."""
    rng = random.Random(f"{seed}:cookies")
    passes = passes_for(len(queries), lines)
    clients = [rng.randbytes(8) for _ in range(COOKIE_CLIENTS)]
    plain = [query_message(name, qtype) for name, qtype in queries]
    framed = [struct.pack("!H", len(message)) + message for message in plain]
    last: dict[tuple[int, int], int] = {}  # (query line, client) -> where it was last sent
    cookies = twins = position = 0
    with open(path, "wb") as file:
        chunk: list[bytes] = []
        for _ in range(passes):
            for index, (name, qtype) in enumerate(queries):
                if rng.random() < COOKIE_SHARE:
                    client = rng.randrange(COOKIE_CLIENTS)
                    message = query_message(name, qtype, clients[client])
                    chunk.append(struct.pack("!H", len(message)) + message)
                    cookies += 1
                    before = last.get((index, client))
                    if before is not None and position - before <= window:
                        twins += 1
                    last[index, client] = position
                else:
                    chunk.append(framed[index])
                position += 1
            file.write(b"".join(chunk))
            chunk.clear()
    return Written(passes * len(queries), passes, twins, cookies)


def read_binary(path: Path) -> list[bytes]:
    """The messages of a dnsperf binary input file (for tests)."""
    data = path.read_bytes()
    messages, at = [], 0
    while at < len(data):
        (length,) = struct.unpack_from("!H", data, at)
        messages.append(data[at + 2 : at + 2 + length])
        at += 2 + length
    return messages
