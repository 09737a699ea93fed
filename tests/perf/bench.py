"""End-to-end benchmark: schooldns (and unbound / pdns-recursor / dnsmasq baselines) under dnsperf on loopback.

    make bench                                   # 1M-entry list, 10 s runs, medians of 3, baselines
    .venv/bin/python tests/perf/bench.py --quick --skip-baselines --output /tmp/perf.md
    .venv/bin/python tests/perf/bench.py --tools-only   # install dnsperf, unbound, pdns-recursor, dnsmasq-base (root)

Everything is generated from --seed in a temporary work directory: a blocklist of --entries
domains (one category, `adult`, format `domains`, subtree match), a query file with 85% allowed
and 15% blocked names (dnsperf's `name A` lines), two files made from its lines
(tests/perf/workloads.py): every name in a letter case of its own (DNS 0x20), and a mix where
30% of the queries carry a DNS cookie (dnsperf's binary input), and files of names no server has
seen (100% cache miss; one file per run, so each run asks new names). A small authoritative
server (tests/perf/authoritative.py) is the upstream of every resolver: it answers any A query
with 192.0.2.x, TTL 3600.

Each server under test is pinned to core 0 with taskset; dnsperf and the upstream share core 1.
Per server: time from start to first answer (schooldns: --runs cold starts, each compiling the
list into an empty state_dir, then --runs warm ones from the compiled index; medians reported),
one pass over the query file to warm the cache, --runs throughput runs at maximum rate of each
warm workload (byte-identical, 0x20, cookie mix; medians reported), three fixed-rate latency
runs with dnsperf -v (per-query latencies -> p50/p99/p99.9; also checks every answer's rcode),
the resident memory, and --runs 100%-miss runs (medians reported). The max-rate runs and the
miss runs are interleaved across the servers (run 1 of every server, then run 2, ...), so that
on a noisy machine each ratio compares the same stretch of time. Then schooldns with one worker
on one core against two workers on two cores, tests/perf/loadgen.py sharing the cores with them
(there is no third; docs/performance.md, step 8). Then tests/perf/bench_domains.py (the domain
index micro benchmark). The report goes between `<!-- bench:begin -->` and `<!-- bench:end -->` in --output
(docs/performance.md by default) and to stdout. Nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import workloads  # noqa: E402

VENV_BIN = Path(sys.executable).parent
SCHOOLDNS = VENV_BIN / "schooldns"
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"

SERVER_CORE, LOAD_CORE = "0", "1"  # main() takes the first two CPUs this process may use
BLOCKED_SHARE = 0.15
SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
SERVERS = ("schooldns", "unbound-localzone", "unbound-rpz", "pdns-recursor", "dnsmasq")

#: tool -> Debian package (dnsmasq-base is the binary without the system service)
PACKAGES = {
    "dnsperf": "dnsperf",
    "taskset": "util-linux",
    "unbound": "unbound",
    "pdns_recursor": "pdns-recursor",
    "dnsmasq": "dnsmasq-base",
}
#: baseline server -> the tool it runs
SERVER_TOOLS = {
    "unbound-localzone": "unbound",
    "unbound-rpz": "unbound",
    "pdns-recursor": "pdns_recursor",
    "dnsmasq": "dnsmasq",
}
BASELINE_TOOLS = tuple(sorted(set(SERVER_TOOLS.values())))
SYSTEM_SERVICES = ("unbound", "pdns-recursor", "dnsmasq")  # what the packages may start; disabled after install

# The 0x20 and cookie files hold at least this rate times --seconds lines, and a line sent within
# this rate times TWIN_SECONDS lines after the same bytes counts as a twin (tests/perf/workloads.py).
VARIANT_RATE = 200_000
TWIN_SECONDS = 10


class BenchError(Exception):
    """A step failed: the message says which and why."""


# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------


def which(tool: str) -> str | None:
    found = shutil.which(tool)
    if found:
        return found
    for directory in SBIN:
        candidate = Path(directory) / tool
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def ensure_tools(tools: list[str]) -> dict[str, str]:
    """Paths of the tools; missing ones installed with apt-get as root, else exit with a message."""
    missing = [tool for tool in tools if which(tool) is None]
    if missing:
        packages = sorted({PACKAGES[tool] for tool in missing})
        if os.geteuid() != 0:
            hint = " (or pass --skip-baselines)" if set(missing) <= set(BASELINE_TOOLS) else ""
            raise BenchError(
                f"missing tools: {', '.join(missing)}; install the Debian packages "
                f"{' '.join(packages)} as root (`make bench-tools`){hint}"
            )
        if shutil.which("apt-get") is None:
            raise BenchError(
                f"missing tools: {', '.join(missing)}, and no apt-get to install {' '.join(packages)} with"
            )
        print(f"bench: installing {' '.join(packages)} with apt-get", flush=True)
        apt_install(packages)
        still = [tool for tool in tools if which(tool) is None]
        if still:
            raise BenchError(f"apt-get install {' '.join(packages)} did not provide {', '.join(still)}")
    return {tool: str(which(tool)) for tool in tools}


def apt_install(packages: list[str]) -> None:
    """apt-get install without starting any daemon the packages ship (and disable it if one exists)."""
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():  # tells invoke-rc.d not to start services during the install
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env, stdout=subprocess.DEVNULL)
    except subprocess.CalledProcessError as exc:
        raise BenchError(f"apt-get failed: {exc}") from None
    finally:
        if made_policy:
            policy.unlink()
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        for service in SYSTEM_SERVICES:
            subprocess.run(
                ["systemctl", "disable", "--now", service],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )


def tool_version(path: str, tool: str) -> str:
    flag = {"unbound": "-V", "dnsmasq": "--version", "dnsperf": "-h"}.get(tool, "--version")
    out = subprocess.run([path, flag], capture_output=True, text=True, check=False)
    text = out.stdout + out.stderr
    match = re.search(r"(?:[Vv]ersion|Recursor)\s+(\d[\w.\-~+]*)", text)
    return match.group(1) if match else "?"


class MachineUse:
    """How much of the benchmark's cores others took while it ran: processes not its own, and the hypervisor.

    From /proc/stat (the cores' busy and steal time) and this process's resource usage with its
    children's (every process the benchmark started has been waited for when summary() is asked).
    """

    def __init__(self, cores: list[int]):
        self.cores = cores
        self.started = time.monotonic()
        self.load_at_start = os.getloadavg()[0]
        self.busy, self.steal = self._cores()
        self.ours = self._ours()

    def _cores(self) -> tuple[float, float]:
        """Busy and stolen seconds of the cores so far."""
        tick = os.sysconf("SC_CLK_TCK")
        busy = steal = 0
        for line in Path("/proc/stat").read_text().splitlines():
            fields = line.split()
            if fields[0] in {f"cpu{core}" for core in self.cores}:
                user, nice, system, _idle, _iowait, irq, softirq, stolen = map(int, fields[1:9])
                busy += user + nice + system + irq + softirq
                steal += stolen
        return busy / tick, steal / tick

    @staticmethod
    def _ours() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

    def summary(self) -> str:
        elapsed = (time.monotonic() - self.started) * len(self.cores)
        busy, steal = self._cores()
        others = max(0.0, busy - self.busy - (self._ours() - self.ours))
        cores = ",".join(map(str, self.cores))
        return (
            f"While it ran, other processes took {others / elapsed:.0%} of cores {cores} and the hypervisor "
            f"{(steal - self.steal) / elapsed:.0%} (/proc/stat); load average {self.load_at_start:.1f} at the "
            f"start, {os.getloadavg()[0]:.1f} at the end."
        )


def schooldns_build() -> str:
    """The measured command's `--version`: whether its hot modules run compiled (make compiled) or from source."""
    version = subprocess.run([str(SCHOOLDNS), "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    return version if "compiled" in version else f"{version or 'schooldns'} (pure Python)"


def machine_info(tools: dict[str, str]) -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB",
        "schooldns": schooldns_build(),
    }
    for tool in ("dnsperf", *BASELINE_TOOLS):
        if tool in tools:
            info[tool] = tool_version(tools[tool], tool)
    return info


# ---------------------------------------------------------------------------------------------
# Generated data
# ---------------------------------------------------------------------------------------------


class Workload(NamedTuple):
    """A query file of max-rate runs on a warm cache (every one of its lines asks a name of the query file)."""

    key: str  # identical, 0x20, cookies
    title: str
    path: Path
    binary: bool  # dnsperf -B (raw messages), else `name TYPE` lines


@dataclass
class Data:
    work: Path
    blocklist: Path  # one name per line
    queries: Path  # dnsperf input, 85% allowed / 15% blocked
    misses: list[Path]  # dnsperf inputs, one per miss run: names never asked before
    names: list[str]  # the listed names
    expected: dict[str, str]  # query name -> rcode every server must answer
    query_count: int
    blocked_queries: int
    miss_count: int  # names per miss file
    blocked_before: list[int]  # blocked_before[i]: blocked lines among the query file's first i
    case_queries: Path  # the query file's lines, pass after pass, each name in a letter case of its own
    case: workloads.Written
    cookie_queries: Path  # the same passes, COOKIE_SHARE of them with a DNS cookie (dnsperf -B)
    cookie: workloads.Written
    workloads: list[Workload] = field(default_factory=list)

    def blocked_in(self, lines: int) -> int:
        """Blocked queries among the first `lines` lines of any workload file (whole passes over the query file)."""
        passes, rest = divmod(lines, self.query_count)
        return passes * self.blocked_queries + self.blocked_before[rest]


def listed(name: str, blocked: set[str]) -> bool:
    """True if the name or any parent is in the list (every entry matches its subtree)."""
    while True:
        if name in blocked:
            return True
        dot = name.find(".")
        if dot < 0:
            return False
        name = name[dot + 1 :]


def generate(
    work: Path, entries: int, queries: int, misses: int, miss_files: int, seed: int, variant_lines: int = 0
) -> Data:
    """The blocklist, the query file, the miss files and (from the query file) the 0x20 and cookie files.

    The 0x20 and cookie files are made with random generators of their own, so the other files
    are byte for byte what they were before those existed.
    """
    from bench_domains import SUBDOMAINS, NameMaker  # the colleague's seeded name generator

    rng = random.Random(seed)
    maker = NameMaker(rng)
    names: list[str] = []
    blocked: set[str] = set()
    while len(names) < entries:
        name = maker.name()
        if name not in blocked:
            blocked.add(name)
            names.append(name)
    # A listed name's parent may be listed too; that only makes the list more realistic.
    blocklist = work / "adult.txt"
    with open(blocklist, "w", encoding="ascii") as file:
        file.write(f"# schooldns benchmark list: {entries} generated names, seed {seed}\n")
        file.writelines(f"{name}\n" for name in names)

    def allowed_name() -> str:
        while True:
            name = maker.name()
            if not listed(name, blocked):
                return name

    expected: dict[str, str] = {}
    lines: list[str] = []
    blocked_count = 0
    blocked_before = [0]
    for _ in range(queries):
        if rng.random() < BLOCKED_SHARE:
            name = rng.choice(names)
            if rng.random() < 0.5:  # a name under a listed one (subtree match)
                name = f"{rng.choice(SUBDOMAINS)}.{name}"
            expected[name] = "NXDOMAIN"
            blocked_count += 1
        else:
            name = allowed_name()
            expected.setdefault(name, "NOERROR")
        lines.append(f"{name} A\n")
        blocked_before.append(blocked_count)
    query_file = work / "queries.txt"
    query_file.write_text("".join(lines), encoding="ascii")

    miss_paths = []
    number = 0
    for part in range(1, miss_files + 1):
        miss_lines = []
        while len(miss_lines) < misses:  # a unique first label: no server can have it cached
            name = f"m{number}-{allowed_name()}"
            number += 1
            if not listed(name, blocked):
                miss_lines.append(f"{name} A\n")
        miss_paths.append(work / f"misses-{part}.txt")
        miss_paths[-1].write_text("".join(miss_lines), encoding="ascii")

    asked = workloads.read_queries(query_file)
    variant_lines = max(variant_lines, queries)
    window = VARIANT_RATE * TWIN_SECONDS
    case_file, cookie_file = work / "queries-0x20.txt", work / "queries-cookies.bin"
    case = workloads.write_case_file(case_file, asked, variant_lines, seed, window)
    cookie = workloads.write_cookie_file(cookie_file, asked, variant_lines, seed, window)
    data = Data(
        work,
        blocklist,
        query_file,
        miss_paths,
        names,
        expected,
        queries,
        blocked_count,
        misses,
        blocked_before=blocked_before,
        case_queries=case_file,
        case=case,
        cookie_queries=cookie_file,
        cookie=cookie,
    )
    data.workloads = [
        Workload("identical", "warm, byte-identical repeats", query_file, False),
        Workload("0x20", "warm, 0x20 mixed case", case_file, False),
        Workload("cookies", f"warm, {workloads.COOKIE_SHARE:.0%} with a DNS cookie", cookie_file, True),
    ]
    return data


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                    tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise BenchError("no free port on 127.0.0.1")


class Proc:
    """A process we started in its own session (process group), logging to a file."""

    running: ClassVar[list[Proc]] = []

    def __init__(self, name: str, argv: list[str], log: Path, cwd: Path | None = None):
        self.name = name
        self.argv = argv
        self.log_path = log
        self.log = open(log, "ab")  # noqa: SIM115 (open for the process's life; closed in stop())
        self.popen = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True
        )
        Proc.running.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def status_kb(self) -> dict[str, int]:
        """VmRSS / VmHWM (peak RSS) of the process, in kB."""
        out = {}
        try:
            with open(f"/proc/{self.pid}/status") as file:
                for line in file:
                    key, _, value = line.partition(":")
                    if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                        out[key] = int(value.split()[0])
        except OSError:
            pass
        return out

    def cpu_stat(self) -> tuple[int, float, float]:
        """(minor page faults, user CPU seconds, system CPU seconds) of the process so far."""
        return cpu_stat(self.pid)

    def family(self) -> list[int]:
        """This process and its descendants, parents first (a supervisor, its spawner, the workers)."""
        return descendants(self.pid)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)
        else:  # the leader is gone; its group may not be
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self.log.close()
        if self in Proc.running:
            Proc.running.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for proc in list(reversed(cls.running)):
            proc.stop()


def admin_port(directory: Path) -> int | None:
    """The admin API's port in the schooldns config of `directory` (None: no admin API there)."""
    match = re.search(r"admin: \{listen: \"127.0.0.1:(\d+)\"\}", (directory / "config.yaml").read_text())
    return int(match.group(1)) if match else None


def wait_admin(directory: Path, proc: Proc, timeout: float) -> None:
    """Until schooldns' admin API answers /healthz: it starts after the first DNS answer, and
    memory "after start" includes it."""
    port = admin_port(directory)
    if port is None:
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except OSError:
            if not proc.alive() or time.monotonic() > deadline:
                raise BenchError(
                    f"{proc.name}: the admin API did not answer within {timeout:.0f}s; log:\n{proc.tail()}"
                ) from None
        time.sleep(0.005)


def wait_answer(port: int, proc: Proc, started: float, timeout: float) -> float:
    """Seconds from `started` until the server gives a NOERROR answer with an A record."""
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    attempt = 0
    while True:
        if not proc.alive():
            raise BenchError(
                f"{proc.name} exited with code {proc.popen.returncode} before answering;"
                f" log {proc.log_path}:\n{proc.tail()}"
            )
        if time.monotonic() - started > timeout:
            raise BenchError(f"{proc.name} did not answer within {timeout:.0f}s; log:\n{proc.tail()}")
        attempt += 1
        query = dns.message.make_query(f"probe{attempt}.bench-ready.example", "A")
        try:
            # A short wait per probe: a probe sent before the socket is bound is lost, and the
            # start is read to within about this much.
            reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=0.05)
            if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                return time.monotonic() - started
        except (dns.exception.DNSException, OSError):
            pass
        time.sleep(0.005)


# ---------------------------------------------------------------------------------------------
# dnsperf
# ---------------------------------------------------------------------------------------------


@dataclass
class Perf:
    command: list[str]
    qps: float = 0.0
    sent: int = 0
    completed: int = 0
    lost: int = 0
    run_seconds: float = 0.0
    avg_latency_ms: float = 0.0
    max_latency_ms: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    answers: dict[str, str] = field(default_factory=dict, repr=False)  # name -> rcode seen (-v)

    def percentile(self, fraction: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


_VERBOSE_LINE = re.compile(r"^> (\S+) (\S+) \S+ ([0-9.]+)$")


def dnsperf(
    tools: dict[str, str],
    port: int,
    data_file: Path,
    *,
    seconds: float | None,
    clients: int,
    qps: int | None = None,
    once: bool = False,
    verbose: bool = False,
    cores: str | None = None,
    binary: bool = False,
) -> Perf:
    command = [
        "taskset",
        "-c",
        cores or LOAD_CORE,
        tools["dnsperf"],
        "-s",
        "127.0.0.1",
        "-p",
        str(port),
        "-d",
        str(data_file),
        "-c",
        str(clients),
        "-T",
        "1",
        "-q",
        "100",
        "-t",
        "2",
    ]
    if seconds is not None:
        command += ["-l", f"{seconds:g}"]
    if once:
        command += ["-n", "1"]
    if qps:
        command += ["-Q", str(qps)]
    if verbose:
        command += ["-v"]
    if binary:  # messages as written (dnsperf puts in its IDs); -v then names no query
        command += ["-B"]
    limit = (seconds or 300) + 60
    # Output goes to a file, not a pipe: nothing of ours has to run while dnsperf does.
    with tempfile.TemporaryFile("w+", prefix="dnsperf-") as output:
        try:
            done = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            raise BenchError(f"dnsperf did not finish within {limit:.0f}s: {shlex.join(command)}") from None
        output.seek(0)
        text = output.read()
    if done.returncode != 0:
        raise BenchError(f"dnsperf failed ({done.returncode}): {shlex.join(command)}\n{text[-2000:]}")
    perf = parse_dnsperf(text, command)
    if verbose:
        for line in text.splitlines():
            match = _VERBOSE_LINE.match(line)
            if match:
                rcode, name, seconds_text = match.groups()
                perf.latencies_ms.append(float(seconds_text) * 1000)
                if not binary:
                    perf.answers.setdefault(name.lower().rstrip("."), rcode)
    return perf


def parse_dnsperf(text: str, command: list[str]) -> Perf:
    def number(pattern: str) -> float:
        match = re.search(pattern, text)
        if not match:
            raise BenchError(f"cannot read {pattern!r} in dnsperf output:\n{text[-2000:]}")
        return float(match.group(1))

    perf = Perf(command)
    perf.sent = int(number(r"Queries sent:\s+(\d+)"))
    perf.completed = int(number(r"Queries completed:\s+(\d+)"))
    perf.lost = int(number(r"Queries lost:\s+(\d+)"))
    perf.run_seconds = number(r"Run time \(s\):\s+([0-9.]+)")
    perf.qps = number(r"Queries per second:\s+([0-9.]+)")
    perf.avg_latency_ms = number(r"Average Latency \(s\):\s+([0-9.]+)") * 1000
    perf.max_latency_ms = number(r"Average Latency \(s\):.*max ([0-9.]+)") * 1000
    codes = re.search(r"Response codes:\s+(.*)", text)
    if codes:
        for rcode, count in re.findall(r"([A-Z]+) (\d+) \(", codes.group(1)):
            perf.rcodes[rcode] = int(count)
    return perf


# ---------------------------------------------------------------------------------------------
# Servers under test
# ---------------------------------------------------------------------------------------------


@dataclass
class Server:
    key: str  # schooldns, unbound-localzone, unbound-rpz, dnsmasq
    title: str
    prepare: Callable[[Path, int], list[str]]  # (its directory, its port) -> argv; writes its config
    warm_start: bool = False  # restart once to time a start from the state it left


def prepare_schooldns(directory: Path, data: Data, port: int, upstream: int) -> list[str]:
    (directory / "blocklists" / "adult").mkdir(parents=True)
    (directory / "policies").mkdir()
    os.link(data.blocklist, directory / "blocklists" / "adult" / "bench.txt")
    (directory / "blocklists" / "sources.yaml").write_text(
        "# Generated by tests/perf/bench.py.\ncategories:\n  adult:\n"
        "    description: Generated benchmark list.\n    sources:\n"
        "      - {file: adult/bench.txt, format: domains}\n"
    )
    (directory / "policies" / "province.yaml").write_text(
        "# Generated by tests/perf/bench.py.\nmandatory: []\ntimezone: Asia/Ho_Chi_Minh\n"
        'info_url: "http://blocked.example.vn/"\nblocked_ttl_seconds: 60\naction: nxdomain\n'
        "safe_search: false\nbypass_prevention: false\nprofiles:\n  bench: {block: []}\n"
    )
    (directory / "policies" / "bench-school.yaml").write_text(
        "# Generated by tests/perf/bench.py: the loopback clients are this school.\n"
        'id: bench-school\nname: "Benchmark school"\nlevel: bench\nnetworks: [127.0.0.0/8]\n'
        "block: [adult]\n"
    )
    admin_listen_port = free_port()
    (directory / "config.yaml").write_text(
        "# Generated by tests/perf/bench.py.\nversion: 1\n"
        f'listen: ["127.0.0.1:{port}"]\nupstreams: ["127.0.0.1:{upstream}"]\nworkers: 1\n'
        "policies_dir: policies\nblocklists_dir: blocklists\n"
        f'state_dir: state\nadmin: {{listen: "127.0.0.1:{admin_listen_port}"}}\n'
    )
    return ["taskset", "-c", SERVER_CORE, str(SCHOOLDNS), "serve", "--config", str(directory / "config.yaml")]


def prepare_unbound(
    directory: Path, data: Data, port: int, upstream: int, rpz: bool, tools: dict[str, str]
) -> list[str]:
    modules = "respip iterator" if rpz else "iterator"
    conf = [
        "# Generated by tests/perf/bench.py.",
        "server:",
        f"  interface: 127.0.0.1@{port}",
        f"  port: {port}",
        "  do-ip6: no",
        "  num-threads: 1",
        "  so-reuseport: no",
        "  do-daemonize: no",
        '  username: ""',
        '  chroot: ""',
        f'  directory: "{directory}"',
        '  pidfile: ""',
        "  use-syslog: no",
        '  logfile: ""',
        "  verbosity: 0",
        "  log-queries: no",
        f'  module-config: "{modules}"',
        "  do-not-query-localhost: no",
        "  qname-minimisation: no",
        "  prefetch: no",
        "  minimal-responses: yes",
        "  access-control: 127.0.0.0/8 allow",
        "  msg-cache-size: 64m",
        "  rrset-cache-size: 128m",
    ]
    if rpz:
        conf += ["rpz:", "  name: rpz.bench.", f'  zonefile: "{rpz_zone(data)}"', "  rpz-log: no"]
    else:
        zones = directory / "local-zones.conf"
        with open(zones, "w", encoding="ascii") as file:
            file.write("server:\n")
            file.writelines(f'  local-zone: "{name}." always_nxdomain\n' for name in data.names)
        conf.append(f'  include: "{zones}"')
    conf += ["forward-zone:", '  name: "."', f"  forward-addr: 127.0.0.1@{upstream}"]
    (directory / "unbound.conf").write_text("\n".join(conf) + "\n")
    return ["taskset", "-c", SERVER_CORE, tools["unbound"], "-d", "-p", "-c", str(directory / "unbound.conf")]


def rpz_zone(data: Data) -> Path:
    """The list as an RPZ zone (NXDOMAIN for each name and below), written once for every server that reads one."""
    zone = data.work / "rpz.zone"
    if not zone.exists():
        with open(zone, "w", encoding="ascii") as file:
            file.write("$TTL 60\n@ SOA localhost. hostmaster.localhost. 1 3600 600 86400 60\n@ NS localhost.\n")
            for name in data.names:
                file.write(f"{name} CNAME .\n*.{name} CNAME .\n")
    return zone


def prepare_pdns_recursor(directory: Path, data: Data, port: int, upstream: int, tools: dict[str, str]) -> list[str]:
    """pdns-recursor with one thread that reads its own socket, the list as an RPZ zone, everything forwarded."""
    (directory / "rpz.lua").write_text(f'rpzFile("{rpz_zone(data)}", {{policyName="bench"}})\n')
    conf = [
        "# Generated by tests/perf/bench.py.",
        "local-address=127.0.0.1",
        f"local-port={port}",
        "allow-from=127.0.0.0/8",
        "threads=1",
        "pdns-distributes-queries=no",
        "reuseport=no",
        "daemon=no",
        "write-pid=no",
        f"socket-dir={directory}",
        f"lua-config-file={directory / 'rpz.lua'}",
        f"forward-zones-recurse=.=127.0.0.1:{upstream}",
        "dnssec=off",
        "qname-minimization=no",
        "security-poll-suffix=",
        "quiet=yes",
        "disable-syslog=yes",
        "loglevel=4",
    ]
    (directory / "recursor.conf").write_text("\n".join(conf) + "\n")
    return ["taskset", "-c", SERVER_CORE, tools["pdns_recursor"], f"--config-dir={directory}"]


def prepare_dnsmasq(directory: Path, data: Data, port: int, upstream: int, tools: dict[str, str]) -> list[str]:
    blocked = directory / "blocked.conf"
    with open(blocked, "w", encoding="ascii") as file:
        file.writelines(f"address=/{name}/\n" for name in data.names)  # NXDOMAIN for name and below
    conf = [
        "# Generated by tests/perf/bench.py.",
        f"port={port}",
        "listen-address=127.0.0.1",
        "bind-interfaces",
        "no-resolv",
        "no-hosts",
        "no-poll",
        f"server=127.0.0.1#{upstream}",
        "cache-size=200000",
        "dns-forward-max=10000",
        "user=",
        "group=",
        "pid-file=",
        "log-facility=-",
        f"conf-file={blocked}",
    ]
    if os.geteuid() != 0:
        conf = [line for line in conf if not line.startswith(("user=", "group="))]
    (directory / "dnsmasq.conf").write_text("\n".join(conf) + "\n")
    return ["taskset", "-c", SERVER_CORE, tools["dnsmasq"], "-k", "-C", str(directory / "dnsmasq.conf")]


# ---------------------------------------------------------------------------------------------
# Measuring one server
# ---------------------------------------------------------------------------------------------


class ScalingServer(NamedTuple):
    """One schooldns of step 8: how many workers, its worker_spread, and the share of a core each worker gets.

    `core_share` None: the workers have the cores as they come, shared with the load generator.
    A number: each worker is pinned to a core of its own and held to that share of it by a CPU
    quota (HeldWorkers), so the load generator always has the rest and never takes a worker's time.
    """

    workers: int
    spread: str
    core_share: float | None = None


# Step 8's servers, by label
SCALING_SERVERS = {
    "1": ScalingServer(1, "client"),
    "2": ScalingServer(2, "client"),
    "2 random": ScalingServer(2, "random"),
    "1 half": ScalingServer(1, "client", 0.5),
    "2 half": ScalingServer(2, "client", 0.5),
}
QUOTA_PERIOD_US = 10_000  # a held worker waits at most a few ms for its quota: far under loadgen's SILENCE


class HeldWorkers:
    """Worker processes held to a share of a core each: pinned to it, in a cgroup of their own with a CPU quota.

    Uses cgroup v2 (cpu.max) where the cpu controller is enabled for child groups, else the v1 cpu
    hierarchy (cpu.cfs_quota_us). The groups are made beside this process's and removed by
    release(), once their processes are gone. Needs root; the OSError says why it cannot.
    """

    V2, V1 = Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/cpu")

    def __init__(self) -> None:
        self.groups: list[Path] = []

    @classmethod
    def hierarchy(cls) -> tuple[Path, int]:
        """The root of a writable cgroup hierarchy with the cpu controller, and its version."""
        try:
            v2_children = (cls.V2 / "cgroup.subtree_control").read_text().split()
        except OSError:
            v2_children = []
        if "cpu" in v2_children:
            root, version = cls.V2, 2
        elif (cls.V1 / "cpu.cfs_quota_us").exists():
            root, version = cls.V1, 1
        else:
            raise OSError(f"no cgroup cpu controller for child groups under {cls.V2}")
        if not os.access(root, os.W_OK):
            raise OSError(f"{root} is not writable (run as root)")
        return root, version

    def hold(self, pid: int, core: str, share: float, name: str) -> None:
        """Pin every thread of `pid` to `core` and give it `share` of that core's time."""
        root, version = self.hierarchy()
        group = root / f"schooldns-bench-{os.getpid()}-{name}"
        group.mkdir()
        self.groups.append(group)
        quota = round(QUOTA_PERIOD_US * share)
        if version == 2:
            (group / "cpu.max").write_text(f"{quota} {QUOTA_PERIOD_US}")
        else:
            (group / "cpu.cfs_period_us").write_text(str(QUOTA_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        (group / "cgroup.procs").write_text(str(pid))
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), {int(core)})

    def release(self) -> None:
        for group in self.groups:
            with contextlib.suppress(OSError):
                group.rmdir()
        self.groups.clear()


@dataclass
class Scaling:
    """schooldns with 1 worker on 1 core and with 2 workers on 2 cores, the load generator sharing them.

    Keys are the labels of SCALING_SERVERS. "light" is tests/perf/loadgen.py, run at each of
    LIGHT_WINDOWS and the best median kept (its max rate); its CPU figures are from the runs at
    that window.
    """

    light_qps: dict[str, float] = field(default_factory=dict)  # median of the best window's runs
    light_window: dict[str, int] = field(default_factory=dict)
    light_all: dict[str, dict[int, list[float]]] = field(default_factory=dict)  # label -> window -> qps
    light_cpu_per_answer: dict[str, float] = field(default_factory=dict)  # loadgen's own CPU s / answer
    server_cpu_per_answer: dict[str, float] = field(default_factory=dict)  # all server processes' CPU s / answer
    # two workers: the busier worker's share of the queries in each run (loadgen's ports are new
    # each run, and the kernel hashes them anew), median over the runs at the window kept; and
    # the busier worker's share of the workers' CPU time in those runs
    query_share: dict[str, float] = field(default_factory=dict)
    busiest_share: dict[str, float] = field(default_factory=dict)
    processes: list[dict[str, float]] = field(default_factory=list)  # "2": name, CPU s, Pss, Pss_Anon
    start_pss: dict[str, float] = field(default_factory=dict)  # total Pss (kB) right after start
    # servers whose workers were held to a share of a core: the least of the workers' CPU time
    # over what their quota allowed in the runs kept (near 1: saturated); or why none could be held
    quota_use: dict[str, float] = field(default_factory=dict)
    quota_error: str | None = None

    def ratio(self, label: str, base: str = "1") -> float:
        return self.light_qps[label] / self.light_qps[base]

    def dedicated_estimate(self, label: str) -> float | None:
        """Two workers on two cores of their own, against one, from CPU time per answer.

        A saturated worker answers 1 / (CPU per answer) a second. With two, the one that gets the
        larger share of the queries fills its core first, and the two then answer 1 / share times
        what it does: (cpu_1 / cpu_2) / share times one worker. Neither the load generator's cost
        nor how it shares the cores enters; it assumes two workers on cores of their own each cost
        per answer what they cost here.
        """
        cpu, share = self.server_cpu_per_answer, self.query_share.get(label)
        if not share or not cpu.get(label) or "1" not in cpu:
            return None
        return cpu["1"] / cpu[label] / share


@dataclass
class Result:
    key: str
    title: str
    command: list[str]
    # Start to first answer, one sample per start. Cold: schooldns compiles the list (--runs starts,
    # state_dir emptied before each); a baseline loads its config (one start). Warm (schooldns
    # only, --runs starts): from the compiled index in state_dir.
    start_samples: list[float] = field(default_factory=list)
    warm_start_samples: list[float] = field(default_factory=list)
    warm_pass: Perf | None = None
    runs: list[Perf] = field(default_factory=list)  # max rate, the byte-identical query file
    variant_runs: dict[str, list[Perf]] = field(default_factory=dict)  # max rate, the other workloads by key
    latency: dict[str, Perf] = field(default_factory=dict)  # "target" / "light" / "0x20" -> verbose run
    misses: list[Perf] = field(default_factory=list)  # the 100%-miss runs, one per miss file
    memory_kb: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> VmRSS, VmHWM
    # over the max-rate runs: minor page faults per answered query, user and system CPU seconds
    faults_per_query: float = 0.0
    cpu_user: float = 0.0
    cpu_system: float = 0.0
    wrong_answers: list[tuple[str, str, str]] = field(default_factory=list)  # name, expected, got
    answers_checked: int = 0
    # max-rate runs whose rcode counts were checked against the lines sent, and those that differed
    counts_checked: int = 0
    wrong_counts: list[str] = field(default_factory=list)
    status: dict | None = None  # schooldns /status after the runs
    log_problems: list[str] = field(default_factory=list)  # error lines in the server's log
    error: str | None = None
    swap_seconds: float | None = None  # schooldns: list swap (SIGHUP) until the new index is installed
    scaling: Scaling | None = None  # schooldns: 1 worker on 1 core against 2 on 2 (step 8)

    @property
    def start_seconds(self) -> float:
        return statistics.median(self.start_samples) if self.start_samples else 0.0

    @property
    def warm_start_seconds(self) -> float | None:
        return statistics.median(self.warm_start_samples) if self.warm_start_samples else None

    @property
    def qps(self) -> float:
        return statistics.median(run.qps for run in self.runs) if self.runs else 0.0

    def workload_runs(self, key: str) -> list[Perf]:
        return self.runs if key == "identical" else self.variant_runs.get(key, [])

    def workload_qps(self, key: str) -> float | None:
        runs = self.workload_runs(key)
        return statistics.median(run.qps for run in runs) if runs else None

    @property
    def miss(self) -> Perf | None:
        """The median 100%-miss run by qps (the lower middle one for an even count)."""
        ordered = sorted(self.misses, key=lambda run: run.qps)
        return ordered[(len(ordered) - 1) // 2] if ordered else None


def list_swap(
    result: Result,
    proc: Proc,
    directory: Path,
    args: argparse.Namespace,
    tools: dict[str, str],
    port: int,
    data: Data,
    rate: int,
    log: Callable[[str], None],
) -> None:
    """A fixed-rate run during which the whole list is replaced and schooldns reloads (SIGHUP).

    The new file is the same list plus one name, so the compiled index is rebuilt from scratch
    (in schooldns' child process, on the server's core) while queries keep arriving.
    """
    listed = directory / "blocklists" / "adult" / "bench.txt"
    staged = listed.with_name(".bench-next.txt")
    shutil.copyfile(data.blocklist, staged)
    with open(staged, "a") as file:
        file.write("list-swap-marker.example\n")
    seconds = max(args.seconds, 15.0)

    def swap() -> None:
        os.replace(staged, listed)
        os.kill(proc.pid, signal.SIGHUP)
        started = time.monotonic()
        deadline = started + args.start_timeout
        while "installed generation 2" not in proc.log_path.read_text(errors="replace"):
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)
        result.swap_seconds = time.monotonic() - started

    swapper = threading.Timer(seconds / 5, swap)
    swapper.start()
    perf = dnsperf(tools, port, data.queries, seconds=seconds, clients=args.clients, qps=rate, verbose=True)
    swapper.join()
    if result.swap_seconds is None:
        raise BenchError(f"schooldns did not install the swapped list; log:\n{proc.tail()}")
    result.latency["swap"] = perf
    check_answers(result, perf, data)
    log(
        f"schooldns: list swap under {rate:,} qps: p50 {perf.percentile(0.5):.3f} ms, "
        f"p99 {perf.percentile(0.99):.3f} ms, {perf.lost} lost"
    )


# loadgen.py --window (queries outstanding on each of its 16 sockets). A closed loop gives a worker
# only what its window holds: a faster worker needs more outstanding to stay busy while loadgen turns
# its answers round, the more so split over two workers and held to half a core.
LIGHT_WINDOWS = (8, 16, 32)


def worker_scaling(
    result: Result,
    directory: Path,
    args: argparse.Namespace,
    tools: dict[str, str],
    data: Data,
    log: Callable[[str], None],
) -> None:
    """Step 8: one worker on one core against two workers on two cores, the load generator sharing them.

    There is no third core for the load generator, so it shares the cores the way the workers
    get them: with `workers: 1` the server and the generator are pinned to core 0, with `workers:
    2` all of them may run on cores 0 and 1. The generator is one loadgen process per core a run
    may use (generators), and a server of two workers gets one loadgen pass before the runs, so
    that each worker's own cache holds every name. Two workers run twice, with `worker_spread: client`
    (the default) and `random`. Then once more, one worker against two, with each worker held to
    half of a core of its own by a CPU quota (HeldWorkers) and the generator on both cores: it
    has the other halves, so it takes no time from the workers, as on a machine with a core for
    it (skipped, and the report says why, where no cgroup can be made). The servers run at once,
    each from a copy of the benchmark's schooldns directory (its compiled index included), and
    their runs interleave.
    """
    scaling = result.scaling = Scaling()
    procs: dict[str, tuple[Proc, int, str]] = {}
    held: dict[str, list[int]] = {}  # label -> worker pids, in worker order, each held to its core
    holder = HeldWorkers()
    try:
        holder.hierarchy()
    except OSError as exc:
        scaling.quota_error = str(exc)
        log(f"step 8: the half-core runs are skipped: {exc}")
    copies = {label: directory.parent / f"schooldns-{label.replace(' ', '-')}" for label in SCALING_SERVERS}
    try:
        for label, server in SCALING_SERVERS.items():
            if server.core_share and scaling.quota_error:
                continue
            copy = copies[label]
            shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("*.log"))
            port = free_port()
            config = (copy / "config.yaml").read_text()
            config = re.sub(r'listen: \["127.0.0.1:\d+"\]', f'listen: ["127.0.0.1:{port}"]', config)
            config = re.sub(
                r'admin: \{listen: "127.0.0.1:\d+"\}', f'admin: {{listen: "127.0.0.1:{free_port()}"}}', config
            )
            config = config.replace("workers: 1\n", f"workers: {server.workers}\nworker_spread: {server.spread}\n")
            (copy / "config.yaml").write_text(config)
            # held workers are pinned to a core each below, and the load generator uses both
            cores = ",".join([SERVER_CORE, LOAD_CORE][: 2 if server.core_share else server.workers])
            argv = ["taskset", "-c", cores, str(SCHOOLDNS), "serve", "--config", str(copy / "config.yaml")]
            proc = Proc(f"schooldns-{label}", argv, copy / "server.log", cwd=copy)
            procs[label] = proc, port, cores
            wait_answer(port, proc, time.monotonic(), args.start_timeout)
            wait_admin(copy, proc, args.start_timeout)
            scaling.start_pss[label] = sum(smaps_kb(pid).get("Pss", 0) for pid in proc.family())
            dnsperf(tools, port, data.queries, seconds=None, clients=args.clients, once=True, cores=cores)
            if server.workers > 1:
                # Each worker has a cache of its own, and dnsperf's pass took each name to one of them:
                # a pass with loadgen's many ports takes every name to each, so no run counts misses.
                loadgen(port, data.queries, args.seconds, LIGHT_WINDOWS[0], cores, generators(cores))
            if server.core_share:
                workers = (
                    [proc.pid]
                    if server.workers == 1
                    else sorted(
                        (pid for pid in proc.family() if process_name(pid).startswith("schooldns-w")), key=process_name
                    )
                )
                if len(workers) != server.workers:
                    raise BenchError(
                        f"schooldns ({label}): found {len(workers)} worker processes, not {server.workers}"
                    )
                try:
                    for number, (pid, core) in enumerate(zip(workers, [SERVER_CORE, LOAD_CORE], strict=False)):
                        holder.hold(pid, core, server.core_share, f"{label.replace(' ', '-')}-w{number}")
                except OSError as exc:  # as if no cgroup could be made: the other runs go on
                    scaling.quota_error = f"could not hold a worker of {label!r} to its core: {exc}"
                    log(f"step 8: the half-core runs are skipped: {scaling.quota_error}")
                    for unheld in [name for name in procs if SCALING_SERVERS[name].core_share]:
                        procs.pop(unheld)[0].stop()
                    held.clear()
                    continue
                held[label] = workers
        family = {label: proc.family() for label, (proc, _, _) in procs.items()}
        started = {pid: process_cpu_seconds(pid) for pids in family.values() for pid in pids}
        light: dict[tuple[str, int], list[dict]] = {}  # (label, window) -> loadgen outputs + server CPU
        # One server after the other at each window: the runs compared sit seconds apart, not minutes,
        # where this machine's speed drifts.
        for _ in range(args.runs):
            for window in LIGHT_WINDOWS:
                for label, (_proc, port, cores) in procs.items():
                    several = SCALING_SERVERS[label].workers > 1
                    before = [process_cpu_seconds(pid) for pid in family[label]]
                    answered_before = published_worker_queries(copies[label]) if several else {}
                    run = loadgen(port, data.queries, args.seconds, window, cores, generators(cores))
                    run["server_cpu"] = [
                        process_cpu_seconds(pid) - b for pid, b in zip(family[label], before, strict=False)
                    ]
                    if several:  # how the kernel spread this run's queries
                        answered_after = published_worker_queries(copies[label])
                        run["worker_queries"] = [
                            answered_after[w] - answered_before.get(w, 0) for w in sorted(answered_after)
                        ]
                    light.setdefault((label, window), []).append(run)
        for label, (proc, _, _) in procs.items():
            if not proc.alive() or set(held.get(label, [])) - set(proc.family()):
                raise BenchError(f"schooldns ({label}) or a worker died during the scaling runs; log:\n{proc.tail()}")
            scaling.light_all[label] = {
                window: [run["qps"] for run in light[label, window]] for window in LIGHT_WINDOWS
            }
            window = max(LIGHT_WINDOWS, key=lambda w: statistics.median(scaling.light_all[label][w]))
            runs = light[label, window]
            answered = sum(run["answered"] for run in runs)
            scaling.light_window[label] = window
            scaling.light_qps[label] = statistics.median(run["qps"] for run in runs)
            scaling.light_cpu_per_answer[label] = sum(run["cpu_seconds"] for run in runs) / answered
            scaling.server_cpu_per_answer[label] = sum(sum(run["server_cpu"]) for run in runs) / answered
            server = SCALING_SERVERS[label]
            held_to = f", each held to {server.core_share:g} of its core" if server.core_share else ""
            log(
                f"schooldns, {server.workers} worker(s) on {server.workers} core(s){held_to}, worker_spread "
                f"{server.spread}: {scaling.light_qps[label]:,.0f} qps (loadgen --window {window}), server CPU "
                f"{scaling.server_cpu_per_answer[label] * 1e6:.2f} us per answer"
            )
            if label in held:
                allowed = sum(run["seconds"] for run in runs) * server.core_share
                scaling.quota_use[label] = min(
                    sum(run["server_cpu"][family[label].index(pid)] for run in runs) / allowed for pid in held[label]
                )
            if server.workers == 1:
                continue
            splits = [
                max(run["worker_queries"]) / sum(run["worker_queries"])
                for run in runs
                if len(run["worker_queries"]) == 2 and sum(run["worker_queries"])
            ]
            if splits:
                scaling.query_share[label] = statistics.median(splits)
            names = [process_name(pid) for pid in family[label]]
            cpu = [sum(run["server_cpu"][i] for run in runs) for i in range(len(names))]
            on_workers = [seconds for name, seconds in zip(names, cpu, strict=False) if name.startswith("schooldns-w")]
            if on_workers and sum(on_workers):
                scaling.busiest_share[label] = max(on_workers) / sum(on_workers)
            if label == "2":
                scaling.processes = [
                    {"name": name, "cpu_seconds": process_cpu_seconds(pid) - started[pid], **smaps_kb(pid)}
                    for pid, name in zip(family[label], names, strict=False)
                ]
    finally:
        for proc, _, _ in procs.values():
            proc.stop()
        holder.release()


def generators(cores: str) -> int:
    """loadgen processes for a run on `cores`: one per core, so that one process's speed never bounds the rate.

    Measured: one loadgen beside two workers each held to half a core gave them 24-46 queries per
    receive call, where one worker got the 64 it reads at most; with two, both got 47-62.
    """
    return len(cores.split(","))


def loadgen(port: int, data_file: Path, seconds: float, window: int, cores: str, processes: int = 1) -> dict:
    """One max-rate run of `processes` tests/perf/loadgen.py processes at once (16 sockets x `window` each).

    Their JSON outputs added up: answered, sent, qps, cpu_seconds and refills summed, seconds the longest.
    """
    command = [
        "taskset",
        "-c",
        cores,
        sys.executable,
        str(HERE / "loadgen.py"),
        "--port",
        str(port),
        "--queries",
        str(data_file),
        "--seconds",
        f"{seconds:g}",
        "--sockets",
        "16",
        "--window",
        str(window),
    ]
    started = [
        subprocess.Popen(
            [*command, "--seed", str(number + 1)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for number in range(processes)
    ]
    runs = []
    try:
        for process in started:
            try:
                out, err = process.communicate(timeout=seconds + 60)
            except subprocess.TimeoutExpired:
                raise BenchError(f"loadgen did not finish within {seconds + 60:.0f}s: {shlex.join(command)}") from None
            if process.returncode != 0:
                raise BenchError(f"loadgen failed ({process.returncode}): {shlex.join(command)}\n{err[-2000:]}")
            runs.append(json.loads(out.splitlines()[-1]))
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    run = {key: sum(one[key] for one in runs) for key in ("answered", "sent", "qps", "cpu_seconds", "refills")}
    run["seconds"] = max(one["seconds"] for one in runs)
    if not run["answered"]:
        raise BenchError(f"loadgen got no answers: {shlex.join(command)}")
    return run


def cpu_stat(pid: int) -> tuple[int, float, float]:
    """(minor page faults, user CPU seconds, system CPU seconds) of a process so far; zeros once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[7]), int(fields[11]) / tick, int(fields[12]) / tick


def process_cpu_seconds(pid: int) -> float:
    _, user, system = cpu_stat(pid)
    return user + system


def descendants(pid: int) -> list[int]:
    """A process and all its descendants, parents before their children."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(grandchild for child in children for grandchild in descendants(int(child)))]


def process_name(pid: int) -> str:
    """/proc/PID/comm: what ps -e shows (schooldns-spawn, schooldns-w0, ...)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def smaps_kb(pid: int) -> dict[str, float]:
    """Pss and Pss_Anon (kB) of a process: its share of shared pages, and its own heap."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as file:
            for line in file:
                key, _, value = line.partition(":")
                if key in ("Pss", "Pss_Anon"):
                    out[key] = float(value.split()[0])
    except OSError:
        pass
    return out


def check_answers(result: Result, perf: Perf, data: Data) -> None:
    for name, rcode in perf.answers.items():
        want = data.expected.get(name)
        if want is None:
            continue
        result.answers_checked += 1
        if rcode != want and len(result.wrong_answers) < 1000:
            result.wrong_answers.append((name, want, rcode))


@dataclass
class Running:
    """A server under test between the phases of its benchmark (see main: the max-rate runs interleave)."""

    server: Server
    result: Result
    proc: Proc
    port: int
    directory: Path
    argv: list[str]
    faults: int = 0  # minor page faults and CPU seconds summed over its max-rate runs
    cpu_user: float = 0.0
    cpu_system: float = 0.0


def start_server(
    server: Server, args: argparse.Namespace, tools: dict[str, str], data: Data, log: Callable[[str], None]
) -> Running:
    """Start (cold, then warm where it keeps state), measure the start and memory, warm the cache."""
    directory = data.work / server.key
    directory.mkdir()
    port = free_port()
    argv = server.prepare(directory, port)
    result = Result(server.key, server.title, argv)
    log(f"{server.key}: starting (cold){' and compiling the list' if server.warm_start else ''}")
    started = time.monotonic()
    proc = Proc(server.key, argv, directory / "server.log", cwd=directory)
    running = Running(server, result, proc, port, directory, argv)
    try:
        result.start_samples.append(wait_answer(port, proc, started, args.start_timeout))
        log(f"{server.key}: first answer after {result.start_samples[-1]:.2f}s")
        if server.warm_start:  # --runs cold starts (each from an empty state_dir), then --runs warm ones
            for number in range(1, 2 * args.runs):
                cold = number < args.runs
                proc.stop()
                if cold:
                    shutil.rmtree(directory / "state")
                started = time.monotonic()
                proc = running.proc = Proc(server.key, argv, directory / "server.log", cwd=directory)
                samples = result.start_samples if cold else result.warm_start_samples
                samples.append(wait_answer(port, proc, started, args.start_timeout))
                log(f"{server.key}: {'cold' if cold else 'warm'} start, first answer after {samples[-1]:.2f}s")
            wait_admin(directory, proc, args.start_timeout)
        result.memory_kb["ready"] = proc.status_kb()
        result.warm_pass = dnsperf(tools, port, data.queries, seconds=None, clients=args.clients, once=True)
        result.memory_kb["warm"] = proc.status_kb()
        log(
            f"{server.key}: cache warmed ({result.warm_pass.completed} answers, {result.warm_pass.lost} lost,"
            f" {result.warm_pass.qps:,.0f} qps)"
        )
    except BenchError as exc:
        fail(running, exc, log)
    return running


def max_rate_run(
    running: Running,
    workload: Workload,
    number: int,
    args: argparse.Namespace,
    tools: dict[str, str],
    data: Data,
    log: Callable[[str], None],
) -> None:
    """One max-rate dnsperf run of a warm workload; for the byte-identical file, the server's CPU and page faults."""
    key, result = running.server.key, running.result
    if result.error:
        return
    before = running.proc.cpu_stat()
    try:
        run = dnsperf(
            tools, running.port, workload.path, seconds=args.seconds, clients=args.clients, binary=workload.binary
        )
    except BenchError as exc:
        fail(running, exc, log)
        return
    if workload.key == "identical":
        after = running.proc.cpu_stat()
        running.faults += after[0] - before[0]
        running.cpu_user += after[1] - before[1]
        running.cpu_system += after[2] - before[2]
        result.runs.append(run)
    else:
        result.variant_runs.setdefault(workload.key, []).append(run)
    check_counts(result, run, workload, data)
    log(
        f"{key}: {workload.key} run {number + 1}/{args.runs}: {run.qps:,.0f} qps, avg {run.avg_latency_ms:.3f} ms, "
        f"{run.lost} lost"
    )


def check_counts(result: Result, run: Perf, workload: Workload, data: Data) -> None:
    """The run's NXDOMAIN count against the blocked lines among those it sent, give or take the lost ones.

    dnsperf reads its file from the start, one line after the other, so a run that sent n queries
    sent the first n lines; an answer can have been lost for any of them.
    """
    result.counts_checked += 1
    want = data.blocked_in(run.sent)
    got = run.rcodes.get("NXDOMAIN", 0)
    others = run.completed - got - run.rcodes.get("NOERROR", 0)
    if abs(got - want) > run.lost or others:
        result.wrong_counts.append(
            f"{workload.key}: {got:,} NXDOMAIN for {want:,} blocked of {run.sent:,} sent ({run.lost:,} lost), "
            f"{others:,} other rcodes"
        )


def measure_latency(
    running: Running,
    args: argparse.Namespace,
    tools: dict[str, str],
    data: Data,
    light_qps: int | None,
    log: Callable[[str], None],
) -> None:
    """After the max-rate runs: CPU and faults of those runs, latency at fixed rates, the list swap."""
    server, result, port, directory = running.server, running.result, running.port, running.directory
    proc = running.proc
    if result.error:
        return
    try:
        answered = sum(run.completed for run in result.runs) or 1
        result.faults_per_query = running.faults / answered
        result.cpu_user, result.cpu_system = running.cpu_user, running.cpu_system
        log(
            f"{server.key}: {result.faults_per_query:.2f} page faults per query, CPU user "
            f"{result.cpu_user:.1f}s system {result.cpu_system:.1f}s"
        )
        result.memory_kb["load"] = proc.status_kb()
        rates = {"target": args.latency_qps, "light": args.light_qps or light_qps or max(1000, int(result.qps * 0.5))}
        runs = [(label, rate, data.queries) for label, rate in rates.items()]
        runs.append(("0x20", args.latency_qps, data.case_queries))
        for label, rate, path in runs:
            perf = dnsperf(tools, port, path, seconds=args.seconds, clients=args.clients, qps=rate, verbose=True)
            result.latency[label] = perf
            check_answers(result, perf, data)
            log(
                f"{server.key}: {rate:,} qps offered ({path.name}): {perf.qps:,.0f} answered/s, "
                f"p50 {perf.percentile(0.5):.3f} ms, p99 {perf.percentile(0.99):.3f} ms, {perf.lost} lost"
            )
        result.memory_kb["latency"] = proc.status_kb()
        if server.key == "schooldns":
            list_swap(result, proc, directory, args, tools, port, data, rates["light"], log)
    except BenchError as exc:
        fail(running, exc, log)


def miss_run(
    running: Running,
    number: int,
    args: argparse.Namespace,
    tools: dict[str, str],
    data: Data,
    log: Callable[[str], None],
) -> None:
    """One 100%-miss run through its own file of new names (at most --seconds long)."""
    key, result = running.server.key, running.result
    if result.error:
        return
    try:
        run = dnsperf(tools, running.port, data.misses[number], seconds=args.seconds, clients=args.clients, once=True)
    except BenchError as exc:
        fail(running, exc, log)
        return
    result.misses.append(run)
    result.memory_kb["miss"] = running.proc.status_kb()
    log(
        f"{key}: 100% miss run {number + 1}/{len(data.misses)}: {run.qps:,.0f} qps, avg {run.avg_latency_ms:.3f} ms,"
        f" {run.lost} lost"
    )


def finish_server(
    running: Running, args: argparse.Namespace, tools: dict[str, str], data: Data, log: Callable[[str], None]
) -> None:
    """After all runs: /status, the worker scaling runs (schooldns), the log's problems; stop."""
    server, result, directory = running.server, running.result, running.directory
    proc = running.proc
    try:
        if result.error:
            return
        if server.key == "schooldns":
            result.status = schooldns_status(directory)
        if not proc.alive():
            raise BenchError(f"{server.key} died during the runs; log:\n{proc.tail()}")
        if server.key == "schooldns" and args.scaling:
            proc.stop()
            worker_scaling(result, directory, args, tools, data, log)
    except BenchError as exc:
        fail(running, exc, log)
    finally:
        proc.stop()
        result.log_problems = log_problems(proc.log_path)
        for line in result.log_problems[:5]:
            log(f"{server.key}: log: {line}")


def fail(running: Running, exc: BenchError, log: Callable[[str], None]) -> None:
    """Record a server's failure and stop it; the other servers go on."""
    running.result.error = str(exc)
    log(f"{running.server.key}: FAILED: {exc}")
    running.proc.stop()


def log_problems(path: Path) -> list[str]:
    """Lines of a server log that report an error or a traceback (warnings excluded)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line for line in lines if re.search(r"\b(ERROR|CRITICAL|Traceback|error:|fatal)", line)]


METRICS = (
    "cache_entries",
    "cache_bytes",
    "cache_hits_total",
    "cache_misses_total",
    "cache_evictions_total",
    "internal_errors_total",
    "malformed_queries_total",
    "upstream_coalesced_total",
)


def metrics_text(directory: Path) -> str | None:
    """The admin API's /metrics of the schooldns started from `directory`; None if it has no admin API."""
    port = admin_port(directory)
    if port is None:
        return None
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            return reply.read().decode()
    except OSError:
        return None


def schooldns_status(directory: Path) -> dict | None:
    """A few unlabelled counters from the admin API's /metrics (cache, internal errors)."""
    text = metrics_text(directory)
    if text is None:
        return None
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("schooldns_") and name[len("schooldns_") :] in METRICS:
            values[name[len("schooldns_") :]] = int(float(value))
        elif name.startswith("schooldns_queries_dropped_total{"):
            values["dropped_total"] = values.get("dropped_total", 0) + int(float(value))
    return values


def published_worker_queries(directory: Path) -> dict[str, int]:
    """schooldns_worker_queries_total per worker, once the workers have published what they answered."""
    time.sleep(1.2)  # a worker publishes its counters to the supervisor every second
    found = re.findall(
        r'^schooldns_worker_queries_total\{worker="(\d+)"\} (\S+)$', metrics_text(directory) or "", re.MULTILINE
    )
    return {worker: int(float(value)) for worker, value in found}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def offered_qps(perf: Perf) -> int:
    return int(perf.command[perf.command.index("-Q") + 1])


def start_cell(samples: list[float]) -> str:
    """A start time: the one sample, or the median (min–max) of several."""
    if len(samples) == 1:
        return f"{samples[0]:.2f}"
    return f"{statistics.median(samples):.2f} ({min(samples):.2f}–{max(samples):.2f})"


def fmt_ms(value: float) -> str:
    return "–" if value != value else f"{value:.2f}"  # NaN -> dash


def mb(kb: int | None) -> str:
    return "–" if not kb else f"{kb / 1024:.0f}"


def sanitize(command: list[str], work: Path) -> str:
    text = shlex.join(command).replace(str(work), "$WORK").replace(str(VENV_BIN), ".venv/bin")
    return text.replace(f"{REPO}/", "")


def qps_cell(runs: list[Perf]) -> str:
    """The median qps of max-rate runs in bold, with their range."""
    if not runs:
        return "–"
    qps = [run.qps for run in runs]
    return f"**{statistics.median(qps):,.0f}** ({min(qps):,.0f}–{max(qps):,.0f})"


def workers_ratio(scaling: Scaling | None) -> tuple[float, str] | None:
    """Two workers against one: held to half a core each where that ran, else sharing the cores with loadgen."""
    if scaling is None:
        return None
    if {"1 half", "2 half"} <= scaling.light_qps.keys():
        return scaling.ratio("2 half", "1 half"), "each held to half a core of its own"
    if {"1", "2"} <= scaling.light_qps.keys():
        return scaling.ratio("2"), "sharing the cores with loadgen"
    return None


class Target(NamedTuple):
    """A row of the targets table: schooldns' figure, the baselines', their ratios and the goal."""

    label: str
    value: Callable[[Result], float | None]
    unit: str  # "qps", "ms", "MB"
    goal: str
    floors: dict[str, float]  # baseline key -> least ratio schooldns / baseline (qps)
    limit: float | None = None  # most schooldns may take (ms, MB)


TARGET_BASELINES = ("unbound-rpz", "pdns-recursor")


def targets_table(ok: list[Result], data: Data, args: argparse.Namespace) -> list[str]:
    """One worker, this run: every target with schooldns, unbound (RPZ), pdns-recursor (RPZ) and the ratios."""
    by_key = {r.key: r for r in ok}
    base = by_key.get("schooldns")
    if base is None:
        return []
    baselines = [by_key.get(key) for key in TARGET_BASELINES]

    def rss_after(r: Result) -> float | None:
        kb = r.memory_kb.get("miss", {}).get("VmRSS")
        return kb / 1024 if kb else None

    def p99(r: Result) -> float | None:
        perf = r.latency.get("0x20")
        return perf.percentile(0.99) if perf and perf.latencies_ms else None

    targets = [
        Target(
            "warm, byte-identical repeats (qps)",
            lambda r: r.workload_qps("identical"),
            "qps",
            ">= 1.5x unbound-RPZ",
            {"unbound-rpz": 1.5},
        ),
        Target(
            "warm, 0x20 mixed case, no two queries alike within 10 s (qps)",
            lambda r: r.workload_qps("0x20"),
            "qps",
            ">= 1.2x unbound-RPZ, >= 1.0x pdns-recursor",
            {"unbound-rpz": 1.2, "pdns-recursor": 1.0},
        ),
        Target(
            f"warm, {workloads.COOKIE_SHARE:.0%} of queries with a DNS cookie (qps)",
            lambda r: r.workload_qps("cookies"),
            "qps",
            ">= 1.2x unbound-RPZ",
            {"unbound-rpz": 1.2},
        ),
        Target(
            "100% cache misses (qps)",
            lambda r: r.miss.qps if r.miss else None,
            "qps",
            ">= 1.0x unbound-RPZ",
            {"unbound-rpz": 1.0},
        ),
        Target(
            f"p99 at {args.latency_qps:,} qps, 0x20 workload (ms)",
            p99,
            "ms",
            "<= 0.5 ms",
            {},
            0.5,
        ),
        Target(
            f"memory with the {len(data.names):,}-name list after the runs (RSS, MB)",
            rss_after,
            "MB",
            "<= 100 MB with a full default cache",
            {},
            100,
        ),
    ]

    def show(value: float | None, unit: str) -> str:
        if value is None or value != value:
            return "–"
        return {"qps": f"{value:,.0f}", "ms": f"{value:.2f}", "MB": f"{value:.0f}"}[unit]

    titles = [r.title if r else key for r, key in zip(baselines, TARGET_BASELINES, strict=True)]
    lines = [
        "Targets, one worker, this run (÷: schooldns divided by the baseline; for qps above 1 is faster, for ms "
        "and MB below 1 is less):",
        "",
        f"| workload | schooldns | {' | '.join(titles)} | {' | '.join(f'÷ {t}' for t in titles)} | target | met |",
        "|---" * (4 + 2 * len(baselines)) + "|",
    ]
    for target in targets:
        mine = target.value(base)
        theirs = [target.value(r) if r else None for r in baselines]
        ratios = [mine / other if mine and other else None for other in theirs]
        checks = []
        for key, floor in target.floors.items():
            ratio = ratios[TARGET_BASELINES.index(key)]
            checks.append(None if ratio is None else ratio >= floor)
        if target.limit is not None:
            checks.append(None if mine is None or mine != mine else mine <= target.limit)
        met = "?" if None in checks else ("yes" if all(checks) else "**no**")
        lines.append(
            f"| {target.label} | {show(mine, target.unit)} | "
            + " | ".join(show(value, target.unit) for value in theirs)
            + " | "
            + " | ".join("–" if ratio is None else f"{ratio:.2f}x" for ratio in ratios)
            + f" | {target.goal} | {met} |"
        )
    workers = workers_ratio(base.scaling)
    cells = " | ".join("n/a" for _ in baselines)
    if workers is None:
        lines.append(f"| two workers vs one, each on its own core | – | {cells} | {cells} | >= 1.9x | ? |")
    else:
        ratio, how = workers
        lines.append(
            f"| two workers vs one ({how}) | {ratio:.2f}x | {cells} | {cells} | >= 1.9x | "
            f"{'yes' if ratio >= 1.9 else '**no**'} |"
        )
    return lines


def scaling_paragraph(scaling: Scaling, args: argparse.Namespace) -> str:
    """Step 8 in words: the measurements, the estimates for dedicated cores, the processes and memory."""
    light, light_cpu, cpu = scaling.light_qps, scaling.light_cpu_per_answer, scaling.server_cpu_per_answer
    text = [
        f"schooldns worker processes, one worker on one core against two workers on two cores. There is no "
        f"third core: the load generator (tests/perf/loadgen.py, one process per core in use with 16 sockets "
        f"each, the best of {', '.join(map(str, LIGHT_WINDOWS[:-1]))} and {LIGHT_WINDOWS[-1]} queries "
        f"outstanding per socket) shares core {SERVER_CORE} with "
        f"the one worker and cores {SERVER_CORE},{LOAD_CORE} with the two. Median of {args.runs}: "
        f"{light['1']:,.0f} qps with `workers: 1`, {light['2']:,.0f} qps with `workers: 2`: "
        f"**{scaling.ratio('2'):.2f}x**. loadgen itself took {light_cpu['1'] * 1e6:.1f} us of CPU per answer "
        f"beside one worker, {light_cpu['2'] * 1e6:.1f} us beside two."
    ]
    estimate = scaling.dedicated_estimate("2")
    if estimate is not None:
        text.append(
            f"CPU time of the server's processes per answer in those runs: {cpu['1'] * 1e6:.2f} us with one "
            f"worker, {cpu['2'] * 1e6:.2f} us with two. The kernel's SO_REUSEPORT hash of loadgen's source "
            f"ports gave the busier worker {scaling.query_share['2']:.0%} of a run's queries (median; it used "
            f"{scaling.busiest_share.get('2', 0):.0%} of the two workers' CPU time, sharing the cores with "
            f"loadgen). With clients that each send at their own pace (open loop), on dedicated cores "
            f"that worker would fill its core first, which puts two workers at "
            f"({cpu['1'] * 1e6:.2f} / {cpu['2'] * 1e6:.2f}) / {scaling.query_share['2']:.2f} = "
            f"**{estimate:.2f}x** one worker with this split, and {2 * cpu['1'] / cpu['2']:.2f}x with an even "
            f"one (many clients): estimates from CPU time that leave out the load generator and how it "
            f"shares the cores."
        )
    estimate = scaling.dedicated_estimate("2 random")
    if estimate is not None:
        text.append(
            f"With `worker_spread: random` (each query to a random worker): {light['2 random']:,.0f} qps, "
            f"{scaling.ratio('2 random'):.2f}x one worker; the busier worker got "
            f"{scaling.query_share['2 random']:.0%} of a run's queries, at {cpu['2 random'] * 1e6:.2f} us of CPU "
            f"per answer: **{estimate:.2f}x** one worker on dedicated cores by the same estimate."
        )
    if {"1 half", "2 half"} <= light.keys():
        share = SCALING_SERVERS["2 half"].core_share
        text.append(
            f"Held to {share:g} of a core each: every worker pinned to a core of its own and held to "
            f"{share:g} of it by a CPU quota ({round(QUOTA_PERIOD_US * share)} us per {QUOTA_PERIOD_US} us, in a "
            f"cgroup of its own), two loadgen processes on both cores, where they have the rest of each and so "
            f"take no time from the workers, as with a core of their own. Median of {args.runs}: "
            f"{light['1 half']:,.0f} qps with "
            f"one worker, {light['2 half']:,.0f} qps with two: **{scaling.ratio('2 half', '1 half'):.2f}x**. "
            f"Each worker used {min(scaling.quota_use.values()):.0%} or more of what its quota allowed "
            f"(saturated); loadgen used {light_cpu['2 half'] * light['2 half']:.2f} of a core beside the two. "
            f"The busier worker answered {scaling.query_share.get('2 half', 0):.0%} of a run's queries: "
            f"loadgen keeps a window of queries outstanding per socket, so the sockets of the less loaded "
            f"worker get their answers sooner and send more, and the split follows what each worker can "
            f"answer, not how the ports hash."
        )
    elif scaling.quota_error:
        text.append(f"The runs with workers held to half a core each were skipped: {scaling.quota_error}.")
    if scaling.processes:
        rows = [
            f"{p['name']} {p['cpu_seconds']:.1f} s CPU, Pss {p.get('Pss', 0) / 1024:.0f} MB "
            f"(anon {p.get('Pss_Anon', 0) / 1024:.0f})"
            for p in scaling.processes
        ]
        text.append(
            f"With 2 workers, per process during / after all those runs (the supervisor, the spawner "
            f"that forks the workers, the workers): {'; '.join(rows)}."
        )
    if {"1", "2"} <= scaling.start_pss.keys():
        one, two = (scaling.start_pss[label] / 1024 for label in ("1", "2"))
        text.append(
            f"Memory after start, before any load (Pss summed over every process, the shared index "
            f"counted once): {one:.0f} MB with `workers: 1` (one process), {two:.0f} MB with "
            f"`workers: 2` (a supervisor, the spawner and two workers): the second worker adds "
            f"{two - one:.0f} MB."
        )
    return "\n".join(text)


def report(
    args: argparse.Namespace,
    info: dict[str, str],
    data: Data,
    results: list[Result],
    domains_table: str | None,
    upstream_cmd: list[str],
    started_at: datetime.datetime,
    elapsed: float,
) -> str:
    out: list[str] = []
    add = out.append
    invocation = "tests/perf/bench.py " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "tests/perf/bench.py"
    add(f"Measured {started_at:%Y-%m-%d %H:%M} UTC by `{invocation.strip()}` in {elapsed / 60:.1f} min.")
    add("")
    versions = ", ".join(f"{tool} {info[tool]}" for tool in ("dnsperf", *BASELINE_TOOLS) if tool in info)
    add(
        f"Machine: {info['nproc']} cores ({info['cpu']}), {info['memory']} RAM, {info['kernel']}, "
        f"Python {info['python']}, {info['schooldns']}, {versions}. {info.get('use', '')}"
    )
    add("")
    case, cookie = data.case, data.cookie
    add(
        f"Workload: {len(data.names):,} listed names (seed {args.seed}); query file {data.query_count:,} "
        f"names, {data.blocked_queries / data.query_count:.1%} blocked; 0x20 file {case.lines:,} lines "
        f"({case.passes} passes over the query file, each name in a letter case of its own; "
        f"{case.twins:,} lines, {case.twins / case.lines:.1%}, within {TWIN_SECONDS} s at {VARIANT_RATE:,} qps "
        f"after the same bytes: names with few letters); cookie mix {cookie.lines:,} lines (the same passes, "
        f"{cookie.cookies / cookie.lines:.1%} with a COOKIE option from one of {workloads.COOKIE_CLIENTS:,} "
        f"clients, {cookie.twins:,} of them within {TWIN_SECONDS} s at {VARIANT_RATE:,} qps after the same "
        f"client's same query; dnsperf -B); {args.runs} miss files of {data.miss_count:,} names; "
        f"{args.runs} runs of {args.seconds:g} s; dnsperf with {args.clients} clients, 100 queries "
        f"outstanding, 2 s timeout."
    )
    add("")
    if any(r.error for r in results):
        for r in results:
            if r.error:
                add(f"**{r.title} failed:** `{r.error.splitlines()[0]}`")
        add("")

    ok = [r for r in results if not r.error]
    if ok:
        out.extend(targets_table(ok, data, args))
        add("")
        header = "| | " + " | ".join(r.title for r in ok) + " |"
        add(header)
        add("|---" * (len(ok) + 1) + "|")

        def row(label: str, cell: Callable[[Result], str]) -> None:
            add(f"| {label} | " + " | ".join(cell(r) for r in ok) + " |")

        row(
            f"qps, warm cache, max rate (median of {args.runs}; min–max)",
            lambda r: f"**{r.qps:,.0f}** ({min(x.qps for x in r.runs):,.0f}–{max(x.qps for x in r.runs):,.0f})",
        )
        row(
            "mean latency at max rate, ms (dnsperf; mostly queueing)",
            lambda r: fmt_ms(statistics.median(x.avg_latency_ms for x in r.runs)),
        )
        for workload in data.workloads[1:]:
            row(
                f"qps, {workload.title}, max rate (median of {args.runs}; min–max)",
                lambda r, key=workload.key: qps_cell(r.workload_runs(key)),
            )
        row(
            "queries lost in the max-rate runs (all workloads)",
            lambda r: f"{sum(x.lost for w in data.workloads for x in r.workload_runs(w.key)):,}",
        )
        row("server CPU in the max-rate runs: user / system s", lambda r: f"{r.cpu_user:.1f} / {r.cpu_system:.1f}")
        row("minor page faults per query (max-rate runs)", lambda r: f"{r.faults_per_query:.2f}")
        for label, title in (("target", "fixed rate"), ("light", "light load"), ("0x20", "fixed rate, 0x20 file")):
            row(
                f"{title}: offered / answered qps",
                lambda r, label=label: f"{offered_qps(r.latency[label]):,} / {r.latency[label].qps:,.0f}",
            )
            row(
                f"{title}: p50 / p99 / p99.9 latency, ms",
                lambda r, label=label: " / ".join(fmt_ms(r.latency[label].percentile(f)) for f in (0.5, 0.99, 0.999)),
            )
            row(f"{title}: lost", lambda r, label=label: f"{r.latency[label].lost:,}")
        row(
            f"qps, 100% cache miss, forwarded upstream (median of {args.runs}; min–max)",
            lambda r: (
                f"**{r.miss.qps:,.0f}** ({min(x.qps for x in r.misses):,.0f}–{max(x.qps for x in r.misses):,.0f})"
                if r.miss
                else "–"
            ),
        )
        row("mean latency, 100% miss, ms (median run)", lambda r: fmt_ms(r.miss.avg_latency_ms) if r.miss else "–")
        row("RSS after start, MB", lambda r: mb(r.memory_kb.get("ready", {}).get("VmRSS")))
        row(
            "RSS after warm cache + max-rate runs, MB (anon + file)",
            lambda r: (
                f"{mb(r.memory_kb.get('load', {}).get('VmRSS'))} ({mb(r.memory_kb.get('load', {}).get('RssAnon'))}"
                f" + {mb(r.memory_kb.get('load', {}).get('RssFile'))})"
            ),
        )
        row(
            "RSS after the miss runs, MB (peak)",
            lambda r: (
                f"{mb(r.memory_kb.get('miss', {}).get('VmRSS'))} ({mb(r.memory_kb.get('miss', {}).get('VmHWM'))})"
            ),
        )
        row(
            "start to first answer, s (cold: compile / load list; schooldns median of --runs, min–max)",
            lambda r: start_cell(r.start_samples),
        )
        row(
            "start to first answer, s (warm: compiled index in state_dir)",
            lambda r: start_cell(r.warm_start_samples) if r.warm_start_samples else "n/a",
        )
        row(
            "answers checked (rcode per name, latency runs) / wrong",
            lambda r: f"{r.answers_checked:,} / {len(r.wrong_answers):,}",
        )
        row(
            "max-rate runs whose NXDOMAIN count was checked against the blocked lines sent / wrong",
            lambda r: f"{r.counts_checked:,} / {len(r.wrong_counts):,}",
        )
        add("")

        base = next((r for r in ok if r.key == "schooldns"), None)
        if base is not None and "swap" in base.latency:
            swap = base.latency["swap"]
            add(
                f"schooldns list swap under load: while answering {offered_qps(swap):,} qps, the list file was "
                f"replaced (same list + 1 name) and SIGHUP sent; the full recompile ran in a child process on the "
                f"server's core and the new index was installed after {base.swap_seconds:.1f} s. During that run: "
                f"p50 / p99 / p99.9 {' / '.join(fmt_ms(swap.percentile(f)) for f in (0.5, 0.99, 0.999))} ms, "
                f"{swap.lost:,} lost, {swap.qps:,.0f} answered/s."
            )
            add("")
        scaling = base.scaling if base is not None else None
        if scaling is not None and {"1", "2"} <= scaling.light_qps.keys():
            add(scaling_paragraph(scaling, args))
            add("")
        if base is not None:
            ratios = []
            for other in ok:
                if other is base:
                    continue
                parts = [f"warm qps {base.qps / other.qps:.2f}x"]
                for workload in data.workloads[1:]:
                    mine, theirs = base.workload_qps(workload.key), other.workload_qps(workload.key)
                    if mine and theirs:
                        parts.append(f"{workload.key} qps {mine / theirs:.2f}x")
                if base.miss and other.miss and other.miss.qps:
                    parts.append(f"miss qps {base.miss.qps / other.miss.qps:.2f}x")
                other_rss = other.memory_kb.get("load", {}).get("VmRSS")
                base_rss = base.memory_kb.get("load", {}).get("VmRSS")
                if other_rss and base_rss:
                    parts.append(f"RSS {base_rss / other_rss:.2f}x")
                ratios.append(f"- schooldns / {other.title}: " + ", ".join(parts))
            if ratios:
                add("Ratios (schooldns divided by the baseline; above 1 means schooldns is faster, for RSS larger):")
                add("")
                out.extend(ratios)
                add("")
            if base.status:
                s = base.status
                add(
                    f"schooldns /metrics after its runs: cache {s.get('cache_hits_total', 0):,} hits, "
                    f"{s.get('cache_misses_total', 0):,} misses, {s.get('cache_entries', 0):,} entries, "
                    f"{s.get('cache_evictions_total', 0):,} evictions; "
                    f"{s.get('internal_errors_total', 0):,} internal errors, "
                    f"{s.get('dropped_total', 0):,} queries dropped, "
                    f"{s.get('upstream_coalesced_total', 0):,} coalesced upstream."
                )
                add("")
        for r in results:
            if r.log_problems:
                add(f"**{r.title} logged {len(r.log_problems)} error line(s)**, first: `{r.log_problems[0][:200]}`")
                add("")
        for r in ok:
            if r.wrong_answers:
                sample = ", ".join(f"{n} (want {w}, got {g})" for n, w, g in r.wrong_answers[:5])
                add(f"**{r.title} answered {len(r.wrong_answers)} names wrongly**, e.g. {sample}.")
                add("")
            if r.wrong_counts:
                add(f"**{r.title}: rcode counts of max-rate runs off**: {'; '.join(r.wrong_counts[:5])}.")
                add("")

    add("Commands ($WORK is the generated work directory; ports are chosen free at run time):")
    add("")
    add("```sh")
    add(f"{sanitize(upstream_cmd, data.work)}   # upstream for every server")
    for r in results:
        add(sanitize(r.command, data.work))
    if ok:
        first = ok[0]
        if first.warm_pass:
            add(f"{sanitize(first.warm_pass.command, data.work)}   # warm the cache")
        if first.runs:
            add(f"{sanitize(first.runs[0].command, data.work)}   # x{args.runs}, max rate")
        for workload in data.workloads[1:]:
            if first.workload_runs(workload.key):
                add(f"{sanitize(first.workload_runs(workload.key)[0].command, data.work)}   # x{args.runs}, max rate")
        for label in ("target", "light", "0x20"):
            if label in first.latency:
                add(f"{sanitize(first.latency[label].command, data.work)}   # per-query latencies")
        if first.misses:
            add(f"{sanitize(first.misses[0].command, data.work)}   # 100% miss; runs 2, 3 ... misses-2.txt, ...")
    if domains_table is not None:
        add(f"{shlex.join(domains_command(args, for_report=True))}")
    add("```")
    add("")
    if domains_table is not None:
        add("Domain index micro benchmark (`tests/perf/bench_domains.py`):")
        add("")
        add("```text")
        add(domains_table.strip("\n"))
        add("```")
    return "\n".join(out) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace what lies between the marker lines in `path` (create the file or the markers if needed).

    Only a line that is exactly a marker counts, so prose may quote the markers.
    """
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = text.splitlines(keepends=True)
    stripped = [line.rstrip("\r\n") for line in lines]
    block = f"{BEGIN}\n{section}{END}\n"
    if BEGIN in stripped and END in stripped[stripped.index(BEGIN) :]:
        begin = stripped.index(BEGIN)
        end = stripped.index(END, begin)
        text = "".join(lines[:begin]) + block + "".join(lines[end + 1 :])
    else:
        text = (text.rstrip("\n") + "\n\n" if text else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def domains_command(args: argparse.Namespace, for_report: bool = False) -> list[str]:
    python = ".venv/bin/python" if for_report else sys.executable
    script = "tests/perf/bench_domains.py" if for_report else str(HERE / "bench_domains.py")
    return [
        "taskset",
        "-c",
        SERVER_CORE,
        python,
        script,
        "--entries",
        str(args.domains_entries),
        "--queries",
        str(args.domains_queries),
        "--seed",
        str(args.seed),
    ]


def run_domains(args: argparse.Namespace) -> str:
    command = domains_command(args)
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, cwd=REPO, check=False)
    if done.returncode != 0:
        raise BenchError(f"bench_domains.py failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return done.stdout


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, help="listed names (default 1,000,000; --quick 10,000)")
    parser.add_argument("--queries", type=int, help="names in the query file (default 50,000; --quick 5,000)")
    parser.add_argument(
        "--misses", type=int, help="names in each 100%%-miss file, one file per run (default 250,000; --quick 30,000)"
    )
    parser.add_argument("--seconds", type=float, help="length of each dnsperf run (default 10; --quick 3)")
    parser.add_argument(
        "--variant-lines",
        type=int,
        help=f"lines of the 0x20 and cookie files, rounded up to whole passes (default {VARIANT_RATE:,} x --seconds)",
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="max-rate runs and 100%%-miss runs per server; medians are reported"
    )
    parser.add_argument("--clients", type=int, default=8, help="dnsperf -c")
    parser.add_argument("--latency-qps", type=int, default=20_000, help="offered rate of the first latency run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="10k list, 3 s runs: a smoke test of the harness")
    parser.add_argument("--skip-baselines", action="store_true", help="measure schooldns only")
    parser.add_argument(
        "--servers", default=",".join(SERVERS), help=f"comma-separated subset of {','.join(SERVERS)} (default: all)"
    )
    parser.add_argument(
        "--light-qps", type=int, help="offered rate of the second latency run (default: half of schooldns' max qps)"
    )
    parser.add_argument("--skip-domains", action="store_true", help="do not run bench_domains.py")
    parser.add_argument(
        "--no-scaling", dest="scaling", action="store_false", help="skip the 1-vs-2-worker runs of schooldns"
    )
    parser.add_argument("--domains-entries", type=int, help="bench_domains.py --entries (default: --entries)")
    parser.add_argument(
        "--domains-queries", type=int, help="bench_domains.py --queries (default 200,000; --quick 20,000)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPO / "docs" / "performance.md",
        help="markdown file whose bench markers get the results (default docs/performance.md)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (printed)")
    parser.add_argument("--start-timeout", type=float, default=900, help="seconds a server may take to answer")
    parser.add_argument("--tools-only", action="store_true", help="install the tools (root) and exit")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "entries": 10_000 if quick else 1_000_000,
        "queries": 5_000 if quick else 50_000,
        "misses": 30_000 if quick else 250_000,
        "seconds": 3.0 if quick else 10.0,
        "domains_queries": 20_000 if quick else 200_000,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.domains_entries is None:
        args.domains_entries = args.entries
    if args.variant_lines is None:
        args.variant_lines = round(VARIANT_RATE * args.seconds)
    args.servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    unknown = set(args.servers) - set(SERVERS)
    if unknown or not args.servers:
        parser.error(f"--servers: unknown {', '.join(sorted(unknown))}; choose from {', '.join(SERVERS)}")
    if args.skip_baselines:
        args.servers = ["schooldns"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def log(message: str) -> None:
        print(f"[bench {time.monotonic() - t0:6.1f}s] {message}", flush=True)

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    global SERVER_CORE, LOAD_CORE
    t0 = time.monotonic()
    signal.signal(signal.SIGTERM, on_signal)
    wanted = ["taskset", "dnsperf", *sorted({SERVER_TOOLS[name] for name in args.servers if name in SERVER_TOOLS})]
    try:
        tools = ensure_tools(wanted)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if args.tools_only:
        print("bench: tools present: " + ", ".join(f"{k}={v}" for k, v in tools.items()))
        return 0
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        print("bench: needs 2 CPUs (the server on one, dnsperf on the other)", file=sys.stderr)
        return 2
    SERVER_CORE, LOAD_CORE = str(cpus[0]), str(cpus[1])
    os.sched_setaffinity(0, {cpus[1]})  # this script stays off the server's core
    if not SCHOOLDNS.exists():
        print(f"bench: {SCHOOLDNS} missing; run `make venv` first", file=sys.stderr)
        return 2

    started_at = datetime.datetime.now(datetime.UTC)
    machine_use = MachineUse(cpus[:2])
    info = machine_info(tools)
    work = Path(tempfile.mkdtemp(prefix="schooldns-bench-"))
    log(f"work directory {work}")
    results: list[Result] = []
    try:
        data = generate(work, args.entries, args.queries, args.misses, args.runs, args.seed, args.variant_lines)
        log(
            f"generated {len(data.names):,} listed names, {data.query_count:,} queries "
            f"({data.blocked_queries:,} blocked), {data.case.lines:,} 0x20 lines ({data.case.twins:,} twins), "
            f"{data.cookie.lines:,} cookie mix lines ({data.cookie.cookies:,} with a cookie), "
            f"{args.runs} x {data.miss_count:,} miss names"
        )
        upstream_port = free_port()
        upstream_cmd = [
            "taskset",
            "-c",
            LOAD_CORE,
            sys.executable,
            str(HERE / "authoritative.py"),
            "--port",
            str(upstream_port),
        ]
        upstream = Proc("upstream", upstream_cmd, work / "upstream.log")
        wait_answer(upstream_port, upstream, time.monotonic(), 30)

        servers = [
            Server(
                "schooldns", "schooldns", lambda d, p: prepare_schooldns(d, data, p, upstream_port), warm_start=True
            ),
            Server(
                "unbound-localzone",
                "unbound (local-zone)",
                lambda d, p: prepare_unbound(d, data, p, upstream_port, False, tools),
            ),
            Server(
                "unbound-rpz", "unbound (RPZ)", lambda d, p: prepare_unbound(d, data, p, upstream_port, True, tools)
            ),
            Server(
                "pdns-recursor",
                "pdns-recursor (RPZ)",
                lambda d, p: prepare_pdns_recursor(d, data, p, upstream_port, tools),
            ),
            Server("dnsmasq", "dnsmasq", lambda d, p: prepare_dnsmasq(d, data, p, upstream_port, tools)),
        ]
        servers = [server for server in servers if server.key in args.servers]
        running = []
        for server in servers:
            running.append(start_server(server, args, tools, data, log))
            results.append(running[-1].result)
            if server.key == "schooldns" and running[-1].result.error:
                raise BenchError(f"schooldns failed: {running[-1].result.error}")
        # The max-rate runs interleave (run 1 of every server, then run 2, ...) while all of them
        # stay started: on a noisy machine each median then samples the same stretch of time, so
        # the ratios compare like with like. An idle server takes no CPU time from the others.
        for number in range(args.runs):
            for workload in data.workloads:
                for each in running:
                    max_rate_run(each, workload, number, args, tools, data, log)
        light_qps = None
        for each in running:
            measure_latency(each, args, tools, data, light_qps, log)
            if each.server.key == "schooldns":
                if each.result.error:
                    raise BenchError(f"schooldns failed: {each.result.error}")
                light_qps = offered_qps(each.result.latency["light"])
        for number in range(len(data.misses)):
            for each in running:
                miss_run(each, number, args, tools, data, log)
        for each in running:
            finish_server(each, args, tools, data, log)
            if each.server.key == "schooldns" and each.result.error:
                raise BenchError(f"schooldns failed: {each.result.error}")
        upstream.stop()

        domains_table = None
        if not args.skip_domains:
            log(f"bench_domains.py --entries {args.domains_entries} ...")
            domains_table = run_domains(args)
        elapsed = time.monotonic() - t0
        info["use"] = machine_use.summary()
        section = report(args, info, data, results, domains_table, upstream_cmd, started_at, elapsed)
        write_section(args.output, section)
        if args.json:
            args.json.write_text(json.dumps(raw(results, info, args), indent=1, default=str))
        print()
        print(section)
        log(f"results written to {args.output}")
        wrong = [r for r in results if r.wrong_answers]
        if wrong:
            print("bench: WRONG ANSWERS from " + ", ".join(r.title for r in wrong), file=sys.stderr)
        failed = [r for r in results if r.error]
        return 1 if failed or wrong else 0
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    finally:
        Proc.stop_all()
        if args.keep:
            print(f"bench: work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def raw(results: list[Result], info: dict[str, str], args: argparse.Namespace) -> dict:
    def perf(p: Perf | None) -> dict | None:
        if p is None:
            return None
        return {
            "qps": p.qps,
            "sent": p.sent,
            "completed": p.completed,
            "lost": p.lost,
            "avg_latency_ms": p.avg_latency_ms,
            "max_latency_ms": p.max_latency_ms,
            "rcodes": p.rcodes,
            "p50_ms": p.percentile(0.5) if p.latencies_ms else None,
            "p99_ms": p.percentile(0.99) if p.latencies_ms else None,
            "p999_ms": p.percentile(0.999) if p.latencies_ms else None,
        }

    return {
        "machine": info,
        "args": {k: str(v) for k, v in vars(args).items()},
        "results": [
            {
                "server": r.key,
                "qps_median": r.qps,
                "runs": [perf(p) for p in r.runs],
                "variant_runs": {key: [perf(p) for p in runs] for key, runs in r.variant_runs.items()},
                "warm_pass": perf(r.warm_pass),
                "latency": {k: perf(v) for k, v in r.latency.items()},
                "miss": perf(r.miss),
                "misses": [perf(p) for p in r.misses],
                "memory_kb": r.memory_kb,
                "start_seconds": r.start_seconds,
                "warm_start_seconds": r.warm_start_seconds,
                "start_samples": r.start_samples,
                "warm_start_samples": r.warm_start_samples,
                "answers_checked": r.answers_checked,
                "faults_per_query": r.faults_per_query,
                "cpu_user": r.cpu_user,
                "cpu_system": r.cpu_system,
                "scaling": asdict(r.scaling) if r.scaling else None,
                "scaling_dedicated_estimate": {
                    label: r.scaling.dedicated_estimate(label)
                    for label, server in SCALING_SERVERS.items()
                    if server.workers > 1 and not server.core_share
                }
                if r.scaling
                else None,
                "wrong_answers": r.wrong_answers[:50],
                "counts_checked": r.counts_checked,
                "wrong_counts": r.wrong_counts[:50],
                "status": r.status,
                "error": r.error,
                "log_problems": r.log_problems[:50],
            }
            for r in results
        ],
    }


if __name__ == "__main__":
    sys.exit(main())
