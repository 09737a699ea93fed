"""The RPZ feed with a big list: time and the server's peak memory for an AXFR and a GET /v1/rpz of a 1M-name zone.

    .venv/bin/python tests/perf/rpz_transfer.py [--entries 1000000] [--seed 1]

Generates the list with the benchmark's name generator (bench_domains.NameMaker), serves it
with `schooldns serve` (one worker) and asks for the zone by AXFR over TCP (a client that only
counts the records) and over the admin API. The server's peak memory during each transfer is
its VmHWM after the peak was reset (/proc/PID/clear_refs); it includes the pages of the
memory-mapped index that the transfer touches. Prints the results; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import SCHOOLDNS, Proc, free_port, process_cpu_seconds, wait_admin  # noqa: E402
from bench_domains import NameMaker  # noqa: E402


def write_site(directory: Path, entries: int, seed: int, port: int, admin: int) -> Path:
    lists = directory / "blocklists"
    lists.mkdir(parents=True)
    (directory / "policies").mkdir()
    maker = NameMaker(random.Random(seed))
    names: set[str] = set()
    with open(lists / "big.txt", "w", encoding="ascii") as file:
        while len(names) < entries:
            name = maker.name()
            if name not in names:
                names.add(name)
                file.write(f"{name}\n")
    (lists / "sources.yaml").write_text("categories:\n  adult:\n    sources: [{file: big.txt, format: domains}]\n")
    (directory / "policies" / "province.yaml").write_text(
        "mandatory: [adult]\ntimezone: Asia/Ho_Chi_Minh\nsafe_search: false\nprofiles:\n  any: {block: []}\n"
    )
    config = directory / "config.yaml"
    config.write_text(
        f'listen: ["127.0.0.1:{port}"]\nupstreams: ["127.0.0.1:9"]\nworkers: 1\n'
        f'state_dir: state\nadmin: {{listen: "127.0.0.1:{admin}"}}\nreload: {{watch_interval_seconds: 0}}\n'
        "rpz: {transfer_clients: [127.0.0.1/32]}\n"
    )
    return config


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS


def axfr(port: int, zone: str) -> tuple[int, int, int]:
    """(records, messages, bytes) of an AXFR, read as fast as it comes."""
    query = bytearray(struct.pack("!HHHHHH", 0x5D5D, 0, 1, 0, 0, 0))
    for label in zone.split("."):
        query += bytes([len(label)]) + label.encode()
    query += b"\0" + struct.pack("!HH", 252, 1)
    records = messages = size = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(struct.pack("!H", len(query)) + query)
        stream = sock.makefile("rb", buffering=1 << 20)
        soas = 0
        while soas < 2:
            length = struct.unpack("!H", stream.read(2))[0]
            message = stream.read(length)
            count = struct.unpack("!H", message[6:8])[0]
            records += count
            messages += 1
            size += 2 + length
            soas += message.count(b"\xc0\x0c\x00\x06\x00\x01")  # the SOA records (owner = the zone)
    return records, messages, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="schooldns-rpz-") as work:
        directory = Path(work)
        port, admin = free_port(), free_port()
        started = time.monotonic()
        config = write_site(directory, args.entries, args.seed, port, admin)
        print(f"list: {args.entries} names in {time.monotonic() - started:.1f}s")
        proc = Proc("schooldns", [str(SCHOOLDNS), "serve", "--config", str(config)], directory / "server.log")
        try:
            start = time.monotonic()
            wait_admin(directory, proc, 300)  # the admin API starts once DNS serves
            pid = proc.pid
            print(f"serving after {time.monotonic() - start:.1f}s; RSS {status_kb(pid, 'VmRSS') / 1024:.0f} MB")
            for zone in ("adult.rpz.schooldns", "province.rpz.schooldns"):
                reset_peak(pid)
                before = status_kb(pid, "VmRSS")
                start, cpu = time.monotonic(), process_cpu_seconds(pid)
                records, messages, size = axfr(port, zone)
                took, cpu = time.monotonic() - start, process_cpu_seconds(pid) - cpu
                peak = status_kb(pid, "VmHWM")
                print(
                    f"AXFR {zone}: {records} records in {messages} messages, {size / 2**20:.1f} MB, {took:.1f}s "
                    f"({records / took / 1000:.0f}k records/s), server CPU {cpu:.1f}s; server RSS "
                    f"{before / 1024:.0f} MB before, peak {peak / 1024:.0f} MB (+{(peak - before) / 1024:.1f} MB)"
                )
            reset_peak(pid)
            before = status_kb(pid, "VmRSS")
            start, cpu = time.monotonic(), process_cpu_seconds(pid)
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/v1/rpz/adult.rpz.schooldns", timeout=600) as page:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: page.read(1 << 20), b""))
            took, cpu = time.monotonic() - start, process_cpu_seconds(pid) - cpu
            peak = status_kb(pid, "VmHWM")
            print(
                f"GET /v1/rpz/adult.rpz.schooldns: {lines} lines in {took:.1f}s, server CPU {cpu:.1f}s; server RSS "
                f"{before / 1024:.0f} MB before, peak {peak / 1024:.0f} MB (+{(peak - before) / 1024:.1f} MB)"
            )
        finally:
            proc.stop()


if __name__ == "__main__":
    main()
