"""A fast stand-in upstream for the benchmark: answers every A query with 192.0.2.x, TTL 3600.

    .venv/bin/python tests/perf/authoritative.py --port 15300 [--address 127.0.0.1]

UDP and TCP on the same port. The reply is built from the query's bytes without a DNS library
(one recvfrom / one sendto per query in a tight loop), so it answers well over 50k queries a second
on one core and is not what a benchmark of the resolver in front of it measures. Every name exists
(but those under `--silent DOMAIN`, never answered, as a dead authority):

  A     -> one A record 192.0.2.x (x from a CRC of the lower-cased name, 1-254), TTL 3600 (`--ttl`;
           with `--ttl-max` each name's TTL is between the two, from the same CRC)
  other -> NOERROR with no answer (NODATA) and an SOA in the authority section, TTL 3600 (`--ttl`)

SIGUSR1 silences it whole (an outage: nothing is answered, UDP or TCP) and SIGUSR2 makes it answer
again (tests/perf/soak.py).

EDNS: a query with an OPT record gets one back (payload 1232). Malformed queries get FORMERR or
nothing. The reply has QR, AA and RA set and RD copied, as a recursive resolver's would.
"""

from __future__ import annotations

import argparse
import signal
import socket
import struct
import sys
import threading
import zlib

TTL = [3600]  # --ttl
TTL_SPREAD = [1]  # --ttl-max - --ttl + 1: A records' TTLs spread over this many seconds
SOA_RDATA = [  # mname "ns.bench." rname "hostmaster.bench." serial refresh retry expire minimum
    b"\x02ns\x05bench\x00" + b"\x0ahostmaster\x05bench\x00" + struct.pack("!IIIII", 1, 3600, 600, 86400, TTL[0])
]
OPT_RR = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)  # root name, type OPT, payload 1232, no options
SILENT = [b""]  # --silent: names under this domain (wire form, no root label) get no answer at all
MUTED = [False]  # SIGUSR1 .. SIGUSR2: nothing is answered


def answer(query: bytes) -> bytes | None:
    """The reply to one query message, or None for something that is not a query at all."""
    if len(query) < 12 or MUTED[0]:
        return None
    qid, flags, qdcount, _, _, arcount = struct.unpack_from("!HHHHHH", query)
    if flags & 0x8000:  # a response: never answer those
        return None
    if qdcount != 1 or (flags >> 11) & 0xF != 0:  # not one QUERY question: FORMERR, header only
        return struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x7900) | 0x0080 | 1, 0, 0, 0, 0)
    pos = 12
    end = len(query)
    while True:  # walk the question name (no compression in a question)
        if pos >= end:
            return None
        length = query[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0:
            return None
        pos += 1 + length
    if pos + 4 > end:
        return None
    if SILENT[0] and query[12 : pos - 1].lower().endswith(SILENT[0]):
        return None  # an unresponsive authority: what a random-subdomain flood is aimed at
    question = query[12 : pos + 4]
    qtype, qclass = struct.unpack_from("!HH", query, pos)
    edns = arcount > 0
    reply_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080  # QR AA RD(copied) RA, NOERROR
    if qtype == 1 and qclass == 1:
        crc = zlib.crc32(query[12:pos].lower())
        ttl = TTL[0] + (crc >> 8) % TTL_SPREAD[0]
        record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + bytes((192, 0, 2, crc % 254 + 1))
        header = struct.pack("!HHHHHH", qid, reply_flags, 1, 1, 0, 1 if edns else 0)
        return header + question + record + (OPT_RR if edns else b"")
    soa = b"\xc0\x0c" + struct.pack("!HHIH", 6, 1, TTL[0], len(SOA_RDATA[0])) + SOA_RDATA[0]
    header = struct.pack("!HHHHHH", qid, reply_flags, 1, 0, 1, 1 if edns else 0)
    return header + question + soa + (OPT_RR if edns else b"")


def serve_udp(sock: socket.socket) -> None:
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        try:
            data, peer = recvfrom(4096)
        except OSError:
            return
        reply = answer(data)
        if reply is not None:
            try:
                sendto(reply, peer)
            except OSError:
                pass


def serve_tcp_connection(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(30)
        buffer = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 2:
                    length = struct.unpack_from("!H", buffer)[0]
                    if len(buffer) < 2 + length:
                        break
                    reply = answer(buffer[2 : 2 + length])
                    buffer = buffer[2 + length :]
                    if reply is not None:
                        conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return


def serve_tcp(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=serve_tcp_connection, args=(conn,), daemon=True).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="UDP and TCP port (0: choose one)")
    parser.add_argument("--silent", default="", help="never answer names under this domain (a dead authority)")
    parser.add_argument("--ttl", type=int, default=TTL[0], help="TTL of every record (default 3600)")
    parser.add_argument("--ttl-max", type=int, help="spread A records' TTLs from --ttl to this, by name")
    args = parser.parse_args()
    TTL[0] = args.ttl
    TTL_SPREAD[0] = max(1, (args.ttl_max or args.ttl) - args.ttl + 1)
    SOA_RDATA[0] = SOA_RDATA[0][:-4] + struct.pack("!I", args.ttl)
    SILENT[0] = b"".join(bytes([len(label)]) + label.encode() for label in args.silent.lower().split(".") if label)

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    udp.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    udp.bind((args.address, args.port))
    port = udp.getsockname()[1]
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind((args.address, port))
    tcp.listen(128)
    threading.Thread(target=serve_tcp, args=(tcp,), daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGUSR1, lambda *_: MUTED.__setitem__(0, True))
    signal.signal(signal.SIGUSR2, lambda *_: MUTED.__setitem__(0, False))
    print(f"listening {args.address} {port}", flush=True)
    try:
        serve_udp(udp)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
