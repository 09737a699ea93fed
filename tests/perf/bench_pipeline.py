"""Profile the per-query path in process: Pipeline.handle on cache hits and blocked names, no sockets.

    .venv/bin/python tests/perf/bench_pipeline.py [--names 20000] [--rounds 5] [--profile]
    .venv/bin/python tests/perf/bench_pipeline.py --churn 200000   # + more names than repeats hold

Builds the shipped example site (policies/ and blocklists/ of this checkout, the demo-local school
owning 127.0.0.0/8), fills the answer cache through a fake forwarder (the pipeline's Forwarder
protocol, answering every name with one A record), then replays the query set round after round
with a fresh query ID per query, as a load generator cycling through its query file does. Prints
nanoseconds per handle() call by kind (cached, renewed, blocked); `--profile` adds a cProfile of
the same loop, the tool that decided the design of the hot path (see docs/performance.md).
`--churn N` adds a kind "churn": N more cached names, asked in a seeded Zipf-like mix (name of
rank r with weight 1/r), so the distinct names outnumber the repeats the pipeline keeps
(repeats.REPEAT_MAX), as on a busy resolver with a long tail of names asked once.
Nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import random
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rrset

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from resolver.control import config, snapshots  # noqa: E402
from resolver.dataplane import cache, metrics, pipeline, repeats, wire  # noqa: E402

CLIENT = "127.0.0.1"


class AnsweringForwarder:
    """Every name has one A record with TTL 3600 (the pipeline's Forwarder protocol)."""

    def ask(self, query: wire.Query, done) -> None:
        request = dns.message.make_query(query.name + ".", query.qtype)
        response = dns.message.make_response(request)
        response.answer.append(dns.rrset.from_text(query.name + ".", 3600, "IN", "A", "192.0.2.1"))
        reply = response.to_wire()
        done(wire.parse_upstream_answer(reply, len(query.question), 0, 86400, 3600), None)


def query_bytes(name: str, rng: random.Random) -> bytes:
    message = dns.message.make_query(name, "A", use_edns=0, payload=1232)
    message.id = rng.randrange(65536)
    return message.to_wire()


def blocked_names(count: int) -> list[str]:
    names = []
    for line in (REPO / "blocklists" / "phishing" / "eth-phishing-detect-hosts.txt").read_text().splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == "0.0.0.0" and "." in fields[1]:
            names.append(fields[1])
        if len(names) == count:
            break
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=20_000, help="distinct allowed names (default 20,000)")
    parser.add_argument("--rounds", type=int, default=5, help="passes over the query set (default 5)")
    parser.add_argument("--profile", action="store_true", help="print a cProfile of the replay loop")
    parser.add_argument(
        "--churn", type=int, default=0, help="also measure a Zipf mix over this many more names (0: not measured)"
    )
    args = parser.parse_args()

    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as state:
        cfg = dataclasses.replace(
            config.load_config(REPO / "deploy" / "example" / "config.yaml"), state_dir=Path(state)
        )
        snapshot = snapshots.build_snapshot(cfg, 1)
    answers = cache.AnswerCache((args.names + args.churn) * 2)
    counters = metrics.Counters()
    now = [1000.0]  # the pipeline's monotonic clock, moved by hand for the "renewed" kind
    pipe = pipeline.Pipeline(snapshot, answers, AnsweringForwarder(), counters, clock=lambda: now[0])

    allowed = [f"host{number}.example-{number % 997}.com" for number in range(args.names)]
    blocked = [
        name
        for name in blocked_names(max(1, args.names * 15 // 85))
        if snapshot.index.lookup(name) and not snapshot.index.explain(name)[-1].kind == "allow"
    ]
    # cached: repeats of cached answers while their kept bytes hold; renewed: the same 5 s later
    # each round, so every repeat has its TTLs re-aged (wire.reduce_ttls, see repeats.REPEAT_AGE_AHEAD_SECONDS)
    kinds = {"cached": allowed, "renewed": allowed, "blocked": blocked}
    churned = [f"tail{number}.example-{number % 991}.net" for number in range(args.churn)]
    if churned:
        # as many queries as 2.5 names of the mix each, most of them for the popular names
        kinds["churn"] = rng.choices(
            churned, weights=[1 / rank for rank in range(1, len(churned) + 1)], k=len(churned) * 5 // 2
        )

    for name in allowed + churned:
        reply = pipe.handle(query_bytes(name, rng), CLIENT, "udp")
        assert isinstance(reply, pipeline.Pending), f"{name} should be a cache miss first"
        reply.deliver_to(lambda answer: None)  # the forwarder answers at once: the answer is cached
    print(
        f"site: {len(snapshot.policies.schools)} schools, {snapshot.index.entry_count} listed names; "
        f"{len(allowed)} allowed (cached) + {len(blocked)} blocked query names, {args.rounds} rounds"
    )
    if churned:
        print(
            f"churn: {len(kinds['churn']):,} queries over {len(set(kinds['churn'])):,} of {len(churned):,} "
            f"names (repeats kept: at most {repeats.REPEAT_MAX:,})"
        )

    for kind, names in kinds.items():
        batch = [query_bytes(name, rng) for name in names]
        handle = pipe.handle
        for data in batch:  # warm-up: decisions and aged copies made once
            reply = handle(data, CLIENT, "udp")
            if not isinstance(reply, bytes):
                raise SystemExit(f"a {kind} query was not answered at once: {reply!r}")
        elapsed = 0
        for _ in range(args.rounds):
            if kind == "renewed":
                now[0] += 1.0 + repeats.REPEAT_AGE_AHEAD_SECONDS
            started = time.perf_counter_ns()
            for data in batch:
                handle(data, CLIENT, "udp")
            elapsed += time.perf_counter_ns() - started
        per_query = elapsed / (args.rounds * len(batch))
        print(f"  {kind:8} {per_query:8.0f} ns per handle()")

    if args.profile:
        mixed = [query_bytes(name, rng) for name in allowed + blocked]
        rng.shuffle(mixed)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.rounds):
            for data in mixed:
                pipe.handle(data, CLIENT, "udp")
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
