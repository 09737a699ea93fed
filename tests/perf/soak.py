"""`make soak`: the real server at half its measured capacity for 10 minutes, with syncs, writes and an outage.

    .venv/bin/python tests/perf/soak.py [--seconds 600] [--workers 2] [--output results.json]

Every process is one of the real programs on 127.0.0.1, started here and stopped at the end:

- the upstream: tests/perf/authoritative.py, TTLs 10 to 25 s (cached answers expire during the outage);
- the hub: `schooldns serve` with `publish:` (its repository made with `schooldns bundle init`),
  the repository served over HTTP (tests/support/static_http.py);
- the instance under load: `schooldns serve` with `sync:` from that repository, `workers: 2`;
- the load: tests/perf/soakload.py, every answer checked; closed loop first (as fast as the
  instance answers: the capacity, beside tests/perf/loadgen.py's, which only counts), then at
  half of that rate.

Timeline (S = --seconds): every minute the hub's `games` list changes (50 names out, 50 in, and a
probe name in or out) and is reloaded, school A's policy is written through the hub's admin API
(a probe name denied or not), the hub publishes both, and the instance syncs (POST /v1/sync);
then both probe names are asked of the instance, whose answer must follow the version it now
serves. In the middle the upstream goes silent for 30 s: names the instance has cached must be
answered stale (EDE 3), names never asked before get SERVFAIL. The load never asks a name the
changes touch, so every answer has one right value.

The RSS of the instance's processes is read from /proc every 5 s, with its cached answers
(/metrics). Passes when no query is lost (no answer within 5 s), no answer is wrong, no cached
name gets SERVFAIL, a fresh name gets SERVFAIL only during the outage, stale answers were served
during it, every round's writes, publishes, sync and probes succeeded, no worker restarted, and
no process's RSS grew by 5% or more from its steady state to the end. The steady state begins
once the cache is at its bound and the outage is a round past: the memory a worker took for the
outage's misses and for a snapshot built beside the one serving stays with the process (the
allocators keep their high-water mark), and is no leak (docs/reliability.md, "Memory"). The
growth from the end of the first minute is printed beside it. Prints a table; exit status 1 if
anything failed. Shorter runs (--seconds, SOAK_SECONDS in `make soak`) shrink the round, the
outage and the warm-up with it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.perf import soakload  # noqa: E402 (after the path: run as a script)
from tests.support.harness import SCHOOL_A, write_site  # noqa: E402
from tests.support.static_http import StaticServer  # noqa: E402

SCHOOLDNS = [sys.executable, "-m", "resolver"]
# The upstream's TTLs, spread by name (cached at once, names do not all expire at once): shorter than
# the outage, so cached names are served stale in it.
TTL, TTL_MAX = 10, 25
# Per worker: the load's fixed names and its fresh ones fill it in the first minutes; then it evicts.
# Room for the stores of twice the longest TTL: a name answered from repeats is made recent in the
# cache only when stored again, once a TTL, and one evicted has no stale answer in the outage (with
# 12,000 at 14,500 qps, one worker taking more of the load's sockets, hundreds of names were).
CACHE_ENTRIES = int(os.environ.get("SOAK_CACHE_ENTRIES", 24000))
CHURN_BASE, CHURN_ROUND = 1000, 50  # names of `games` that stay, and that change each round
FLIP_LIST = "flip-list.soak.example"  # in `games` (blocked for school A) in odd rounds
FLIP_POLICY = "flip-policy.soak.example"  # denied by school A's policy in odd rounds
RSS_EVERY = 5.0
RSS_GROWTH_LIMIT = 5.0  # percent
CAPACITY_SECONDS = 10.0
PROBES = 8  # queries per probe name, each from its own source port (the workers' share of them)


def games_list(round_number: int) -> str:
    names = ["games.example.com", "allowed.example.com", *soakload.names(soakload.GAMES)]
    names += [f"k{i}.churn.soak.example" for i in range(CHURN_BASE)]
    names += [f"r{round_number}-{i}.churn.soak.example" for i in range(CHURN_ROUND)]
    if round_number % 2:
        names.append(FLIP_LIST)
    return "".join(f"{name}\n" for name in names)


def school_a_policy(round_number: int) -> str:
    if round_number % 2:
        return SCHOOL_A.replace("deny: [denied.example.org]", f"deny: [denied.example.org, {FLIP_POLICY}]")
    return SCHOOL_A


SITE = {
    "blocklists/adult.txt": "adult.example.com\n" + "".join(f"{n}\n" for n in soakload.names(soakload.BLOCKED)),
    "blocklists/games.txt": games_list(0),
}


class Process:
    """A child process in a session of its own; its stderr lines kept, and waited for by pattern."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Path):
        self.name, self.process, self.log_path = name, process, log
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stderr is not None
        with open(self.log_path, "w") as log:
            while line := (await self.process.stderr.readline()).decode(errors="replace"):
                self.lines.append(line)
                log.write(line)
                log.flush()
                self._new_line.set()
        self._new_line.set()

    async def wait_for(self, pattern: str, since: int = 0, timeout: float = 90.0) -> re.Match[str]:
        """The first line from index `since` on that matches; SystemExit if the process ends first."""
        async with asyncio.timeout(timeout):
            while True:
                for line in self.lines[since:]:
                    if match := re.search(pattern, line):
                        return match
                since = len(self.lines)
                if self._reader.done():
                    raise SystemExit(f"{self.name} exited:\n{''.join(self.lines[-20:])}")
                self._new_line.clear()
                await self._new_line.wait()

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)


@contextlib.asynccontextmanager
async def started(name: str, argv: list[str], log: Path, stdout: bool = False) -> AsyncIterator[Process]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE if stdout else asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        start_new_session=True,
    )
    child = Process(name, process, log)
    try:
        yield child
    finally:
        child.stop()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        with contextlib.suppress(ProcessLookupError):  # anything of its session still there
            os.killpg(process.pid, signal.SIGKILL)
        await child._reader


def schooldns(*args: str) -> str:
    """A `schooldns` command's standard output; SystemExit with its error if it fails."""
    done = subprocess.run([*SCHOOLDNS, *args], capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode:
        raise SystemExit(f"schooldns {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


class Admin:
    """A server's admin API with a province token."""

    def __init__(self, session: aiohttp.ClientSession, port: int, token: str):
        self.session, self.base = session, f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, Any, Any]:
        async with self.session.request(
            method, self.base + path, data=body, headers={**self.headers, **headers}
        ) as response:
            text = await response.text()
            return response.status, response.headers, text

    async def json(self, method: str, path: str, body: bytes | None = None, **headers: str) -> Any:
        status, _, text = await self.call(method, path, body, **headers)
        if status != 200:
            raise RuntimeError(f"{method} {path}: {status} {text[:300]}")
        return json.loads(text)


def processes(supervisor: int) -> dict[str, int]:
    """The instance's processes by name (/proc/PID/comm: schooldns-w0, ...), the supervisor as `supervisor`."""
    found = {"supervisor": supervisor}
    waiting = [supervisor]
    while waiting:
        pid = waiting.pop()
        for task in Path(f"/proc/{pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    waiting.append(int(child))
                    comm = Path(f"/proc/{child}/comm").read_text().strip()
                    if comm.startswith("schooldns-w"):
                        found[comm.removeprefix("schooldns-")] = int(child)
    return found


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped at the full receive buffers of the sockets bound to `port` (/proc/net/udp)."""
    drops = 0
    for line in Path("/proc/net/udp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            drops += int(fields[-1])
    return drops


def cpu_pressure() -> float:
    """Microseconds some task has waited for a CPU since boot (/proc/pressure/cpu; 0 without PSI)."""
    with contextlib.suppress(OSError):
        return float(Path("/proc/pressure/cpu").read_text().split("total=")[1].split()[0])
    return 0.0


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@dataclasses.dataclass
class Round:
    number: int
    at: float  # seconds into the soak
    list_version: int = 0
    policy_version: int = 0
    synced_version: int | None = None
    probes_right: int = 0
    probes_wrong: int = 0
    error: str | None = None


async def probe(port: int, name: str, blocked: bool, deadline: float) -> bool:
    """PROBES queries from school A, each from a new source port: all right (SERVFAIL is asked again)."""
    right = 0
    while right < PROBES:
        reply = await dns.asyncquery.udp(
            dns.message.make_query(name, "A"), "127.0.0.1", port=port, source="127.0.0.1", timeout=3
        )
        if reply.rcode() == dns.rcode.SERVFAIL and time.monotonic() < deadline:
            await asyncio.sleep(1)  # the upstream is down: the allowed name is not cached
            continue
        if blocked:
            ok = reply.rcode() == dns.rcode.NXDOMAIN
        else:
            addresses = [rr.address for rrset in reply.answer for rr in rrset if rrset.rdtype == 1]
            ok = reply.rcode() == dns.rcode.NOERROR and addresses == [".".join(map(str, soakload.address_of(name)))]
        if not ok:
            return False
        right += 1
    return True


async def one_round(
    number: int, at: float, hub_site: Path, hub: Process, hub_admin: Admin, instance: Admin, dns_port: int
) -> Round:
    done = Round(number, at)
    try:
        since = len(hub.lines)
        (hub_site / "blocklists" / "games.txt").write_text(games_list(number))
        await hub_admin.json("POST", "/v1/reload")
        done.list_version = int((await hub.wait_for(r"published version (\d+)", since))[1])
        since = len(hub.lines)
        status, headers, text = await hub_admin.call("GET", "/v1/schools/school-a/policy")
        if status != 200:
            raise RuntimeError(f"GET policy: {status} {text[:200]}")
        await hub_admin.json(
            "PUT", "/v1/schools/school-a/policy", school_a_policy(number).encode(), **{"If-Match": headers["ETag"]}
        )
        done.policy_version = int((await hub.wait_for(r"published version (\d+)", since))[1])
        for _ in range(5):  # a sync that began before the publish ended may find the version before
            done.synced_version = (await instance.json("POST", "/v1/sync"))["version"]
            if done.synced_version == done.policy_version:
                break
        if done.synced_version != done.policy_version:
            raise RuntimeError(f"synced version {done.synced_version}, published {done.policy_version}")
        deadline = time.monotonic() + 45
        for name in (FLIP_LIST, FLIP_POLICY):
            if await probe(dns_port, name, blocked=bool(number % 2), deadline=deadline):
                done.probes_right += 1
            else:
                done.probes_wrong += 1
    except (RuntimeError, SystemExit, TimeoutError, aiohttp.ClientError, dns.exception.DNSException) as exc:
        done.error = f"{type(exc).__name__}: {exc}"
    return done


def soakload_argv(dns_port: int) -> list[str]:
    return [sys.executable, str(ROOT / "tests/perf/soakload.py"), "--port", str(dns_port)]


async def capacity(work: Path, dns_port: int) -> tuple[float, float]:
    """The instance's qps as fast as it answers (closed loop), warm: with the soak's own load, which
    checks every answer, and with tests/perf/loadgen.py, which only counts them (for comparison)."""
    queries = work / "capacity.txt"
    names = [n for kind in (soakload.ALLOWED, soakload.BLOCKED, soakload.GAMES) for n in soakload.names(kind)]
    queries.write_text("".join(f"{name} A\n" for name in names))
    loadgen = [sys.executable, str(ROOT / "tests/perf/loadgen.py"), "--port", str(dns_port), "--queries", str(queries)]
    measured = []
    for argv in (
        [*loadgen, "--seconds", "3"],
        [*soakload_argv(dns_port), "--window", "8", "--seconds", str(CAPACITY_SECONDS)],
        [*loadgen, "--seconds", str(CAPACITY_SECONDS)],
    ):
        process = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, cwd=ROOT)
        out, _ = await process.communicate()
        if process.returncode:
            raise SystemExit(f"{argv[1]} failed")
        measured.append(float(json.loads(out.splitlines()[-1])["qps"]))
    return measured[1], measured[2]  # the first run fills the cache


def metric_sums(text: str) -> dict[str, float]:
    """A few of the instance's metrics, summed over their labels but the one kept."""
    sums: dict[str, float] = {}
    for match in re.finditer(r"^(schooldns_[a-z_]+)(\{[^}]*\})? (\S+)$", text, re.M):
        name, labels, value = match[1], match[2] or "", float(match[3])
        kept = re.search(r'(result|reason)="([^"]+)"', labels)
        if name in ("schooldns_queries_total", "schooldns_queries_dropped_total") and kept:
            key = f"{name}{{{kept[1]}={kept[2]}}}"
        elif name in ("schooldns_cache_entries", "schooldns_worker_restarts_total", "schooldns_cache_evictions_total"):
            key = name
        else:
            continue
        sums[key] = sums.get(key, 0.0) + value
    return sums


async def soak(args: argparse.Namespace) -> int:
    seconds = args.seconds
    round_every = min(60.0, seconds / 4)
    outage = min(30.0, seconds / 5)
    warm_up = min(60.0, seconds / 5)
    outage_from = seconds / 2 - outage / 2
    work = Path(tempfile.mkdtemp(prefix="schooldns-soak-"))
    print(f"soak: {seconds:.0f} s in {work}", flush=True)
    async with contextlib.AsyncExitStack() as stack:
        session = await stack.enter_async_context(aiohttp.ClientSession())
        authoritative = [sys.executable, "-u", str(ROOT / "tests/perf/authoritative.py"), "--port", "0"]
        upstream = await stack.enter_async_context(
            started(
                "upstream",
                [*authoritative, "--ttl", str(TTL), "--ttl-max", str(TTL_MAX)],
                work / "upstream.log",
                stdout=True,
            )
        )
        assert upstream.process.stdout is not None
        upstream_port = int((await upstream.process.stdout.readline()).split()[-1])

        # The hub: its files, its repository and keys, a province token, `schooldns serve` with publish:.
        hub_site = work / "hub"
        repo, keys = work / "repo", work / "keys"
        hub_config = write_site(
            hub_site,
            [f"127.0.0.1:{upstream_port}"],
            f"admin: {{listen: '127.0.0.1:0'}}\nreload: {{watch_interval_seconds: 0}}\n"
            f"publish: {{repository: '{repo}', keys: '{keys}'}}\n",
            SITE,
        )
        schooldns("bundle", "init", "--repo", str(repo), "--keys", str(keys))
        hub_token = schooldns("token", "add", "--config", str(hub_config), "--role", "province", "--name", "soak")
        hub = await stack.enter_async_context(
            started("hub", [*SCHOOLDNS, "serve", "--config", str(hub_config)], work / "hub.log")
        )
        hub_admin = Admin(session, int((await hub.wait_for(r"admin API on http://127\.0\.0\.1:(\d+)/"))[1]), hub_token)
        await hub.wait_for(r"published version \d+")
        server = await stack.enter_async_context(StaticServer(repo))

        # The instance under load, syncing from the hub's repository.
        site = work / "instance"
        config = write_site(
            site,
            [f"127.0.0.1:{upstream_port}"],
            f"workers: {args.workers}\nadmin: {{listen: '127.0.0.1:0'}}\ncache: {{max_entries: {CACHE_ENTRIES}}}\n"
            f"sync: {{repository: '{server.url}', trusted_root: '{repo / 'metadata' / '1.root.json'}', "
            "interval_seconds: 3600}\n",
        )
        # The defaults of forwarding (the site's 1 s timeout is for fast tests).
        config.write_text(config.read_text().replace("forwarding: {timeout_seconds: 1.0}\n", ""))
        token = schooldns("token", "add", "--config", str(config), "--role", "province", "--name", "soak")
        instance = await stack.enter_async_context(
            started("instance", [*SCHOOLDNS, "serve", "--config", str(config)], work / "instance.log")
        )
        pattern = r"serving DNS on 127\.0\.0\.1:(\d+)" if args.workers == 1 else r"serving DNS on ports \((\d+),"
        dns_port = int((await instance.wait_for(pattern))[1])
        admin = Admin(session, int((await instance.wait_for(r"admin API on http://127\.0\.0\.1:(\d+)/"))[1]), token)
        refused, _, _ = await admin.call(
            "PUT", "/v1/schools/school-a/policy", SCHOOL_A.encode(), **{"If-Match": "*"}
        )  # a synced instance takes no writes: they go to the hub

        measured, counted = await capacity(work, dns_port)
        rate = args.rate or measured / 2
        print(
            f"capacity {measured:,.0f} qps with every answer checked ({counted:,.0f} counted only, loadgen.py); "
            f"offering {rate:,.0f} qps for {seconds:.0f} s",
            flush=True,
        )

        load = await stack.enter_async_context(
            started(
                "load",
                [*soakload_argv(dns_port), "--rate", str(rate), "--seconds", str(seconds)],
                work / "load.log",
                stdout=True,
            )
        )
        assert load.process.stdout is not None
        t0 = json.loads(await load.process.stdout.readline())["started"]
        rss: list[dict[str, Any]] = []
        rounds: list[Round] = []
        outage_seen: list[float] = []

        async def sample_rss() -> None:
            """RSS of each process, the instance's cached answers, and the share of the time since the
            last sample that some task on this machine waited for a CPU (PSI): the other work the
            workers shared the cores with."""
            waited, at = cpu_pressure(), time.monotonic()
            while True:
                await asyncio.sleep(RSS_EVERY)
                pids = processes(instance.process.pid)
                now_waited, now = cpu_pressure(), time.monotonic()
                pressure = round((now_waited - waited) / (now - at) / 1e4, 1)
                waited, at = now_waited, now
                with contextlib.suppress(OSError):
                    sizes = {n: (p, rss_kb(p)) for n, p in pids.items()}
                    cached = metric_sums((await admin.call("GET", "/metrics"))[2]).get("schooldns_cache_entries", 0)
                    rss.append({"t": round(now - t0, 1), "cpu_pressure": pressure, "cached": cached, **sizes})

        async def until(at: float) -> None:
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))

        async def run_rounds() -> None:
            number = 1
            while number * round_every < seconds - 5:
                await until(number * round_every)
                done = await one_round(number, number * round_every, hub_site, hub, hub_admin, admin, dns_port)
                rounds.append(done)
                print(
                    f"  {done.at:5.0f} s round {number}: versions {done.list_version}/{done.policy_version} "
                    f"synced {done.synced_version}, probes {done.probes_right} right {done.probes_wrong} wrong"
                    + (f", {done.error}" if done.error else ""),
                    flush=True,
                )
                number += 1

        async def run_outage() -> None:
            await until(outage_from)
            upstream.process.send_signal(signal.SIGUSR1)
            outage_seen.append(time.monotonic() - t0)
            print(f"  {outage_seen[0]:5.0f} s upstream silent", flush=True)
            await until(outage_from + outage)
            upstream.process.send_signal(signal.SIGUSR2)
            outage_seen.append(time.monotonic() - t0)
            print(f"  {outage_seen[1]:5.0f} s upstream answers again", flush=True)

        async def progress() -> dict[str, Any]:
            assert load.process.stdout is not None
            while line := await load.process.stdout.readline():
                report = json.loads(line)
                if "totals" in report:
                    return report  # type: ignore[no-any-return]
                if int(report["t"]) % 30 == 0:
                    print(
                        f"  {report['t']:5.0f} s sent {report.get('sent', 0):,} answered {report.get('answered', 0):,}"
                        f" lost {report.get('lost', 0)} wrong {report.get('wrong', 0)}"
                        f" stale {report.get('stale', 0):,}",
                        flush=True,
                    )
            raise SystemExit(f"the load ended without its totals:\n{''.join(load.lines[-20:])}")

        sampler = asyncio.create_task(sample_rss())
        changes = asyncio.gather(run_rounds(), run_outage())
        result = await progress()
        await changes
        sampler.cancel()
        metrics = metric_sums((await admin.call("GET", "/metrics"))[2])
        metrics["listening sockets' receive buffer drops (/proc/net/udp)"] = udp_drops(dns_port)

    report = judge(
        result,
        rounds,
        rss,
        metrics,
        (measured, counted),
        rate,
        (warm_up, round_every),
        outage_seen,
        refused,
        args.workers,
    )
    report["work"] = str(work)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=1))
    return 1 if report["failed"] else 0


def judge(
    result: dict[str, Any],
    rounds: list[Round],
    rss: list[dict[str, Any]],
    metrics: dict[str, float],
    measured: tuple[float, float],
    rate: float,
    warm_up: tuple[float, float],
    outage: list[float],
    refused: int,
    workers: int,
) -> dict[str, Any]:
    totals = result["totals"]
    per_second = {int(second): counts for second, counts in result["per_second"].items()}
    timeout = 2.0  # forwarding.timeout_seconds (the default): a fresh name sent before the outage may fail in it
    during = range(int(outage[0] - timeout), int(outage[1]) + 1)
    fresh_servfail_outside = sum(c.get("servfail_fresh", 0) for s, c in per_second.items() if s not in during)
    stale_in_outage = sum(c.get("stale", 0) for s, c in per_second.items() if s in during)
    last = rss[-1]

    def growth_from(base: dict[str, Any]) -> dict[str, tuple[int, int, float]]:
        """(KB at `base`, KB at the end, percent) of each process there in both with the same PID."""
        return {
            name: (pid_kb[1], last[name][1], (last[name][1] - pid_kb[1]) / pid_kb[1] * 100)
            for name, pid_kb in base.items()
            if isinstance(pid_kb, list | tuple) and name in last and last[name][0] == pid_kb[0]
        }

    # The steady state: the cache at its bound (workers x CACHE_ENTRIES), and a round past the outage.
    first_minute, round_every = warm_up
    full_at = next((s["t"] for s in rss if s.get("cached", 0) >= workers * CACHE_ENTRIES), None)
    steady_from = max(first_minute, outage[1] + round_every, full_at if full_at is not None else float("inf"))
    warm = next(sample for sample in rss if sample["t"] >= first_minute)
    steady = next((sample for sample in rss if sample["t"] >= steady_from), None)
    growth = growth_from(steady) if steady is not None and steady is not last else {}
    since_warm = growth_from(warm)
    peak = {name: max(sample[name][1] for sample in rss if name in sample) for name in since_warm}
    pressures = [sample["cpu_pressure"] for sample in rss]
    lossy = [second for second, counts in per_second.items() if counts.get("lost")]
    around_losses = ", ".join(
        f"{sample['cpu_pressure']:.0f}% at {sample['t']:.0f} s"
        for sample in rss
        if any(0 <= sample["t"] - second <= 2 * RSS_EVERY for second in lossy)
    )
    syncs = sum(1 for r in rounds if r.synced_version is not None and r.synced_version == r.policy_version)
    checks = [
        ("no query lost (no answer within 5 s)", totals.get("lost", 0) == 0),
        ("no wrong answer", totals.get("wrong", 0) == 0),
        ("no SERVFAIL for a cached name", totals.get("servfail_fixed", 0) == 0),
        ("SERVFAIL for fresh names only in the outage", fresh_servfail_outside == 0),
        ("stale answers served in the outage", stale_in_outage > 0),
        ("every round: list and policy published, synced, probes right", all(r.error is None for r in rounds)),
        ("no probe answered wrong", sum(r.probes_wrong for r in rounds) == 0),
        ("the synced instance refused the write (409)", refused == 409),
        (
            "no worker restarted",
            metrics.get("schooldns_worker_restarts_total", 0) == 0 and len(since_warm) == workers + 1,
        ),
        (
            f"RSS growth under {RSS_GROWTH_LIMIT:.0f}% in the steady state (cache full, a round past the outage)",
            len(growth) == workers + 1 and all(g[2] < RSS_GROWTH_LIMIT for g in growth.values()),
        ),
    ]
    answered = totals.get("answered", 0)
    lines = [
        "| figure | value |",
        "|---|---|",
        f"| capacity ({CAPACITY_SECONDS:.0f} s, warm, closed loop) | {measured[0]:,.0f} qps with every answer checked "
        f"(tests/perf/soakload.py); {measured[1]:,.0f} qps counted only (tests/perf/loadgen.py) |",
        f"| offered | {rate:,.0f} qps for {result['seconds']:.0f} s: {totals.get('sent', 0):,} queries |",
        f"| answered | {answered:,} (right {totals.get('right', 0):,}, stale {totals.get('stale', 0):,}, "
        f"SERVFAIL {totals.get('servfail_fresh', 0) + totals.get('servfail_fixed', 0):,}) |",
        f"| lost (no answer in 5 s) | {totals.get('lost', 0):,} |",
        f"| wrong | {totals.get('wrong', 0):,} |",
        f"| slowest answer | {result['worst_wait_seconds'] * 1000:,.0f} ms |",
        f"| outage | {outage[0]:.0f} s to {outage[1]:.0f} s: {stale_in_outage:,} stale answers (EDE 3), "
        f"{totals.get('servfail_fresh', 0):,} SERVFAIL for fresh names, {totals.get('servfail_fixed', 0)} for cached |",
        f"| rounds | {len(rounds)}: {2 * len(rounds)} versions published (a list change, a policy write each), "
        f"{syncs} syncs, {sum(r.probes_right for r in rounds)} probe checks right, "
        f"{sum(r.probes_wrong for r in rounds)} wrong |",
        f"| cache | at its bound ({workers * CACHE_ENTRIES:,} answers) "
        + (f"from {full_at:.0f} s" if full_at is not None else "never")
        + (f"; steady state from {steady['t']:.0f} s |" if steady is not None else "; no steady state |"),
        *(
            f"| RSS {name} | {kb0 / 1024:.1f} MB at {warm['t']:.0f} s, {kb1 / 1024:.1f} MB at {last['t']:.0f} s "
            f"({pct:+.1f}%)"
            + (
                f"; steady state {growth[name][0] / 1024:.1f} MB at {steady['t']:.0f} s ({growth[name][2]:+.1f}%)"
                if steady is not None and name in growth
                else ""
            )
            + f"; peak {peak[name] / 1024:.1f} MB |"
            for name, (kb0, kb1, pct) in sorted(since_warm.items())
        ),
        f"| CPU pressure (PSI some, 5 s samples) | mean {sum(pressures) / max(1, len(pressures)):.0f}%, "
        f"max {max(pressures, default=0):.0f}%"
        + (f"; around the losses {around_losses}" if around_losses else "")
        + " |",
        "| instance metrics at the end | "
        + ", ".join(f"{key} {value:,.0f}" for key, value in sorted(metrics.items()))
        + " |",
    ]
    print("\n".join(lines))
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    for example in result["wrong_examples"][:5]:
        print(f"  wrong: {example}")
    for r in rounds:
        if r.error:
            print(f"  round {r.number}: {r.error}")
    failed = [name for name, ok in checks if not ok]
    print("soak: " + ("FAILED: " + "; ".join(failed) if failed else "passed"), flush=True)
    return {
        "failed": failed,
        "table": lines,
        "load": result,
        "rounds": [dataclasses.asdict(r) for r in rounds],
        "rss": rss,
        "metrics": metrics,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=0.0, help="offer this many qps (default: half of capacity)")
    parser.add_argument("--output", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.seconds < 20:
        parser.error("--seconds must be at least 20")
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
