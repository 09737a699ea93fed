"""Profile the per-query path in process: Pipeline.handle on cache hits, blocked names and misses, no sockets.

    .venv/bin/python tests/perf/bench_pipeline.py [--names 20000] [--rounds 7] [--profile]
    .venv/bin/python tests/perf/bench_pipeline.py --churn 200000   # + more names than repeats hold
    .venv/bin/python tests/perf/bench_pipeline.py --without-repeats   # + the same with no repeats kept

Builds the shipped example site (policies/ and blocklists/ of this checkout, the demo-local school
owning 127.0.0.0/8), fills the answer cache through a fake forwarder (the pipeline's Forwarder
protocol, answering every name with one A record), then replays each kind of query set round
after round with a fresh query ID per query, as a load generator cycling through its query file
does. Prints the median over the rounds of nanoseconds of CPU time per handle() call (CPU time:
another process sharing the core does not count, as it would in wall-clock time), and the calls
per second of CPU that makes, by kind:

- cached: cache hits asked again byte for byte (repeats, while their kept bytes hold);
- plain: the same names asked without EDNS, as the query files of `make bench` ask them (the
  answer kept once for both forms is kept without the OPT record: see repeats);
- renewed: the same 5 s later each round, so every repeat has its TTLs re-aged (wire.reduce_ttls,
  see repeats.REPEAT_AGE_AHEAD_SECONDS);
- blocked: blocked names asked again;
- 0x20: the cached names, each query with a new random letter case (DNS 0x20, as some
  forwarding resolvers send): no two queries have the same bytes, yet every one is a cache hit;
- cookies: the cached names, MIX_COOKIES of the queries with a DNS COOKIE option (RFC 7873)
  whose client cookie is new for each query, as from many clients; the rest as in "cached";
- miss: a new name each query, answered by the fake forwarder at once (the miss path without
  sockets: Pending, caching, replay);
- churn (`--churn N`): N more cached names, asked in a seeded Zipf-like mix (name of rank r with
  weight 1/r), so the distinct names outnumber the repeats the pipeline keeps (repeats.REPEAT_MAX),
  as on a busy resolver with a long tail of names asked once.

`--without-repeats` measures every kind a second time, round by round in turn with the first,
on a pipeline that keeps no repeats (Pipeline(keep_repeats=False)): what repeats are worth on
each kind. `--profile` adds, per kind, a cProfile of one more round: the calls per `handle()`
(all of them, and those to functions of resolver/) and the functions that took the most time of
their own, with their calls per `handle()` (cProfile's own cost inflates the small ones: read the
times as shares). Nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import random
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from resolver.control import config, snapshots  # noqa: E402
from resolver.dataplane import cache, metrics, pipeline, repeats, wire  # noqa: E402

CLIENT = "127.0.0.1"
MIX_COOKIES = 0.3  # share of the "cookies" kind's queries that carry a COOKIE option
_OPTION_COOKIE = 10


class AnsweringForwarder:
    """Every name has one A record, 192.0.2.1 with TTL 3600 (the pipeline's Forwarder protocol).

    The reply is put together from the question's bytes, so that a miss costs the pipeline's work
    and not a DNS library's.
    """

    def ask(self, query: wire.Query, done) -> None:
        header = struct.pack("!HHHHHH", 0, 0x8180, 1, 1, 0, 0)
        record = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 3600, 4) + bytes((192, 0, 2, 1))
        reply = header + query.question_lower + record
        done(wire.parse_upstream_answer(reply, len(query.question), 0, 86400, 3600), None)


def query_bytes(name: str, rng: random.Random, cookie: bytes | None = None, edns: bool = True) -> bytes:
    """An A query for `name` (its letter case kept) with a random ID and EDNS (payload 1232),
    as dnspython makes it; with a COOKIE option carrying `cookie` (8 bytes: a client cookie);
    without EDNS (as dnsperf sends a line of its text input) when `edns` is False."""
    qname = b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.split(".")) + b"\0"
    if not edns:
        return struct.pack("!HHHHHH", rng.randrange(65536), 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
    options = b"" if cookie is None else struct.pack("!HH", _OPTION_COOKIE, len(cookie)) + cookie
    opt = b"\0" + struct.pack("!HHIH", 41, 1232, 0, len(options)) + options
    return struct.pack("!HHHHHH", rng.randrange(65536), 0x0100, 1, 0, 0, 1) + qname + struct.pack("!HH", 1, 1) + opt


def random_case(name: str, rng: random.Random) -> str:
    """DNS 0x20: each letter of the name upper or lower case at random."""
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def blocked_names(count: int) -> list[str]:
    names = []
    for line in (REPO / "blocklists" / "phishing" / "eth-phishing-detect-hosts.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "0.0.0.0" and "." in fields[1]:
            names.append(fields[1])
        if len(names) == count:
            break
    return names


@dataclasses.dataclass
class Variant:
    """One pipeline under test, with its own cache, counters and clock."""

    label: str
    pipe: pipeline.Pipeline
    now: list[float]  # the pipeline's monotonic clock, moved by hand for the "renewed" kind


def make_variant(label: str, snapshot: pipeline.Snapshot, cache_size: int, keep_repeats: bool) -> Variant:
    now = [1000.0]
    pipe = pipeline.Pipeline(
        snapshot,
        cache.AnswerCache(cache_size),
        AnsweringForwarder(),
        metrics.Counters(),
        clock=lambda: now[0],
        keep_repeats=keep_repeats,
    )
    return Variant(label, pipe, now)


def _ignore(answer: bytes | None) -> None:
    pass


def answer(pipe: pipeline.Pipeline, data: bytes) -> bytes | None:
    """handle(), and for a cache miss the answer the fake forwarder gives at once."""
    reply = pipe.handle(data, CLIENT, "udp")
    if isinstance(reply, pipeline.Pending):
        delivered: list[bytes | None] = []
        reply.deliver_to(delivered.append)
        return delivered[0]
    return reply


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=20_000, help="distinct allowed names (default 20,000)")
    parser.add_argument("--rounds", type=int, default=7, help="passes over each query set (default 7)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one round of each kind")
    parser.add_argument(
        "--churn", type=int, default=0, help="also measure a Zipf mix over this many more names (0: not measured)"
    )
    parser.add_argument(
        "--without-repeats", action="store_true", help="also measure a pipeline that keeps no repeats, side by side"
    )
    parser.add_argument("--kinds", default="", help="comma-separated kinds to measure (default: all)")
    args = parser.parse_args()

    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as state:
        cfg = dataclasses.replace(
            config.load_config(REPO / "deploy" / "example" / "config.yaml"), state_dir=Path(state)
        )
        snapshot = snapshots.build_snapshot(cfg, 1)
    cache_size = (args.names + args.churn) * 2 + args.names * (args.rounds + 1)
    variants = [make_variant("repeats", snapshot, cache_size, True)]
    if args.without_repeats:
        variants.append(make_variant("no repeats", snapshot, cache_size, False))

    allowed = [f"host{number}.example-{number % 997}.com" for number in range(args.names)]
    blocked = [
        name
        for name in blocked_names(max(1, args.names * 15 // 85))
        if snapshot.index.lookup(name) and snapshot.index.explain(name)[-1].kind != "allow"
    ]
    churned = [f"tail{number}.example-{number % 991}.net" for number in range(args.churn)]
    for variant in variants:
        for name in allowed + churned:
            reply = variant.pipe.handle(query_bytes(name, rng), CLIENT, "udp")
            assert isinstance(reply, pipeline.Pending), f"{name} should be a cache miss first"
            reply.deliver_to(lambda answer: None)  # the forwarder answers at once: the answer is cached

    # Each kind: a function of the round (0 is the warm-up) giving that round's queries.
    fixed: dict[str, list[bytes]] = {}

    def same_bytes(kind: str, names: list[str]) -> Callable[[int], list[bytes]]:
        fixed[kind] = [query_bytes(name, rng) for name in names]
        return lambda round_: fixed[kind]

    def cased(round_: int) -> list[bytes]:
        return [query_bytes(random_case(name, rng), rng) for name in allowed]

    def cookies(round_: int) -> list[bytes]:
        return [
            query_bytes(name, rng, rng.randbytes(8)) if mixed else data
            for name, data, mixed in zip(allowed, fixed["cached"], cookie_mask, strict=True)
        ]

    def missed(round_: int) -> list[bytes]:
        return [query_bytes(f"miss{round_}-{number}.example-{number % 983}.org", rng) for number in range(args.names)]

    cookie_mask = [rng.random() < MIX_COOKIES for _ in allowed]
    fixed["plain"] = [query_bytes(name, rng, edns=False) for name in allowed]
    kinds: dict[str, Callable[[int], list[bytes]]] = {
        "cached": same_bytes("cached", allowed),
        "plain": lambda round_: fixed["plain"],
        "renewed": lambda round_: fixed["cached"],
        "blocked": same_bytes("blocked", blocked),
        "0x20": cased,
        "cookies": cookies,
        "miss": missed,
    }
    if churned:
        # as many queries as 2.5 names of the mix each, most of them for the popular names
        mix = rng.choices(churned, weights=[1 / rank for rank in range(1, len(churned) + 1)], k=len(churned) * 5 // 2)
        kinds["churn"] = same_bytes("churn", mix)
    if args.kinds:
        kinds = {kind: make for kind, make in kinds.items() if kind in args.kinds.split(",")}
    print(
        f"site: {len(snapshot.policies.schools)} schools, {snapshot.index.entry_count} listed names; "
        f"{len(allowed)} allowed (cached) + {len(blocked)} blocked query names, {args.rounds} rounds"
    )
    if churned:
        print(
            f"churn: {len(mix):,} queries over {len(set(mix)):,} of {len(churned):,} "
            f"names (repeats kept: at most {repeats.REPEAT_MAX:,} in each of two generations)"
        )
    print(f"{'kind':9}" + "".join(f"{v.label + ': ns/call':>24}{'calls/s':>10}" for v in variants))

    for kind, make in kinds.items():
        per_query: dict[str, list[float]] = {variant.label: [] for variant in variants}
        for round_ in range(args.rounds + 1):
            batch = make(round_)
            for variant in variants:
                handle = variant.pipe.handle
                if kind == "renewed":
                    variant.now[0] += 1.0 + repeats.REPEAT_AGE_AHEAD_SECONDS
                if round_ == 0:  # warm-up: decisions, cached answers and aged copies made once
                    for data in batch:
                        if not isinstance(answer(variant.pipe, data), bytes):
                            raise SystemExit(f"a {kind} query was not answered")
                    continue
                started = time.thread_time_ns()
                if kind == "miss":
                    for data in batch:
                        handle(data, CLIENT, "udp").deliver_to(_ignore)  # type: ignore[union-attr]
                else:
                    for data in batch:
                        handle(data, CLIENT, "udp")
                per_query[variant.label].append((time.thread_time_ns() - started) / len(batch))
        medians = [statistics.median(per_query[variant.label]) for variant in variants]
        print(f"{kind:9}" + "".join(f"{ns:24.0f}{1e9 / ns:10,.0f}" for ns in medians))

    if args.profile:
        for kind, make in kinds.items():
            profile(variants[0], kind, make(args.rounds + 1))


def profile(variant: Variant, kind: str, batch: list[bytes]) -> None:
    """cProfile of handle() over one round of a kind: calls per query, and where the time went."""
    handle = variant.pipe.handle
    if kind == "renewed":
        variant.now[0] += 1.0 + repeats.REPEAT_AGE_AHEAD_SECONDS
    profiler = cProfile.Profile()
    profiler.enable()
    if kind == "miss":
        for data in batch:
            handle(data, CLIENT, "udp").deliver_to(_ignore)  # type: ignore[union-attr]
    else:
        for data in batch:
            handle(data, CLIENT, "udp")
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    count = len(batch)
    own = {key: value for key, value in stats.items() if f"{Path(__file__).name}" not in key[0]}
    calls = sum(value[1] for value in own.values())
    resolver_calls = sum(value[1] for key, value in own.items() if "/resolver/" in key[0])
    print(f"\n{kind}: {calls / count:.1f} calls per handle(), {resolver_calls / count:.1f} of them to resolver/")
    total = sum(value[2] for value in own.values())
    for (path, line, function), (_, ncalls, tottime, _, _) in sorted(own.items(), key=lambda kv: -kv[1][2])[:12]:
        where = f"{Path(path).name}:{line} {function}" if path != "~" else function
        print(f"  {tottime / total:6.1%} own time  {ncalls / count:5.2f} per handle()  {where}")


if __name__ == "__main__":
    main()
